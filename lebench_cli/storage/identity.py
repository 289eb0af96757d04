"""A run's identity (lebench.json's `identity`, and each shard's copy of it): comparing two."""

from __future__ import annotations

import json
from typing import Optional

_MISSING = object()


def canonical(identity: dict) -> dict:
    """The identity as it reads back from JSON, with its layer set in one order, each layer
    once ("cnn", then 0..L), as stores written before lebench sorted it may hold another order."""
    identity = json.loads(json.dumps(identity))
    layers = identity.get("layers")
    if isinstance(layers, list) and all(isinstance(name, str) and (name == "cnn" or name.isdigit())
                                        for name in layers):
        ordered = sorted(set(layers), key=lambda name: -1 if name == "cnn" else int(name))
        identity = {**identity, "layers": ordered}
    return identity


def identity_text(identity: dict) -> str:
    """What a shard's `identity` attribute holds: the canonical identity as JSON."""
    return json.dumps(canonical(identity), sort_keys=True, ensure_ascii=False)


def parse_identity(text) -> Optional[dict]:
    """A shard's `identity` attribute back as a dict; None when the shard has none (format 1)."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    loaded = json.loads(str(text))
    if not isinstance(loaded, dict):
        raise ValueError("the identity attribute is not a JSON object")
    return loaded


def first_difference(stored: dict, new: dict) -> Optional[str]:
    """'key: old != new' for the first key whose values differ, None when equal."""
    stored, new = canonical(stored), canonical(new)
    for key in [*new, *(key for key in stored if key not in new)]:
        if stored.get(key, _MISSING) != new.get(key, _MISSING):
            return key_difference(stored, new, key)
    return None


def key_difference(stored: dict, new: dict, key: str) -> str:
    """'key: old != new', "(none)" standing for the value of a key that one of them lacks."""
    return f"{key}: {show(stored.get(key, _MISSING))} != {show(new.get(key, _MISSING))}"


def show(value) -> str:
    if value is _MISSING:
        return "(none)"
    return value if isinstance(value, str) else json.dumps(value)
