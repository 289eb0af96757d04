"""Models: the catalog, the hub, checkpoint formats and key maps, resolution, the encoder, read-back."""
