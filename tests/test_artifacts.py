"""Typed artifacts (ctx.save / ctx.load through codecs), named inputs, scene frames, camera sets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from layerforge.assets.frame import SceneFrame
from layerforge.assets.types import GaussianCloud, LayeredAsset, Material, Mesh, Part
from layerforge.errors import InputError
from layerforge.pipelines.engine import Engine, Pipeline, Stage
from layerforge.pipelines.rundir import RunDir
from layerforge.renderers.camera_set import CameraSet
from layerforge.renderers.cameras import Camera, intrinsics_from_fov, look_at

CFG = OmegaConf.create({"seed": 0, "device": "cpu", "quiet": True})


def _views(n: int = 3, h: int = 6, w: int = 8) -> CameraSet:
    eyes = torch.tensor([[2.0, 0.0, 1.0], [0.0, 2.0, 1.0], [-2.0, 0.5, 0.3]])[:n]
    cams = Camera(intrinsics_from_fov(45.0, w, h).expand(n, 3, 3), look_at(eyes), w, h)
    g = torch.Generator().manual_seed(0)
    return CameraSet(cams, torch.rand(n, h, w, 3, generator=g), torch.randint(0, 3, (n, h, w), generator=g),
                     torch.rand(n, h, w, 1, generator=g), [f"img{i}" for i in range(n)])


def _asset() -> LayeredAsset:
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    return LayeredAsset("thing", [Part("tet", Mesh(v + [0.5, -1.0, 2.0], f, material=Material("red", [0.9, 0.1, 0.1, 1.0])))])


def test_every_codec_round_trips_between_stages(tmp_path):
    views, asset, frame = _views(), _asset(), SceneFrame.normalising(np.array([-1.0, 0, 0]), np.array([3.0, 2, 4]))
    cloud = GaussianCloud(means=np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32),
                          quats=np.tile([1, 0, 0, 0], (5, 1)).astype(np.float32), log_scales=np.full((5, 3), -2.3, np.float32),
                          opacity_logits=np.zeros(5, np.float32), sh=np.zeros((5, 1, 3), np.float32))
    net = torch.nn.Linear(3, 2)
    got: dict[str, object] = {}

    def make(ctx):
        for name, obj in (("views", views), ("asset", asset), ("frame", frame), ("cloud", cloud), ("net", net),
                          ("table", {"a": np.arange(4)})):
            ctx.save(name, obj)

    def read(ctx):
        got.update(views=ctx.load("views"), asset=ctx.load("asset"), mesh=ctx.load("asset", Mesh), frame=ctx.load("frame"),
                   cloud=ctx.load("cloud"), net=ctx.load("net", torch.nn.Linear(3, 2)), table=ctx.load("table"))

    names = ("views", "asset", "frame", "cloud", "net", "table")
    pipeline = Pipeline("t", (Stage("make", make, makes=names), Stage("read", read, needs=names)))
    Engine(pipeline, CFG, RunDir.open(tmp_path / "r", "t"), None).run()

    v = got["views"]
    assert isinstance(v, CameraSet) and v.names == views.names
    for a, b in ((v.images, views.images), (v.masks, views.masks), (v.depths, views.depths),
                 (v.cameras.K, views.cameras.K), (v.cameras.world_to_camera, views.cameras.world_to_camera)):
        assert torch.equal(a, b)
    assert isinstance(got["asset"], LayeredAsset) and got["asset"].parts[0].name == "tet"
    np.testing.assert_allclose(got["mesh"].vertices, asset.merged_mesh().vertices, atol=1e-6)  # upright after GLB's +Y up
    np.testing.assert_allclose(got["frame"].to_world, frame.to_world)
    np.testing.assert_allclose(got["cloud"].means, cloud.means, atol=1e-6)
    assert torch.equal(got["net"].weight, net.weight)
    np.testing.assert_array_equal(got["table"]["a"], np.arange(4))
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    codecs = {k: o["codec"] for k, o in manifest["stages"]["make"]["outputs"].items()}
    assert codecs == {"views": "cameras", "asset": "asset", "frame": "frame", "cloud": "gaussians", "net": "state_dict",
                      "table": "arrays"}


def _two_input_pipeline(calls: list[str]) -> Pipeline:
    def views(ctx):
        calls.append("views")
        ctx.output("n_views", ".txt").write_text(ctx.input("input.views").read_text())

    def masks(ctx):
        calls.append("masks")
        ctx.output("n_masks", ".txt").write_text(ctx.input("input.masks").read_text())

    return Pipeline("t", (Stage("views", views, needs=("input.views",), makes=("n_views",)),
                          Stage("masks", masks, needs=("input.masks",), makes=("n_masks",))))


def test_named_inputs_are_hashed_on_their_own(tmp_path):
    a, b = tmp_path / "views.txt", tmp_path / "masks.txt"
    a.write_text("3")
    b.write_text("4")
    calls: list[str] = []
    run = RunDir.open(tmp_path / "r", "t")
    Engine(_two_input_pipeline(calls), CFG, run, {"views": a, "masks": b}).run()
    b.write_text("5")
    decisions = Engine(_two_input_pipeline(calls), CFG, RunDir.open(tmp_path / "r", "t"), {"views": a, "masks": b}).run()
    assert calls == ["views", "masks", "masks"] and decisions[1].reason == "its inputs changed"
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert sorted(manifest["inputs"]) == ["input.masks", "input.views"]


def test_missing_named_input_is_one_line_naming_the_key(tmp_path):
    a = tmp_path / "views.txt"
    a.write_text("3")
    with pytest.raises(InputError) as err:
        Engine(_two_input_pipeline([]), CFG, RunDir.open(tmp_path / "r", "t"), {"views": a, "masks": None}).run()
    assert str(err.value) == "this pipeline needs input.masks, which is not set; pass input.masks=PATH"


def test_scene_frame_maps_the_normalised_frame_to_the_world(tmp_path):
    lo, hi = np.array([1.0, -2.0, 0.0]), np.array([3.0, 2.0, 1.0])
    frame = SceneFrame.normalising(lo, hi)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    local = frame.inverse().apply(corners)
    np.testing.assert_allclose(np.linalg.norm(local, axis=1), 1.0)  # the box's corners on the unit sphere
    np.testing.assert_allclose(frame.apply(local), corners)
    assert frame.scale == pytest.approx(np.linalg.norm(hi - lo) / 2)
    frame.save(tmp_path / "scene_frame.json")
    assert json.loads((tmp_path / "scene_frame.json").read_text())["to_world"][0][3] == pytest.approx(2.0)
    shear = np.eye(4)
    shear[0, 1] = 0.5
    with pytest.raises(InputError, match="not a similarity"):
        SceneFrame(shear)


def test_camera_set_refuses_images_of_the_wrong_size():
    views = _views()
    with pytest.raises(InputError, match=r"CameraSet.images is \(3, 5, 8, 3\), expected \(3, 6, 8, 3\)"):
        CameraSet(views.cameras, torch.zeros(3, 5, 8, 3))
    sub = views[[2, 0]]
    assert sub.names == ["img2", "img0"] and torch.equal(sub.images[1], views.images[0])


def test_camera_set_keeps_normals_through_index_move_and_npz(tmp_path):
    v = _views()
    n = torch.nn.functional.normalize(torch.randn(3, 6, 8, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    n[0, 2, 3] = 0.0  # unknown
    views = CameraSet(v.cameras, v.images, v.masks, v.depths, v.names, n)
    assert torch.equal(views[[2, 0]].normals, n[[2, 0]]) and torch.equal(views[1:].normals, n[1:])
    assert torch.equal(views.to("cpu").normals, n)
    back = CameraSet.load(views.save(tmp_path / "views.npz"))
    assert back.normals.dtype == torch.float32 and torch.equal(back.normals, n) and torch.equal(back.depths, v.depths)
    assert CameraSet.load(v.save(tmp_path / "plain.npz")).normals is None  # files without normals still load
    with pytest.raises(InputError, match=r"CameraSet.normals is \(3, 6, 8, 1\), expected \(3, 6, 8, 3\)"):
        CameraSet(v.cameras, v.images, normals=torch.zeros(3, 6, 8, 1))
    with pytest.raises(InputError, match="expected float unit vectors"):
        CameraSet(v.cameras, v.images, normals=torch.zeros(3, 6, 8, 3, dtype=torch.int64))


def test_orbit_views_follow_the_front_and_scheduled_ranges():
    from layerforge.models.view_sampling import FRONT_AZIMUTH_DEG, OrbitViews

    sampler = OrbitViews(64, 16, 16, elevation_deg=(5.0, [100, 30.0, 80.0, 100]), azimuth_deg=(-10.0, 10.0),
                         distance=(2.0, 2.0))
    early, late = sampler.sample(0, torch.Generator().manual_seed(0)), sampler.sample(100, torch.Generator().manual_seed(0))
    assert early.elevation_deg.max() <= 30.0 < late.elevation_deg.max() <= 80.0
    assert early.azimuth_deg.abs().max() <= 10.0
    centres = torch.linalg.inv(early.cameras.world_to_camera)[:, :3, 3]
    # "front" views sit on the -Y side of the object (Blender's Front view looks along +Y)
    assert FRONT_AZIMUTH_DEG == -90.0 and bool((centres[:, 1] < -1.5).all()), centres[:4]


def test_dataset_views_draw_distinct_views_reproducibly():
    from layerforge.models.view_sampling import DatasetViews

    views = _views()
    a = DatasetViews(views, 2).sample(0, torch.Generator().manual_seed(3))
    b = DatasetViews(views, 2).sample(0, torch.Generator().manual_seed(3))
    assert a.names == b.names and len(set(a.names)) == 2
    assert DatasetViews(views, 10).sample(0, torch.Generator()).names == views.names
