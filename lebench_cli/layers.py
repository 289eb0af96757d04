"""Parsing layer selections: `all`, `last`, `cnn`, lists and ranges such as `0,6-12,cnn`."""

from __future__ import annotations

from .errors import InputError

CNN = "cnn"


def parse_layers(spec: str, num_layers: int) -> list:
    """Layer keys (ints 0..num_layers and "cnn") in the order given, without repeats."""
    selected: list = []
    for part in (p.strip().lower() for p in str(spec).split(",")):
        if not part:
            raise InputError(f"invalid layer selection '{spec}': empty item")
        for layer in _parse_part(part, spec, num_layers):
            if layer not in selected:
                selected.append(layer)
    return selected


def _parse_part(part: str, spec: str, num_layers: int) -> list:
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
        if not 0 <= number <= num_layers:
            raise InputError(f"layer {number} does not exist: this model has layers 0-{num_layers} and 'cnn'")
    return list(range(numbers[0], numbers[-1] + 1))


def layer_name(layer) -> str:
    return str(layer)
