"""BSP-Net data preparation: validation, normalisation, winding numbers, voxels, samples."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from layerforge.errors import InputError
from layerforge.models.bsp import data


def _box(extents=(1.0, 2.0, 3.0), centre=(5.0, -1.0, 2.0)) -> trimesh.Trimesh:
    m = trimesh.creation.box(extents=extents)
    m.apply_translation(centre)
    return m


def test_bad_meshes_raise_input_error() -> None:
    with pytest.raises(InputError, match=";"):
        data.prepare_shape(np.zeros((0, 3)), np.zeros((0, 3), int))
    box = _box()
    nan_v = box.vertices.copy()
    nan_v[0, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        data.prepare_shape(nan_v, box.faces)
    flat = box.vertices.copy()
    flat[:, 2] = 0.0
    with pytest.raises(InputError, match="zero volume"):
        data.prepare_shape(flat, box.faces)
    with pytest.raises(InputError, match="index"):
        data.prepare_shape(box.vertices, box.faces + 100)


def test_normalise_round_trip() -> None:
    box = _box()
    v, centre, scale = data.normalise_mesh(box.vertices, box.faces)
    assert np.allclose(centre, [5, -1, 2])
    assert np.linalg.norm(v.max(0) - v.min(0)) == pytest.approx(1.0)
    assert np.allclose(v.max(0), -v.min(0))
    assert np.allclose(data.frame_of(centre, scale).apply(v), box.vertices)


def test_winding_number_closed_and_open_cube() -> None:
    box = trimesh.creation.box(extents=(1, 1, 1))
    q = np.array([[0, 0, 0], [0.3, -0.2, 0.4], [0.7, 0, 0], [0, 0, -2.0]])
    w = data.winding_number(q, box.vertices, box.faces)
    assert w == pytest.approx([1, 1, 0, 0], abs=1e-5)
    # remove the two triangles of the +z face: centre still inside (w = 5/6 > 0.5)
    top = box.triangles_center[:, 2] > 0.49
    assert top.sum() == 2
    w_open = data.winding_number(q, box.vertices, box.faces[~top])
    assert w_open[0] == pytest.approx(5 / 6, abs=1e-5)
    assert (w_open[:2] > 0.5).all() and (w_open[2:] < 0.5).all()
    vox = data.voxelise(*data.normalise_mesh(box.vertices, box.faces[~top])[:1], box.faces[~top])
    vox_closed = data.voxelise(data.normalise_mesh(box.vertices, box.faces)[0], box.faces)
    assert np.array_equal(vox, vox_closed)


def test_sphere_volume_fraction_and_samples() -> None:
    s = trimesh.creation.icosphere(subdivisions=3, radius=2.0)
    shape = data.prepare_shape(s.vertices, s.faces, seed=3)
    r = 0.5 / np.sqrt(3)  # radius after scaling the bbox diagonal (2 sqrt(3) * 2) to 1
    expected = s.volume / (4 / 3 * np.pi * 2.0**3) * 4 / 3 * np.pi * r**3  # polyhedral sphere
    assert shape.voxels.mean() == pytest.approx(expected, rel=0.03)
    for res, n in data.POINTS_PER_RES.items():
        p, v = shape.points[res], shape.values[res]
        assert p.shape == (n, 3) and v.shape == (n,)
        assert np.abs(p).max() < 0.5
        assert len(np.unique(p, axis=0)) == n
        inside = np.linalg.norm(p, axis=1) < r - 1.5 / 64
        outside = np.linalg.norm(p, axis=1) > r + 1.5 / 64
        assert v[inside].min() == 1 and v[outside].max() == 0
    # near-surface bias at 64^3: most samples within 2 cells of the surface
    d = np.abs(np.linalg.norm(shape.points[64], axis=1) - r)
    assert (d < 2 / 64).mean() > 0.5
    again = data.prepare_shape(s.vertices, s.faces, seed=3)
    assert np.array_equal(again.points[32], shape.points[32])


def test_surface_samples_area_weighted() -> None:
    box = _box(extents=(1, 1, 4), centre=(0, 0, 0))
    p, n = data.surface_samples(box.vertices, box.faces, 20000, seed=0)
    side = np.abs(n[:, 2]) < 0.5
    assert side.mean() == pytest.approx(16 / 18, abs=0.01)  # 4 sides of area 4, 2 caps of 1
    assert np.allclose(np.linalg.norm(n, axis=1), 1)
    assert np.abs(p).max() <= 2.0 + 1e-9
