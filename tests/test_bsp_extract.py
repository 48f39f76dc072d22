"""Exact convex extraction: cube and tetrahedron, unbounded and empty sets, selection, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import trimesh

from layerforge.models.bsp import extract as ex

CUBE = np.array([[1, 0, 0, -0.25], [-1, 0, 0, -0.25], [0, 1, 0, -0.25], [0, -1, 0, -0.25], [0, 0, 1, -0.25], [0, 0, -1, -0.25]], float)


def _tet_planes() -> tuple[np.ndarray, np.ndarray]:
    verts = np.array([[0.0, 0, 0], [0.3, 0, 0], [0, 0.3, 0], [0, 0, 0.3]])
    planes = []
    for face in ([1, 2, 3], [0, 2, 1], [0, 1, 3], [0, 3, 2]):
        a, b, c = verts[face]
        n = np.cross(b - a, c - a)
        opp = verts[list({0, 1, 2, 3} - set(face))[0]]
        if n @ (opp - a) > 0:
            n = -n
        planes.append([*n, -n @ a])
    return verts, np.array(planes) * 3.7  # plane scale must not matter


def _check(v: np.ndarray, f: np.ndarray, volume: float) -> trimesh.Trimesh:
    m = trimesh.Trimesh(v, f, process=False)
    assert m.is_watertight and m.is_winding_consistent
    assert m.volume == pytest.approx(volume, abs=1e-9)  # positive volume = outward faces
    return m


def test_cube_exact() -> None:
    v, f = ex.convex_polyhedron(CUBE)
    assert len(v) == 8 and len(f) == 12
    corners = np.array(np.meshgrid(*[[-0.25, 0.25]] * 3, indexing="ij")).reshape(3, -1).T
    assert np.abs(np.sort(v, axis=0) - np.sort(corners, axis=0)).max() < 1e-6
    _check(v, f, 0.125)


def test_tetrahedron_exact() -> None:
    verts, planes = _tet_planes()
    v, f = ex.convex_polyhedron(planes)
    assert len(v) == 4 and len(f) == 4
    d = np.linalg.norm(v[:, None] - verts[None], axis=-1).min(axis=1)
    assert d.max() < 1e-6
    _check(v, f, 0.3**3 / 6)


def test_unbounded_is_clipped_and_empty_is_none() -> None:
    v, f = ex.convex_polyhedron(CUBE[:5])  # no bottom plane: clipped at z = -BOUND
    assert v[:, 2].min() == pytest.approx(-ex.BOUND)
    _check(v, f, 0.5 * 0.5 * (0.25 + ex.BOUND))
    assert ex.convex_polyhedron(np.array([[1.0, 0, 0, 0.1], [-1.0, 0, 0, 0.1]])) is None  # x<=-0.1 and x>=0.1
    assert ex.convex_polyhedron(np.array([[1.0, 0, 0, 0.0], [-1.0, 0, 0, 0.0]])) is None  # flat slab


def test_inside_cells_match_dense_grid() -> None:
    rng = np.random.default_rng(1)
    n = rng.normal(size=(64, 3))
    planes = np.c_[n, -np.abs(rng.normal(size=64)) * 0.2]
    T = (rng.random((64, 16)) < 0.12).astype(float)
    inside = ex.convex_inside_cells(planes, T)
    g = torch.from_numpy(ex._grid(64))
    h2 = (torch.clamp(g @ torch.from_numpy(n).T + torch.from_numpy(planes[:, 3]), min=0) @ torch.from_numpy(T)).numpy()
    assert sum(len(x) for x in inside) > 1000
    for i in range(16):
        assert np.array_equal(np.flatnonzero(h2[:, i] < ex.INSIDE_THRESHOLD), inside[i])


def test_extract_selection_and_drop_inside() -> None:
    small = CUBE.copy()
    small[:, 3] = -0.1  # a cube inside the big one
    far = CUBE.copy()
    far[:, 3] = -0.0001  # too thin to hold a grid point
    planes = np.concatenate([CUBE, small, far])
    T = np.zeros((18, 4))
    T[:6, 0] = T[6:12, 1] = T[12:, 2] = 1.0  # convex 3 has no planes -> the whole box
    T[:6, 3] = 0.005  # below threshold: no planes
    parts = ex.extract_convexes(planes, T)
    assert [p.index for p in parts] == [0, 1, 3]
    assert [p.index for p in ex.extract_convexes(planes, T[:, :3], drop_inside=True)] == [0]


def test_extract_256_convexes_fast() -> None:
    rng = np.random.default_rng(0)
    p, c = 4096, 256
    n = rng.normal(size=(p, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    centres = rng.uniform(-0.35, 0.35, (c, 3))
    owner = np.arange(p) % c
    planes = np.c_[n, -(n * centres[owner]).sum(axis=1) - 0.08]
    T = np.zeros((p, c))
    T[np.arange(p), owner] = 1.0
    t = time.perf_counter()
    parts = ex.extract_convexes(planes, T)
    elapsed = time.perf_counter() - t
    assert len(parts) == c
    assert all(trimesh.Trimesh(q.vertices, q.faces, process=False).is_watertight for q in parts[:16])
    assert elapsed < 3.0, elapsed  # ~0.5 s measured on the 2-core dev CPU; margin for load


def _thin_disk(centre: np.ndarray, radius: float, half_height: float, sides: int) -> np.ndarray:
    """Planes of a prism |z - cz| <= half_height round a regular ``sides``-gon of ``radius`` about ``centre``."""
    a = np.arange(sides) * 2 * np.pi / sides
    n = np.c_[np.cos(a), np.sin(a), np.zeros(sides)]
    caps = [[0, 0, 1, -centre[2] - half_height], [0, 0, -1, centre[2] - half_height]]
    return np.concatenate([np.c_[n, -(n @ centre) - radius], caps])


def test_qhull_failures_are_counted_and_logged(caplog, tmp_path) -> None:
    """Issue: convexes qhull fails on were dropped without being counted."""
    centre = ex._grid(ex.SELECT_RES)[(32 * 64 + 32) * 64 + 32]  # a selection grid point: the disk is selected
    # 1000 rim planes on a radius 1e-3 put rim vertices 6.3e-6 apart (< WELD_TOL): welding chains
    # each cap's rim into one point, and qhull cannot hull the 2 points left. Its inscribed
    # radius (2e-4) is above MIN_RADIUS, so this is a qhull failure, not a flat convex.
    disk = _thin_disk(centre, 1e-3, 2e-4, 1000)
    assert 2 * np.pi * 1e-3 / 1000 < ex.WELD_TOL and 2e-4 > ex.MIN_RADIUS
    assert ex.chebyshev_centre(disk)[1] == pytest.approx(2e-4, rel=1e-6)
    flat = np.array([[0, 0, 1.0, -centre[2]], [0, 0, -1.0, centre[2]]])  # z == cz: no interior
    planes = np.concatenate([CUBE, disk, flat])
    T = np.zeros((len(planes), 3))
    T[:6, 0], T[6:6 + len(disk), 1], T[6 + len(disk):, 2] = 1.0, 1.0, 1.0
    caplog.set_level("WARNING", logger="layerforge.models.bsp.extract")
    parts = ex.extract_convexes(planes, T, name="disk_shape")
    assert [p.index for p in parts] == [0]
    assert isinstance(parts, list)  # call sites that treat it as a list keep working
    assert parts.stats == ex.ExtractionStats(selected=3, extracted=1, no_interior=1, qhull_failed=1,
                                             qhull_failed_indices=[1])
    # the counts are saved with the convexes, so a resumed stage can still report them
    ex.save_convexes(tmp_path / "shape.npz", parts)
    assert ex.load_extraction_stats(tmp_path / "shape.npz") == parts.stats
    back = ex.load_convexes(tmp_path / "shape.npz")
    assert back.stats == parts.stats and [p.index for p in back] == [0]
    ex.save_convexes(tmp_path / "plain.npz", list(parts))  # a plain list carries no stats
    assert ex.load_extraction_stats(tmp_path / "plain.npz") == ex.ExtractionStats(selected=1, extracted=1)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "bsp extract (disk_shape): qhull failed on 1 of 3 selected convexes (indices 1); they are left out"]


def test_clean_extraction_reports_no_drops(caplog) -> None:
    caplog.set_level("WARNING", logger="layerforge.models.bsp.extract")
    parts = ex.extract_convexes(CUBE, np.ones((6, 1)))
    assert parts.stats == ex.ExtractionStats(selected=1, extracted=1)
    assert not caplog.records
