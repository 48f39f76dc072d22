"""The layerpano3d pipeline end to end on builtin:layered_room (an analytic room, known answers), at smoke sizes.

What this checks: every stage runs through the engine; the instances land in their true depth
layers; the completed background is the true room shell behind the objects; the deliverables
(one Inria 3DGS PLY per layer and merged, meshes per layer) read back with our reader, with
plyfile and in Blender's default glTF importer, upright and at true scale; a kill in gaussians
resumes to the same result; a prompt runs through a tiny random Stable Diffusion with a seam
no worse than the interior; bad inputs are one line and leave earlier outputs alone. The
novel-view quality bounds are in test_layerpano3d_quality.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import kill_when, run_cli

SMOKE = [
    "gaussians.view_size=32", "gaussians.steps_first=40", "gaussians.steps_later=30", "gaussians.stride=4",
    "gaussians.checkpoint_every=10", "gaussians.densify.refine_start_iter=10", "gaussians.densify.refine_every=10",
    "export.preview_size=32", "export.walk_frames=3", "device=cpu", "quiet=true",
    # the ids are exact, so the dilation only needs to cover antialiased edges (paper: 50 px at 1440 wide,
    # 9 px here, which hides the whole +X wall behind the near sphere and the far box)
    "completion.mask_dilation_px=16",
]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("layerpano3d")


@pytest.fixture(scope="module")
def smoke(out) -> Path:
    proc = run_cli("run", "layerpano3d", f"out={out}", "run=r", *SMOKE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "layerpano3d" / "r"


@pytest.fixture(scope="module")
def room(out, smoke):
    from layerforge.models.layerpano3d.synthetic import room_from_truth

    folder = next((out / ".cache" / "scenes").glob("layered_room-*"))
    return folder, room_from_truth(folder / "truth.json")


def _shell_distance(points: np.ndarray, room) -> np.ndarray:
    """[N] distance of points to the nearest plane of the room box (metres)."""
    lo, hi = np.asarray(room.room_min), np.asarray(room.room_max)
    return np.minimum(np.abs(points - lo), np.abs(points - hi)).min(axis=1)


def test_instances_land_in_their_true_layers(smoke, room):
    _, scene = room
    summary = json.loads((smoke / "stages" / "layering" / "layers.json").read_text())
    truth = {o.instance: o.layer for o in scene.objects}
    assert summary["source"] == "given" and summary["layers"] == len(set(truth.values())) == 2
    assert {i["id"]: i["layer"] for i in summary["instances"]} == truth
    centres = summary["centres_m"]
    assert centres == sorted(centres)  # layer 0 is the nearest, in metres


def test_completed_background_is_the_room_shell_behind_the_objects(smoke, room):
    """The depth behind every object, completed from its surroundings, lands on the true walls."""
    from layerforge.renderers.panorama import equirect_directions

    _, scene = room
    done = np.load(smoke / "stages" / "completion" / "completed.npz")
    ids = np.load(smoke / "stages" / "layering" / "layers.npz")["ids"]
    H, W = ids.shape
    dirs = equirect_directions(H, W).numpy()
    for instance in sorted(set(np.unique(ids).tolist()) - {0}):
        behind = (dirs * done["depth"][-1][..., None])[ids == instance]
        dist = _shell_distance(behind, scene)
        assert np.median(dist) < 0.01 and np.percentile(dist, 95) < 0.05, (instance, np.median(dist), dist.max())
        # without completion those pixels are the object, metres in front of the walls
        before = (dirs * done["depth"][0][..., None])[ids == instance]
        assert np.median(_shell_distance(before, scene)) > 0.3


def test_gaussian_plys_round_trip_and_load_in_the_inria_layout(smoke):
    from plyfile import PlyData

    from layerforge.assets.splat_ply import inria_properties, read_splat_ply

    metrics = json.loads((smoke / "export" / "metrics.json").read_text())
    arrays = np.load(smoke / "stages" / "gaussians" / "gaussians.npz")
    total = 0
    for t, (name, count) in enumerate(sorted(metrics["gaussians"].items())):
        path = smoke / "export" / "layers" / f"{name}.ply"
        ply = PlyData.read(str(path))
        assert [p.name for p in ply["vertex"].properties] == inria_properties(3)
        assert ply["vertex"].count == count
        cloud = read_splat_ply(path)
        key = f"layer_{t:02d}"
        assert np.array_equal(cloud.means, arrays[f"{key}/means"])
        assert np.array_equal(cloud.opacity_logits, arrays[f"{key}/opacities"])
        assert np.array_equal(cloud.sh[:, 1:], arrays[f"{key}/shN"])
        total += count
    assert len(read_splat_ply(smoke / "export" / "scene.ply")) == total
    frame = json.loads((smoke / "export" / "scene_frame.json").read_text())
    assert np.allclose(np.asarray(frame["to_world"]).reshape(4, 4), np.eye(4))
    assert all(v > 5.0 for v in metrics["training_psnr"].values())


def test_layer_meshes_open_in_blender_upright_at_true_scale(smoke, room):
    from assets_fixtures import bpy_load

    _, scene = room
    bpy = bpy_load(smoke / "export" / "meshes" / "layers.glb")
    objects = {o.name: o for o in bpy.data.objects if o.type == "MESH"}
    assert {"layer_00_background", "layer_01", "layer_02"} <= set(objects)
    bg = objects["layer_00_background"]
    co = np.empty(len(bg.data.vertices) * 3)
    bg.data.vertices.foreach_get("co", co)
    m = np.array(bg.matrix_world)
    world = co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]
    # the room is 8.5 x 7.5 x 3.1 m, the floor 1.5 m below the camera (+Z up in Blender)
    assert np.allclose(world.min(0), scene.room_min, atol=0.05) and np.allclose(world.max(0), scene.room_max, atol=0.05)
    assert np.median(_shell_distance(world, scene)) < 0.01
    assert bg.data.color_attributes, "the layer meshes carry vertex colours"


def test_kill_in_gaussians_resumes_to_the_same_result(out, smoke):
    run = out / "layerpano3d" / "killed"
    proc = run_cli("run", "layerpano3d", f"out={out}", "run=killed", *SMOKE, wait=False)
    kill_when(proc, run / "stages" / "gaussians" / "layer_01" / "checkpoint.pt")
    resumed = run_cli("run", "layerpano3d", f"out={out}", "run=killed", *SMOKE)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = np.load(smoke / "stages" / "gaussians" / "gaussians.npz")
    b = np.load(run / "stages" / "gaussians" / "gaussians.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        assert np.array_equal(a[key], b[key]), key


def _copy_room(room, tmp_path: Path) -> Path:
    folder, _ = room
    dst = tmp_path / "room"
    shutil.copytree(folder, dst)
    return dst


def test_bad_inputs_are_one_line_and_keep_earlier_outputs(out, room, tmp_path):
    from PIL import Image

    src = _copy_room(room, tmp_path)
    cases = []
    wide = tmp_path / "wide.png"
    Image.new("RGB", (300, 100)).save(wide)
    cases.append(([f"input={wide}"], "not an equirectangular 2:1"))
    small = tmp_path / "small.npy"
    np.save(small, np.ones((10, 20), np.float32))
    cases.append(([f"input={src / 'pano.png'}", f"depth={small}"], "the panorama"))
    nan = tmp_path / "nan.npy"
    d = np.load(src / "pano_depth.npy")
    d[3, 4] = np.nan
    np.save(nan, d)
    cases.append(([f"input={src / 'pano.png'}", f"depth={nan}"], "NaN"))
    cases.append(([f"input={tmp_path / 'missing.png'}"], "does not exist"))
    cases.append((["input=null"], "needs a panorama or a prompt"))
    for args, words in cases:
        proc = run_cli("run", "layerpano3d", f"out={out}", "run=bad", *SMOKE, *args)
        assert proc.returncode == 2, (args, proc.stderr[-1500:])
        assert "Traceback" not in proc.stderr and words in proc.stderr, (args, proc.stderr[-800:])
    ok = run_cli("run", "layerpano3d", f"out={out}", "run=bad2", *SMOKE, f"input={src}")
    assert ok.returncode == 0, ok.stderr[-1500:]
    before = (out / "layerpano3d" / "bad2" / "export" / "scene.ply").read_bytes()
    proc = run_cli("run", "layerpano3d", f"out={out}", "run=bad2", *SMOKE, f"input={src}", f"depth={nan}")
    assert proc.returncode == 2 and "NaN" in proc.stderr
    assert (out / "layerpano3d" / "bad2" / "export" / "scene.ply").read_bytes() == before


def test_frozen_layers_stay_bit_identical_while_a_later_layer_trains(tmp_path):
    """Layer 1 trains (and densifies) with layer 0 frozen: layer 0 is untouched, layer 1 moves."""
    from engine_toy import run_one_stage

    from layerforge.models.layerpano3d.gaussians import (
        init_layer_gaussians,
        layer_state,
    )
    from layerforge.pipelines.layerpano3d import _train_layer
    from layerforge.pipelines.layerpano3d_config import GaussiansSection
    from layerforge.renderers.panorama import equirect_directions

    H, W = 32, 64
    d = equirect_directions(H, W)
    rgb = (0.5 + 0.4 * torch.sin(5 * d)).clamp(0, 1)
    back = torch.full((H, W), 3.0)
    front = back.clone()
    mask = (d[..., 0] > 0.8)
    front[mask] = 1.5
    layer0 = init_layer_gaussians(rgb, back, torch.ones(H, W, dtype=torch.bool), stride=4)
    before = layer_state(layer0)
    cfg = GaussiansSection(view_size=24, steps_first=30, steps_later=30, stride=2, checkpoint_every=10,
                           densify={"refine_start_iter": 5, "refine_every": 5})
    result = {}

    def work(ctx):
        result["state"] = _train_layer(ctx, cfg, 1, (rgb.numpy(), front.numpy(), mask.numpy()), [layer0])

    run_one_stage(work, tmp_path / "run")
    after = layer_state(layer0)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    init = init_layer_gaussians(rgb, front, mask, stride=2)
    assert len(result["state"]["means"]) > len(init)  # the trainable layer densified
    assert not torch.equal(result["state"]["sh0"][: len(init)], init.params["sh0"].detach())  # and learned


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Tiny random Stable Diffusion (text-to-image and inpainting), DPT and SegFormer, saved like real weights."""
    from guidance.conftest import build_tiny_models
    from transformers import (
        DPTConfig,
        DPTForDepthEstimation,
        DPTImageProcessor,
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    root = tmp_path_factory.mktemp("layerpano3d_models")
    sd = build_tiny_models(root)
    torch.manual_seed(0)
    dpt = DPTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=32,
                    patch_size=8, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 8, 8],
                    fusion_hidden_size=8, reassemble_factors=[4, 2, 1, 0.5], head_hidden_size=8)
    DPTForDepthEstimation(dpt).save_pretrained(root / "dpt")
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(root / "dpt")
    seg = SegformerConfig(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                          num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=3,
                          id2label={0: "sky", 1: "wall", 2: "chair"}, label2id={"sky": 0, "wall": 1, "chair": 2})
    SegformerForSemanticSegmentation(seg).save_pretrained(root / "seg")
    SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "seg")
    return sd, root / "dpt", root / "seg"


def test_a_prompt_runs_every_model_stage_through_the_real_loaders(out, tiny_models):
    """prompt= through a tiny SD (seamless), depth from a tiny DPT over 20 tangent views, instances from a
    tiny SegFormer, completion by a tiny SD inpainter: the same loading paths as real weights."""
    sd, dpt, seg = tiny_models
    proc = run_cli("run", "layerpano3d", f"out={out}", "run=prompt", *SMOKE, "input=null", 'prompt="a quiet room"',
                   f"panorama.model={sd.sd}", "panorama.height=64", "panorama.width=128", "panorama.steps=2",
                   f"depth_estimation.model={dpt}", "depth_estimation.view_size=32",
                   f"layering.segmenter={seg}", f"completion.inpaint_model={sd.inpaint}", "completion.steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = out / "layerpano3d" / "prompt"
    pano = json.loads((run / "stages" / "panorama" / "panorama.json").read_text())
    assert pano["prompt"] == "a quiet room" and (pano["height"], pano["width"]) == (64, 128)
    assert pano["seam_error"] <= 1.5 * pano["interior_column_step"]  # the left/right edge wraps
    assert json.loads((run / "stages" / "depth" / "depth.json").read_text())["source"] == "estimated"
    assert json.loads((run / "stages" / "layering" / "layers.json").read_text())["source"] == "segmenter"
    assert (run / "export" / "scene.ply").is_file()
    bad = run_cli("run", "layerpano3d", f"out={out}", "run=prompt_bad", *SMOKE, "input=null", 'prompt="a room"',
                  f"panorama.model={sd.sd}", "panorama.height=64", "panorama.width=120")
    assert bad.returncode == 2 and "not a multiple of 64" in bad.stderr and "Traceback" not in bad.stderr


def test_a_real_hdri_from_blender_runs_with_the_classical_defaults(out):
    """Blender's CC0 interior HDRI (1024 x 512 EXR, linear radiance), no depth, no ids, no models:
    read and downsampled, the room prior for depth, depth-discontinuity instances (none on the prior),
    one Gaussian layer, deliverables in the panorama frame."""
    import bpy

    exr = Path(bpy.utils.resource_path("LOCAL")) / "datafiles" / "studiolights" / "world" / "interior.exr"
    assert exr.is_file(), exr
    proc = run_cli("run", "layerpano3d", f"out={out}", "run=hdri", *SMOKE, f"input={exr}", "panorama.max_height=32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = out / "layerpano3d" / "hdri"
    pano = json.loads((run / "stages" / "panorama" / "panorama.json").read_text())
    assert (pano["height"], pano["width"]) == (32, 64) and not pano["depth_given"]
    rgb = np.load(run / "stages" / "panorama" / "panorama.npz")["rgb"]
    assert rgb.min() >= 0 and rgb.max() <= 1 and rgb.std() > 0.02  # real content, in range
    assert json.loads((run / "stages" / "depth" / "depth.json").read_text())["source"] == "room prior"
    metrics = json.loads((run / "export" / "metrics.json").read_text())
    assert metrics["layers"] == 0 and list(metrics["gaussians"]) == ["layer_00_background"]
    import trimesh

    mesh = trimesh.load(run / "export" / "meshes" / "layers.glb", force="mesh")
    # glTF is +Y up: the room prior's floor (1.6 m below the camera) is at y = -1.6 in the file
    assert abs(mesh.bounds[0][1] + 1.6) < 0.05, mesh.bounds


def test_layer_meshes_usd_is_z_up_in_metres_with_one_mesh_per_layer(smoke, room):
    from pxr import Usd, UsdGeom

    _, scene = room
    stage = Usd.Stage.Open(str(smoke / "export" / "meshes" / "layers.usda"))
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.z and UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    meshes = {p.GetName(): p for p in stage.Traverse() if p.IsA(UsdGeom.Mesh)}
    assert {"layer_00_background", "layer_01", "layer_02"} <= set(meshes)
    cache = UsdGeom.XformCache()
    bg = meshes["layer_00_background"]
    pts = np.asarray(UsdGeom.Mesh(bg).GetPointsAttr().Get(), np.float64)
    m = np.asarray(cache.GetLocalToWorldTransform(bg), np.float64)  # row-vector convention
    world = pts @ m[:3, :3] + m[3, :3]
    assert np.allclose(world.min(0), scene.room_min, atol=0.05) and np.allclose(world.max(0), scene.room_max, atol=0.05)
