"""A tetrahedral grid for DMTet, generated instead of downloaded.

GALA and nvdiffrec load a precomputed quartet grid (``data/tets/{res}_tets.npz``, a body-centred
cubic tetrahedralisation made with the ``quartet`` tool). We build ours from a regular lattice of
cubes, each split into the 6 tetrahedra of the Freudenthal (Kuhn) subdivision: with cube corner
offsets in {0, 1}^3, a permutation ``p`` of the axes gives the tet

    0,  e_p0,  e_p0 + e_p1,  e_p0 + e_p1 + e_p2 = (1, 1, 1),

so all 6 share the main diagonal (0,0,0)-(1,1,1). Every cube uses the same diagonal direction,
which makes the triangulation translation invariant and conforming: a cube face is split along
the same face diagonal by the cubes on both sides, so every interior triangle is shared by
exactly 2 tets. An odd permutation gives a negatively oriented tet; we swap its last two
vertices, so every tet has signed volume ``det(v1 - v0, v2 - v0, v3 - v0) / 6 > 0``.

Vertices are indexed x-major: ``index(i, j, k) = (i (ny + 1) + j) (nz + 1) + k``.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "TET_EDGES",
    "TetGrid",
    "grid_shape",
    "lattice_edges",
    "signed_volumes",
    "tet_edges",
    "tet_faces",
    "tet_grid",
]

# The 6 edges of a tet as pairs of local vertex indices (the order marching.py's tables use).
TET_EDGES = torch.tensor([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]], dtype=torch.long)
# The 4 faces of a tet (local indices), each wound outward for a positively oriented tet.
_TET_FACES = torch.tensor([[1, 2, 3], [0, 3, 2], [0, 1, 3], [0, 2, 1]], dtype=torch.long)


class TetGrid(NamedTuple):
    """A tetrahedral mesh.

    Attributes:
        vertices: [N, 3] float32 positions, metres.
        tets: [T, 4] int64 vertex indices, each tet positively oriented.
    """

    vertices: Tensor
    tets: Tensor


def _kuhn_tets() -> Tensor:
    """The 6 positively oriented Kuhn tets of the unit cube as [6, 4] corner codes ``x + 2y + 4z``."""
    out = []
    for perm in itertools.permutations(range(3)):
        corner = [0, 0, 0]
        codes = [0]
        for axis in perm:
            corner[axis] = 1
            codes.append(corner[0] + 2 * corner[1] + 4 * corner[2])
        # Parity of the permutation = sign of the tet's volume (the edge vectors are e_p0, e_p1, e_p2).
        inversions = sum(perm[a] > perm[b] for a in range(3) for b in range(a + 1, 3))
        if inversions % 2 == 1:
            codes[2], codes[3] = codes[3], codes[2]
        out.append(codes)
    return torch.tensor(out, dtype=torch.long)


def grid_shape(resolution: int, extent: Tensor) -> tuple[int, int, int]:
    """Cells per axis: ``resolution`` along the longest side, the others proportional.

    Args:
        resolution: cells along the longest side of the box (>= 1).
        extent: [3] box side lengths, metres (> 0).

    Returns:
        (nx, ny, nz) with ``n_i = max(1, round(resolution * extent_i / max(extent)))``; the cells
        are then ``extent_i / n_i`` on axis i, equal to within rounding (cubic up to ~1/(2 n_i)).
    """
    ext = extent.double()
    longest = float(ext.max())
    return tuple(max(1, round(resolution * float(e) / longest)) for e in ext)  # type: ignore[return-value]


def tet_grid(resolution: int, bounds: Tensor | np.ndarray) -> TetGrid:
    """A conforming, positively oriented tet grid filling an axis-aligned box.

    Args:
        resolution: cells along the longest side of the box. For a cubic box that is a lattice
            of ``resolution^3`` cubes: ``(resolution + 1)^3`` vertices and ``6 resolution^3``
            tets. For a non-cubic box the other axes get proportionally many cells
            (:func:`grid_shape`), so the cells are close to cubes; a lattice of
            ``nx x ny x nz`` cells has ``(nx + 1)(ny + 1)(nz + 1)`` vertices and ``6 nx ny nz`` tets.
        bounds: [2, 3] box (min corner, max corner), metres.

    Returns:
        :class:`TetGrid` on the CPU (vertices float32, tets int64).
    """
    if resolution < 1:
        raise ValueError(f"tet_grid needs resolution >= 1, got {resolution}")
    box = torch.as_tensor(np.asarray(bounds) if not isinstance(bounds, Tensor) else bounds)
    box = box.detach().to("cpu", torch.float64).reshape(2, 3)
    if not bool((box[1] > box[0]).all()):
        raise ValueError(f"tet_grid bounds need max > min on every axis, got {box.tolist()}")
    nx, ny, nz = grid_shape(resolution, box[1] - box[0])
    axes = [
        torch.linspace(float(box[0, a]), float(box[1, a]), n + 1, dtype=torch.float64)
        for a, n in enumerate((nx, ny, nz))
    ]
    gx, gy, gz = torch.meshgrid(*axes, indexing="ij")
    vertices = torch.stack([gx, gy, gz], dim=-1).reshape(-1, 3).float()

    # Lower corner index of every cube, and each cube corner's index offset (code x + 2y + 4z).
    sy, sx = nz + 1, (ny + 1) * (nz + 1)
    i, j, k = torch.meshgrid(torch.arange(nx), torch.arange(ny), torch.arange(nz), indexing="ij")
    base = (i * sx + j * sy + k).reshape(-1)  # [C]
    codes = torch.arange(8)
    corner_offset = (codes & 1) * sx + ((codes >> 1) & 1) * sy + ((codes >> 2) & 1)  # [8]
    local = corner_offset[_kuhn_tets()]  # [6, 4]
    tets = (base[:, None, None] + local[None]).reshape(-1, 4)
    return TetGrid(vertices=vertices, tets=tets)


def signed_volumes(vertices: Tensor, tets: Tensor) -> Tensor:
    """[T] signed volumes ``det(v1 - v0, v2 - v0, v3 - v0) / 6`` (m^3) of tets [T, 4] over vertices [N, 3]."""
    p = vertices[tets]  # [T, 4, 3]
    a, b, c = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], p[:, 3] - p[:, 0]
    return (torch.cross(a, b, dim=-1) * c).sum(-1) / 6.0


def _unique_rows(rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Unique rows of a small-width int64 array (keys packed into one int64 when they fit)."""
    n = int(rows.max()) + 1 if rows.numel() else 1
    width = rows.shape[1]
    if n**width < 2**62:
        key = torch.zeros(rows.shape[0], dtype=torch.long, device=rows.device)
        for c in range(width):
            key = key * n + rows[:, c]
        uniq, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
        cols = []
        for _ in range(width):
            cols.append(uniq % n)
            uniq = uniq // n
        return torch.stack(cols[::-1], dim=1), inverse, counts
    return torch.unique(rows, dim=0, return_inverse=True, return_counts=True)


def lattice_edges(shape: tuple[int, int, int], device: torch.device | str = "cpu") -> Tensor:
    """The edges of :func:`tet_grid`'s lattice of ``nx x ny x nz`` cells, without a sort.

    Same result as ``tet_edges(tet_grid(...).tets)`` (tested), in O(N) instead of sorting the
    ``6 T`` tet edges (15 s on 2 CPU cores at resolution 128): in the Kuhn subdivision every
    vertex ``(i, j, k)`` connects to the 7 neighbours ``+ o`` for ``o`` in {0, 1}^3 \\ {0}
    that exist (3 cell edges, 3 face diagonals, the cube diagonal, all pointing to +x, +y, +z).

    Args:
        shape: (nx, ny, nz) cells per axis (:func:`grid_shape`).
        device: where to build the result.

    Returns:
        [E, 2] int64 edges, rows sorted (``a < b``) and in lexicographic order.
    """
    nx, ny, nz = shape
    sy, sx = nz + 1, (ny + 1) * (nz + 1)
    i, j, k = torch.meshgrid(
        torch.arange(nx + 1, device=device),
        torch.arange(ny + 1, device=device),
        torch.arange(nz + 1, device=device),
        indexing="ij",
    )
    a = (i * sx + j * sy + k).reshape(-1, 1)  # [N, 1]
    # Offsets (dx, dy, dz) ordered by their index step 1 < sy < sy + 1 < sx < ... so rows come sorted.
    offsets = torch.tensor(
        [[0, 0, 1], [0, 1, 0], [0, 1, 1], [1, 0, 0], [1, 0, 1], [1, 1, 0], [1, 1, 1]], device=device
    )  # [7, 3]
    ok = (
        (i.reshape(-1, 1) + offsets[:, 0] <= nx)
        & (j.reshape(-1, 1) + offsets[:, 1] <= ny)
        & (k.reshape(-1, 1) + offsets[:, 2] <= nz)
    )  # [N, 7]
    b = a + offsets[:, 0] * sx + offsets[:, 1] * sy + offsets[:, 2]  # [N, 7]
    return torch.stack([a.expand_as(b)[ok], b[ok]], dim=1)


def tet_edges(tets: Tensor) -> Tensor:
    """Unique edges of a tet mesh.

    Args:
        tets: [T, 4] int64 vertex indices.

    Returns:
        [E, 2] int64 edges, each row sorted (``a < b``), rows in lexicographic order.
    """
    if tets.numel() == 0:
        return torch.zeros(0, 2, dtype=torch.long, device=tets.device)
    e = tets[:, TET_EDGES.to(tets.device)].reshape(-1, 2)
    e, _ = e.sort(dim=1)
    return _unique_rows(e)[0]


def tet_faces(tets: Tensor) -> tuple[Tensor, Tensor]:
    """Unique triangles of a tet mesh and how many tets share each.

    Args:
        tets: [T, 4] int64 vertex indices.

    Returns:
        faces [F, 3] int64 (each row sorted ascending) and counts [F] int64; in a conforming
        mesh an interior face has count 2 and a boundary face count 1.
    """
    f = tets[:, _TET_FACES.to(tets.device)].reshape(-1, 3)
    f, _ = f.sort(dim=1)
    uniq, _, counts = _unique_rows(f)
    return uniq, counts
