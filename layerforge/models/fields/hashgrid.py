"""Multi-resolution hash encoding (Instant-NGP, Müller et al. 2022) in plain torch.

tiny-cuda-nn does not install here, so this is the reference implementation on any device,
vectorised over points and levels (no Python loop per level).

Paper symbols (Sec. 3, Table 1): L levels, F features per entry, T table entries per level
(``2^log2_hashmap_size``), resolutions ``N_l = floor(N_min b^l)`` with growth
``b = exp((ln N_max - ln N_min) / (L - 1))``. Level ``l`` has a grid of ``(N_l + 1)^3``
vertices; where that fits in T the level is indexed densely (1:1, no collisions), else by
the spatial hash ``h(x) = (XOR_i x_i pi_i) mod T`` with ``pi = (1, 2654435761, 805459861)``.
Features at the 8 cell corners are interpolated trilinearly and the L levels concatenated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .encodings import Encoding, cell_coordinates, trilinear_weights

__all__ = ["HashGridConfig", "HashGrid", "HASH_PRIMES", "INSTANT_NGP_INIT_SCALE", "DP_RECON_HASHGRID"]

# Instant-NGP Sec. 3, Eq. 3: the per-dimension primes of the spatial hash.
HASH_PRIMES = (1, 2654435761, 805459861)
# Instant-NGP Sec. 4: "hash table entries ... initialised with the uniform distribution U(-1e-4, 1e-4)".
INSTANT_NGP_INIT_SCALE = 1e-4


@dataclass(frozen=True)
class HashGridConfig:
    """Sizes of a hash grid; defaults are Instant-NGP's Table 1 (NeRF column, T = 2^19).

    Attributes:
        num_levels: L.
        features_per_level: F.
        log2_hashmap_size: log2 T, entries per level.
        base_resolution: N_min.
        max_resolution: N_max (finest level's N_{L-1}, up to rounding).
        init_scale: table entries start in U(-init_scale, init_scale).
    """

    num_levels: int = 16
    features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    max_resolution: int = 2048
    init_scale: float = INSTANT_NGP_INIT_SCALE

    def __post_init__(self) -> None:
        if self.num_levels < 1 or self.features_per_level < 1:
            raise ValueError(f"HashGridConfig needs num_levels, features_per_level >= 1, got {self}")
        if not 1 <= self.base_resolution <= self.max_resolution:
            raise ValueError(f"HashGridConfig needs 1 <= base_resolution <= max_resolution, got {self}")
        if not 1 <= self.log2_hashmap_size <= 30:
            raise ValueError(f"HashGridConfig.log2_hashmap_size must be in 1..30, got {self.log2_hashmap_size}")

    @property
    def growth_factor(self) -> float:
        """b = exp((ln N_max - ln N_min) / (L - 1)) (Instant-NGP Eq. 3); 1 for one level."""
        if self.num_levels == 1:
            return 1.0
        return math.exp((math.log(self.max_resolution) - math.log(self.base_resolution)) / (self.num_levels - 1))

    def resolutions(self) -> list[int]:
        """N_l = floor(N_min b^l) for l = 0..L-1 (Instant-NGP Eq. 2); a 1e-9 guard keeps N_max exact."""
        b = self.growth_factor
        return [int(math.floor(self.base_resolution * b**l + 1e-9)) for l in range(self.num_levels)]


# DP-Recon stage 1 (shared METHODS.md): 16 levels x 2 features, resolution 16 -> 2048, T = 2^19.
DP_RECON_HASHGRID = HashGridConfig(16, 2, 19, 16, 2048)


class HashGrid(Encoding):
    """Multi-resolution hash encoding: [..., 3] in [0, 1]^3 -> [..., L F].

    One flat table ``[sum_l T_l, F]`` holds all levels (``T_l = min(T, (N_l + 1)^3)``, as
    tiny-cuda-nn sizes dense levels); ``offsets`` [L + 1] are each level's first row.
    """

    def __init__(self, config: HashGridConfig = HashGridConfig()) -> None:
        super().__init__()
        self.config = config
        self.in_dim = 3
        self.out_dim = config.num_levels * config.features_per_level
        t = 1 << config.log2_hashmap_size
        res = config.resolutions()
        sizes = [min(t, (n + 1) ** 3) for n in res]
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        self.register_buffer("resolution", torch.tensor(res, dtype=torch.float32), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
        dense = [(n + 1) ** 3 <= t for n in res]  # N_l grows with l, so dense levels come first
        self._num_dense = sum(dense)
        self.register_buffer("dense", torch.tensor(dense), persistent=False)
        self.register_buffer("primes", torch.tensor(HASH_PRIMES, dtype=torch.long), persistent=False)
        s = config.init_scale
        self.table = nn.Parameter(torch.empty(offsets[-1], config.features_per_level).uniform_(-s, s))

    def level_indices(self, corners: Tensor) -> Tensor:
        """Table rows of integer grid vertices.

        Args:
            corners: [P, L, C, 3] int64 vertex coordinates (level l's in 0..N_l).

        Returns:
            [P, L, C] int64 rows into ``table``: dense x-major indexing where the level's grid
            fits its table, else the spatial hash ``(x pi_1 XOR y pi_2 XOR z pi_3) mod T``
            (int64 products keep the low bits of tiny-cuda-nn's uint32 arithmetic, so the
            indices match it for power-of-two T).
        """
        n1 = (self.resolution.long() + 1)[None, :, None]  # [1, L, 1]
        x, y, z = corners.unbind(-1)
        dense_idx = (x * n1 + y) * n1 + z
        p = self.primes
        hashed = ((x * p[0]) ^ (y * p[1]) ^ (z * p[2])) & ((1 << self.config.log2_hashmap_size) - 1)
        local = torch.where(self.dense[None, :, None], dense_idx, hashed)
        return local + self.offsets[:-1][None, :, None]

    def cell_indices(self, base: Tensor) -> Tensor:
        """Table rows of the 8 corners of the cells with lower corners ``base``.

        Same rows as :meth:`level_indices` on the corners (tested), but each axis' two
        coordinates are hashed once and combined by broadcasting: 6 instead of 24 int64
        products per point and level, and dense and hashed levels computed apart.

        Args:
            base: [P, L, 3] int64 lower cell corners.

        Returns:
            [P, L, 8] int64 rows, corners in :data:`~.encodings.CORNER_OFFSETS` order.
        """
        ax = torch.stack([base, base + 1], dim=-1)  # [P, L, 3, 2]
        nd = self._num_dense
        parts = []
        if nd > 0:
            n1 = (self.resolution[:nd].long() + 1)[None, :, None]  # [1, Ld, 1]
            a = ax[:, :nd]
            parts.append(
                (a[:, :, 0] * (n1 * n1))[..., None, None, :]
                + (a[:, :, 1] * n1)[..., None, :, None]
                + a[:, :, 2][..., :, None, None]
            )
        if nd < self.config.num_levels:
            a = ax[:, nd:]
            p = self.primes
            h = (
                (a[:, :, 0] * p[0])[..., None, None, :]
                ^ (a[:, :, 1] * p[1])[..., None, :, None]
                ^ (a[:, :, 2] * p[2])[..., :, None, None]
            )
            parts.append(h & ((1 << self.config.log2_hashmap_size) - 1))
        local = torch.cat(parts, dim=1).flatten(-3)  # [P, L, 8]
        return local + self.offsets[:-1][None, :, None]

    def lookup(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Where points read the table: rows [P, L, 8] int64 and trilinear weights [P, L, 8].

        x: [..., 3] in [0, 1]^3 (clamped), flattened to P points. For points that never move
        (a DMTet grid's vertices) compute this once and call :meth:`gather` every step.
        """
        base, frac = cell_coordinates(x.reshape(-1, 3), self.resolution)  # [P, L, 3] each
        return self.cell_indices(base), trilinear_weights(frac)

    def gather(self, idx: Tensor, w: Tensor) -> Tensor:
        """Features [P, L F] from a :meth:`lookup` result (differentiable w.r.t. the table)."""
        f = self.config.features_per_level
        feats = self.table.index_select(0, idx.reshape(-1)).reshape(*idx.shape, f)  # [P, L, 8, F]
        out = (w[..., None].to(feats) * feats).sum(-2)  # [P, L, F]
        return out.reshape(idx.shape[0], self.out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., 3] in [0, 1]^3 (clamped) -> [..., L F], level-major (level 0's F first)."""
        idx, w = self.lookup(x)
        return self.gather(idx, w).reshape(*x.shape[:-1], self.out_dim)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"L={c.num_levels}, F={c.features_per_level}, T=2^{c.log2_hashmap_size}, "
            f"N={c.base_resolution}->{c.max_resolution}"
        )
