"""Parsing layer selections: `all`, `last`, `cnn`, lists and ranges such as `0,6-12,cnn`."""

from __future__ import annotations

from .errors import InputError
from .frames import CNN


def check_layer_syntax(spec: str) -> None:
    """Raises InputError for a selection no model could satisfy (`6-`, `x`, `3-1`), before
    any model is loaded; whether its layers exist is checked against the model."""
    parse_layers(spec, num_layers=None)


def canonical_layers(layers) -> list:
    """One order for a layer set, whatever order it was asked in: "cnn" first (it comes
    before layer 0 in the model), then 0..L ascending, each once. A run's identity uses it,
    so `2,1,0` and `0-2` are the same run."""
    unique = {CNN if layer == CNN else int(layer) for layer in layers}
    return sorted(unique, key=lambda layer: -1 if layer == CNN else layer)


def parse_layers(spec: str, num_layers) -> list:
    """Layer keys (ints 0..num_layers and "cnn") in the order given, without repeats.
    num_layers None checks the syntax only (`all` and `last` then expand to nothing)."""
    selected: list = []
    for part in (p.strip().lower() for p in str(spec).split(",")):
        if not part:
            raise InputError(f"invalid layer selection '{spec}': empty item")
        for layer in _parse_part(part, spec, num_layers):
            if layer not in selected:
                selected.append(layer)
    return selected


def _parse_part(part: str, spec: str, num_layers) -> list:
    if part in ("all", "last") and num_layers is None:
        return []
    if part == "all":
        return list(range(num_layers + 1))
    if part == "last":
        return [num_layers]
    if part == CNN:
        return [CNN]
    bounds = part.split("-")
    try:
        numbers = [int(b) for b in bounds]
    except ValueError:
        raise InputError(f"invalid layer selection '{spec}': '{part}' is not a layer, range, all, last or cnn") from None
    if len(numbers) > 2 or (len(numbers) == 2 and numbers[0] > numbers[1]):
        raise InputError(f"invalid layer selection '{spec}': bad range '{part}'")
    for number in numbers:
        if number < 0 or (num_layers is not None and number > num_layers):
            if num_layers is None:
                raise InputError(f"invalid layer selection '{spec}': layer {number} is negative")
            raise InputError(f"layer {number} does not exist: this model has layers 0-{num_layers} and 'cnn'")
    return list(range(numbers[0], numbers[-1] + 1))


def layer_name(layer) -> str:
    return str(layer)
