""".blend through bpy: one collection, one object per part, named materials with packed textures, armatures."""

from __future__ import annotations

import numpy as np
from assets_fixtures import TALL, chair_asset, checker, random_cloud, skinned_part  # noqa: F401

from layerforge.assets.blend import read_blend, write_blend
from layerforge.assets.types import LayeredAsset, Part


def test_blend_round_trip_and_scene_structure(tmp_path, chair_asset):
    import bpy

    path = write_blend(tmp_path / "chair.blend", chair_asset)
    back = read_blend(path)  # opens the file in the bpy session
    assert back.name == "chair" and back.metadata == {"source": "test"}
    assert sorted(p.name for p in back.parts) == ["cushion", "post", "seat"]
    assert [c.name for c in bpy.context.scene.collection.children] == ["chair"]
    for ours in chair_asset.parts:
        theirs = back.part(ours.name)
        assert theirs.layer == ours.layer and theirs.metadata == ours.metadata
        np.testing.assert_allclose(theirs.transform, ours.transform, atol=1e-6)
        np.testing.assert_allclose(theirs.geometry.vertices, ours.geometry.vertices, atol=1e-6)
        np.testing.assert_array_equal(theirs.geometry.faces, ours.geometry.faces)
    post = back.part("post").geometry
    np.testing.assert_allclose(post.uvs, chair_asset.part("post").geometry.uvs, atol=1e-6)
    assert post.material.name == "wood" and abs(post.material.roughness - 0.7) < 1e-6
    np.testing.assert_allclose(post.material.base_color_texture, checker(), atol=0.01)
    image = bpy.data.images["wood_basecolor"]
    assert image.packed_file is not None and tuple(image.size) == (16, 8)
    obj = bpy.data.objects["post"]
    world = np.array([obj.matrix_world @ v.co for v in obj.data.vertices])
    np.testing.assert_allclose(world.max(0) - world.min(0), TALL, atol=1e-5)  # +Z up, metres
    assert obj.data.color_attributes.get("Color") is not None


def test_skinned_part_gets_armature_and_weights(tmp_path):
    import bpy

    part = skinned_part()
    write_blend(tmp_path / "rig.blend", LayeredAsset("rig", [part]))
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "rig.blend"))
    obj, arm = bpy.data.objects["arm"], bpy.data.objects["arm_skeleton"]
    assert arm.type == "ARMATURE" and [b.name for b in arm.data.bones] == ["root", "tip"]
    assert arm.data.bones["tip"].parent.name == "root"
    np.testing.assert_allclose(np.array(arm.matrix_world @ arm.data.bones["tip"].head_local), [0.5, 0, 1.0], atol=1e-6)
    assert obj.modifiers["Armature"].object == arm
    tip = obj.vertex_groups["tip"].index
    weights = np.array([next((g.weight for g in v.groups if g.group == tip), 0.0) for v in obj.data.vertices])
    np.testing.assert_allclose(weights, part.skin.weights[:, 1], atol=1e-6)
    world = np.array([obj.matrix_world @ v.co for v in obj.data.vertices])
    np.testing.assert_allclose(world, part.geometry.transformed(part.transform).vertices, atol=1e-6)


def test_gaussian_part_is_a_point_object(tmp_path):
    import bpy

    cloud = random_cloud(30, 1)
    write_blend(tmp_path / "pano.blend", LayeredAsset("pano", [Part("layer0", cloud)]))
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "pano.blend"))
    me = bpy.data.objects["layer0"].data
    assert len(me.vertices) == 30 and len(me.polygons) == 0
    vals = np.empty(30, np.float32)
    me.attributes["opacity_logit"].data.foreach_get("value", vals)
    np.testing.assert_array_equal(vals, cloud.opacity_logits)


def test_bpy_that_cannot_load_gives_one_line_error(tmp_path):
    """pymeshlab (a nerfstudio dependency) loads its own Embree, after which bpy cannot import."""
    import subprocess
    import sys

    code = (
        "import pymeshlab\n"
        "from layerforge.assets.blend import write_blend\n"
        "from layerforge.errors import OutputError\n"
        "try:\n"
        f"    write_blend({str(tmp_path / 'x.blend')!r}, None)\n"
        "except OutputError as err:\n"
        "    print(err)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "bpy" in lines[0] and "import bpy before pymeshlab" in lines[0], proc.stdout + proc.stderr
    assert not (tmp_path / "x.blend").exists()


def test_write_blend_prints_nothing(tmp_path, capfd, chair_asset):
    """Blender's C-level "Info: Saved as" must not reach stdout (quiet batch jobs, piped output)."""
    write_blend(tmp_path / "quiet.blend", chair_asset)
    out, _ = capfd.readouterr()
    assert out == ""
    print("stdout still works")
    assert capfd.readouterr().out == "stdout still works\n"
