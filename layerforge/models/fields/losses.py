"""Loss terms of field reconstruction, as :class:`~layerforge.models.optimisation.LossTerm` s.

Each term reads a ray batch of :class:`~layerforge.models.view_sampling.RayBatches`
(``origins``, ``directions``, ``rgb``, ``object_masks``, ``seed``); the terms of one step share
one render of the batch (:func:`rendered`, cached in the step's ``info``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from layerforge.models.fields.base import Field
from layerforge.models.fields.render import SamplerConfig, render_rays
from layerforge.models.optimisation import batch_generator
from layerforge.models.schedules import ScheduleValue

BCE_CLAMP = 1e-5  # keeps log() finite where a rendered opacity is exactly 0 or 1


def rendered(field: Field, batch: dict[str, Any], info: dict[str, Any], sampler: SamplerConfig) -> dict[str, Tensor]:
    """The batch's rays rendered through ``field`` once per step (stratified jitter from the batch seed)."""
    if "render" not in info:
        info["render"] = render_rays(field, batch["origins"], batch["directions"], sampler, generator=batch_generator(batch, 0))
    return info["render"]


class RGBLoss:
    """Mean squared error between rendered and observed linear RGB (NeRF's photometric loss)."""

    def __init__(self, sampler: SamplerConfig, weight: ScheduleValue = 1.0, name: str = "rgb") -> None:
        self.sampler, self.weight, self.name = sampler, weight, name

    def __call__(self, field: Field, batch: dict[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        return F.mse_loss(rendered(field, batch, info, self.sampler)["rgb"], batch["rgb"])


class ObjectMaskLoss:
    """Binary cross-entropy of each object's rendered opacity against its instance mask.

    UDC-NeRF's per-component opacity loss and ObjectSDF++'s object-mask term both take this
    form; the per-object opacity is the composed field's ``object_alpha``.
    """

    def __init__(self, sampler: SamplerConfig, weight: ScheduleValue = 1.0, name: str = "object_mask") -> None:
        self.sampler, self.weight, self.name = sampler, weight, name

    def __call__(self, field: Field, batch: dict[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        obj = rendered(field, batch, info, self.sampler)["object_alpha"].clamp(BCE_CLAMP, 1.0 - BCE_CLAMP)
        return F.binary_cross_entropy(obj, batch["object_masks"])


def eikonal_residuals(field: Any, points: Tensor, create_graph: bool) -> Tensor:
    """``|grad d_k| - 1`` [P, K] of every object SDF of a composed SDF field at points [P, 3] (m)."""
    p = points.detach().requires_grad_(True)
    sdf = torch.cat([obj.sdf_and_feature(p)[0] for obj in field.objects], dim=-1)  # [P, K]
    grads = [torch.autograd.grad(sdf[:, k].sum(), p, create_graph=create_graph, retain_graph=True)[0]
             for k in range(sdf.shape[1])]
    return torch.stack(grads, 1).norm(dim=-1) - 1.0


class EikonalLoss:
    """IGR's eikonal term ``mean (|grad d| - 1)^2`` on points drawn uniformly in the field's box."""

    def __init__(self, points: int, weight: ScheduleValue = 0.1, name: str = "eikonal") -> None:
        self.points, self.weight, self.name = points, weight, name

    def __call__(self, field: Any, batch: dict[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        lo, hi = field.aabb[0], field.aabb[1]
        u = torch.rand(self.points, 3, generator=batch_generator(batch, 1)).to(lo)
        return eikonal_residuals(field, lo + (hi - lo) * u, create_graph=True).square().mean()
