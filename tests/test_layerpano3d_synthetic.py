"""The LayerPano3D synthetic layered room: its ray caster against independent geometric truths.

Each truth is derived here from the scene's numbers (planes, sphere centres and radii, box
extents), not from the module's own code paths: a wall plane hit by ``depth * direction``, a
hit point on a sphere, the equirectangular resampler of ``layerforge.renderers.panorama``
against the perspective ray caster, and segments to the panorama centre for disocclusion.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from layerforge.assets.types import linear_to_srgb
from layerforge.models.layerpano3d.synthetic import (
    GENERATOR_VERSION,
    Box,
    LayeredRoom,
    Sphere,
    cached_layered_room,
    layered_room,
    render_equirect,
    render_views,
    room_from_truth,
    trace,
    visible_from,
    write_layered_room,
)
from layerforge.renderers.cameras import generate_rays
from layerforge.renderers.panorama import (
    equirect_directions,
    equirect_to_perspective,
    pano_cameras,
)

H, W = 128, 256


@pytest.fixture(scope="module")
def scene() -> LayeredRoom:
    return layered_room()


@pytest.fixture(scope="module")
def pano(scene):
    return render_equirect(scene, H, W)


def _dirs(h: int, w: int) -> np.ndarray:
    return equirect_directions(h, w, dtype=torch.float64).numpy()


def test_scene_layout(scene, pano):
    lo, hi = np.array(scene.room_min), np.array(scene.room_max)
    assert scene.room_min == (-4.0, -3.5, -1.5) and scene.room_max == (4.5, 4.0, 1.6)
    assert sorted(o.instance for o in scene.objects) == [1, 2, 3, 4]
    assert {type(o) for o in scene.objects} == {Sphere, Box}
    ids = pano["ids"].numpy()
    yaws = []
    for o in scene.objects:
        c = np.array(o.centre)
        ext = np.full(3, o.radius) if isinstance(o, Sphere) else np.array(o.half_size)
        assert np.all(c - ext > lo) and np.all(c + ext < hi), o
        assert c[2] - ext[2] - lo[2] >= 0.25 and hi[2] - (c[2] + ext[2]) >= 0.25, o  # floating
        dist = np.linalg.norm(c)
        band = 0 if 1.2 <= dist <= 1.6 else 1 if 2.8 <= dist <= 3.3 else None
        assert band == o.layer, (o, dist)
        share = (ids == o.instance).mean()
        assert 0.01 <= share <= 0.06, (o.instance, share)
        yaws.append(math.degrees(math.atan2(c[1], c[0])))
    assert sorted(o.layer for o in scene.objects) == [0, 0, 1, 1]
    yaws = np.sort(yaws)
    assert np.diff(yaws).min() > 10.0  # different yaws


def test_axis_rays_hit_the_walls(scene):
    axes = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float64)
    walls = np.array([4.5, 4.0, 4.0, 3.5, 1.6, 1.5])
    empty = LayeredRoom(scene.room_min, scene.room_max, ())
    out = trace(empty, np.zeros(3), axes)
    assert out["t"].dtype == torch.float64 and out["ids"].dtype == torch.int64
    np.testing.assert_allclose(out["t"].numpy(), walls, atol=1e-12)
    # in the full scene +X is blocked by the near sphere (in front of the far box); the rest are free
    full = trace(scene, np.zeros(3), axes)
    sph = next(o for o in scene.objects if o.instance == 1)
    cx, cy, cz = sph.centre
    assert full["ids"][0] == 1 and abs(full["t"][0] - (cx - math.sqrt(sph.radius ** 2 - cy ** 2 - cz ** 2))) < 1e-12
    np.testing.assert_allclose(full["t"].numpy()[1:], walls[1:], atol=1e-12)
    assert (full["ids"][1:] == 0).all()
    # the pano's centre row / column pixel of the empty room looks (almost) along +X
    d = _dirs(H, W)[H // 2, W // 2]
    dep = render_equirect(empty, H, W)["depth"][H // 2, W // 2].item()
    assert abs(dep * d[0] - 4.5) < 1e-5


def test_top_and_bottom_rows(pano):
    lat = (0.5 - (np.arange(H) + 0.5) / H) * np.pi
    dep = pano["depth"].double().numpy()
    np.testing.assert_allclose(dep[-1] * np.sin(-lat[-1]), 1.5, atol=1e-5)  # camera 1.5 m above the floor
    np.testing.assert_allclose(dep[0] * np.sin(lat[0]), 1.6, atol=1e-5)


def test_pano_hits_lie_on_the_surfaces(scene, pano):
    pts = pano["depth"].double().numpy()[..., None] * _dirs(H, W)
    ids = pano["ids"].numpy()
    lo, hi = np.array(scene.room_min), np.array(scene.room_max)
    shell = pts[ids == 0]
    off = np.minimum(np.abs(shell - lo), np.abs(shell - hi)).min(-1)
    assert off.max() < 1e-5
    assert np.all(shell >= lo - 1e-5) and np.all(shell <= hi + 1e-5)
    for o in scene.objects:
        p = pts[ids == o.instance]
        c = np.array(o.centre)
        if isinstance(o, Sphere):
            assert np.abs(np.linalg.norm(p - c, axis=-1) - o.radius).max() < 1e-5
        else:
            gap = np.abs(p - c) - np.array(o.half_size)
            assert gap.max() < 1e-5 and np.abs(gap.max(-1)).max() < 1e-5  # inside the slabs, on one face


def test_trace_normals_and_colours(scene, pano):
    d = torch.from_numpy(_dirs(64, 128))
    out = trace(scene, torch.zeros(3, dtype=torch.float64), d)
    n, p, ids = out["normals"].numpy(), out["points"].numpy(), out["ids"].numpy()
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-12)
    assert ((n * d.numpy()).sum(-1) < 0).all()  # facing the ray origin
    for o in scene.objects:
        if isinstance(o, Sphere):
            m = ids == o.instance
            np.testing.assert_allclose(n[m], (p[m] - np.array(o.centre)) / o.radius, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(p, axis=-1), out["t"].numpy(), atol=1e-12)
    # float32 inputs give float32 geometry; shapes follow the input
    o32 = trace(scene, torch.zeros(2, 5, 3), torch.tensor([1.0, 0.0, 0.0]).expand(2, 5, 3))
    assert o32["t"].shape == (2, 5) and o32["t"].dtype == torch.float32 and o32["rgb"].shape == (2, 5, 3)
    rgb = pano["rgb"]
    assert rgb.dtype == torch.float32 and rgb.min() >= 0.05 and rgb.max() <= 0.95
    # the walls carry structure: a stripe along the +X wall changes the colour by >= 10 %
    wall = rgb[H // 2 - 20, :][pano["ids"][H // 2 - 20] == 0]
    assert (wall.max(0).values / wall.min(0).values).min() > 1.1


def test_supersample_keeps_depth_and_ids(scene, pano):
    ss = render_equirect(scene, H, W, supersample=2)
    assert torch.equal(ss["depth"], pano["depth"]) and torch.equal(ss["ids"], pano["ids"])
    diff = (ss["rgb"] - pano["rgb"]).abs().amax(-1)
    assert diff.median() < 0.01 and diff.max() > 0.1  # antialiased edges, same interiors


def test_removing_the_near_object_reveals_far_object_and_wall(scene, pano):
    without = dataclasses.replace(scene, objects=tuple(o for o in scene.objects if o.instance != 1))
    behind = render_equirect(without, H, W)["ids"][pano["ids"] == 1]
    assert (behind == 3).sum() > 20 and (behind == 0).sum() > 20
    assert set(behind.unique().tolist()) == {0, 3}


def test_views_agree_with_the_panorama(scene):
    hp, wp = 512, 1024
    big = render_equirect(scene, hp, wp)
    cams = pano_cameras([0.0, 125.0, -140.0, 60.0, -90.0], [0.0, -20.0, 10.0, 35.0, -50.0], 60.0, 64, 48,
                        dtype=torch.float64)
    v = render_views(scene, cams)
    assert v["rgb"].shape == (5, 48, 64, 3) and v["depth"].shape == (5, 48, 64) and v["ids"].dtype == torch.int64
    radial = equirect_to_perspective(big["depth"][..., None].double(), cams)[..., 0]
    ids = equirect_to_perspective(big["ids"][..., None].double(), cams, mode="nearest")[..., 0].long()
    assert (ids == v["ids"]).double().mean() > 0.97
    # away from object edges (3 x 3 neighbourhood of one id) the bilinear radial depth agrees to 1 %
    pad = torch.nn.functional.pad(v["ids"].double()[:, None], (1, 1, 1, 1), mode="replicate")
    nb = torch.nn.functional.unfold(pad, 3).reshape(5, 9, 48, 64)
    interior = (nb == v["ids"][:, None].double()).all(1)
    rel = ((radial - v["distance"].double()) / v["distance"].double()).abs()[interior]
    assert interior.double().mean() > 0.8 and rel.max() < 0.01 and rel.median() < 1e-3
    # camera z = radial * cos(angle to forward) = (points - centre) . forward
    _, d = generate_rays(cams)
    fwd = cams.world_to_camera[:, 2, :3]
    cos = torch.einsum("bhwk,bk->bhw", d, fwd)
    np.testing.assert_allclose(v["depth"].double(), v["distance"].double() * cos, rtol=1e-5, atol=1e-5)
    z = torch.einsum("bhwk,bk->bhw", v["points"].double() - cams.center[:, None, None], fwd)
    np.testing.assert_allclose(v["depth"].double(), z, rtol=1e-5, atol=1e-5)
    zp = (radial * cos)[interior]
    assert ((zp - v["depth"].double()[interior]).abs() / zp).max() < 0.01
    # antialiased views keep the geometry
    v2 = render_views(scene, cams[:2], supersample=2)
    assert torch.equal(v2["ids"], v["ids"][:2]) and (v2["rgb"] - v["rgb"][:2]).abs().median() < 0.01


def test_visible_from_and_disocclusion(scene, pano):
    pts = pano["depth"].double()[..., None] * torch.from_numpy(_dirs(H, W))
    assert visible_from(scene, pts).all()
    # a view of the near sphere from 0.4 m to its side sees behind it
    yaw = -15.0
    side = 0.4 * np.array([-math.sin(math.radians(yaw)), math.cos(math.radians(yaw)), 0.0])
    cam = pano_cameras(yaw, 0.0, 70.0, 96, 72, center=side, dtype=torch.float64)
    v = render_views(scene, cam)
    p = v["points"].double()
    vis = visible_from(scene, p)
    assert vis.shape == (1, 72, 96) and vis.dtype == torch.bool
    hidden = p[~vis]
    assert 20 < len(hidden) < 0.2 * vis.numel()
    # independent check: the segment from the origin to each hidden point stops at an object first
    dist = hidden.norm(dim=-1)
    hit = trace(scene, torch.zeros(3, dtype=torch.float64), hidden / dist[:, None])
    assert (hit["t"] < dist * (1 - 1e-3)).all() and (hit["ids"] > 0).all()
    assert (hit["ids"] == 1).double().mean() > 0.5  # mostly behind the near sphere
    # and the visible ones are reached unobstructed
    seen = p[vis]
    sd = seen.norm(dim=-1)
    hs = trace(scene, torch.zeros(3, dtype=torch.float64), seen / sd[:, None])
    assert ((hs["t"] - sd).abs() < 1e-3 * sd).all()
    # the view's own centre sees all its pixels
    assert visible_from(scene, p, center=tuple(side)).all()


def test_write_and_round_trip(tmp_path, scene):
    folder = write_layered_room(tmp_path / "room", height=32, width=64, supersample=2)
    assert folder == tmp_path / "room"
    assert room_from_truth(folder / "truth.json") == scene
    truth = json.loads((folder / "truth.json").read_text())
    assert {o["type"] for o in truth["objects"]} == {"sphere", "box"}
    r = render_equirect(scene, 32, 64, supersample=2)
    ids = np.asarray(Image.open(folder / "pano_ids.png"))
    assert ids.shape == (32, 64) and ids.dtype == np.uint8
    np.testing.assert_array_equal(ids, r["ids"].numpy())
    dep = np.load(folder / "pano_depth.npy")
    assert dep.dtype == np.float32 and dep.shape == (32, 64)
    np.testing.assert_array_equal(dep, r["depth"].numpy())
    img = np.asarray(Image.open(folder / "pano.png").convert("RGB")).astype(np.float64)
    assert img.shape == (32, 64, 3)
    assert np.abs(img - linear_to_srgb(r["rgb"].numpy()) * 255.0).max() <= 0.51


def test_cached_layered_room(tmp_path):
    a = cached_layered_room(tmp_path, height=16, width=32)
    assert a.name.startswith("layered_room-") and len(a.name) == len("layered_room-") + 16
    stamp = (a / "pano.png").stat().st_mtime_ns
    b = cached_layered_room(tmp_path, height=16, width=32)
    assert b == a and (b / "pano.png").stat().st_mtime_ns == stamp
    c = cached_layered_room(tmp_path, height=16, width=64)
    assert c != a and (c / "pano.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([a.name, c.name])  # no temp leftovers
    assert json.loads((a / "truth.json").read_text())["generator_version"] == GENERATOR_VERSION


def _on_surface(scene: LayeredRoom, p: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """[N] distance of hit points to the surface their id names (plane, sphere or box face)."""
    lo, hi = np.array(scene.room_min), np.array(scene.room_max)
    off = np.minimum(np.abs(p - lo), np.abs(p - hi)).min(-1)
    for o in scene.objects:
        m = ids == o.instance
        c = np.array(o.centre)
        if isinstance(o, Sphere):
            off[m] = np.abs(np.linalg.norm(p[m] - c, axis=-1) - o.radius)
        else:
            gap = np.abs(p[m] - c) - np.array(o.half_size)
            off[m] = np.maximum(np.abs(gap.max(-1)), gap.max(-1))
    return off


def test_rays_from_anywhere(scene):
    """Per-ray origins all over the room (outside the objects) hit the surface their id names,
    with box normals on the hit face, and agree with the shared-origin path ray by ray."""
    rng = np.random.default_rng(0)
    lo, hi = np.array(scene.room_min), np.array(scene.room_max)
    o = lo + 0.05 + rng.random((4000, 3)) * (hi - lo - 0.1)
    inside = np.zeros(len(o), bool)
    for ob in scene.objects:
        c = np.array(ob.centre)
        if isinstance(ob, Sphere):
            inside |= np.linalg.norm(o - c, axis=-1) < ob.radius + 0.01
        else:
            inside |= (np.abs(o - c) < np.array(ob.half_size) + 0.01).all(-1)
    o = o[~inside]
    d = rng.normal(size=o.shape)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    out = trace(scene, o, d)
    p, ids, n = out["points"].numpy(), out["ids"].numpy(), out["normals"].numpy()
    assert set(np.unique(ids)) == {0, 1, 2, 3, 4}
    assert _on_surface(scene, p, ids).max() < 1e-9
    assert (out["t"].numpy() > 0).all() and ((n * d).sum(-1) < 0).all()
    for ob in scene.objects:
        if isinstance(ob, Box):
            m = ids == ob.instance
            gap = np.abs(p[m] - np.array(ob.centre)) - np.array(ob.half_size)
            face = np.argmax(gap, -1)
            np.testing.assert_allclose(np.abs(n[m][np.arange(m.sum()), face]), 1.0, atol=1e-12)
            # outward: the normal points from the box centre to the face
            assert (n[m][np.arange(m.sum()), face] * (p[m] - np.array(ob.centre))[np.arange(m.sum()), face] > 0).all()
    for i in range(0, len(o), 397):
        one = trace(scene, torch.from_numpy(o[i]), torch.from_numpy(d[i : i + 1]))
        assert one["ids"][0] == ids[i] and abs(one["t"][0].item() - out["t"][i].item()) < 1e-12
    # the segment to each hit point is free (the point is visible from the ray's origin)
    for i in range(0, len(o), 211):
        assert visible_from(scene, out["points"][i], center=tuple(o[i])).item()
