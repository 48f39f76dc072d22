"""Geometry metrics against the generated toy scene's ground-truth primitives (shared by the
decomp_nerf and dp_recon quality tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

GROUND_CUT_M = 0.005  # points below this height touch the ground plane: never observed


def chamfer_l1(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Chamfer-L1 (mean nearest-neighbour distance, both ways, halved) of point sets [N, 3], [M, 3] (m)."""
    from scipy.spatial import cKDTree

    return 0.5 * float(cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


def fscore(ours: np.ndarray, gt: np.ndarray, threshold: float) -> float:
    """F-score at ``threshold`` metres: harmonic mean of precision (share of ours within it of
    the ground truth) and recall (share of the ground truth within it of ours)."""
    from scipy.spatial import cKDTree

    precision = float((cKDTree(gt).query(ours)[0] < threshold).mean())
    recall = float((cKDTree(ours).query(gt)[0] < threshold).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def surface_points(v: np.ndarray, f: np.ndarray, n: int = 20000) -> np.ndarray:
    import trimesh

    pts, _ = trimesh.sample.sample_surface_even(trimesh.Trimesh(v, f, process=False), n, seed=0)
    return np.asarray(pts)


def gt_points(scene: Path, name: str) -> np.ndarray:
    """Points on the primitive's surface that a camera can see: its part below the ground plane
    (z < 5 mm, the face it stands on) is never observed, so it is left out of the comparison."""
    import trimesh

    mesh = trimesh.load(scene / "gt" / f"{name}.ply", process=False)
    pts = surface_points(np.asarray(mesh.vertices), np.asarray(mesh.faces))
    return pts[pts[:, 2] > GROUND_CUT_M]
