"""BSP-Net's evaluation of a convex decomposition against its input surface."""

from __future__ import annotations

import numpy as np

from layerforge.models.bsp.extract import ConvexPart, union_surface_samples
from layerforge.models.metrics import chamfer_distance, edge_chamfer_distance, normal_consistency, sample_surface


def evaluate_decomposition(
    parts: list[ConvexPart],
    vertices: np.ndarray,
    faces: np.ndarray,
    samples: int = 4096,
    edge_samples: int = 16384,
    seed: int = 0,
) -> dict[str, float | int]:
    """CD, NC, ECD and counts of a decomposition (BSP-Net protocol).

    Args:
        parts: convexes in the normalised frame (bbox diagonal 1).
        vertices: [V, 3] the input mesh in the same normalised frame.
        faces: [F, 3] its triangles.
        samples: surface samples per shape for CD and NC (authors: 4096).
        edge_samples: dense samples per shape to find edge points for ECD (authors: 16384).
        seed: sampling seed.

    Returns:
        ``cd`` (squared units of the normalised frame), ``nc``, ``ecd`` (nan when a shape
        has no sharp edge), ``convexes``, ``vertices``, ``faces``.
    """
    if not parts:
        return {"cd": float("inf"), "nc": 0.0, "ecd": float("nan"), "convexes": 0, "vertices": 0, "faces": 0}
    gt_p, gt_n = sample_surface(vertices, faces, samples, seed)
    pr_p, pr_n = union_surface_samples(parts, samples, seed + 1)
    gt_ep, gt_en = sample_surface(vertices, faces, edge_samples, seed + 2)
    pr_ep, pr_en = union_surface_samples(parts, edge_samples, seed + 3)
    return {
        "cd": chamfer_distance(pr_p, gt_p),
        "nc": normal_consistency(pr_p, pr_n, gt_p, gt_n),
        "ecd": edge_chamfer_distance(pr_ep, pr_en, gt_ep, gt_en),
        "convexes": len(parts),
        "vertices": int(sum(len(p.vertices) for p in parts)),
        "faces": int(sum(len(p.faces) for p in parts)),
    }
