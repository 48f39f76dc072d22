"""K-object composition of fields.

- :class:`ComposedDensityField` (UDC-NeRF / Object-NeRF): densities add,
  ``sigma = sum_k sigma_k``, colour is the density-weighted mean ``sum_k sigma_k c_k / sigma``
  (the same mixture :func:`layerforge.renderers.volume.composite_objects` composites).
- :class:`ComposedSDFField` (ObjectSDF++ / DP-Recon): the scene SDF is the minimum,
  ``d = min_k d_k``; colour and semantics are the argmin object's; every object keeps its own
  SDF so each has its own VolSDF density (for per-object opacity, ObjectSDF++ Eq. 6).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .base import Field, FieldOutput
from .mlp_fields import VOLSDF_BETA_INIT, LaplaceDensity

__all__ = ["ComposedDensityField", "ComposedSDFField"]


def _union_aabb(fields: Sequence[Field]) -> Tensor:
    boxes = torch.stack([f.aabb for f in fields])  # [K, 2, 3]
    return torch.stack([boxes[:, 0].amin(0), boxes[:, 1].amax(0)])


def _check(fields: Sequence[Field], kind: str) -> None:
    if len(fields) < 1:
        raise ValueError("a composed field needs at least one object field")
    bad = [i for i, f in enumerate(fields) if f.kind != kind or f.composition is not None]
    if bad:
        raise ValueError(f"object fields {bad} are not single {kind} fields")


def _argmin_pick(values: Tensor, idx: Tensor) -> Tensor:
    """values [..., K, C], idx [..., 1] int64 -> [..., C] the entry of object idx."""
    return values.gather(-2, idx[..., None].expand(*idx.shape[:-1], 1, values.shape[-1]))[..., 0, :]


class ComposedDensityField(Field):
    """K density fields rendered as one scene (density sum).

    Args:
        fields: K single :class:`Field` s of kind ``"density"`` (object 0 is usually the
            background). The composed box is the union of theirs.

    ``forward`` returns ``density`` [..., 1] = sum_k sigma_k, ``rgb`` [..., 3] the
    sigma-weighted mean (plain mean where sigma = 0), ``object_density`` [..., K],
    ``object_rgb`` [..., K, 3], and ``semantics`` [..., K] = log sigma_k (softmax gives each
    object's share of the density) where sigma > 0.
    """

    kind = "density"
    composition = "sum"

    def __init__(self, fields: Sequence[Field]) -> None:
        _check(fields, "density")
        super().__init__(_union_aabb(fields))
        self.objects = nn.ModuleList(fields)

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    def forward(self, points: Tensor, directions: Tensor | None = None) -> FieldOutput:
        """points [..., 3] world metres, directions [..., 3] or None -> :class:`FieldOutput`."""
        outs = [f(points, directions) for f in self.objects]
        dens = torch.cat([o.density for o in outs], dim=-1)  # [..., K]
        rgbs = torch.stack([o.rgb for o in outs], dim=-2)  # [..., K, 3]
        sigma = dens.sum(-1, keepdim=True)
        share = torch.where(sigma > 0, dens / sigma.clamp_min(1e-12), torch.full_like(dens, 1.0 / dens.shape[-1]))
        rgb = (share[..., None] * rgbs).sum(-2)
        return FieldOutput(
            density=sigma,
            rgb=rgb,
            semantics=torch.log(dens.clamp_min(1e-12)),
            object_density=dens,
            object_rgb=rgbs,
        )


class ComposedSDFField(Field):
    """K SDF fields as one scene (SDF minimum), with one shared VolSDF beta (ObjectSDF++).

    Args:
        fields: K single :class:`Field` s of kind ``"sdf"`` (their own ``laplace`` betas are
            not used here; the composed field's is).
        beta_init: initial VolSDF beta, metres (DP-Recon: 0.1).

    ``forward`` returns ``sdf`` [..., 1] = min_k d_k, ``density`` [..., 1] its VolSDF density,
    ``rgb`` [..., 3] of the argmin object, ``object_sdf`` [..., K], ``object_density``
    [..., K] (each object's VolSDF density), ``object_rgb`` [..., K, 3] and ``semantics`` =
    the argmin object's semantics when every object has them, else ``-object_sdf`` [..., K]
    (ObjectSDF++ turns negated SDFs into semantic logits).
    """

    kind = "sdf"
    composition = "min"

    def __init__(self, fields: Sequence[Field], beta_init: float = VOLSDF_BETA_INIT) -> None:
        _check(fields, "sdf")
        super().__init__(_union_aabb(fields))
        self.objects = nn.ModuleList(fields)
        self.laplace = LaplaceDensity(beta_init)

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    def forward(self, points: Tensor, directions: Tensor | None = None) -> FieldOutput:
        """points [..., 3] world metres, directions [..., 3] or None -> :class:`FieldOutput`."""
        outs = [f(points, directions) for f in self.objects]
        sdfs = torch.cat([o.sdf for o in outs], dim=-1)  # [..., K]
        rgbs = torch.stack([o.rgb for o in outs], dim=-2)  # [..., K, 3]
        sdf, idx = sdfs.min(-1, keepdim=True)
        if all(o.semantics is not None for o in outs):
            sem = _argmin_pick(torch.stack([o.semantics for o in outs], dim=-2), idx)
        else:
            sem = -sdfs
        return FieldOutput(
            density=self.laplace(sdf),
            rgb=_argmin_pick(rgbs, idx),
            sdf=sdf,
            semantics=sem,
            object_density=self.laplace(sdfs),
            object_rgb=rgbs,
            object_sdf=sdfs,
        )
