"""Inputs are read the way Blender's default importers read them, so that an input and our
deliverables imported side by side in Blender overlay.

Every file here is written by Blender itself (bpy's default exporters, no option changed) or
ships in a package none of us wrote (pymeshlab's scans); nothing is written by our writers.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from assets_fixtures import bpy_load, bpy_world_mesh
from scipy.spatial import cKDTree

from layerforge.assets.mesh_io import read_mesh
from layerforge.pipelines import registry
from layerforge.pipelines.engine import Engine
from layerforge.pipelines.rundir import RunDir

# An L-shaped solid with three different extents (1.2 x 0.5 x 1.6 m), away from the origin:
# any swapped or flipped axis moves its bounding box.
_L_BOXES = [((2.0, -1.0, 0.5), (3.2, -0.5, 0.9)), ((2.0, -1.0, 0.9), (2.5, -0.5, 2.1))]


def _l_shape_in_blender(name: str = "ell"):
    """Build the L in an empty Blender scene (world +Z up, metres); return bpy."""
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    verts, faces = [], []
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    for lo, hi in _L_BOXES:  # two touching boxes: fine for a winding-number inside test
        base = len(verts)
        verts += [(x, y, z) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
        faces += [tuple(base + i for i in q) for q in quads]
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(verts, [], faces)
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj
    return bpy


def _export(bpy, path: Path, **options) -> Path:
    """Write the open scene with Blender's exporter for ``path``'s suffix, default options unless given."""
    suffix = path.suffix.lower()
    if suffix == ".obj":
        bpy.ops.wm.obj_export(filepath=str(path), **options)
    elif suffix == ".ply":
        bpy.ops.wm.ply_export(filepath=str(path), **options)
    elif suffix == ".stl":
        bpy.ops.wm.stl_export(filepath=str(path), **options)
    elif suffix == ".glb":
        bpy.ops.export_scene.gltf(filepath=str(path), **options)
    else:
        bpy.ops.wm.usd_export(filepath=str(path), **options)
    assert path.is_file()
    return path


def _blender_file(tmp_path: Path, suffix: str, **options) -> Path:
    return _export(_l_shape_in_blender(), tmp_path / f"ell{suffix}", **options)


def _same_points(a: np.ndarray, b: np.ndarray, tol: float = 1e-5) -> None:
    """Every point of a has one of b within tol, and back (vertex order and duplication may differ)."""
    for p, q in ((a, b), (b, a)):
        d, _ = cKDTree(q).query(p)
        assert d.max() < tol, f"max distance {d.max():.3g} m"


# USD written Y-up in centimetres (Blender's USD exporter with its axis and unit options), so
# both of its declarations are honoured, not only the defaults.
_FORMATS = {
    "obj": (".obj", {}),
    "glb": (".glb", {}),
    "ply": (".ply", {}),
    "stl": (".stl", {}),
    "usd": (".usda", {}),
    "usd_y_up_cm": (".usda", {"convert_orientation": True, "export_global_forward_selection": "NEGATIVE_Z",
                              "export_global_up_selection": "Y", "convert_scene_units": "CENTIMETERS"}),
}


@pytest.mark.parametrize("fmt", list(_FORMATS))
def test_reader_matches_blenders_default_importer(tmp_path, fmt):
    suffix, options = _FORMATS[fmt]
    path = _blender_file(tmp_path, suffix, **options)
    ours = read_mesh(path).vertices.astype(np.float64)
    blender, _ = bpy_world_mesh(path)
    _same_points(ours, blender)
    lo = np.min([b[0] for b in _L_BOXES], 0)
    hi = np.max([b[1] for b in _L_BOXES], 0)
    np.testing.assert_allclose(ours.min(0), lo, atol=1e-5)  # where it was built, upright, in metres
    np.testing.assert_allclose(ours.max(0), hi, atol=1e-5)


def _pymeshlab_sample(name: str) -> Path:
    # located, not imported: pymeshlab's bundled Embree stops bpy from loading in this process
    spec = importlib.util.find_spec("pymeshlab")
    assert spec is not None and spec.origin, "pymeshlab is part of the locked environment"
    found = sorted(Path(spec.origin).parent.rglob(name))
    assert found, f"{name} not found in the pymeshlab wheel"
    return found[0]


@pytest.mark.parametrize("name", ["bunny10k_textured.obj", "airplane.obj"])
def test_real_scans_read_as_blender_reads_them(name):
    path = _pymeshlab_sample(name)
    ours = read_mesh(path).vertices.astype(np.float64)
    blender, _ = bpy_world_mesh(path)
    _same_points(ours, blender, tol=1e-4 * np.linalg.norm(np.ptp(blender, 0)))


def test_bunny_stands_upright():
    # the Stanford bunny's file is +Y up; Blender (and so we) stand it on its feet: its height is along +Z
    lo, hi = read_mesh(_pymeshlab_sample("bunny10k_textured.obj")).bounds()
    extent = hi - lo
    assert extent[2] > extent[1], extent


def test_up_axis_override_reads_as_stored(tmp_path):
    path = _blender_file(tmp_path, ".obj")
    stored = read_mesh(path, up_axis="Z").vertices.astype(np.float64)
    auto = read_mesh(path).vertices.astype(np.float64)
    # file (x, y, z) = world (x, z, -y): read as stored, Z comes out as -world y
    _same_points(stored, np.stack([auto[:, 0], auto[:, 2], -auto[:, 1]], 1))


# ---------------------------------------------------------------- end to end, through Blender

TINY = [
    "prepare.point_counts={16: 1024, 32: 2048, 64: 2048}",
    "model.c=16",
    "extract.grid_resolution=32",
    "evaluate.samples=2048",
    "evaluate.edge_samples=4096",
    "export.preview_size=64",
    "fit.schedule=[{phase: 0, resolution: 64, steps: 10}, {phase: 1, resolution: 64, steps: 10}]",
    "device=cpu",
    "quiet=true",
]


def _samples(verts: np.ndarray, faces: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n area-uniform surface samples of a triangle mesh."""
    tri = verts[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(faces), n, p=area / area.sum())
    u, v = rng.random((2, n))
    flip = u + v > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    t = tri[pick]
    return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])


def _chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """BSP-Net's CD: mean squared nearest distance, both directions summed."""
    return float((cKDTree(b).query(a)[0] ** 2).mean() + (cKDTree(a).query(b)[0] ** 2).mean())


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["obj", "glb", "ply", "stl", "usd_y_up_cm"])
def test_bsp_deliverables_overlay_their_input_in_blender(tmp_path, fmt):
    torch.set_num_threads(2)
    suffix, options = _FORMATS[fmt]
    src = _blender_file(tmp_path, suffix, **options)
    cfg = registry.load_config("bsp", [*TINY, f"input={src}", f"out={tmp_path / 'out'}", "run=r"])
    Engine(registry.build(cfg), cfg, RunDir.open(tmp_path / "out" / "bsp" / "r", "bsp"), src).run()
    export = tmp_path / "out" / "bsp" / "r" / "export"
    cd_pipeline = json.loads((export / "metrics.json").read_text())["ell"]["cd"]

    v_in, f_in = bpy_world_mesh(src)
    diag = float(np.linalg.norm(np.ptp(v_in, 0)))
    voxel = diag / 64  # prepare's grid: 64 cells across the normalised bounding box (diagonal 1)
    ref = _samples(v_in, f_in, 8192, seed=0) / diag
    for name in ("ell.glb", "ell.obj", "ell.usda", "ell.blend"):
        v, f = bpy_world_mesh(export / name)
        cd = _chamfer(_samples(v, f, 8192, seed=1) / diag, ref)
        assert cd <= 2 * cd_pipeline, f"{name} from {fmt}: Blender CD {cd:.3g} vs the pipeline's {cd_pipeline:.3g}"
        np.testing.assert_allclose(v.min(0), v_in.min(0), atol=voxel, err_msg=f"{name} from {fmt}")
        np.testing.assert_allclose(v.max(0), v_in.max(0), atol=voxel, err_msg=f"{name} from {fmt}")
    bpy_load(src)  # leave Blender with a plain scene for the next test
