"""The dp_recon pipeline end to end on the generated toy scene (Blender Cycles), at smoke-test sizes.

What this checks: every stage runs through the engine on data we did not render ourselves,
the deliverables are UV-textured and where the scene is (the user's world), Blender's own
importers open them with their textures, a kill in recon, mesh or texture resumes to the same
result, the tiny random diffusion model runs the prior's path, and bad inputs are one line.
Quality bounds are in test_dp_recon_quality.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_runs import kill_when, run_cli

REPO = Path(__file__).resolve().parent.parent
SMOKE = [
    "recon.steps=24", "recon.rays_per_step=64", "recon.eikonal_points=64", "recon.checkpoint_every=4",
    "recon.visibility.start=16", "recon.visibility.resolution=16", "recon.visibility.passes=2",
    "recon.object_violation_start=8", "model.num_samples=8", "model.num_importance=8",
    "model.hashgrid={num_levels:4,features_per_level:2,log2_hashmap_size:10,base_resolution:4,max_resolution:32}",
    "model.hidden=[16]", "model.color_hidden=[16]", "mesh.resolution=24", "mesh.background_resolution=24",
    "mesh.tsdf_voxel=0.05", "mesh.tsdf_image_size=24", "background.height=16", "background.width=32",
    "background.candidates=2", "texture.steps=12", "texture.checkpoint_every=4", "texture.texture_size=64",
    "texture.pano_size=16", "export.preview_size=48", "device=cpu", "quiet=true",
]


_cli = run_cli


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from layerforge.assets.synthetic_scene import cached_toy_scene

    root = cached_toy_scene(tmp_path_factory.mktemp("scenes"), objects=3, width=32, height=24, n_train=10, n_test=2)
    (root / "prompts.json").write_text(json.dumps({"1": "a red wooden box"}))
    return root


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, scene) -> Path:
    out = tmp_path_factory.mktemp("dp_smoke")
    proc = _cli("run", "dp_recon", f"input={scene}", f"out={out}", "run=r", *SMOKE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "dp_recon" / "r"


@pytest.mark.slow
def test_every_stage_delivers_textured_meshes_in_the_users_world(smoke, scene):
    from layerforge.assets.gltf import read_gltf
    from layerforge.assets.mesh_io import read_asset

    run = smoke
    export = run / "export"
    gt = json.loads((scene / "gt" / "scene.json").read_text())
    names = [o["name"] for o in gt["objects"]]
    for ext in ("glb", "obj", "mtl", "usda", "blend"):
        assert (export / f"scene.{ext}").is_file(), ext
    for name in names:  # one textured file per object as well
        assert (export / "objects" / f"{name}.obj").is_file() and (export / "objects" / f"{name}.glb").is_file()
    asset = read_gltf(export / "scene.glb")
    assert sorted(p.name for p in asset.parts) == sorted(["background", *names])
    centre = np.mean([np.asarray(o["to_world"])[:3, 3] for o in gt["objects"]], 0)
    for part in asset.parts:
        mesh = part.geometry.transformed(part.transform)
        tex = mesh.material.base_color_texture
        assert mesh.uvs is not None and tex is not None and tex.shape[:2] == (64, 64), part.name
        assert float(mesh.uvs.min()) >= 0.0 and float(mesh.uvs.max()) <= 1.0
        if part.name != "background":
            lo, hi = mesh.bounds()
            assert np.all(hi > centre - 1.0) and np.all(lo < centre + 1.0), (part.name, lo, hi)
    obj = read_asset(export / "scene.obj")  # the OBJ + MTL + PNGs read back with their textures
    assert all(p.geometry.material is not None and p.geometry.material.base_color_texture is not None
               for p in obj.parts)
    metrics = json.loads((export / "metrics.json").read_text())
    assert {"psnr", "ssim", *(f"iou_{n}" for n in names)} <= set(metrics) and np.isfinite(metrics["psnr"])
    assert json.loads((export / "scene_frame.json").read_text()) == {"to_world": np.eye(4).tolist()}
    from PIL import Image

    strips = sorted((run / "previews").glob("compare_*.png"))
    assert len(strips) == 2  # one per held-out view: input | ours | per object | visibility | SDS weight
    h, w = np.asarray(Image.open(strips[0])).shape[:2]
    assert w == 5 * h * 32 // 24
    assert (run / "previews" / "panorama.png").is_file()
    prep = json.loads((run / "manifest.json").read_text())["stages"]["prepare"]["metrics"]
    assert prep["depth_prior"] and prep["normal_prior"]  # depth from the scene, normals derived from it
    objects = np.load(run / "stages" / "prepare" / "objects.npz")
    assert list(objects["prompts"]) == ["a red wooden box", *(f"a {n}" for n in objects["names"][1:])]
    bg = json.loads((run / "manifest.json").read_text())["stages"]["background"]["metrics"]
    assert bg["chosen"] == int(np.argmin(bg["scores"])) and bg["inpainter"] == "opencv"


@pytest.mark.slow
def test_blender_opens_the_deliverables_with_their_textures(smoke, scene):
    pytest.importorskip("bpy")
    from assets_fixtures import assert_corner_uvs_match, bpy_import

    from layerforge.assets.gltf import read_gltf

    ours = {p.name: p for p in read_gltf(smoke / "export" / "scene.glb").parts}
    gt = json.loads((scene / "gt" / "scene.json").read_text())
    for path in (smoke / "export" / "scene.glb", smoke / "export" / "scene.obj"):
        objs = bpy_import(path)
        meshes = {n: o for n, o in objs.items() if o["type"] == "MESH"}
        assert len(meshes) == 1 + len(gt["objects"]), (path.name, sorted(objs))
        for o in gt["objects"]:
            hit = [info for n, info in meshes.items() if n.startswith(o["name"])]
            assert len(hit) == 1, (o["name"], sorted(meshes))
            centre = (hit[0]["bbox_min"] + hit[0]["bbox_max"]) / 2
            # near its ground-truth place (smoke-sized fit: within 30 cm of the primitive's centre)
            assert np.linalg.norm(centre[:2] - np.asarray(o["to_world"])[:2, 3]) < 0.3, (path.name, o["name"], centre)
            assert hit[0]["images"], (path.name, o["name"])  # the baked texture is loaded
            if path.suffix == ".glb":
                assert_corner_uvs_match(hit[0], ours[o["name"]])  # and mapped the right way up


@pytest.mark.slow
def test_kills_in_recon_mesh_and_texture_resume_to_the_same_result(tmp_path, scene, smoke):
    import torch

    common = [f"input={scene}", f"out={tmp_path}", *SMOKE]
    run = tmp_path / "dp_recon" / "killed"
    stages = run / "stages"
    for marker in (stages / "recon" / "prior" / "checkpoint.pt", stages / "mesh" / ".items",
                   stages / "texture" / "checkpoint.pt"):
        proc = _cli("run", "dp_recon", "run=killed", *common, wait=False)
        kill_when(proc, marker)
        stage = marker.relative_to(stages).parts[0]
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["stages"][stage]["status"] == "running", f"the kill should land inside {stage}"
    resumed = _cli("run", "dp_recon", "run=killed", *common)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at step" in (run / "log.txt").read_text()
    for artifact in ("recon/model.pt", "recon/visibility.pt"):
        a = torch.load(smoke / "stages" / artifact, weights_only=True)
        b = torch.load(stages / artifact, weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), artifact
    m_clean = json.loads((smoke / "export" / "metrics.json").read_text())
    assert m_clean == json.loads((run / "export" / "metrics.json").read_text())


@pytest.mark.slow
def test_the_tiny_random_diffusion_model_runs_the_prior_and_texture_sds(tmp_path, scene):
    sys.path.insert(0, str(REPO / "tests"))
    from guidance.conftest import build_tiny_models

    tiny = build_tiny_models(tmp_path / "models").sd
    proc = _cli("run", "dp_recon", f"input={scene}", f"out={tmp_path}", "run=p", *SMOKE, "recon.steps=20",
                f"recon.prior.model={tiny}", "recon.prior.resolution=16", "recon.prior.views_per_object=1", "recon.prior.latent_size=8",
                "recon.prior.start=16",
                f"texture.sds_model={tiny}", "texture.sds_resolution=16", "texture.sds_latent_size=8", "texture.steps=6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    prior = [json.loads(line) for line in (tmp_path / "dp_recon" / "p" / "stages" / "recon" / "prior" /
                                            "metrics.jsonl").read_text().splitlines()]
    sds = [r["geometry_sds"] for r in prior if "geometry_sds" in r]
    assert len(sds) == 4 and all(np.isfinite(v) and v > 0 for v in sds)
    assert all(np.isfinite(r["total"]) for r in prior)
    texture = [json.loads(line) for line in (tmp_path / "dp_recon" / "p" / "stages" / "texture" /
                                              "metrics.jsonl").read_text().splitlines()]
    assert len(texture) == 6 and all("sds" in r and np.isfinite(r["sds"]) for r in texture)
    assert any(r["sds"] > 0 for r in texture)  # the unseen parts get the RGB prior


def test_bad_inputs_are_one_line(tmp_path, scene):
    proc = _cli("run", "dp_recon", f"input={tmp_path / 'missing'}", f"out={tmp_path}", "run=m", "device=cpu")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "missing" in proc.stderr.strip().splitlines()[-1]
    bad = tmp_path / "bad_prompts"
    import shutil

    shutil.copytree(scene, bad)
    (bad / "prompts.json").write_text("[1, 2")
    proc = _cli("run", "dp_recon", f"input={bad}", f"out={tmp_path}", "run=b", "device=cpu", "quiet=true")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "prompts.json" in proc.stderr and "id -> prompt" in proc.stderr
    proc = _cli("run", "dp_recon", f"input={scene}", f"out={tmp_path}", "run=c", "recon.rays_per_step=100")
    assert proc.returncode != 0 and "multiple of 32" in proc.stderr and "Traceback" not in proc.stderr
