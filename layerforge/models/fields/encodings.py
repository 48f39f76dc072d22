"""Input encodings in plain torch (CPU and GPU): NeRF frequencies and a dense feature grid.

The multi-resolution hash grid lives in :mod:`.hashgrid`; it shares :func:`trilinear_corners`.
Grid encodings take points in the unit cube ``[0, 1]^3`` (a field maps its world box there
with :func:`~layerforge.models.fields.base.normalize_aabb`); points outside are clamped.
Interpolation is written with gathers instead of ``grid_sample`` so that second derivatives
exist (the eikonal loss of SDF fields differentiates the input gradient again).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "Encoding",
    "PositionalEncoding",
    "DenseGrid",
    "cell_coordinates",
    "trilinear_weights",
    "trilinear_corners",
    "CORNER_OFFSETS",
]

# The 8 corners of a unit cell, [8, 3] in (x, y, z) bit order: corner c has offset bit i of c.
CORNER_OFFSETS = torch.tensor([[(c >> i) & 1 for i in range(3)] for c in range(8)], dtype=torch.long)

# NeRF (Mildenhall et al. 2020), Eq. 4: gamma(p) = (sin(2^0 pi p), cos(2^0 pi p), ...,
# sin(2^{L-1} pi p), cos(2^{L-1} pi p)); L = 10 for positions, 4 for directions (also UDC-NeRF).
NERF_POSITION_FREQUENCIES = 10
NERF_DIRECTION_FREQUENCIES = 4


class Encoding(nn.Module):
    """``forward(x [..., in_dim]) -> [..., out_dim]``."""

    in_dim: int
    out_dim: int


class PositionalEncoding(Encoding):
    """NeRF frequency encoding (Eq. 4 of NeRF), optionally with the raw input prepended.

    Args:
        in_dim: input size (3 for points or directions).
        num_frequencies: L, frequencies ``2^0 .. 2^{L-1}`` (times pi).
        include_input: also return ``x`` itself (NeRF's code does; out_dim grows by in_dim).
    """

    def __init__(
        self, in_dim: int = 3, num_frequencies: int = NERF_POSITION_FREQUENCIES, include_input: bool = True
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.num_frequencies = num_frequencies
        self.include_input = include_input
        self.out_dim = in_dim * (2 * num_frequencies + int(include_input))
        freqs = math.pi * 2.0 ** torch.arange(num_frequencies, dtype=torch.float32)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., in_dim] (any units; NeRF feeds coordinates in about [-1, 1]) -> [..., out_dim]."""
        xb = x[..., None, :] * self.freqs.to(x)[:, None]  # [..., L, in_dim]
        enc = torch.cat([torch.sin(xb), torch.cos(xb)], dim=-2).flatten(-2)
        return torch.cat([x, enc], dim=-1) if self.include_input else enc


def cell_coordinates(x: Tensor, resolution: Tensor) -> tuple[Tensor, Tensor]:
    """Lower cell corner and fractional position of ``x`` in grids of resolution ``N_l``.

    The grid of resolution ``N`` has vertices at ``i / N``, i = 0..N (N + 1 per axis, as in
    Instant-NGP, Sec. 3: ``floor(x N_l)`` and ``ceil(x N_l)``).

    Args:
        x: [P, 3] points in [0, 1]^3 (clamped).
        resolution: [L] grid resolutions N_l (one per level; pass [1] for a single grid).

    Returns:
        base [P, L, 3] int64 lower corners in 0..N_l - 1 and frac [P, L, 3] in [0, 1]
        (differentiable w.r.t. ``x``).
    """
    res = resolution.to(x)
    pos = x.clamp(0.0, 1.0)[:, None, :] * res[None, :, None]  # [P, L, 3]
    # floor at most N - 1 so the point x = 1 interpolates inside the last cell.
    base = torch.minimum(pos.detach().floor(), (res - 1.0)[None, :, None])
    return base.long(), pos - base


def trilinear_weights(frac: Tensor) -> Tensor:
    """[..., 3] fractional positions -> [..., 8] corner weights in :data:`CORNER_OFFSETS` order.

    Built as an outer product of per-axis ``(1 - f, f)`` pairs (twice differentiable).
    """
    wa = torch.stack([1.0 - frac, frac], dim=-1)  # [..., 3, 2]
    w = wa[..., 2, :, None, None] * wa[..., 1, None, :, None] * wa[..., 0, None, None, :]  # [..., z, y, x]
    return w.flatten(-3)


def trilinear_corners(x: Tensor, resolution: Tensor) -> tuple[Tensor, Tensor]:
    """Integer corners and trilinear weights of the cells containing ``x`` (reference form).

    Args:
        x: [P, 3] points in [0, 1]^3 (clamped). resolution: [L] resolutions N_l.

    Returns:
        corners [P, L, 8, 3] int64 vertex coordinates in 0..N_l (corner ``c`` adds bit i of
        c on axis i, :data:`CORNER_OFFSETS`) and weights [P, L, 8] (sum to 1).
    """
    base, frac = cell_coordinates(x, resolution)
    corners = base[:, :, None, :] + CORNER_OFFSETS.to(x.device)[None, None]
    return corners, trilinear_weights(frac)


class DenseGrid(Encoding):
    """A dense feature grid [N+1, N+1, N+1, C] with trilinear interpolation.

    Args:
        resolution: N cells per axis (N + 1 vertices).
        features: C channels per vertex.
        init_scale: entries start uniform in ``[-init_scale, init_scale]`` (Instant-NGP's
            1e-4 by default, see :data:`.hashgrid.INSTANT_NGP_INIT_SCALE`).
    """

    def __init__(self, resolution: int = 32, features: int = 4, init_scale: float = 1e-4) -> None:
        super().__init__()
        if resolution < 1 or features < 1:
            raise ValueError(f"DenseGrid needs resolution >= 1 and features >= 1, got {resolution}, {features}")
        self.in_dim = 3
        self.out_dim = features
        self.resolution = resolution
        n = resolution + 1
        self.grid = nn.Parameter(torch.empty(n, n, n, features).uniform_(-init_scale, init_scale))
        self.register_buffer("_res", torch.tensor([float(resolution)]), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., 3] in [0, 1]^3 -> [..., C] interpolated features."""
        lead = x.shape[:-1]
        corners, w = trilinear_corners(x.reshape(-1, 3), self._res)
        n = self.resolution + 1
        idx = (corners[..., 0] * n + corners[..., 1]) * n + corners[..., 2]  # [P, 1, 8], x-major
        feats = self.grid.reshape(-1, self.out_dim).index_select(0, idx.reshape(-1)).reshape(*idx.shape, self.out_dim)
        out = (w[..., None].to(feats) * feats).sum(-2)[:, 0]
        return out.reshape(*lead, self.out_dim)
