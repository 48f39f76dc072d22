"""Fit mode's data-driven start (k-DOPs, planes-only training), welding, and the bsp file round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from layerforge.models.bsp import extract, init, network, training

R = 16


def _box_voxels(lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
    vox = np.zeros((R, R, R), np.uint8)
    vox[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
    return vox


def _cell_bounds(lo: tuple[int, int, int], hi: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """World bounds of voxel cells lo..hi-1 (cell i spans [i/R - 0.5, (i+1)/R - 0.5])."""
    return np.array(lo) / R - 0.5, np.array(hi) / R - 0.5


def test_kdop_directions_are_unit_and_distinct():
    dirs = init.kdop_directions(13)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0)
    assert np.abs(dirs @ dirs.T - np.eye(13)).max() < 0.99  # no direction repeated (or opposite)
    assert init.kdop_directions(3).tolist() == np.eye(3).tolist()
    with pytest.raises(ValueError):
        init.kdop_directions(4)


@pytest.mark.parametrize("directions", [3, 13])
def test_kdop_of_a_voxel_box_is_that_box(directions):
    lo, hi = (2, 3, 4), (9, 7, 12)
    planes, T = init.kdop_planes(_box_voxels(lo, hi), c=4, directions=directions, plane_scale=R)
    assert planes.shape == (2 * directions * 4, 4) and T.shape == (2 * directions * 4, 4)
    assert (T.sum(1) == 1).all() and (T.sum(0) == 2 * directions).all()  # each plane bounds exactly one convex
    parts = extract.extract_convexes(planes, T, res=32)
    assert len(parts) == 1, "a convex box needs one convex; the spare ones lie outside the unit cube"
    want_lo, want_hi = _cell_bounds(lo, hi)
    np.testing.assert_allclose(parts[0].vertices.min(0), want_lo, atol=1e-6)
    np.testing.assert_allclose(parts[0].vertices.max(0), want_hi, atol=1e-6)


def test_l_shape_splits_into_tight_clusters_and_stops():
    vox = _box_voxels((2, 2, 2), (14, 6, 6)) | _box_voxels((2, 2, 2), (6, 14, 6))
    dirs = init.kdop_directions(13)
    labels, k = init.split_until_tight(vox > 0, dirs, c=16, seed=0)
    cells = np.argwhere(vox > 0)
    assert 2 <= k < 16, "an L needs at least two convexes, and splitting stops once every k-DOP is tight"
    assert set(labels.tolist()) == set(range(k))
    for i in range(k):
        assert init._overreach(cells[labels == i], vox > 0, dirs) == 0
    labels1, k1 = init.split_until_tight(vox > 0, dirs, c=1)
    assert k1 == 1 and (labels1 == 0).all()
    # the union of the k-DOPs is the L itself: extraction gives back its volume exactly
    planes, T = init.kdop_planes(vox, c=16, directions=13, plane_scale=R)
    parts = extract.extract_convexes(planes, T, res=32)
    inside = extract.convex_contains(parts, (np.argwhere(np.ones((R, R, R))) + 0.5) / R - 0.5)
    np.testing.assert_array_equal(inside.reshape(R, R, R), vox > 0)


def _model(p: int, c: int) -> network.BSPNet:
    torch.manual_seed(0)
    return network.BSPNet(network.BSPConfig(ef_dim=4, p=p, c=c, z_dim=8, dec_dims=(16, 16), n_shapes=1))


def test_initialised_model_outputs_the_planes_and_only_they_train():
    planes, T = init.kdop_planes(_box_voxels((2, 2, 2), (8, 8, 8)), c=2, directions=3, plane_scale=R)
    model = _model(len(planes), 2)
    init.initialise_from_planes(model, planes, T)
    got, got_T = training.shape_planes(model, shape_idx=0)
    np.testing.assert_allclose(got, planes, atol=1e-3 * np.abs(planes).max())  # weights shrunk 1000x
    np.testing.assert_array_equal(got_T, T)
    assert (model.W.detach() == 1).all()

    init.train_planes_only(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"decoder.linears.2.bias", "T", "W"}, trainable
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = training.make_optimizer(model, {"lr": 0.01})
    assert sum(len(g["params"]) for g in opt.param_groups) == 3
    pts = torch.rand(1, 256, 3) - 0.5
    values = ((pts.abs() < 0.2).all(-1, keepdim=True)).float()
    training.train_step(model, opt, {"points": pts, "values": values, "shape_idx": torch.tensor([0])}, phase=0)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert not np.allclose(training.shape_planes(model, shape_idx=0)[0], got)

    with pytest.raises(ValueError, match="do not fit"):
        init.initialise_from_planes(_model(len(planes) + 1, 2), planes, T)


def test_weld_points_merges_transitive_clusters_only():
    pts = np.array([[0, 0, 0], [4e-6, 0, 0], [8e-6, 0, 0], [1, 0, 0], [1, 2e-6, 0], [0, 1, 0]], np.float64)
    welded = extract.weld_points(pts, 5e-6)
    assert len(welded) == 3  # 0-1-2 chain (each step < tol), 3-4 pair, 5 alone
    got = sorted(map(tuple, np.round(welded, 9)))
    assert got == sorted([(4e-6, 0, 0), (1, 1e-6, 0), (0, 1, 0)])
    far = np.eye(3)
    np.testing.assert_array_equal(extract.weld_points(far, 1e-5), far)


def test_prepared_shape_convexes_and_model_round_trip_through_files(tmp_path):
    from layerforge.models.bsp.data import PreparedShape, prepare_shape

    box = trimesh.creation.box(extents=(1.0, 0.5, 0.25))
    shape = prepare_shape(box.vertices, box.faces, seed=3, counts={16: 256, 64: 512})
    shape.save(tmp_path / "s.npz")
    back = PreparedShape.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.voxels, shape.voxels)
    assert sorted(back.points) == [16, 64]
    for r in (16, 64):
        np.testing.assert_array_equal(back.points[r], shape.points[r])
        np.testing.assert_array_equal(back.values[r], shape.values[r])
    np.testing.assert_array_equal(back.mesh_faces, shape.mesh_faces)
    np.testing.assert_allclose(back.mesh_vertices.max(0) - back.mesh_vertices.min(0), np.array([1.0, 0.5, 0.25]) * shape.scale, rtol=1e-6)
    assert back.scale == shape.scale and np.array_equal(back.centre, shape.centre)

    planes, T = init.kdop_planes(shape.voxels, c=3, directions=3)
    parts = extract.extract_convexes(planes, T)
    extract.save_convexes(tmp_path / "c.npz", parts)
    again = extract.load_convexes(tmp_path / "c.npz")
    assert [p.index for p in again] == [p.index for p in parts]
    for a, b in zip(again, parts):
        np.testing.assert_allclose(a.vertices, b.vertices, atol=1e-6)  # stored as float32
        np.testing.assert_array_equal(a.faces, b.faces)

    model = _model(len(planes), 3)
    init.initialise_from_planes(model, planes, T)
    network.save_model(tmp_path / "m.pt", model, mode="fit", phase=1)
    loaded, ckpt = network.load_model(tmp_path / "m.pt")
    assert ckpt["mode"] == "fit" and ckpt["phase"] == 1 and loaded.cfg == model.cfg
    np.testing.assert_array_equal(training.shape_planes(loaded, shape_idx=0)[0], training.shape_planes(model, shape_idx=0)[0])
