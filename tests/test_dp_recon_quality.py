"""dp_recon quality: the default (fast) config on 10 views of the built-in 3-object scene, no prior.

The scene is the one ``layerforge run dp_recon`` uses with no input (a box, a sphere and a
cylinder on a checker ground, 64x48, rendered by Blender's Cycles); prepare keeps 10 of its 30
training views (DP-Recon's sparse setting) and scores on its 6 held-out views. One CLI run
(about 4 minutes on 2 CPU cores) feeds every test here.

Measured (seed 0, 2026-12-02, 2-core CPU; bounds leave a margin for BLAS and thread-count
differences between machines):

- object meshes against the generated primitives, visible surface (z > 5 mm), read back from
  the GLB: Chamfer-L1 box 1.32 cm, sphere 0.55 cm, cylinder 0.80 cm; F-score at 2 cm (the
  paper's 5 cm on rooms, scaled to objects 30-46 cm across) 0.80 / 1.00 / 0.94;
- held-out mask IoU of the textured meshes re-rendered: box 0.97, sphere 0.96, cylinder 0.92;
- held-out PSNR of the textured meshes inside each object's mask: 21.1 / 22.0 / 22.1 dB; over
  the whole image 17.7 dB (the checker ground is not resolved by the CPU-sized background field).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_runs import run_cli
from scene_metrics import GROUND_CUT_M, chamfer_l1, fscore, gt_points, surface_points

FSCORE_THRESHOLD_M = 0.02


def _cli(*args: str):
    return run_cli(*args, timeout=1800)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, Path]:
    from layerforge.assets.synthetic_scene import cached_toy_scene
    from layerforge.pipelines.inputs import BUILTIN_SCENES

    root = tmp_path_factory.mktemp("dp_recon_quality")
    scene = cached_toy_scene(root / "scenes", **BUILTIN_SCENES["toy_scene"])
    proc = _cli("run", "dp_recon", f"input={scene}", f"out={root}", "run=q", "device=cpu", "quiet=true",
                "export.formats=[glb,obj]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return scene, root / "dp_recon" / "q"


@pytest.mark.slow
def test_object_meshes_match_the_ground_truth_primitives(fitted):
    from layerforge.assets.gltf import read_gltf

    scene, run = fitted
    assert json.loads((run / "manifest.json").read_text())["stages"]["prepare"]["metrics"]["train_views"] == 10
    parts = {p.name: p for p in read_gltf(run / "export" / "scene.glb").parts}
    gt = json.loads((scene / "gt" / "scene.json").read_text())
    figures = {}
    for obj in gt["objects"]:
        part = parts[obj["name"]]
        mesh = part.geometry.transformed(part.transform)
        ours = surface_points(mesh.vertices, mesh.faces)
        ours, truth = ours[ours[:, 2] > GROUND_CUT_M], gt_points(scene, obj["name"])
        figures[obj["name"]] = (chamfer_l1(ours, truth), fscore(ours, truth, FSCORE_THRESHOLD_M))
    print("chamfer_l1_m, fscore@2cm", figures)
    for name, (cd, f) in figures.items():
        assert cd < 0.02, (name, figures)  # 2 cm on objects 30-46 cm across
        assert f > 0.7, (name, figures)


@pytest.mark.slow
def test_held_out_masks_and_colours_of_the_textured_meshes(fitted):
    _, run = fitted
    m = json.loads((run / "export" / "metrics.json").read_text())
    print(m)
    assert m["views"] == 6
    for name in ("box", "sphere", "cylinder"):
        assert m[f"iou_{name}"] > 0.85, (name, m)
        assert m[f"psnr_{name}"] > 19.0, (name, m)
    assert m["psnr"] > 16.0 and np.isfinite(m["ssim"])
