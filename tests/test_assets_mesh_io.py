"""Input mesh readers (OBJ, PLY, STL, OFF, GLB) and validation of what they read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from assets_fixtures import TALL, box, chair_asset  # noqa: F401

import layerforge
from layerforge.assets.gltf import write_glb
from layerforge.assets.mesh_io import read_asset, read_mesh
from layerforge.assets.types import LayeredAsset, Mesh, Part
from layerforge.assets.validation import validate_mesh
from layerforge.errors import InputError

CHAIR = Path(layerforge.__file__).parent / "data" / "chair.obj"


def test_reads_bundled_chair_upright_in_metres():
    mesh = read_mesh(CHAIR)
    lo, hi = mesh.bounds()
    np.testing.assert_allclose(lo, [-0.22, -0.21, 0.0], atol=1e-6)
    np.testing.assert_allclose(hi, [0.22, 0.21, 0.9], atol=1e-6)
    assert mesh.faces.dtype == np.int64 and mesh.vertices.dtype == np.float32
    assert len(mesh.vertices) == 248


@pytest.mark.parametrize("suffix", [".ply", ".stl", ".off"])
def test_trimesh_formats_keep_geometry_and_z_up(tmp_path, suffix):
    import trimesh

    tm = trimesh.creation.box(extents=TALL)
    tm.export(tmp_path / f"box{suffix}")
    mesh = read_mesh(tmp_path / f"box{suffix}")
    np.testing.assert_allclose(mesh.bounds()[1] - mesh.bounds()[0], TALL, atol=1e-6)
    assert len(mesh.faces) == 12
    flipped = read_mesh(tmp_path / f"box{suffix}", up_axis="Y")  # a +Y-up file: its Y becomes our Z
    np.testing.assert_allclose(flipped.bounds()[1] - flipped.bounds()[0], [0.2, 2.0, 0.3], atol=1e-6)


def test_glb_reads_merged_or_layered(tmp_path, chair_asset):
    write_glb(tmp_path / "chair.glb", chair_asset)
    layered = read_asset(tmp_path / "chair.glb")
    assert isinstance(layered, LayeredAsset) and [p.name for p in layered.parts] == ["post", "seat", "cushion"]
    merged = read_mesh(tmp_path / "chair.glb")
    assert isinstance(merged, Mesh)
    assert len(merged.vertices) == 72 and len(merged.faces) == 36
    np.testing.assert_allclose(merged.bounds(), chair_asset.merged_mesh().bounds(), atol=1e-6)


def test_multi_object_obj_from_another_tool(tmp_path):
    (tmp_path / "two.obj").write_text(
        "o first\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 1\nf 1 2 3 4\n"  # a quad: fan-triangulated
        "o second\nv 0 0 2\nv 1 0 2\nv 0 1 2\nf -3 -2 -1\n"  # relative indices
    )
    asset = read_asset(tmp_path / "two.obj")
    assert [p.name for p in asset.parts] == ["first", "second"]
    np.testing.assert_array_equal(asset.part("first").geometry.faces, [[0, 1, 2], [0, 2, 3]])
    np.testing.assert_allclose(asset.part("second").geometry.vertices[:, 2], 2.0)


def _write_obj(path: Path, verts, faces) -> Path:
    lines = [f"v {x} {y} {z}" for x, y, z in verts] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "verts, faces, message",
    [
        ([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [], "no faces"),
        ([[0, 0, 0], [1, 0, 0], [0, "nan", 0], [0, 0, 1]], [[0, 1, 2], [0, 1, 3]], "NaN/Inf"),
        ([[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 0, 0]], [[0, 1, 2], [0, 1, 3]], "zero total area"),
        ([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], [[0, 1, 2], [1, 3, 2]], "flat bounding box"),
        ([[0, 0, 0], [20000, 0, 0], [0, 20000, 0], [0, 0, 20000]], [[0, 1, 2], [0, 1, 3]], "absurdly large"),
        ([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 7]], "missing vertex"),
    ],
)
def test_bad_meshes_give_one_line_input_errors_naming_the_file(tmp_path, verts, faces, message):
    path = _write_obj(tmp_path / "bad.obj", verts, faces)
    with pytest.raises(InputError, match=message) as err:
        read_mesh(path)
    text = str(err.value)
    assert "\n" not in text and "bad.obj" in text and "; " in text  # problem; fix


def test_unreadable_inputs(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_mesh(tmp_path / "nope.obj")
    (tmp_path / "empty.stl").write_bytes(b"")
    with pytest.raises(InputError, match="file is empty"):
        read_mesh(tmp_path / "empty.stl")
    (tmp_path / "mesh.fbx").write_bytes(b"x")
    with pytest.raises(InputError, match="unsupported format .fbx"):
        read_mesh(tmp_path / "mesh.fbx")


def test_splat_ply_read_as_mesh_points_to_the_splat_reader(tmp_path):
    from assets_fixtures import random_cloud

    from layerforge.assets.splat_ply import write_splat_ply

    write_splat_ply(tmp_path / "splat.ply", random_cloud(10, 0))
    with pytest.raises(InputError, match="read_splat_ply"):
        read_mesh(tmp_path / "splat.ply")


def test_flat_parts_allowed_inside_a_3d_asset_but_not_alone():
    floor = Mesh([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]])
    with pytest.raises(InputError, match="flat"):
        validate_mesh(floor, "floor.obj")
    assert validate_mesh(floor, "floor.obj", allow_flat=True) is floor
    from layerforge.assets.validation import validate_asset

    validate_asset(LayeredAsset("room", [Part("floor", floor), Part("box", box())]), "room.glb")
