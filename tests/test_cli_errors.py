"""Every bad value is one line before anything runs; odd paths work; a folder with a bad mesh
delivers the good ones; a stopped run says how to resume; collision naming for game engines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trimesh

from layerforge.pipelines.bsp import part_name

REPO = Path(__file__).resolve().parent.parent
TINY = [
    "prepare.point_counts={16: 1024, 32: 2048, 64: 2048}",
    "model.c=16",
    "extract.grid_resolution=32",
    "evaluate.samples=1024",
    "evaluate.edge_samples=2048",
    "export.preview_size=64",
    "fit.schedule=[{phase: 0, resolution: 64, steps: 10}, {phase: 1, resolution: 64, steps: 10}]",
    "device=cpu",
    "quiet=true",
]


def _cli(*args: str, wait: bool = True):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "layerforge.cli", *args]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("seed=abc", "seed"),
        ("model.c=-3", "model.c=-3 is invalid"),
        ("model.c=0", "model.c=0 is invalid"),
        ("fit.kdop_directions=5", "fit.kdop_directions=5 is invalid: expected one of 3, 9, 13"),
        ("fit.lr=nan", "fit.lr=nan is invalid: expected a finite number > 0"),
        ("fit.schedule=[{phase: 7, resolution: 64, steps: 1}]", "fit.schedule[0].phase=7 is invalid"),
        ("export.formats=[glb,fbx]", "export.formats entry=fbx is invalid"),
        ("input_up_axis=X", "input_up_axis=X is invalid"),
        ("fit.lr=fast", "fit.lr"),
    ],
)
def test_bad_config_values_are_one_line_before_anything_runs(tmp_path, override, expected):
    proc = _cli("run", "bsp", override, f"out={tmp_path}", "run=x")
    lines = _lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "bsp").exists()


def test_paths_with_spaces_and_non_ascii_letters_are_accepted(tmp_path):
    folder = tmp_path / "ünï data"
    folder.mkdir()
    src = folder / "stühl ä.ply"
    trimesh.creation.box(extents=(0.4, 0.5, 0.9)).export(src)
    proc = _cli("run", "bsp", f"input={src}", f"out={tmp_path / 'out put'}", "run=ü", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "run   prepare      never ran" in proc.stdout


@pytest.mark.slow
def test_folder_with_a_bad_mesh_delivers_the_good_ones_and_exits_non_zero(tmp_path):
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    trimesh.creation.box(extents=(0.4, 0.5, 0.9)).export(shapes / "crate.ply")
    (shapes / "broken.obj").write_text("")  # empty
    trimesh.creation.cylinder(radius=0.2, height=0.6).export(shapes / "post.ply")
    proc = _cli("run", "bsp", f"input={shapes}", f"out={tmp_path / 'out'}", "run=r", "export.formats=[glb]",
                "export.collision_naming=ue", *TINY)
    assert proc.returncode == 2, proc.stderr
    lines = _lines(proc.stderr)
    assert any("broken.obj" in ln and "empty" in ln.lower() for ln in lines[:-1]), proc.stderr  # the item, as it happened
    assert lines[-1].startswith("error: 1 item(s) failed (broken.obj") and "delivered" in lines[-1], lines[-1]
    export = tmp_path / "out" / "bsp" / "r" / "export"
    assert (export / "crate.glb").is_file() and (export / "post.glb").is_file()
    metrics = json.loads((export / "metrics.json").read_text())
    assert sorted(metrics) == ["crate", "post"]
    recorded = json.loads((tmp_path / "out" / "bsp" / "r" / "manifest.json").read_text())["stages"]["extract"]["metrics"]
    assert recorded["convexes"] == sum(m["convexes"] for m in metrics.values()) and recorded["qhull_failed"] == 0

    from layerforge.assets.gltf import read_gltf

    names = [p.name for p in read_gltf(export / "crate.glb").parts]
    assert names and all(n.startswith("UCX_crate_") for n in names), names


@pytest.mark.slow
def test_sigterm_says_the_exact_command_to_resume(tmp_path):
    long_fit = "fit.schedule=[{phase: 0, resolution: 64, steps: 100000}]"
    proc = _cli("run", "bsp", f"out={tmp_path / 'out'}", *TINY, long_fit, wait=False)  # no run=: a timestamp
    deadline = time.time() + 120
    runs = tmp_path / "out" / "bsp"
    while time.time() < deadline:
        manifests = list(runs.glob("*/manifest.json")) if runs.exists() else []
        if manifests and json.loads(manifests[0].read_text())["stages"].get("fit", {}).get("status") == "running":
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    run_name = manifests[0].parent.name
    last = _lines(err)[-1]
    assert last.startswith("interrupted; resume with: layerforge run bsp ") and last.endswith(f"run={run_name}"), last
    manifest = json.loads(manifests[0].read_text())
    assert manifest["stages"]["fit"]["status"] == "interrupted" and manifest["command"] == last.split("resume with: ")[1]


def test_collision_names_follow_each_engine():
    assert part_name("chair", 3, 12, "ue") == "UCX_chair_03"
    assert part_name("chair", 3, 120, "ue") == "UCX_chair_003"
    assert part_name("chair", 3, 12, "godot") == "chair_03-convcolonly"
    assert part_name("chair", 3, 12, "none") == "convex_003"


@pytest.mark.slow
def test_a_run_reads_another_runs_deliverables(tmp_path):
    out = tmp_path / "out"
    src = tmp_path / "crate.ply"
    trimesh.creation.box(extents=(0.4, 0.5, 0.9)).export(src)
    first = _cli("run", "bsp", f"input={src}", f"out={out}", "run=a", *TINY)
    assert first.returncode == 0, first.stderr
    chained = _cli("run", "bsp", "input=run:bsp/a", f"out={out}", "run=b", "export.formats=[glb]", *TINY)
    assert chained.returncode == 0, chained.stderr
    metrics = json.loads((out / "bsp" / "b" / "export" / "metrics.json").read_text())
    assert list(metrics) == ["crate"] and metrics["crate"]["convexes"] >= 1  # glb/obj/usda of one object: read once
    manifest = json.loads((out / "bsp" / "b" / "manifest.json").read_text())
    assert manifest["inputs"]["input"]["path"] == str((out / "bsp" / "a" / "export").resolve())

    for ref, expected in (("run:bsp/nope", "does not exist"), ("run:bsp", "is not run:<pipeline>/<run>"),
                          ("run:bsp/a#nothing", "has no finished artifact 'nothing'; pick one of: ")):
        proc = _cli("run", "bsp", f"input={ref}", f"out={out}", "run=c", "--dry-run", *TINY)
        lines = _lines(proc.stderr)
        assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr
    proc = _cli("run", "bsp", "input=run:bsp/a#shapes", f"out={out}", "run=c", "--dry-run", *TINY)
    assert proc.returncode == 0, proc.stderr
