"""Scalars that change over training, written as one value.

A schedule value is either a plain number (constant) or a list
``[start_step, start_val, end_val, end_step]``: the value is ``start_val`` up to
``start_step``, moves linearly to ``end_val`` at ``end_step`` and stays there. Integer-valued
ends give integer results (useful for step counts). This is the one form every loss weight,
timestep range and learning-rate multiplier takes in our configs, so a paper's
"t_max 0.98 -> 0.40 over steps 2500-5000" is ``[2500, 0.98, 0.40, 5000]``.

A three-element list ``[start_val, end_val, end_step]`` is shorthand for start_step 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from layerforge.errors import ConfigError

ScheduleValue = float | int | Sequence[float]


def validate_schedule(value: ScheduleValue, name: str = "value") -> None:
    """Raise :class:`ConfigError` unless ``value`` is a number or a 3/4-element schedule list."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} is a bool", "give a number or [start_step, start_val, end_val, end_step]")
    if isinstance(value, (int, float)):
        return
    try:
        items = list(value)  # type: ignore[arg-type]
    except TypeError:
        items = None
    if items is None or len(items) not in (3, 4) or not all(isinstance(v, (int, float)) for v in items):
        raise ConfigError(
            f"{name}={value!r} is not a schedule value",
            "give a number or [start_step, start_val, end_val, end_step]",
        )
    start_step, end_step = (0, items[2]) if len(items) == 3 else (items[0], items[3])
    if end_step < start_step:
        raise ConfigError(f"{name}={value!r} ends before it starts", "make end_step >= start_step")


def schedule_value(value: ScheduleValue, step: int) -> float:
    """The value of ``value`` at training step ``step`` (see the module docstring)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    validate_schedule(value)
    items = list(value)  # type: ignore[arg-type]
    if len(items) == 3:
        items = [0, *items]
    start_step, start_val, end_val, end_step = items
    if end_step == start_step:
        frac = 1.0 if step >= end_step else 0.0
    else:
        frac = min(max((step - start_step) / (end_step - start_step), 0.0), 1.0)
    out = start_val + frac * (end_val - start_val)
    if isinstance(start_val, int) and isinstance(end_val, int) and not isinstance(start_val, bool):
        return int(out)
    return out


class ExponentialDecay:
    """3DGS's ``get_expon_lr_func`` (no delay): log-linear from ``start`` to ``end`` over ``steps``, then ``end``.

    A :class:`~layerforge.models.optimisation.ParamGroup` ``lr`` (a function of the step).
    """

    def __init__(self, start: float, end: float, steps: int) -> None:
        if start <= 0 or end <= 0 or steps < 1:
            raise ConfigError(f"exponential decay {start} -> {end} over {steps} steps is invalid",
                              "give positive rates and at least one step")
        self.start, self.end, self.steps = float(start), float(end), int(steps)

    def __call__(self, step: int) -> float:
        t = min(max(step / self.steps, 0.0), 1.0)
        return math.exp(math.log(self.start) * (1.0 - t) + math.log(self.end) * t)
