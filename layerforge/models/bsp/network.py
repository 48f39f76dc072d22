"""BSP-Net: planes from a shape code, convexes as plane intersections, the shape as their union.

Chen, Tagliasacchi, Zhang, "BSP-Net: Generating Compact Meshes via Binary Space
Partitioning" (CVPR 2020); architecture and initialisation as in the authors' PyTorch code
(czq142857/BSP-NET-pytorch, modelAE.py).

Conventions: points live in the normalised frame [-0.5, 0.5]^3 (see ``bsp.data``). A plane
is (a, b, c, d); a point x is on its *inside* when ``a x + b y + c z + d <= 0``, so
``h1 = relu([x, 1] . P)`` is 0 inside and grows outside. After phase 0 a convex's value h2
is 0 inside, and the shape's h3 (minimum over convexes) is 0 inside; in phase 0 h3 is an
occupancy in [0, 1] with 1 inside.

Two ways to get a shape code z:
- *encoder* (the paper's auto-encoder): a 3D CNN on the 64^3 occupancy grid;
- *auto-decoder* / fit mode (``n_shapes > 0``): one learnable code per shape in an
  ``nn.Embedding``, for fitting a single shape (or a few) without an encoder.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from layerforge.assets.atomic import atomic_path

# BSP-Net modelAE.py: leaky ReLU slope in the encoder and the plane decoder.
LEAKY_SLOPE = 0.01
# BSP-Net modelAE.py: T entries above this connect a plane to a convex (phases >= 1).
T_THRESHOLD = 0.01


@dataclasses.dataclass
class BSPConfig:
    """Sizes of a BSP-Net. Defaults are the paper's; small values suit CPU fits and tests.

    Attributes:
        ef_dim: encoder base channel count (paper: 32; channels ef, 2ef, 4ef, 8ef, 8ef).
        p: number of planes (paper: p = 4096).
        c: number of convexes (paper: c = 256).
        z_dim: shape-code size (paper: 256 = 8 ef_dim).
        dec_dims: hidden widths of the plane decoder MLP (paper: 512, 1024, 2048).
        n_shapes: > 0 replaces the encoder with one learnable code per shape (auto-decoder).
    """

    ef_dim: int = 32
    p: int = 4096
    c: int = 256
    z_dim: int = 256
    dec_dims: tuple[int, ...] = (512, 1024, 2048)
    n_shapes: int = 0


@dataclasses.dataclass
class BSPOutput:
    """What :meth:`BSPNet.forward` returns (B shapes, N points, p planes, c convexes).

    Attributes:
        z: [B, z_dim] shape codes.
        planes: [B, 4, p] plane parameters (a, b, c, d) per column.
        h1: [B, N, p] distance-like value outside each plane (0 inside).
        h2: [B, N, c] per-convex value (phase 0: 1 inside; phases >= 1: 0 inside).
        h3: [B, N, 1] shape value (phase 0: occupancy, 1 inside; phases >= 1: 0 inside).
    """

    z: torch.Tensor
    planes: torch.Tensor
    h1: torch.Tensor
    h2: torch.Tensor
    h3: torch.Tensor


class VoxelEncoder(nn.Module):
    """3D CNN: [B, 1, 64, 64, 64] occupancy -> [B, 8 ef_dim] code in (0, 1).

    Five Conv3d with kernel 4: stride 2 (padding 1) four times, then stride 1 (padding 0),
    leaky ReLU between, sigmoid at the end (modelAE.py ``encoder``).
    """

    def __init__(self, ef_dim: int = 32) -> None:
        super().__init__()
        chans = [1, ef_dim, 2 * ef_dim, 4 * ef_dim, 8 * ef_dim, 8 * ef_dim]
        self.convs = nn.ModuleList(
            nn.Conv3d(chans[i], chans[i + 1], 4, stride=2 if i < 4 else 1, padding=1 if i < 4 else 0)
            for i in range(5)
        )
        for conv in self.convs:
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        x = voxels
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < 4:
                x = F.leaky_relu(x, LEAKY_SLOPE)
        return torch.sigmoid(x.flatten(1))


class PlaneDecoder(nn.Module):
    """MLP: [B, z_dim] code -> [B, 4, p] planes (modelAE.py ``decoder``: leaky ReLU, xavier init)."""

    def __init__(self, z_dim: int, dims: tuple[int, ...], p: int) -> None:
        super().__init__()
        widths = [z_dim, *dims, 4 * p]
        self.linears = nn.ModuleList(nn.Linear(widths[i], widths[i + 1]) for i in range(len(widths) - 1))
        for lin in self.linears:
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.p = p

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z
        for i, lin in enumerate(self.linears):
            x = lin(x)
            if i < len(self.linears) - 1:
                x = F.leaky_relu(x, LEAKY_SLOPE)
        return x.view(-1, 4, self.p)


def csg_layers(
    points: torch.Tensor,
    planes: torch.Tensor,
    T: torch.Tensor,
    W: torch.Tensor,
    phase: int,
    convex_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BSP-Net's three CSG layers (modelAE.py ``generator``).

    Args:
        points: [B, N, 3] query points (normalised frame).
        planes: [B, 4, p] planes (a, b, c, d).
        T: [p, c] plane-to-convex connection weights.
        W: [c, 1] convex-to-shape weights (phase 0 only).
        phase: 0 continuous; 1, 2 binarised T (no gradient to T); 3, 4 raw T with min-union.
        convex_mask: optional [1 or B, 1, c] added to h2 before the min (large = convex
            ignored), phases >= 1.

    Returns:
        h1 [B, N, p], h2 [B, N, c], h3 [B, N, 1] as described in :class:`BSPOutput`.
    """
    ones = torch.ones_like(points[..., :1])
    h1 = torch.clamp(torch.cat([points, ones], dim=-1) @ planes, min=0)
    if phase == 0:
        h2 = torch.clamp(1 - h1 @ T, min=0, max=1)
        h3 = torch.clamp(h2 @ W, min=0, max=1)
        return h1, h2, h3
    conn = (T > T_THRESHOLD).to(h1.dtype) if phase in (1, 2) else T
    h2 = h1 @ conn
    masked = h2 if convex_mask is None else h2 + convex_mask
    h3 = masked.min(dim=-1, keepdim=True).values
    return h1, h2, h3


class BSPNet(nn.Module):
    """BSP-Net with either a voxel encoder or per-shape learnable codes (auto-decoder).

    Parameters ``T`` [p, c] ~ N(0, 0.02) and ``W`` [c, 1] ~ N(1e-5, 0.02) are initialised as
    in modelAE.py ``generator``.
    """

    def __init__(self, cfg: BSPConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or BSPConfig()
        if cfg.n_shapes > 0:
            self.encoder = None
            self.codes = nn.Embedding(cfg.n_shapes, cfg.z_dim)
            # codes start where the encoder's sigmoid outputs live, in (0, 1)
            nn.init.uniform_(self.codes.weight, 0.0, 1.0)
        else:
            if cfg.z_dim != 8 * cfg.ef_dim:
                raise ValueError(f"the encoder gives 8*ef_dim = {8 * cfg.ef_dim} features, z_dim is {cfg.z_dim}")
            self.encoder = VoxelEncoder(cfg.ef_dim)
            self.codes = None
        self.decoder = PlaneDecoder(cfg.z_dim, tuple(cfg.dec_dims), cfg.p)
        self.T = nn.Parameter(torch.randn(cfg.p, cfg.c) * 0.02)
        self.W = nn.Parameter(torch.randn(cfg.c, 1) * 0.02 + 1e-5)

    def code(self, voxels: torch.Tensor | None = None, shape_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Shape codes [B, z_dim] from voxels [B, 1, 64, 64, 64] or shape indices [B] (long)."""
        if self.codes is not None:
            if shape_idx is None:
                raise ValueError("this BSPNet is an auto-decoder: pass shape_idx")
            return self.codes(shape_idx)
        if voxels is None:
            raise ValueError("this BSPNet has an encoder: pass voxels")
        return self.encoder(voxels)

    def planes(self, z: torch.Tensor) -> torch.Tensor:
        """[B, 4, p] planes for codes z [B, z_dim]."""
        return self.decoder(z)

    def forward(
        self,
        points: torch.Tensor,
        voxels: torch.Tensor | None = None,
        shape_idx: torch.Tensor | None = None,
        z: torch.Tensor | None = None,
        phase: int = 0,
        convex_mask: torch.Tensor | None = None,
    ) -> BSPOutput:
        """Evaluate the shape at points.

        Args:
            points: [B, N, 3] query points in [-0.5, 0.5]^3.
            voxels: [B, 1, 64, 64, 64] float occupancy (encoder mode).
            shape_idx: [B] long shape indices (auto-decoder mode).
            z: [B, z_dim] codes, instead of voxels / shape_idx.
            phase: training phase 0..4 (see :func:`csg_layers`).
            convex_mask: optional [1 or B, 1, c] additive mask on h2 (phases >= 1).
        """
        if z is None:
            z = self.code(voxels, shape_idx)
        planes = self.planes(z)
        h1, h2, h3 = csg_layers(points, planes, self.T, self.W, phase, convex_mask)
        return BSPOutput(z=z, planes=planes, h1=h1, h2=h2, h3=h3)


def save_model(path: str | os.PathLike[str], model: BSPNet, **extra: Any) -> None:
    """Write weights, sizes and ``extra`` (e.g. mode, phase) to one file, atomically."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "config": dataclasses.asdict(model.cfg), **extra}, tmp)


def load_model(path: str | os.PathLike[str]) -> tuple[BSPNet, dict[str, Any]]:
    """The model saved by :func:`save_model` (eval mode, on the CPU) and the whole checkpoint dict."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cfg = dict(ckpt["config"])
    cfg["dec_dims"] = tuple(cfg["dec_dims"])
    model = BSPNet(BSPConfig(**cfg))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt
