"""The bsp pipeline end to end: fit -> deliverables in the input's units; train resume after SIGKILL; bad meshes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from layerforge.pipelines import registry
from layerforge.pipelines.engine import Engine
from layerforge.pipelines.rundir import RunDir

REPO = Path(__file__).resolve().parent.parent

# Tiny sizes: the pipeline's real sizes live in configs/pipeline/bsp*.yaml.
TINY = [
    "prepare.point_counts={16: 1024, 32: 2048, 64: 2048}",
    "model.c=24",
    "model.z_dim=32",
    "model.ef_dim=4",
    "model.dec_dims=[32,32,32]",
    "extract.grid_resolution=32",
    "evaluate.samples=2048",
    "evaluate.edge_samples=4096",
    "export.preview_size=96",
    "device=cpu",
    "quiet=true",
]


def l_shape(path: Path, scale: float = 2.0, offset=(5.0, -3.0, 1.0)) -> Path:
    """An L-shaped solid, 2 m tall, away from the origin (to check units and placement)."""
    a = trimesh.creation.box(extents=(1.0, 0.4, 0.4), transform=trimesh.transformations.translation_matrix((0.5, 0.2, 0.2)))
    b = trimesh.creation.box(extents=(0.4, 0.4, 1.0), transform=trimesh.transformations.translation_matrix((0.2, 0.2, 0.5)))
    mesh = trimesh.boolean.union([a, b], engine="manifold")
    mesh.apply_scale(scale)
    mesh.apply_translation(offset)
    mesh.export(path)
    return path


def _engine(tmp_path: Path, input_path: Path, *overrides: str, run: str = "r") -> Engine:
    cfg = registry.load_config("bsp", [*TINY, f"input={input_path}", f"out={tmp_path / 'out'}", f"run={run}", *overrides])
    return Engine(registry.build(cfg), cfg, RunDir.open(tmp_path / "out" / "bsp" / run, "bsp"), input_path)


FIT_SCHEDULE = "fit.schedule=[{phase: 0, resolution: 64, steps: 30}, {phase: 1, resolution: 64, steps: 30}]"


@pytest.mark.slow
def test_fit_l_shape_writes_deliverables_in_input_units(tmp_path):
    torch.set_num_threads(2)
    src = l_shape(tmp_path / "ell.ply")  # PLY is read as stored (+Z up), so trimesh's bounds are world bounds
    engine = _engine(tmp_path, src, FIT_SCHEDULE, "export.formats=[glb,obj,usd]")
    engine.run()
    export = tmp_path / "out" / "bsp" / "r" / "export"
    for name in ("ell.glb", "ell.obj", "ell.mtl", "ell.usda", "metrics.json", "preview.png", "scene_frame.json"):
        assert (export / name).is_file(), name
    assert json.loads((export / "scene_frame.json").read_text()) == {"to_world": np.eye(4).tolist()}  # input's own frame
    metrics = json.loads((export / "metrics.json").read_text())["ell"]
    assert metrics["cd"] < 0.0015, metrics  # the product target, normalised to bbox diagonal 1
    assert metrics["nc"] > 0.85, metrics
    assert 2 <= metrics["convexes"] <= 24

    from layerforge.assets.gltf import read_gltf

    asset = read_gltf(export / "ell.glb")
    assert len(asset.parts) == metrics["convexes"]
    assert all(p.name.startswith("convex_") for p in asset.parts)
    merged = asset.merged_mesh()
    lo, hi = merged.bounds()
    ref = trimesh.load(src)
    # the decomposition sits where the input was, in its units (metres), +Z up
    np.testing.assert_allclose(lo, ref.bounds[0], atol=0.12)
    np.testing.assert_allclose(hi, ref.bounds[1], atol=0.12)
    for part in asset.parts:  # every convex part is watertight on its own
        tm = trimesh.Trimesh(part.geometry.vertices, part.geometry.faces, process=True)
        assert tm.is_watertight and tm.volume > 0

    manifest = json.loads((tmp_path / "out" / "bsp" / "r" / "manifest.json").read_text())
    assert manifest["stages"]["evaluate"]["metrics"]["cd"] == pytest.approx(metrics["cd"])
    assert sorted(manifest["exports"]) == sorted(f"export/{p.name}" for p in export.iterdir() if p.is_file())

    # a fit-mode model has no encoder: infer refuses it in one line
    fit_model = tmp_path / "out" / "bsp" / "r" / "stages" / "fit" / "model" / "ell.pt"
    bad = _cli("run", "bsp", "mode=infer", f"infer.checkpoint={fit_model}", f"input={src}", f"out={tmp_path / 'out'}", "run=i", *TINY)
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert bad.returncode == 2 and len(lines) == 1 and "without an encoder" in lines[0], bad.stderr


def _cli(*args: str, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "layerforge.cli", *args]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


TRAIN = [
    *TINY,
    "mode=train",
    "model.p=96",
    "train.shapes_per_batch=2",
    "train.points_per_step=512",
    "train.checkpoint_every=10",
    "train.lr=0.003",
    "train.schedule=[{phase: 0, resolution: 16, steps: 40}, {phase: 1, resolution: 16, steps: 40}]",
    "export.formats=[glb]",
]


@pytest.mark.slow
def test_train_mode_resumes_after_sigkill_with_identical_model(tmp_path):
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    l_shape(shapes / "ell.obj")
    trimesh.creation.box(extents=(0.5, 1.0, 0.3)).export(shapes / "slab.obj")
    common = [f"input={shapes}", f"out={tmp_path / 'out'}", *TRAIN]

    clean = _cli("run", "bsp", "run=clean", *common)
    assert clean.returncode == 0, clean.stderr

    proc = _cli("run", "bsp", "run=killed", *common, wait=False)
    ckpt = tmp_path / "out" / "bsp" / "killed" / "stages" / "train" / "1_phase1_16" / "checkpoint.pt"
    deadline = time.time() + 300
    while time.time() < deadline and not ckpt.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = json.loads((tmp_path / "out" / "bsp" / "killed" / "manifest.json").read_text())
    assert manifest["stages"]["train"]["status"] == "running", "the kill should land mid-training"

    resumed = _cli("run", "bsp", "run=killed", *common)
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "out" / "bsp" / "clean" / "stages" / "train" / "model" / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "out" / "bsp" / "killed" / "stages" / "train" / "model" / "model.pt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    m_clean = json.loads((tmp_path / "out" / "bsp" / "clean" / "export" / "metrics.json").read_text())
    m_killed = json.loads((tmp_path / "out" / "bsp" / "killed" / "export" / "metrics.json").read_text())
    assert m_clean == m_killed
    assert all(m["convexes"] >= 1 and m["cd"] < 0.1 for m in m_clean.values()), m_clean

    # infer: the trained encoder applied to a mesh it has not seen
    model_pt = tmp_path / "out" / "bsp" / "clean" / "stages" / "train" / "model" / "model.pt"
    new = tmp_path / "new"
    new.mkdir()
    trimesh.creation.box(extents=(0.6, 0.9, 0.4)).export(new / "crate.obj")
    infer = [a for a in TRAIN if a != "mode=train"] + ["mode=infer", f"out={tmp_path / 'out'}", f"input={new / 'crate.obj'}"]
    ran = _cli("run", "bsp", "run=infer", f"infer.checkpoint={model_pt}", *infer)
    assert ran.returncode == 0, ran.stderr
    m_infer = json.loads((tmp_path / "out" / "bsp" / "infer" / "export" / "metrics.json").read_text())
    assert list(m_infer) == ["crate"] and m_infer["crate"]["convexes"] >= 1
    manifest = json.loads((tmp_path / "out" / "bsp" / "infer" / "manifest.json").read_text())
    assert "infer" in manifest["stages"] and "train" not in manifest["stages"]
    for checkpoint, expected in ((tmp_path / "missing.pt", "needs a trained model"), (None, "needs a trained model")):
        bad = _cli("run", "bsp", "run=bad_infer", f"infer.checkpoint={checkpoint or 'null'}", *infer)
        lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
        assert bad.returncode == 2 and len(lines) == 1 and expected in lines[0], bad.stderr


def test_training_that_yields_no_convex_fails_with_one_line_and_keeps_metrics(tmp_path):
    src = l_shape(tmp_path / "ell.obj")
    untrained = [a for a in TRAIN if not a.startswith("train.schedule")]
    untrained.append("train.schedule=[{phase: 1, resolution: 16, steps: 1}]")
    proc = _cli("run", "bsp", f"input={src}", f"out={tmp_path / 'out'}", "run=empty", *untrained)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no convex" in lines[0] and "train longer" in lines[0], proc.stderr
    run = tmp_path / "out" / "bsp" / "empty"
    metrics = json.loads((run / "stages" / "evaluate" / "metrics.json").read_text())  # strict JSON: no NaN
    assert metrics["ell"]["convexes"] == 0 and metrics["ell"]["cd"] is None
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["evaluate"]["status"] == "done" and manifest["stages"]["export"]["status"] == "failed"


def _bad(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("empty.obj", "", "empty"),
        ("nan.obj", "v nan 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 3 4\nf 1 4 2\nf 2 4 3\n", "nan/inf"),
        ("flat.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nf 1 2 3\nf 2 4 3\n", "degenerate"),
    ],
)
def test_bad_meshes_give_one_line_errors(tmp_path, name, text, expected):
    path = _bad(tmp_path, name, text)
    proc = _cli("run", "bsp", f"input={path}", f"out={tmp_path / 'out'}", "run=bad", *TINY)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert name in lines[0] and expected in lines[0].lower(), lines[0]
