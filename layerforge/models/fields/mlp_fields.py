"""Neural fields: an encoding followed by small MLPs.

:class:`DensityField` is a NeRF/Instant-NGP-style radiance field (density + colour);
:class:`SDFField` a MonoSDF/DP-Recon-style SDF field whose density is VolSDF's
``(1/beta) Psi_beta(-sdf)`` with a learnable beta. Both answer only "what is at these points".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layerforge.renderers.volume import volsdf_density

from .base import Field, FieldOutput, normalize_aabb
from .encodings import (
    NERF_DIRECTION_FREQUENCIES,
    DenseGrid,
    Encoding,
    PositionalEncoding,
)
from .hashgrid import HashGrid, HashGridConfig

__all__ = [
    "MLP",
    "VOLSDF_BETA_INIT",
    "VOLSDF_BETA_MIN",
    "DensityField",
    "DensityFieldConfig",
    "EncodingConfig",
    "LaplaceDensity",
    "SDFField",
    "SDFFieldConfig",
    "box_sdf",
    "make_encoding",
    "trunc_exp",
]

# DP-Recon / VolSDF (shared METHODS.md): Laplace scale beta initialised to 0.1.
VOLSDF_BETA_INIT = 0.1
# VolSDF's LaplaceDensity: beta = |beta_param| + beta_min, beta_min = 1e-4.
VOLSDF_BETA_MIN = 1e-4

DensityActivation = Literal["trunc_exp", "softplus", "relu"]
EncodingType = Literal["hashgrid", "dense", "frequency"]


class _TruncExp(torch.autograd.Function):
    """exp(x) with the backward's exp clamped at x = 15 (Instant-NGP / torch-ngp ``trunc_exp``)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Tensor) -> Tensor:
    """exp with a bounded gradient (Instant-NGP's density activation)."""
    return _TruncExp.apply(x)


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "trunc_exp": trunc_exp,
    "softplus": F.softplus,
    "relu": F.relu,
}


class MLP(nn.Module):
    """Linear + ReLU layers; no activation after the last one.

    Args:
        in_dim: input width. hidden: widths of the hidden layers (may be empty). out_dim: output width.
    """

    def __init__(self, in_dim: int, hidden: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        dims = [in_dim, *hidden, out_dim]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., in_dim] -> [..., out_dim]."""
        return self.net(x)


@dataclass
class EncodingConfig:
    """Which position encoding a field uses.

    Attributes:
        type: ``"hashgrid"`` (:class:`HashGrid`), ``"dense"`` (:class:`DenseGrid`) or
            ``"frequency"`` (:class:`PositionalEncoding` on the box-normalised point in [-1, 1]).
        hashgrid: sizes for ``"hashgrid"``.
        dense_resolution, dense_features: sizes for ``"dense"``.
        num_frequencies: L for ``"frequency"`` (NeRF: 10).
    """

    type: EncodingType = "hashgrid"
    hashgrid: HashGridConfig = field(default_factory=HashGridConfig)
    dense_resolution: int = 32
    dense_features: int = 4
    num_frequencies: int = 10


class _FrequencyOnUnitCube(Encoding):
    """NeRF frequencies of ``2 x - 1`` for x in [0, 1]^3 (so the box spans [-1, 1])."""

    def __init__(self, num_frequencies: int) -> None:
        super().__init__()
        self.pe = PositionalEncoding(3, num_frequencies, include_input=True)
        self.in_dim, self.out_dim = 3, self.pe.out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.pe(2.0 * x - 1.0)


def make_encoding(cfg: EncodingConfig) -> Encoding:
    """Build the encoding ``cfg`` names; all take points in the field's unit cube [0, 1]^3."""
    if cfg.type == "hashgrid":
        return HashGrid(cfg.hashgrid)
    if cfg.type == "dense":
        return DenseGrid(cfg.dense_resolution, cfg.dense_features)
    if cfg.type == "frequency":
        return _FrequencyOnUnitCube(cfg.num_frequencies)
    raise ValueError(f"encoding type must be 'hashgrid', 'dense' or 'frequency', got {cfg.type!r}")


@dataclass
class DensityFieldConfig:
    """A radiance field: encoding -> geometry MLP -> (density, feature) -> colour MLP.

    Attributes:
        encoding: the position encoding.
        hidden: geometry MLP hidden widths (Instant-NGP: one layer of 64).
        geo_features: feature width passed from the geometry to the colour MLP (Instant-NGP: 15).
        color_hidden: colour MLP hidden widths (Instant-NGP: two of 64).
        view_dependent: feed NeRF-encoded view directions to the colour MLP.
        direction_frequencies: L for the directions (NeRF / UDC-NeRF: 4).
        density_activation: ``"trunc_exp"`` (Instant-NGP), ``"softplus"`` or ``"relu"`` (NeRF).
        density_bias: added to the raw density before activation (negative = starts emptier).
        num_semantics: C > 0 adds a semantic-logit head on the geometry feature.
    """

    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    hidden: tuple[int, ...] = (64,)
    geo_features: int = 15
    color_hidden: tuple[int, ...] = (64, 64)
    view_dependent: bool = True
    direction_frequencies: int = NERF_DIRECTION_FREQUENCIES
    density_activation: DensityActivation = "trunc_exp"
    density_bias: float = 0.0
    num_semantics: int = 0


class _ColourHead(nn.Module):
    """Geometry feature (+ encoded direction) -> sigmoid RGB [..., 3]."""

    def __init__(
        self, feat_dim: int, hidden: tuple[int, ...], view_dependent: bool, direction_frequencies: int
    ) -> None:
        super().__init__()
        self.dir_enc = PositionalEncoding(3, direction_frequencies, include_input=True) if view_dependent else None
        in_dim = feat_dim + (self.dir_enc.out_dim if self.dir_enc is not None else 0)
        self.mlp = MLP(in_dim, hidden, 3)

    @classmethod
    def from_config(cls, cfg: DensityFieldConfig | SDFFieldConfig) -> _ColourHead:
        return cls(cfg.geo_features, cfg.color_hidden, cfg.view_dependent, cfg.direction_frequencies)

    def forward(self, feat: Tensor, directions: Tensor | None) -> Tensor:
        if self.dir_enc is not None:
            d = torch.zeros_like(feat[..., :3]) if directions is None else directions.to(feat)
            feat = torch.cat([feat, self.dir_enc(d)], dim=-1)
        return torch.sigmoid(self.mlp(feat))


class DensityField(Field):
    """Density + colour (+ semantics) at points inside ``aabb``; zero density outside it.

    Args:
        aabb: [2, 3] world box, metres.
        config: sizes (:class:`DensityFieldConfig`).
    """

    kind = "density"

    def __init__(self, aabb: Tensor | tuple, config: DensityFieldConfig = DensityFieldConfig()) -> None:
        super().__init__(aabb)
        self.config = config
        self.encoding = make_encoding(config.encoding)
        self.geo = MLP(self.encoding.out_dim, config.hidden, 1 + config.geo_features)
        self.colour = _ColourHead.from_config(config)
        self.semantic = MLP(config.geo_features, (), config.num_semantics) if config.num_semantics > 0 else None
        self._act = _ACTIVATIONS[config.density_activation]

    def forward(self, points: Tensor, directions: Tensor | None = None) -> FieldOutput:
        """points [..., 3] world metres, directions [..., 3] unit or None -> :class:`FieldOutput`."""
        u = normalize_aabb(points, self.aabb)
        inside = ((u >= 0) & (u <= 1)).all(-1, keepdim=True)
        h = self.geo(self.encoding(u))
        density = self._act(h[..., :1] + self.config.density_bias) * inside.to(h)
        feat = h[..., 1:]
        return FieldOutput(
            density=density,
            rgb=self.colour(feat, directions),
            semantics=self.semantic(feat) if self.semantic is not None else None,
        )


class LaplaceDensity(nn.Module):
    """VolSDF density ``sigma = (1/beta) Psi_beta(-sdf)`` with a learnable beta (metres).

    ``beta = |beta_param| + beta_min`` as VolSDF's ``LaplaceDensity``.
    """

    def __init__(self, beta_init: float = VOLSDF_BETA_INIT, beta_min: float = VOLSDF_BETA_MIN) -> None:
        super().__init__()
        self.beta_param = nn.Parameter(torch.tensor(float(beta_init)))
        self.beta_min = beta_min

    @property
    def beta(self) -> Tensor:
        """Current beta (> 0), metres."""
        return self.beta_param.abs() + self.beta_min

    def forward(self, sdf: Tensor) -> Tensor:
        """sdf [...] metres -> density [...] 1/m."""
        return volsdf_density(sdf, self.beta.to(sdf))


@dataclass
class SDFFieldConfig:
    """An SDF field: encoding (+ raw point) -> MLP -> (sdf, feature) -> colour MLP.

    Attributes:
        encoding: the position encoding (DP-Recon: the hash grid of :data:`DP_RECON_HASHGRID`).
        hidden: SDF MLP hidden widths (DP-Recon: [256, 256]).
        geo_features: feature width passed to the colour MLP.
        color_hidden: colour MLP hidden widths.
        view_dependent: feed encoded view directions to the colour MLP.
        direction_frequencies: L for the directions.
        sphere_radius: > 0 adds ``|x - c| - r`` (c the box centre, r metres) to the MLP output,
            so the field starts as a sphere (threestudio ``ImplicitSDF`` ``sdf_bias="sphere"``);
            negative r gives an inside-out sphere (a room seen from inside); 0 disables it.
        beta_init: VolSDF beta at the start (DP-Recon: 0.1).
        num_semantics: C > 0 adds a semantic-logit head.
        confine_to_aabb: the SDF is ``max(min(sdf, m), box_sdf)``, the intersection with the
            field's box, so nothing is ever solid outside it (ours: per-object boxes keep an
            object's field from growing floaters elsewhere in the scene). The network's SDF is
            capped at ``m = confine_margin x`` the box's smallest extent, which makes the
            field exactly ``box_sdf`` wherever that exceeds m: the network is not evaluated
            there (most of a scene, for a small object's box).
        confine_margin: m as a fraction of the box's smallest extent.
    """

    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    hidden: tuple[int, ...] = (64,)
    geo_features: int = 15
    color_hidden: tuple[int, ...] = (64, 64)
    view_dependent: bool = True
    direction_frequencies: int = NERF_DIRECTION_FREQUENCIES
    sphere_radius: float = 0.5
    beta_init: float = VOLSDF_BETA_INIT
    num_semantics: int = 0
    confine_to_aabb: bool = False
    confine_margin: float = 0.5


def box_sdf(points: Tensor, aabb: Tensor) -> Tensor:
    """Exact signed distance [..., 1] (metres, negative inside) of points [..., 3] to the box aabb [2, 3]."""
    lo, hi = aabb[0].to(points), aabb[1].to(points)
    q = (points - 0.5 * (lo + hi)).abs() - 0.5 * (hi - lo)
    outside = q.clamp_min(0.0).norm(dim=-1, keepdim=True)
    inside = q.amax(-1, keepdim=True).clamp_max(0.0)
    return outside + inside


class SDFField(Field):
    """Signed distance + colour at points; its ``density`` is the VolSDF density of the SDF.

    Args:
        aabb: [2, 3] world box, metres (the encoding's unit cube).
        config: sizes (:class:`SDFFieldConfig`).
    """

    kind = "sdf"

    def __init__(self, aabb: Tensor | tuple, config: SDFFieldConfig = SDFFieldConfig()) -> None:
        super().__init__(aabb)
        self.config = config
        self.encoding = make_encoding(config.encoding)
        self.geo = MLP(self.encoding.out_dim + 3, config.hidden, 1 + config.geo_features)
        self.colour = _ColourHead.from_config(config)
        self.semantic = MLP(config.geo_features, (), config.num_semantics) if config.num_semantics > 0 else None
        self.laplace = LaplaceDensity(config.beta_init)

    def sdf_and_feature(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """points [..., 3] -> sdf [..., 1] metres and geometry feature [..., geo_features] (0
        where a confined field is the box's SDF alone)."""
        if not self.config.confine_to_aabb:
            return self._network_sdf(points)
        box = box_sdf(points, self.aabb)
        cap = self.config.confine_margin * float((self.aabb[1] - self.aabb[0]).min())
        near = box[..., 0] < cap
        sdf = box.clone()
        feat = points.new_zeros((*points.shape[:-1], self.config.geo_features))
        if bool(near.any()):
            net, f = self._network_sdf(points[near])
            sdf[near] = torch.maximum(net.clamp_max(cap), box[near])
            feat[near] = f.to(feat.dtype)
        return sdf, feat

    def _network_sdf(self, points: Tensor) -> tuple[Tensor, Tensor]:
        u = normalize_aabb(points, self.aabb)
        h = self.geo(torch.cat([self.encoding(u), 2.0 * u - 1.0], dim=-1))
        sdf = h[..., :1]
        r = self.config.sphere_radius
        if r != 0.0:
            centre = 0.5 * (self.aabb[0] + self.aabb[1]).to(points)
            dist = (points - centre).norm(dim=-1, keepdim=True)
            sdf = sdf + (dist - r if r > 0 else -r - dist)
        return sdf, h[..., 1:]

    def forward(self, points: Tensor, directions: Tensor | None = None) -> FieldOutput:
        """points [..., 3] world metres, directions [..., 3] unit or None -> :class:`FieldOutput`."""
        sdf, feat = self.sdf_and_feature(points)
        return FieldOutput(
            density=self.laplace(sdf),
            rgb=self.colour(feat, directions),
            sdf=sdf,
            semantics=self.semantic(feat) if self.semantic is not None else None,
        )
