"""The synthetic scene generator: Cycles renders written as a nerfstudio folder.

One module-scoped render (10 views at 64x48) serves every test. The Cycles-vs-rasterizer
comparison checks both renderers' camera conventions against each other: a y-flip, a
transposed intrinsic, an OpenGL/OpenCV mix-up or a half-pixel offset would fail it.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

pytest.importorskip("bpy")

from layerforge.assets.nerfstudio_dataset import read_nerfstudio, read_posed_views  # noqa: E402
from layerforge.assets.synthetic_scene import (  # noqa: E402
    cached_toy_scene,
    orbit_views,
    render_cycles,
    toy_scene,
    write_nerfstudio_scene,
)
from layerforge.renderers.cameras import generate_rays  # noqa: E402
from layerforge.renderers.mesh import rasterize  # noqa: E402

W, H, N_TRAIN, N_TEST, SEED = 64, 48, 8, 2, 0


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    spec = toy_scene(3, seed=SEED)
    cams = orbit_views(N_TRAIN + N_TEST, W, H, seed=SEED, target=tuple(spec.center()))
    t0 = time.perf_counter()
    out = write_nerfstudio_scene(spec, tmp_path_factory.mktemp("toy") / "scene", cameras=cams, n_test=N_TEST,
                                 seed=SEED, samples=8)
    seconds = time.perf_counter() - t0
    res = render_cycles(spec, cams, samples=8, seed=SEED)
    return spec, cams, out, res, seconds


def _raster(spec, cams, **edit):
    v, f, ids = spec.world_meshes(**edit)
    frags = rasterize(torch.as_tensor(v, dtype=torch.float64), torch.as_tensor(f), cams.to(dtype=torch.float64),
                      backend="torch")
    face = frags.face_id.numpy()
    inst = np.where(face >= 0, ids[np.clip(face, 0, None)], 0)
    return inst, frags.depth.numpy(), face >= 0


def test_toy_scene_layout():
    spec = toy_scene(3, seed=0)
    assert [o.name for o in spec.objects] == ["box", "sphere", "cylinder"]
    assert len({o.color for o in spec.objects}) == 3
    for o in spec.objects:
        v, _ = o.world_mesh()
        assert abs(v[:, 2].min()) < 1e-9  # standing on the ground
        assert np.abs(v[:, :2]).max() < 0.75  # within ~1.5 m
    xy = [o.to_world[:2, 3] for o in spec.objects]
    assert min(np.linalg.norm(a - b) for i, a in enumerate(xy) for b in xy[i + 1:]) > 0.3
    assert len(toy_scene(6, seed=1).objects) == 6


def test_folder_reads_back_with_the_same_cameras(scene):
    spec, cams, out, res, _ = scene
    ds = read_nerfstudio(out)
    got = ds.cameras().to(dtype=torch.float64)
    want = cams.to(dtype=torch.float64)
    assert torch.allclose(got.K, want.K, atol=1e-5)
    assert torch.allclose(got.world_to_camera, want.world_to_camera, atol=1e-5)
    meta = json.loads((out / "transforms.json").read_text())
    assert meta["depth_unit_scale_factor"] == 0.001
    assert [fr["split"] for fr in meta["frames"]].count("test") == N_TEST
    assert json.loads((out / "instances.json").read_text()) == {"1": "box", "2": "sphere", "3": "cylinder"}
    assert all((out / "gt" / f"{o.name}.ply").is_file() for o in spec.objects)
    views = read_posed_views(out)
    assert len(views.train) == N_TRAIN and len(views.test) == N_TEST
    assert views.instances == {1: "box", 2: "sphere", 3: "cylinder"}
    train = [i for i, fr in enumerate(meta["frames"]) if fr["split"] == "train"]
    np.testing.assert_array_equal(views.train.masks.numpy(), res["instance"][train])
    depth = views.train.depths[..., 0].numpy()
    assert np.abs(depth - res["depth"][train]).max() <= 0.0005 + 1e-6  # mm rounding
    img = views.train.images.numpy()
    assert np.abs(img - res["rgb"][train].clip(0, 1)).max() < 0.02  # 8-bit sRGB quantisation


def test_cycles_agrees_with_our_rasterizer(scene):
    spec, cams, _, res, seconds = scene
    inst, depth, hit = _raster(spec, cams)
    agree = (inst == res["instance"]).mean()
    objects = res["instance"] > 0
    iou = (objects & (inst > 0)).sum() / (objects | (inst > 0)).sum()
    both = (inst == res["instance"]) & hit & (res["depth"] > 0)
    err = np.abs(depth - res["depth"])[both]
    coverage = (hit == (res["depth"] > 0)).mean()
    print(f"\ninstance agreement {agree:.4%}, object IoU {iou:.4f}, hit agreement {coverage:.4%}, "
          f"depth |err| median {np.median(err) * 1e3:.4f} mm p99 {np.quantile(err, 0.99) * 1e3:.3f} mm, "
          f"write {seconds / (N_TRAIN + N_TEST):.3f} s/view, render {res['seconds_per_view']:.3f} s/view")
    assert objects.mean() > 0.05  # the objects fill a fair part of the frames
    # Cycles samples at the pixel centres, so the two agree exactly but for float ties; the
    # bound is tight enough that a half-pixel offset fails it (checked just below)
    assert agree >= 0.995
    shifted = cams.to(dtype=torch.float64)
    shifted.K = shifted.K.clone()
    shifted.K[:, 0, 2] += 0.5
    off, _, _ = _raster(spec, shifted)
    print(f"with a half-pixel x offset: {(off == res['instance']).mean():.4%}")
    assert (off == res["instance"]).mean() < 0.995
    assert (inst[:, ::-1] == res["instance"]).mean() < 0.95  # a y-flip fails by far
    assert coverage >= 0.98
    assert np.median(err) < 1e-3


def test_depth_is_camera_z_on_the_ground(scene):
    """Analytic check of Cycles' Depth pass: camera z of the ray's hit with the plane z = 0."""
    spec, cams, _, res, _ = scene
    o, d = generate_rays(cams.to(dtype=torch.float64), normalize=False)  # d has camera z = 1
    o, d = o.numpy().reshape(d.shape), d.numpy()
    t = -o[..., 2] / np.where(np.abs(d[..., 2]) > 1e-9, d[..., 2], 1e-9)  # ray parameter = camera z
    px = o + t[..., None] * d
    half = 0.5 * spec.ground_size
    ground = (res["instance"] == 0) & (res["depth"] > 0) & (t > 0)
    ground &= (np.abs(px[..., 0]) < half - 0.05) & (np.abs(px[..., 1]) < half - 0.05)
    assert ground.sum() > 1000
    err = np.abs(res["depth"] - t)[ground]
    print(f"\nground depth vs analytic plane: median {np.median(err) * 1e3:.4f} mm, max {err.max() * 1e3:.3f} mm")
    assert np.median(err) < 1e-4


def test_remove_drops_the_object(scene):
    spec, cams, _, res, _ = scene
    was = res["instance"] == 1
    assert was.sum() > 50
    gone = render_cycles(spec, cams[:4], samples=4, remove=(0,))
    assert not (gone["instance"] == 1).any()
    assert (gone["instance"] == 2).any() and (gone["instance"] == 3).any()
    sel = was[:4] & (gone["instance"] == 0)
    assert sel.sum() > 0.9 * was[:4].sum()  # ground or background where the box was
    inst, _, _ = _raster(spec, cams[:4], remove=(0,))
    assert (inst == gone["instance"]).mean() >= 0.98
    moved = spec.objects[0].to_world.copy()
    moved[:2, 3] = [0.0, 0.0]
    mv = render_cycles(spec, cams[:4], samples=4, moves={0: moved})
    inst, _, _ = _raster(spec, cams[:4], moves={0: moved})
    assert (inst == mv["instance"]).mean() >= 0.98


def test_cached_toy_scene_reuses_the_cache(tmp_path):
    kw = dict(objects=2, seed=3, width=32, height=24, n_train=3, n_test=1, samples=2)
    t0 = time.perf_counter()
    first = cached_toy_scene(tmp_path, **kw)
    t1 = time.perf_counter()
    files = {p.relative_to(first): p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}
    second = cached_toy_scene(tmp_path, **kw)
    t2 = time.perf_counter()
    assert second == first
    assert {p.relative_to(second): p.stat().st_mtime_ns for p in second.rglob("*") if p.is_file()} == files
    assert t2 - t1 < 0.05 < t1 - t0
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary folder left
    assert cached_toy_scene(tmp_path, **{**kw, "seed": 4}) != first
    # deterministic: a fresh cache renders byte-identical files
    again = cached_toy_scene(tmp_path / "fresh", **kw)
    assert again.name == first.name
    assert all((again / rel).read_bytes() == (first / rel).read_bytes() for rel in files)
