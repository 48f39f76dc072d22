"""The ``mesh_report`` pipeline: one mesh read as Blender reads it, measured, reported.

    report -> export/report.json: vertices, faces, parts, size in metres along x/y/z (+Z up),
              surface area (m^2), volume (m^3, when the surface is closed), watertightness

A pre-flight check of an asset folder before a long batch (``layerforge batch mesh_report
inputs=assets/``: batch.csv lists every file's size and whether it is closed, and the corrupt
ones with their errors), and the trivial pipeline of benchmarks/batch.py.
"""

from __future__ import annotations

import logging

import numpy as np
import trimesh

from layerforge.assets.atomic import atomic_write_json
from layerforge.assets.mesh_io import read_asset, up_axis_rule
from layerforge.assets.validation import validate_asset
from layerforge.pipelines.context import StageContext
from layerforge.pipelines.stage import INPUT, Stage

log = logging.getLogger("layerforge")


def report(ctx: StageContext) -> None:
    path = ctx.input(INPUT)
    up_axis = str(ctx.cfg.input_up_axis)
    log.info("input: %s", up_axis_rule(path, up_axis))
    asset = validate_asset(read_asset(path, up_axis=up_axis, validate=False), path)
    mesh = asset.merged_mesh()
    tm = trimesh.Trimesh(mesh.vertices.astype(np.float64), mesh.faces, process=True)
    extent = np.ptp(mesh.vertices, axis=0).astype(float)
    figures = {
        "vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)), "parts": len(asset.parts),
        "size_x_m": float(extent[0]), "size_y_m": float(extent[1]), "size_z_m": float(extent[2]),
        "area_m2": float(tm.area), "watertight": bool(tm.is_watertight),
        "volume_m3": float(abs(tm.volume)) if tm.is_watertight else None,
    }
    result = {"input": path.name, "up_axis": up_axis_rule(path, up_axis), **figures}
    atomic_write_json(ctx.output("report", ".json"), result)
    atomic_write_json(ctx.export_path("report.json"), result)
    ctx.record(**{k: v for k, v in figures.items() if v is not None})


STAGES = {"report": Stage("report", report, needs=(INPUT,), makes=("report",), config_keys=("input_up_axis",))}
