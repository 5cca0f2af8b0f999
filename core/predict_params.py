"""A predict request's parameters (`conf`, `iou`, `max_det`, `top_k`), validated the same way for
every protocol: /v1's query string and OIP's `parameters` are both a name -> value mapping."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core import errors


@dataclass(frozen=True)
class PredictParams:
    conf: float
    iou: float
    max_det: int
    top_k: int


def number(values: Mapping, name: str, kind, default, lo, hi, lo_open: bool = False):
    """`values[name]` as `kind` within [lo, hi] (or (lo, hi]), `default` when absent; 422 otherwise."""
    raw = values.get(name)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool) or (kind is int and isinstance(raw, float) and not raw.is_integer()):
        raise errors.invalid_parameter(f"{name}={raw!r} is not a valid {kind.__name__}")
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise errors.invalid_parameter(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if value != value or value > hi or value < lo or (lo_open and value == lo):
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise errors.invalid_parameter(f"{name}={raw} is out of range {bound}")
    return value


def predict_params(values: Mapping, defaults, n_classes: int) -> PredictParams:
    """Validate `conf`, `iou`, `max_det`, `top_k` (422 when out of range)."""
    return PredictParams(
        conf=number(values, "conf", float, defaults.conf, 0.0, 1.0, lo_open=True),
        iou=number(values, "iou", float, defaults.iou, 0.0, 1.0),
        max_det=number(values, "max_det", int, defaults.max_det, 1, 10_000),
        top_k=number(values, "top_k", int, min(defaults.top_k, n_classes), 1, max(n_classes, 1)),
    )
