"""The field contract: what a field answers at points, and nothing else.

As nerfstudio's ``fields/base_field.py``: a field maps world points (and optionally view
directions) to a density or signed distance, a colour and optional semantics. It never sees
cameras, rays or losses; :func:`layerforge.models.fields.render.render_field` turns a field into
images and the pipelines own the losses.

Shapes: points are ``[..., 3]`` world metres; every output keeps the leading ``[...]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

__all__ = ["FieldKind", "Composition", "FieldOutput", "Field", "normalize_aabb", "ray_aabb"]

FieldKind = Literal["density", "sdf"]
Composition = Literal["sum", "min"]


@dataclass
class FieldOutput:
    """What a field returns at ``[...]`` points.

    Attributes:
        density: [..., 1] volume density sigma >= 0, 1/m. SDF fields fill it with their
            VolSDF density of ``sdf`` so every field can be volume rendered the same way.
        rgb: [..., 3] linear colour in [0, 1].
        sdf: [..., 1] signed distance, metres, negative inside (SDF fields only).
        semantics: [..., C] semantic logits (fields built with semantics only).
        object_density: [..., K] per-object densities (composed fields only).
        object_rgb: [..., K, 3] per-object colours (composed fields only).
        object_sdf: [..., K] per-object signed distances (composed SDF fields only).
    """

    density: Tensor
    rgb: Tensor
    sdf: Tensor | None = None
    semantics: Tensor | None = None
    object_density: Tensor | None = None
    object_rgb: Tensor | None = None
    object_sdf: Tensor | None = None


class Field(nn.Module):
    """Base class: ``forward(points, directions=None) -> FieldOutput``.

    Class attributes:
        kind: ``"density"`` (NeRF-style sigma) or ``"sdf"`` (signed distance + VolSDF density).
        composition: ``None`` for a single field, ``"sum"`` for densities added over K objects
            (UDC-NeRF), ``"min"`` for the SDF minimum over K objects (ObjectSDF++/DP-Recon).

    Attributes:
        aabb: [2, 3] buffer, the world box (min corner, max corner; metres) outside which the
            field is empty; renderers clip rays to it.
    """

    kind: ClassVar[FieldKind] = "density"
    composition: ClassVar[Composition | None] = None
    aabb: Tensor

    def __init__(self, aabb: Tensor | tuple[tuple[float, float, float], tuple[float, float, float]]) -> None:
        super().__init__()
        box = torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3)
        if not bool((box[1] > box[0]).all()):
            raise ValueError(f"aabb needs max > min on every axis, got {box.tolist()}")
        self.register_buffer("aabb", box)

    @property
    def num_objects(self) -> int:
        """K, the number of objects this field composes (1 for a single field)."""
        return 1

    def forward(self, points: Tensor, directions: Tensor | None = None) -> FieldOutput:  # pragma: no cover
        """Query the field.

        Args:
            points: [..., 3] world positions, metres.
            directions: [..., 3] unit view directions (from the camera towards the point), or
                ``None`` where colour is view-independent or directions are unknown.
        """
        raise NotImplementedError


def normalize_aabb(points: Tensor, aabb: Tensor) -> Tensor:
    """Map world points [..., 3] into the unit cube [0, 1]^3 of ``aabb`` [2, 3] (not clamped)."""
    lo, hi = aabb[0].to(points), aabb[1].to(points)
    return (points - lo) / (hi - lo)


def ray_aabb(origins: Tensor, directions: Tensor, aabb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Slab-test ray/box intersection (as nerfstudio's ``AABBBoxCollider``).

    Args:
        origins: [R, 3] ray origins, metres. directions: [R, 3] ray directions (any length;
            distances are in units of the direction's length).
        aabb: [2, 3] box.

    Returns:
        t_near [R], t_far [R] (clamped to t >= 0) and hit [R] bool (``t_far > t_near``).
    """
    lo, hi = aabb[0].to(origins), aabb[1].to(origins)
    safe = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    inv = 1.0 / safe
    t0, t1 = (lo - origins) * inv, (hi - origins) * inv
    t_near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    t_far = torch.maximum(t0, t1).amin(-1).clamp_min(0.0)
    return t_near, t_far, t_far > t_near
