"""DMTet geometry: a tet grid whose per-vertex SDF and offsets come from two small networks.

GALA (snuvclab/GALA, shared METHODS.md) builds on nvdiffrec/Fantasia3D's DMTet: each layer
(human, object) has an SDF and a deformation field evaluated at the tet-grid vertices, each a
multi-resolution hash grid (16 levels, resolution 16 -> 1024) followed by an MLP with 2 hidden
layers of 32 units; the surface is marching tets on the deformed grid. The geometry is first
initialised by regressing the SDF to the canonical SMPL-X body's SDF for 400 iterations
(:meth:`DMTetGeometry.fit_to_sdf`).

The networks see the *undeformed* grid vertices (as nvdiffrec/Fantasia3D: the offsets move the
vertices but do not change where the fields are queried), mapped to the unit cube of ``bounds``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from layerforge.models.fields.base import normalize_aabb
from layerforge.models.fields.hashgrid import HashGrid, HashGridConfig
from layerforge.models.fields.mlp_fields import MLP

from .grid import grid_shape, lattice_edges, tet_grid
from .marching import marching_tets, sdf_sign_change_reg

__all__ = ["DMTetConfig", "DMTetGeometry"]


@dataclass(frozen=True)
class DMTetConfig:
    """Sizes of a :class:`DMTetGeometry`.

    Attributes:
        grid_resolution: tet-grid cells along the longest side of the box (GALA/nvdiffrec use a
            "128" grid). Ours is the Kuhn lattice of :func:`~.grid.tet_grid`:
            ``(r + 1)^3`` vertices and ``6 r^3`` tets for a cube (2.1 M / 12.6 M at 128).
        hash_levels: hash-grid levels L (GALA: 16).
        hash_features: features per level F (tiny-cuda-nn / GALA default: 2).
        hash_log2_size: log2 of the table entries per level (tiny-cuda-nn default: 19).
        hash_base_resolution: N_min (GALA: 16).
        hash_max_resolution: N_max (GALA: 1024; tcnn's per-level scale
            ``exp(ln(1024/16) / 15) ~ 1.32``).
        hidden: MLP hidden width (GALA: 32).
        layers: MLP hidden layers (GALA: 2).
        deform_scale: largest vertex offset in cells, ``offset = deform_scale * tanh(x) * cell``
            per axis (nvdiffrec/GALA: ``v + 2 / (2 grid_res) * tanh(deform)`` on the unit grid,
            i.e. one cell at scale 1).
    """

    grid_resolution: int = 128
    hash_levels: int = 16
    hash_features: int = 2
    hash_log2_size: int = 19
    hash_base_resolution: int = 16
    hash_max_resolution: int = 1024
    hidden: int = 32
    layers: int = 2
    deform_scale: float = 1.0

    def hashgrid(self) -> HashGridConfig:
        """The :class:`HashGridConfig` of both networks' encodings."""
        return HashGridConfig(
            num_levels=self.hash_levels,
            features_per_level=self.hash_features,
            log2_hashmap_size=self.hash_log2_size,
            base_resolution=self.hash_base_resolution,
            max_resolution=self.hash_max_resolution,
        )


class _HashMLP(nn.Module):
    """Hash-grid encoding of unit-cube points [..., 3] -> MLP -> [..., out_dim]."""

    def __init__(self, config: DMTetConfig, out_dim: int) -> None:
        super().__init__()
        self.encoding = HashGrid(config.hashgrid())
        self.mlp = MLP(self.encoding.out_dim, (config.hidden,) * config.layers, out_dim)

    def forward(self, u: Tensor) -> Tensor:
        return self.mlp(self.encoding(u))

    def forward_cached(self, lookup: tuple[Tensor, Tensor]) -> Tensor:
        """The same as :meth:`forward` on the points of a :meth:`HashGrid.lookup` result."""
        return self.mlp(self.encoding.gather(*lookup))


class DMTetGeometry(nn.Module):
    """A DMTet surface: tet grid + SDF network + deformation network.

    Args:
        bounds: [2, 3] box (min corner, max corner), metres, that the grid fills.
        config: sizes (:class:`DMTetConfig`).
        seed: seeds the networks' initialisation (the global RNG is left untouched), so the
            same seed gives the same module.

    Buffers (not saved in the state dict: they are rebuilt from ``bounds`` and ``config``):
        vertices [N, 3] float32 undeformed grid vertices, metres; tets [T, 4] int64;
        cell [3] float32 cell size per axis, metres. ``bounds`` [2, 3] is saved.

    The deformation MLP's last layer starts at zero, so the grid starts undeformed.
    """

    def __init__(
        self,
        bounds: Tensor | np.ndarray,
        config: DMTetConfig = DMTetConfig(),
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.config = config
        box = torch.as_tensor(np.asarray(bounds) if not isinstance(bounds, Tensor) else bounds.detach().cpu())
        box = box.to(torch.float32).reshape(2, 3)
        grid = tet_grid(config.grid_resolution, box)
        self.grid_shape = grid_shape(config.grid_resolution, box[1] - box[0])  # (nx, ny, nz) cells
        shape = torch.tensor(self.grid_shape, dtype=torch.float32)
        self.register_buffer("bounds", box)
        self.register_buffer("vertices", grid.vertices, persistent=False)
        self.register_buffer("tets", grid.tets, persistent=False)
        self.register_buffer("cell", (box[1] - box[0]) / shape, persistent=False)
        self._edges: Tensor | None = None
        self._lookup: tuple[Tensor, Tensor] | None = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.sdf_net = _HashMLP(config, 1)
            self.deform_net = _HashMLP(config, 3)
        last = self.deform_net.mlp.net[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def sdf_at(self, points: Tensor) -> Tensor:
        """The network SDF at world points [..., 3] (metres) -> [...] metres (clamped to the box)."""
        return self.sdf_net(normalize_aabb(points, self.bounds))[..., 0]

    def sdf_and_deform(self) -> tuple[Tensor, Tensor]:
        """SDF and deformed positions at the grid vertices.

        Returns:
            sdf [N] metres and deformed vertices [N, 3] metres,
            ``v + deform_scale * tanh(deform_net(v)) * cell``.
        """
        # the grid vertices never move in the networks' input: their hash rows and trilinear
        # weights are computed once (both networks share the encoding's configuration)
        if self._lookup is None or self._lookup[0].device != self.vertices.device:
            with torch.no_grad():
                # int64 rows: index_select's backward is ~3x slower with int32 on CPU (measured);
                # the cache holds 96 L bytes per vertex (~0.4 GB per layer at 64^3, 16 levels)
                self._lookup = self.sdf_net.encoding.lookup(normalize_aabb(self.vertices, self.bounds))
        sdf = self.sdf_net.forward_cached(self._lookup)[..., 0]
        offset = self.config.deform_scale * torch.tanh(self.deform_net.forward_cached(self._lookup)) * self.cell
        return sdf, self.vertices + offset

    def extract(self) -> tuple[Tensor, Tensor]:
        """The current surface: :func:`~.marching.marching_tets` on the deformed grid.

        Returns:
            verts [M, 3] metres (differentiable w.r.t. both networks) and faces [K, 3] int64,
            wound outward.
        """
        sdf, verts = self.sdf_and_deform()
        return marching_tets(verts, sdf, self.tets)

    @property
    def edges(self) -> Tensor:
        """[E, 2] unique grid edges (:func:`~.grid.lattice_edges`; built on first use and cached, ~7 per vertex)."""
        if self._edges is None or self._edges.device != self.tets.device:
            self._edges = lattice_edges(self.grid_shape, self.tets.device)
        return self._edges

    def sdf_reg(self, sdf: Tensor) -> Tensor:
        """nvdiffrec's sign-change regulariser (:func:`~.marching.sdf_sign_change_reg`) of a grid SDF [N]."""
        return sdf_sign_change_reg(sdf, self.edges)

    def fit_to_sdf(
        self,
        target: Callable[[Tensor], Tensor],
        steps: int,
        lr: float = 1e-2,
        generator: torch.Generator | None = None,
        num_random: int = 4096,
        num_vertices: int | None = None,
    ) -> list[float]:
        """Initialisation stage: regress the network SDF to a target SDF (GALA: the canonical
        body's, 400 iterations).

        Each step takes ``num_vertices`` grid vertices (all of them when None) plus
        ``num_random`` points uniform in the box and minimises the mean squared SDF error with
        Adam. Only the SDF network is trained; the deformation stays as it is.

        Args:
            target: maps points [P, 3] (metres, on this module's device) to signed distances [P]
                (metres, negative inside).
            steps: optimisation steps.
            lr: Adam learning rate.
            generator: a CPU ``torch.Generator`` for the random points (deterministic runs);
                the global RNG when None.
            num_random: random points per step.
            num_vertices: grid vertices per step (a random subset; None = every vertex).

        Returns:
            the loss (m^2) of every step.
        """
        device = self.vertices.device
        lo, hi = self.bounds[0], self.bounds[1]
        n = self.vertices.shape[0]
        opt = torch.optim.Adam(self.sdf_net.parameters(), lr=lr)
        with torch.no_grad():
            all_targets = target(self.vertices).reshape(-1).detach() if num_vertices is None else None
        losses: list[float] = []
        for _ in range(steps):
            rand = torch.rand(num_random, 3, generator=generator).to(device) * (hi - lo) + lo
            if num_vertices is None:
                pts = torch.cat([self.vertices, rand])
                with torch.no_grad():
                    tgt = torch.cat([all_targets, target(rand).reshape(-1)])
            else:
                idx = torch.randint(0, n, (num_vertices,), generator=generator).to(device)
                pts = torch.cat([self.vertices[idx], rand])
                with torch.no_grad():
                    tgt = target(pts).reshape(-1)
            loss = torch.mean((self.sdf_at(pts) - tgt.to(pts)) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return losses
