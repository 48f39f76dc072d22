"""mesh_report against exact figures: a box's area and volume, OBJ's +Y up read as Blender does, an open surface."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh

from layerforge.pipelines import registry
from layerforge.pipelines.engine import Engine
from layerforge.pipelines.rundir import RunDir


def _report(tmp_path: Path, mesh_path: Path) -> dict:
    cfg = registry.load_config("mesh_report", [f"input={mesh_path}", f"out={tmp_path / 'out'}", "run=r", "quiet=true"])
    run_dir = RunDir.open(tmp_path / "out" / "mesh_report" / "r", "mesh_report")
    Engine(registry.build(cfg), cfg, run_dir, mesh_path).run()
    return json.loads((run_dir.export_dir / "report.json").read_text())


def test_box_figures_are_exact_and_obj_is_read_y_up(tmp_path):
    a, b, c = 1.0, 0.5, 0.25  # x, y, z in the OBJ file; Blender reads OBJ's +Y as up (+Z)
    path = tmp_path / "box.obj"
    trimesh.creation.box(extents=(a, b, c)).export(path)
    report = _report(tmp_path, path)
    assert report["watertight"] is True and report["faces"] == 12
    assert report["area_m2"] == pytest.approx(2 * (a * b + b * c + c * a), rel=1e-6)
    assert report["volume_m3"] == pytest.approx(a * b * c, rel=1e-6)
    np.testing.assert_allclose([report["size_x_m"], report["size_y_m"], report["size_z_m"]], [a, c, b], rtol=1e-6)


def test_an_open_surface_has_no_volume(tmp_path):
    box = trimesh.creation.box()
    open_box = trimesh.Trimesh(box.vertices, box.faces[:-2])  # one side missing
    path = tmp_path / "open.ply"
    open_box.export(path)
    report = _report(tmp_path, path)
    assert report["watertight"] is False and report["volume_m3"] is None
    assert report["area_m2"] == pytest.approx(5.0, rel=1e-6)
