"""Per-component density and colour of a trained UDC-NeRF as point functions (for marching cubes)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from layerforge.models.udc_nerf.model import UDCNeRF

# Colour is view-dependent; meshes get the colour seen from straight above (world +Z in the
# optimisation frame), where most captured views look from (ours).
VERTEX_COLOUR_VIEW = (0.0, 0.0, -1.0)


def component_density(model: UDCNeRF, k: int) -> Callable[[Tensor], Tensor]:
    """points [P, 3] (optimisation frame) -> [P] density (1/m) of component ``k`` (0 = background)."""

    def fn(points: Tensor) -> Tensor:
        d = torch.tensor(VERTEX_COLOUR_VIEW, dtype=points.dtype, device=points.device).expand_as(points)
        _, _, sigma, _ = model.fine.components_at(points, d)
        return torch.relu(sigma[:, k])

    return fn


def component_color(model: UDCNeRF, k: int) -> Callable[[Tensor], Tensor]:
    """points [P, 3] -> [P, 3] linear RGB of component ``k`` seen along :data:`VERTEX_COLOUR_VIEW`."""

    def fn(points: Tensor) -> Tensor:
        d = torch.tensor(VERTEX_COLOUR_VIEW, dtype=points.dtype, device=points.device).expand_as(points)
        _, _, _, rgb = model.fine.components_at(points, d)
        return rgb[:, k]

    return fn
