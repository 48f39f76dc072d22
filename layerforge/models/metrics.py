"""Geometry metrics shared by every method that outputs a surface.

All functions take plain numpy arrays. Points are ``[N, 3]`` float arrays in the caller's
units (for BSP-Net's protocol: shapes normalised to a bounding-box diagonal of 1, see
:func:`layerforge.models.bsp.data.normalise_mesh`); normals are ``[N, 3]`` unit vectors
whose sign does not matter (every comparison uses ``|n . n'|``).

The definitions follow BSP-Net's evaluation code (czq142857/BSP-NET-original,
``evaluation/eval_bspnet_pc.py`` and ``edge_from_point.py``):

- Chamfer distance (CD): mean squared nearest-neighbour distance from A to B plus from B
  to A (squared units), 4096 surface samples per shape in the paper.
- Normal consistency (NC): mean ``|n . n'|`` over nearest pairs, averaged over both
  directions.
- Edge Chamfer distance (ECD): CD between the *edge points* of both shapes, a sample being
  an edge point when some other sample within squared distance 1e-4 has ``|n . n'| < 0.1``.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

# BSP-Net evaluation: number of surface samples per shape for CD / NC (eval_bspnet_pc.py).
N_EVAL_SAMPLES = 4096
# BSP-Net edge_from_point.py: neighbour radius (squared distance) and normal-angle threshold.
EDGE_RADIUS_SQ = 1e-4
EDGE_COS_MAX = 0.1


def sample_surface(
    vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted uniform samples on a triangle mesh.

    Args:
        vertices: [V, 3] float vertex positions.
        faces: [F, 3] int triangle indices; zero-area triangles are never sampled.
        n: number of samples.
        seed: seed of the numpy generator (same seed, same samples).

    Returns:
        points [n, 3] float64 on the surface, normals [n, 3] float64 unit face normals
        (oriented by the triangle winding).
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    tri = v[f]  # [F, 3, 3]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area2 = np.linalg.norm(cross, axis=1)
    if f.shape[0] == 0 or not np.isfinite(area2).all() or area2.sum() <= 0:
        raise ValueError("mesh has no surface area to sample")
    rng = np.random.default_rng(seed)
    idx = rng.choice(f.shape[0], size=n, p=area2 / area2.sum())
    r1 = np.sqrt(rng.random(n))
    r2 = rng.random(n)
    t = tri[idx]
    points = (1 - r1)[:, None] * t[:, 0] + (r1 * (1 - r2))[:, None] * t[:, 1] + (r1 * r2)[:, None] * t[:, 2]
    normals = cross[idx] / area2[idx, None]
    return points, normals


def _nearest(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared distance [N] and index [N] of each ``src`` point's nearest ``dst`` point."""
    dist, idx = cKDTree(dst).query(src, k=1)
    return dist**2, idx


def chamfer_distance(points_a: np.ndarray, points_b: np.ndarray) -> float:
    """BSP-Net Chamfer distance: mean sq. nearest distance A->B plus B->A.

    Args:
        points_a: [N, 3] samples of shape A.
        points_b: [M, 3] samples of shape B.

    Returns:
        CD in squared units of the inputs.
    """
    d_ab, _ = _nearest(points_a, points_b)
    d_ba, _ = _nearest(points_b, points_a)
    return float(d_ab.mean() + d_ba.mean())


def normal_consistency(
    points_a: np.ndarray, normals_a: np.ndarray, points_b: np.ndarray, normals_b: np.ndarray
) -> float:
    """BSP-Net normal consistency: mean ``|n . n'|`` of nearest pairs, both directions averaged.

    Args:
        points_a, normals_a: [N, 3] samples and unit normals of shape A.
        points_b, normals_b: [M, 3] samples and unit normals of shape B.

    Returns:
        NC in [0, 1] (1 = all nearest normals parallel).
    """
    _, i_ab = _nearest(points_a, points_b)
    _, i_ba = _nearest(points_b, points_a)
    nc_ab = np.abs((normals_a * normals_b[i_ab]).sum(axis=1)).mean()
    nc_ba = np.abs((normals_b * normals_a[i_ba]).sum(axis=1)).mean()
    return float((nc_ab + nc_ba) / 2)


def edge_mask(
    points: np.ndarray,
    normals: np.ndarray,
    radius_sq: float = EDGE_RADIUS_SQ,
    cos_max: float = EDGE_COS_MAX,
) -> np.ndarray:
    """Which samples lie on a sharp edge (BSP-Net ``edge_from_point.py``).

    A sample is an edge point when another sample within squared distance ``radius_sq``
    has ``|n . n'| < cos_max``.

    Args:
        points: [N, 3] surface samples.
        normals: [N, 3] unit normals.

    Returns:
        [N] bool mask.
    """
    pairs = cKDTree(points).query_pairs(np.sqrt(radius_sq), output_type="ndarray")
    mask = np.zeros(len(points), dtype=bool)
    if len(pairs):
        sharp = np.abs((normals[pairs[:, 0]] * normals[pairs[:, 1]]).sum(axis=1)) < cos_max
        mask[pairs[sharp, 0]] = True
        mask[pairs[sharp, 1]] = True
    return mask


def edge_chamfer_distance(
    points_a: np.ndarray, normals_a: np.ndarray, points_b: np.ndarray, normals_b: np.ndarray
) -> float:
    """Chamfer distance between the edge points of A and of B (BSP-Net ECD).

    Inputs are dense samples (the authors use 16384 per shape) with unit normals, [N, 3]
    and [M, 3]. Returns ``nan`` when either shape has no edge point.
    """
    ea = points_a[edge_mask(points_a, normals_a)]
    eb = points_b[edge_mask(points_b, normals_b)]
    if len(ea) == 0 or len(eb) == 0:
        return float("nan")
    return chamfer_distance(ea, eb)
