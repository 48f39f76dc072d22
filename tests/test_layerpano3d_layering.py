"""LayerPano3D layering against independent truths: brute-force k-means, hand-computed
instance depths, and an analytic box room with spheres (and a niche) ray-cast here."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from layerforge.errors import InputError
from layerforge.models.guidance.estimators import Segment
from layerforge.models.layerpano3d.layering import (
    INSTANCE_PERCENTILE,
    MAX_LAYERS,
    assign_layers,
    instance_depth,
    instances_from_depth,
    instances_from_segments,
    is_stuff,
    kmeans_1d,
)
from layerforge.renderers.panorama import equirect_directions

H, W = 96, 192
ROOM_LO = np.array([-3.0, -2.5, -1.4])
ROOM_HI = np.array([3.5, 3.0, 1.3])
NICHE_LO = np.array([3.5, -0.7, -0.5])  # a recess into the +X wall, 0.8 m deep
NICHE_HI = np.array([4.3, 0.7, 0.5])


def _polar(r: float, yaw_deg: float, z: float) -> tuple[float, float, float]:
    y = math.radians(yaw_deg)
    return (r * math.cos(y), r * math.sin(y), z)


SPHERES = [(_polar(1.8, 180.0, 0.0), 0.35),  # straddles the seam (yaw 180 = columns 0 and W-1)
           (_polar(1.6, 90.0, 0.2), 0.30),
           (_polar(2.2, -60.0, -0.3), 0.40)]


def _box_exit(dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Distance from the origin along dirs to where the ray leaves the slab box [lo, hi]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = lo / dirs, hi / dirs
    return np.min(np.where(np.isnan(t1), np.inf, np.maximum(t1, t2)), axis=-1)


def _sphere_hit(dirs: np.ndarray, centre, radius: float) -> np.ndarray:
    c = np.asarray(centre, dtype=np.float64)
    b = dirs @ c
    disc = b * b - (c @ c - radius * radius)
    t = b - np.sqrt(np.maximum(disc, 0.0))
    return np.where((disc > 0) & (t > 0), t, np.inf)


@pytest.fixture(scope="module")
def scene():
    dirs = equirect_directions(H, W, dtype=torch.float64).numpy()
    room = _box_exit(dirs, ROOM_LO, ROOM_HI)  # the origin is inside: the first wall hit
    with np.errstate(divide="ignore", invalid="ignore"):
        tx = ROOM_HI[0] / dirs[..., 0]
    p = dirs * tx[..., None]
    niche = ((dirs[..., 0] > 0) & np.isclose(room, tx) & (np.abs(p[..., 1]) < NICHE_HI[1])
             & (p[..., 2] > NICHE_LO[2]) & (p[..., 2] < NICHE_HI[2]))
    # inside the niche's opening the ray continues to the niche's far side
    depth = np.where(niche, _box_exit(dirs, NICHE_LO * np.array([0, 1, 1]), NICHE_HI), room)
    masks = []
    for c, r in SPHERES:
        t = _sphere_hit(dirs, c, r)
        masks.append(t < depth)
        depth = np.minimum(depth, t)
    return {"depth": torch.from_numpy(depth).float(), "masks": masks, "niche": niche, "dirs": dirs}


# ---------------------------------------------------------------- stuff labels


def test_stuff_labels():
    for label in ("wall", "floor", "sky", "ceiling", "road", "grass", "wall-other-merged", "floor-wood",
                  "sky-other-merged", "ceiling-merged", "Wall", "floor-other-merged", "rug-merged"):
        assert is_stuff(label), label
    for label in ("chair", "person", "dining table", "couch", "potted plant", "door", "table", "window"):
        assert not is_stuff(label), label


def test_instances_from_segments_drops_stuff_and_keeps_order():
    m = torch.zeros(4, 6, dtype=torch.bool)
    a, b, c, d = m.clone(), m.clone(), m.clone(), m.clone()
    a[:, :2] = True  # wall
    b[:2, 2:4] = True  # chair
    c[1:3, 3:5] = True  # person, overlapping the chair at (1, 3)
    d[3, :] = True  # floor-wood
    segs = [Segment("wall-other-merged", 0.9, a), Segment("chair", 0.8, b), Segment("person", 0.7, c),
            Segment("floor-wood", 0.6, d), Segment("sky", 0.5, m.clone())]
    ids, labels = instances_from_segments(segs, (4, 6))
    assert labels == ["chair", "person"]
    assert ids.dtype == torch.int64
    assert torch.equal(ids == 1, b)  # the chair keeps its pixel (1, 3)
    assert torch.equal(ids == 2, c & ~b)
    assert int((ids > 0).sum()) == int((b | c).sum())


# ---------------------------------------------------------------- instance depth and k-means


def test_instance_depth_is_the_mean_above_the_25th_percentile():
    depth = torch.full((10, 10), 9.0)
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[:2] = True  # 20 pixels, skewed: many near, a few far
    vals = [1.0] * 12 + [1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0, 10.0]
    depth[:2] = torch.tensor(vals).reshape(2, 10)
    by_hand = sum(sorted(vals)[5:]) / 15  # floor(20 * 25 / 100) = 5 smallest dropped
    assert INSTANCE_PERCENTILE == 25
    assert instance_depth(depth, mask) == pytest.approx(by_hand, rel=1e-6)
    assert abs(instance_depth(depth, mask) - float(np.mean(vals))) > 0.1  # not the plain mean
    with pytest.raises(InputError):
        instance_depth(depth, torch.zeros(10, 10, dtype=torch.bool))


def _brute_force_sse(x: np.ndarray, k: int) -> float:
    x = np.sort(x)
    best = math.inf
    for cuts in itertools.combinations(range(1, x.size), k - 1):
        groups = np.split(x, cuts)
        best = min(best, sum(float(((g - g.mean()) ** 2).sum()) for g in groups))
    return best


def test_kmeans_1d_is_optimal_against_brute_force():
    rng = np.random.default_rng(3)
    for trial in range(40):
        n = int(rng.integers(1, 10))
        x = np.round(rng.exponential(2.0, n), 1 if trial % 3 == 0 else 6)  # some ties
        for k in (1, 2, 3, 4):
            labels, centres = kmeans_1d(x, k)
            kk = min(k, np.unique(x).size)
            assert centres.shape == (kk,) and labels.shape == (n,) and labels.dtype == torch.int64
            assert torch.all(centres[1:] > centres[:-1])
            lab = labels.numpy()
            assert set(lab.tolist()) == set(range(kk))
            sse = sum(float(((x[lab == c] - x[lab == c].mean()) ** 2).sum()) for c in range(kk))
            assert sse == pytest.approx(_brute_force_sse(x, kk), rel=1e-9, abs=1e-12)
            for c in range(kk):
                assert x[lab == c].mean() == pytest.approx(float(centres[c]), rel=1e-12)
            l2, c2 = kmeans_1d(torch.from_numpy(x), k)
            assert torch.equal(l2, labels) and torch.equal(c2, centres)  # deterministic


def test_kmeans_1d_edge_cases():
    labels, centres = kmeans_1d([2.0, 2.0, 2.0], 3)
    assert labels.tolist() == [0, 0, 0] and centres.tolist() == [2.0]
    labels, centres = kmeans_1d([5.0, 1.0, 1.0, 5.0], 3)
    assert labels.tolist() == [1, 0, 0, 1] and centres.tolist() == [1.0, 5.0]
    labels, centres = kmeans_1d([], 2)
    assert labels.numel() == 0 and centres.numel() == 0
    with pytest.raises(ValueError):
        kmeans_1d([1.0], 0)


# ---------------------------------------------------------------- layers


def _ids_and_depth(distances):
    ids = torch.zeros(20, 40, dtype=torch.int64)
    depth = torch.full((20, 40), 8.0)
    for i, dist in enumerate(distances, start=1):
        ids[2:6, 7 * i - 6:7 * i - 1] = i
        depth[2:6, 7 * i - 6:7 * i - 1] = dist + 0.01 * torch.arange(20.0).reshape(4, 5)
    return ids, depth


def test_assign_layers_three_bands_near_to_far():
    ids, depth = _ids_and_depth([3.1, 1.3, 5.0, 1.25, 2.9])
    out = assign_layers(ids, depth)
    assert MAX_LAYERS == 3
    assert out.instances == [1, 2, 3, 4, 5] and out.masks.shape == (3, 20, 40)
    assert out.layer_of == {2: 0, 4: 0, 1: 1, 5: 1, 3: 2}  # layer 0 = nearest
    assert out.centres == sorted(out.centres)
    for i, dpt in zip(out.instances, out.depths):
        assert dpt == pytest.approx(instance_depth(depth, ids == i))
    for k in range(3):
        union = torch.zeros_like(ids, dtype=torch.bool)
        for i, lab in out.layer_of.items():
            if lab == k:
                union |= ids == i
        assert torch.equal(out.masks[k], union)


def test_assign_layers_k_follows_the_instance_count():
    ids, depth = _ids_and_depth([1.3, 3.0])
    out = assign_layers(ids, depth)
    assert out.masks.shape[0] == 2 and out.layer_of == {1: 0, 2: 1}
    none = assign_layers(torch.zeros(5, 7, dtype=torch.int64), torch.ones(5, 7))
    assert none.masks.shape == (0, 5, 7) and none.instances == [] and none.layer_of == {}
    small = assign_layers(ids, depth, min_pixels=21)  # each instance has 20 pixels
    assert small.masks.shape[0] == 0


# ---------------------------------------------------------------- classical instances from depth


def test_instances_from_depth_finds_the_spheres(scene):
    ids = instances_from_depth(scene["depth"])
    assert ids.dtype == torch.int64 and ids.shape == (H, W)
    assert sorted(torch.unique(ids).tolist()) == [0, 1, 2, 3]
    matched = set()
    for mask in scene["masks"]:
        m = torch.from_numpy(mask)
        best = max(range(1, 4), key=lambda i: int(((ids == i) & m).sum()))
        iou = int(((ids == best) & m).sum()) / int(((ids == best) | m).sum())
        assert iou > 0.9
        matched.add(best)
    assert matched == {1, 2, 3}
    shell = ~np.any(scene["masks"], axis=0)
    assert int((ids[torch.from_numpy(shell)] != 0).sum()) == 0  # the room shell is 0


def test_seam_sphere_is_one_instance(scene):
    mask = torch.from_numpy(scene["masks"][0])
    assert mask[:, 0].any() and mask[:, -1].any()  # it really straddles the seam
    ids = instances_from_depth(scene["depth"])
    assert len(set(ids[mask].tolist()) - {0}) == 1
    # without the wrap it would fall apart in two pieces
    assert ndimage.label(mask.numpy())[1] == 2


def test_recessed_niche_is_not_an_instance(scene):
    niche = scene["niche"]
    ids = instances_from_depth(scene["depth"])
    assert niche.sum() > 0.002 * H * W
    # the niche's back is a separate piece of depth (a jump at its rim) ...
    logd = np.log(scene["depth"].numpy().astype(np.float64))
    smooth = np.ones_like(niche)
    smooth[:, :-1] &= np.abs(np.diff(logd, axis=1)) < 0.08
    smooth[:-1, :] &= np.abs(np.diff(logd, axis=0)) < 0.08
    lab, _ = ndimage.label(niche & smooth)
    assert np.bincount(lab[niche])[1:].max() > 0.002 * H * W
    # ... but farther than its surroundings: stuff, not an instance
    assert int((ids[torch.from_numpy(niche)] != 0).sum()) == 0


def test_instances_from_depth_flat_and_invalid():
    assert int(instances_from_depth(torch.full((16, 32), 2.0)).abs().sum()) == 0
    d = torch.full((16, 32), 2.0)
    d[:, 3] = float("nan")
    assert int(instances_from_depth(d).abs().sum()) == 0


def test_close_layers_merge_into_one_band():
    """k = min(3, n) splits two depth bands of 4 objects into 3 layers; the ratio rule joins the split band."""
    from layerforge.models.layerpano3d.layering import kmeans_1d, merge_close_layers

    depths = [1.08, 1.31, 2.33, 2.73]  # instance depths of builtin:layered_room (two bands)
    labels, _ = kmeans_1d(depths, 3)
    assert len(set(labels.tolist())) == 3
    merged, centres = merge_close_layers(labels, depths, 1.3)
    assert merged.tolist() == [0, 0, 1, 1]
    assert torch.allclose(centres, torch.tensor([1.195, 2.53], dtype=torch.float64))
    same, _ = merge_close_layers(labels, depths, 1.0)  # 1.0: the paper's rule, nothing merged
    assert same.tolist() == labels.tolist()
    far, _ = merge_close_layers(torch.tensor([0, 1, 2]), [1.0, 2.0, 4.0], 1.3)
    assert far.tolist() == [0, 1, 2]


@pytest.mark.parametrize("height", [16, 32, 128])
def test_a_room_without_objects_has_no_instances_at_any_resolution(height):
    """A floor seen near the horizon changes depth by far more than ``jump`` per row at coarse sizes
    (17 % at 32 rows); it continues its own slope, so it is shell, not a pile of instances (the
    log-depth rule alone made 9 'instances' of the empty room prior at 32 x 64)."""
    from layerforge.models.layerpano3d.depth_alignment import room_prior_depth
    from layerforge.models.layerpano3d.layering import instances_from_depth

    d = room_prior_depth(height, 2 * height, camera_height_m=1.6, ceiling_height_m=2.8, wall_distance_m=3.0)
    assert int(instances_from_depth(d).max()) == 0
