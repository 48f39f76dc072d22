"""The pieces an optimisation is made of: parameter groups, loss terms, samplers, policies.

Plain objects with a documented life cycle (as gsplat's strategies), so a stage composes its
optimisation instead of branching inside a loop; the loop itself is
:func:`layerforge.pipelines.optimise.optimise`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from layerforge.models.schedules import ScheduleValue, schedule_value


@dataclasses.dataclass
class ParamGroup:
    """Parameters that share an optimiser and a learning-rate schedule.

    Attributes:
        name: unique; names the group's optimiser in checkpoints and logs.
        params: the tensors, or a function returning them (re-read after the representation
            is resized, e.g. by densification).
        lr: learning rate: a number, a linear schedule ``[start_step, start, end, end_step]``,
            or a function of the step (e.g. UDC-NeRF's poly decay).
        betas, eps, weight_decay: Adam's.
    """

    name: str
    params: Sequence[Tensor] | Callable[[], Sequence[Tensor]]
    lr: ScheduleValue | Callable[[int], float]
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def tensors(self) -> list[Tensor]:
        return list(self.params() if callable(self.params) else self.params)

    def lr_at(self, step: int) -> float:
        """The learning rate at training step ``step``."""
        return float(self.lr(step)) if callable(self.lr) else float(schedule_value(self.lr, step))


def batch_generator(batch: Mapping[str, Any], salt: int) -> torch.Generator:
    """A generator for a loss term's own randomness, seeded from the batch's ``seed`` and a per-term salt.

    Samplers draw ``seed`` from the step's (checkpointed) generator, so a term's jitter and noise
    are reproducible after a resume without the term holding state.
    """
    return torch.Generator().manual_seed(int(batch["seed"]) * 1_000_003 + salt)


@runtime_checkable
class LossTerm(Protocol):
    """One scheduled loss term.

    ``name`` labels it in logs; ``weight`` is a schedule value (a term whose weight is 0 at a
    step is not evaluated, so SDS can switch on at step N). ``__call__`` returns the unweighted
    scalar loss and may add figures to log to ``info["log"]`` (floats or 0-d tensors).
    """

    name: str
    weight: ScheduleValue

    def __call__(self, representation: torch.nn.Module, batch: Any, step: int, info: dict[str, Any]) -> Tensor: ...


class PaperTerm:
    """Base of a method's loss terms: ``name`` (default the paper's key), ``weight`` (default the
    paper's, from the subclass's ``paper_weights``); ``__call__`` logs the unweighted value.

    Subclasses set ``key`` and ``paper_weights`` and implement ``loss(model, batch, step, info)``.
    """

    key: str
    paper_weights: Mapping[str, ScheduleValue]

    def __init__(self, weight: ScheduleValue | None = None, name: str | None = None) -> None:
        self.name = name or self.key
        self.weight = self.paper_weights[self.key] if weight is None else weight

    def __call__(self, model: torch.nn.Module, batch: Any, step: int, info: dict[str, Any]) -> Tensor:
        value = self.loss(model, batch, step, info)
        log_value(info, self.name, value)
        return value

    def loss(self, model: torch.nn.Module, batch: Any, step: int, info: dict[str, Any]) -> Tensor:  # pragma: no cover
        raise NotImplementedError


def log_value(info: dict[str, Any], name: str, value: Tensor) -> None:
    """Record a term's unweighted value as a float in ``info["log"]``."""
    info.setdefault("log", {})[name] = float(value.detach())


class Sampler(Protocol):
    """Draws the batch of a step from ``generator`` (a CPU ``torch.Generator``, checkpointed)."""

    def sample(self, step: int, generator: torch.Generator) -> Any: ...


class Policy(Protocol):
    """Changes the representation during optimisation (gsplat's strategy life cycle).

    ``state_dict``/``load_state_dict`` make it resumable; the hooks see the step, the
    representation, the optimisers by group name, and the ``info`` the loss terms filled.
    """

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def step_pre_backward(self, step: int, representation: torch.nn.Module, optimizers: Mapping[str, torch.optim.Optimizer],
                          info: dict[str, Any]) -> None: ...

    def step_post_backward(self, step: int, representation: torch.nn.Module, optimizers: Mapping[str, torch.optim.Optimizer],
                           info: dict[str, Any]) -> None: ...
