"""``optimise()``: the one optimisation loop every pipeline's long stage runs.

A stage hands it a representation (any ``nn.Module``: BSP-Net, a field, Gaussians), its
parameter groups (each with its own learning-rate schedule), loss terms (each with a
scheduled weight), a sampler that draws the batch of each step (point samples, dataset
views, random orbit views) and, optionally, a policy that changes the representation (gsplat's
densification strategies, through :class:`~layerforge.models.gaussians.GsplatPolicy`).

Life cycle of one step, in this order::

    lr of every group <- its schedule at this step
    batch  <- sampler.sample(step, generator)
    losses <- {term.name: weight(step) * term(representation, batch, step, info)} (weight 0: skipped)
    NaN guard on the total (one line naming the terms)
    policy.step_pre_backward(...)
    zero grads; backward (CUDA: autocast and a grad scaler for fp16); clip the gradient norm
    every optimiser steps
    policy.step_post_backward(...)        (may grow or shrink the representation)
    log losses and ``info["log"]`` (progress bar, metrics.jsonl)

Everything is checkpointed by :class:`~layerforge.pipelines.checkpoint.TrainingLoop`: the
representation, one Adam per group, the batch generator, the policy's state and the RNGs,
so a kill anywhere resumes to the same result on CPU; a representation whose size changed
(densified Gaussians) is resized to the checkpoint before its optimisers are re-bound.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from layerforge.errors import NonFiniteError
from layerforge.models.optimisation import LossTerm, ParamGroup, Policy, Sampler
from layerforge.models.schedules import schedule_value, validate_schedule
from layerforge.pipelines.context import StageContext

__all__ = ["LossTerm", "OptimiseConfig", "Optimiser", "ParamGroup", "Policy", "Sampler", "optimise"]


@dataclasses.dataclass
class OptimiseConfig:
    """How long and how carefully to optimise.

    Attributes:
        steps: optimisation steps of this call.
        checkpoint_every: steps between checkpoints (and previews).
        grad_clip: clip the total gradient norm of all groups to this (None: no clipping).
        mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"`` autocast; CUDA only (CPU runs fp32).
        start_step: schedules are evaluated at ``start_step + step`` (for a stage that
            optimises in several calls, e.g. BSP-Net's phases).
    """

    steps: int
    checkpoint_every: int = 100
    grad_clip: float | None = None
    mixed_precision: str = "no"
    start_step: int = 0

    def __post_init__(self) -> None:
        from layerforge.pipelines.schema import at_least, one_of, positive

        at_least("steps", self.steps, 1)
        at_least("checkpoint_every", self.checkpoint_every, 1)
        if self.grad_clip is not None:
            positive("grad_clip", self.grad_clip)
        one_of("mixed_precision", self.mixed_precision, ("no", "bf16", "fp16"))


class _Optimizers:
    """One Adam per parameter group, checkpointed together, re-bound after a resize."""

    def __init__(self, groups: Sequence[ParamGroup]) -> None:
        names = [g.name for g in groups]
        if len(set(names)) != len(names):
            raise ValueError(f"parameter group names must be unique, got {names}")
        self.groups = {g.name: g for g in groups}
        for g in groups:
            if not callable(g.lr):
                validate_schedule(g.lr, f"{g.name}.lr")
        self.by_name = {
            g.name: torch.optim.Adam(g.tensors(), lr=g.lr_at(0), betas=g.betas, eps=g.eps,
                                     weight_decay=g.weight_decay)
            for g in groups
        }

    def params(self) -> Iterable[Tensor]:
        for opt in self.by_name.values():
            for group in opt.param_groups:
                yield from group["params"]

    def set_lr(self, step: int) -> None:
        for name, opt in self.by_name.items():
            for group in opt.param_groups:
                group["lr"] = self.groups[name].lr_at(step)

    def zero_grad(self) -> None:
        for opt in self.by_name.values():
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.by_name.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, opt in self.by_name.items():
            opt.param_groups[0]["params"] = self.groups[name].tensors()  # the representation may have been resized
            opt.state.clear()
            opt.load_state_dict(state[name])


class Optimiser:
    """A representation, its optimisers and its batch generator, across one or more :meth:`run` calls.

    Args:
        representation: the module being optimised (resizable ones implement
            ``load_state_dict`` that adopts the checkpoint's shapes).
        groups: its parameter groups.
        seed: seeds the batch generator (use the stage's seed).
    """

    def __init__(self, representation: torch.nn.Module, groups: Sequence[ParamGroup], seed: int) -> None:
        self.representation = representation
        self.optimizers = _Optimizers(groups)
        self.generator = torch.Generator().manual_seed(seed)

    def run(
        self,
        ctx: StageContext,
        terms: Sequence[LossTerm],
        sampler: Sampler,
        cfg: OptimiseConfig,
        *,
        policy: Policy | None = None,
        preview: Callable[[int], None] | None = None,
        subfolder: str = "",
        desc: str = "",
    ) -> dict[str, float]:
        """Optimise for ``cfg.steps`` steps (resuming from this call's checkpoint); return the last logged figures."""
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"loss term names must be unique, got {names}")
        for t in terms:
            validate_schedule(t.weight, f"{t.name}.weight")
        state: dict[str, Any] = {"model": self.representation, "optim": self.optimizers, "gen": self.generator}
        if policy is not None:
            state["policy"] = policy
        scaler = torch.amp.GradScaler("cuda") if ctx.device.type == "cuda" and cfg.mixed_precision == "fp16" else None
        if scaler is not None:
            state["scaler"] = scaler
        autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision)
        use_autocast = ctx.device.type == "cuda" and autocast_dtype is not None
        loop = ctx.loop(total=cfg.steps, state=state, every=cfg.checkpoint_every, subfolder=subfolder, desc=desc,
                        on_checkpoint=preview)
        self.representation.train()
        for local_step in loop:
            step = cfg.start_step + local_step
            self.optimizers.set_lr(step)
            batch = sampler.sample(step, self.generator)
            info: dict[str, Any] = {"log": {}}
            with torch.autocast(ctx.device.type, dtype=autocast_dtype or torch.float32, enabled=use_autocast):
                losses = {}
                for term in terms:
                    weight = schedule_value(term.weight, step)
                    if weight != 0:
                        value = term(self.representation, batch, step, info)
                        losses[term.name] = value if weight == 1 else weight * value
            if not losses:
                raise ValueError(f"no loss term has a non-zero weight at step {step}")
            total = sum(losses.values())
            if not torch.isfinite(total):
                bad = [k for k, v in losses.items() if not torch.isfinite(v)]
                raise NonFiniteError(
                    f"{loop.desc}: loss {', '.join(bad)} became {float(total.detach())} at step {step + 1}",
                    "lower the learning rate or check the input for degenerate geometry, then re-run to resume",
                )
            if policy is not None:
                policy.step_pre_backward(step, self.representation, self.optimizers.by_name, info)
            self.optimizers.zero_grad()
            if scaler is not None:
                scaler.scale(total).backward()
                for opt in self.optimizers.by_name.values():
                    scaler.unscale_(opt)
            else:
                total.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(list(self.optimizers.params()), cfg.grad_clip)
            for opt in self.optimizers.by_name.values():
                if scaler is not None:
                    scaler.step(opt)
                else:
                    opt.step()
            if scaler is not None:
                scaler.update()
            if policy is not None:
                policy.step_post_backward(step, self.representation, self.optimizers.by_name, info)
            loop.log(**info["log"], total=total)
        return dict(loop.last_scalars)


def optimise(
    ctx: StageContext,
    representation: torch.nn.Module,
    groups: Sequence[ParamGroup],
    terms: Sequence[LossTerm],
    sampler: Sampler,
    cfg: OptimiseConfig,
    **kwargs: Any,
) -> dict[str, float]:
    """One :class:`Optimiser` run: the common case of a stage that optimises once."""
    return Optimiser(representation, groups, ctx.seed).run(ctx, terms, sampler, cfg, **kwargs)
