"""One extraction run: options, batching, windows, the engine, resume, parts, progress, summary."""
