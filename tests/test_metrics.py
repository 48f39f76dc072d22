"""Generic geometry metrics (BSP-Net protocol) against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from layerforge.models import metrics


def test_chamfer_and_normal_consistency_by_hand() -> None:
    a = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    b = np.array([[0.0, 0.1, 0], [1.0, 0, 0], [3.0, 0, 0]])
    # A->B: 0.01, 0 -> 0.005 ; B->A: 0.01, 0, 4 -> 4.01/3
    assert metrics.chamfer_distance(a, b) == pytest.approx(0.005 + 4.01 / 3)
    na = np.array([[0, 0, 1.0], [0, 1.0, 0]])
    nb = np.array([[0, 0, -1.0], [0, 0.6, 0.8], [1.0, 0, 0]])
    # A->B: |n.n'| = 1, 0.6 -> 0.8 ; B->A: 1, 0.6, 0 (nearest of [3,0,0] is [1,0,0]) -> 1.6/3
    assert metrics.normal_consistency(a, na, b, nb) == pytest.approx((0.8 + 1.6 / 3) / 2)


def test_edge_points_on_a_cube() -> None:
    box = trimesh.creation.box(extents=(0.5, 0.5, 0.5))
    p, n = metrics.sample_surface(box.vertices, box.faces, 16384, seed=0)
    mask = metrics.edge_mask(p, n)
    # every edge point is within 0.01 of a cube edge (two coordinates near +-0.25)
    near = (np.abs(np.abs(p) - 0.25) < 0.0101).sum(axis=1) >= 2
    assert mask.any() and near[mask].all()
    assert 0.02 < mask.mean() < 0.25
    assert metrics.edge_chamfer_distance(p, n, p, n) == 0.0
    shifted = p + np.array([0.01, 0, 0])
    assert 0 < metrics.edge_chamfer_distance(p, n, shifted, n) <= 2e-4 * 1.001  # nearest edge point is at most 0.01 away
