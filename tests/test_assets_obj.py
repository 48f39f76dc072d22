"""OBJ + MTL + PNG: relative paths, one object per part, round trip, Blender imports it upright."""

from __future__ import annotations

import numpy as np
import pytest
from assets_fixtures import TALL, assert_corner_uvs_match, bpy_import, chair_asset, checker  # noqa: F401

from layerforge.assets.mesh_io import read_asset, read_mesh
from layerforge.assets.obj import write_obj
from layerforge.errors import InputError


def test_writes_obj_mtl_and_textures_with_relative_paths(tmp_path, chair_asset):
    files = write_obj(tmp_path / "out" / "chair.obj", chair_asset)
    assert files["obj"].name == "chair.obj" and files["mtl"].name == "chair.mtl"
    obj_text = files["obj"].read_text()
    assert "mtllib chair.mtl" in obj_text
    assert [ln.split()[1] for ln in obj_text.splitlines() if ln.startswith("o ")] == ["post", "seat", "cushion"]
    mtl = files["mtl"].read_text()
    maps = [ln.split()[-1] for ln in mtl.splitlines() if ln.startswith(("map_Kd", "map_Bump"))]
    assert maps == ["chair_wood_basecolor.png", "chair_wood_normal.png"]
    assert all((tmp_path / "out" / m).is_file() for m in maps)
    assert "newmtl paint" in mtl and "Pr 0.3" in mtl
    assert not any(p.name.startswith(".") for p in (tmp_path / "out").iterdir())  # no temp files left


def test_round_trip_through_our_reader(tmp_path, chair_asset):
    write_obj(tmp_path / "chair.obj", chair_asset)
    back = read_asset(tmp_path / "chair.obj")
    assert [p.name for p in back.parts] == ["post", "seat", "cushion"]
    for ours, theirs in zip(chair_asset.parts, back.parts):
        world = ours.geometry.transformed(ours.transform)
        got = theirs.geometry.transformed(theirs.transform)
        # OBJ has one vertex per distinct corner: compare as sets of rows
        np.testing.assert_allclose(np.sort(got.vertices, 0), np.sort(world.vertices, 0), atol=1e-5)
        assert len(got.faces) == len(world.faces)
    post = back.part("post").geometry
    src = chair_asset.part("post").geometry
    got_w = post.transformed(back.part("post").transform)
    src_w = src.transformed(chair_asset.part("post").transform)
    order = _match(np.hstack([got_w.vertices, got_w.normals, post.uvs]), np.hstack([src_w.vertices, src_w.normals, src.uvs]))
    np.testing.assert_allclose(post.uvs, src.uvs[order], atol=1e-6)
    np.testing.assert_allclose(post.colors, src.colors[order, :3], atol=1e-4)
    assert post.material.name == "wood" and post.material.roughness == pytest.approx(0.7)
    np.testing.assert_allclose(post.material.base_color_texture, checker(), atol=0.01)
    assert post.material.normal_texture is not None
    merged = read_mesh(tmp_path / "chair.obj")
    np.testing.assert_allclose(merged.bounds(), chair_asset.merged_mesh().bounds(), atol=1e-5)


def _match(got, src):
    """Index into ``src`` rows for each row of ``got`` (position, normal, UV), asserting it is unique."""
    close = np.abs(got[:, None, :] - src[None, :, :]).max(-1) < 1e-5
    assert (close.sum(1) == 1).all()
    return close.argmax(1)


def test_blender_imports_one_object_per_part_upright(tmp_path, chair_asset):
    write_obj(tmp_path / "chair.obj", chair_asset)
    objs = bpy_import(tmp_path / "chair.obj")
    assert set(objs) == {"post", "seat", "cushion"}
    post = objs["post"]
    assert_corner_uvs_match(post, chair_asset.part("post"))
    assert post["verts"] == 24
    np.testing.assert_allclose(post["bbox_max"] - post["bbox_min"], TALL, atol=1e-5)
    np.testing.assert_allclose((post["bbox_max"] + post["bbox_min"]) / 2, [1.0, 2.0, 1.0], atol=1e-5)
    assert post["materials"] == ["wood"] and any("basecolor" in name for name in post["images"])
    assert objs["seat"]["materials"] == ["paint"]


def test_missing_texture_or_mtl_is_a_one_line_input_error(tmp_path, chair_asset):
    files = write_obj(tmp_path / "chair.obj", chair_asset)
    (tmp_path / "chair_wood_basecolor.png").unlink()
    with pytest.raises(InputError, match="missing texture file.*chair_wood_basecolor.png") as err:
        read_mesh(tmp_path / "chair.obj")
    assert "\n" not in str(err.value) and "chair.mtl" in str(err.value)
    files["mtl"].unlink()
    with pytest.raises(InputError, match="missing material library"):
        read_mesh(tmp_path / "chair.obj")


def test_part_names_stay_distinct_objects(tmp_path):
    from assets_fixtures import box

    from layerforge.assets.types import LayeredAsset, Part

    asset = LayeredAsset("a", [Part("left leg", box(seed=1)), Part("left-leg", box((1, 1, 2), seed=2))])
    write_obj(tmp_path / "a.obj", asset)
    back = read_asset(tmp_path / "a.obj")
    assert [p.name for p in back.parts] == ["left_leg", "left_leg_"]
    assert [len(p.geometry.vertices) for p in back.parts] == [24, 24]
