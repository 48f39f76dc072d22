"""GLB: round trip through our reader, the raw file follows the glTF spec, trimesh and Blender import it."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from assets_fixtures import TALL, assert_corner_uvs_match, box, bpy_import, chair_asset, checker, random_cloud, skinned_part  # noqa: F401

from layerforge.assets.gltf import read_gltf, write_glb
from layerforge.assets.types import LayeredAsset, Part
from layerforge.errors import InputError


def _json(path):
    data = path.read_bytes()
    length = struct.unpack_from("<I", data, 12)[0]
    return json.loads(data[20 : 20 + length])


def test_round_trip_keeps_parts_geometry_materials_and_layers(tmp_path, chair_asset):
    path = write_glb(tmp_path / "chair.glb", chair_asset)
    back = read_gltf(path)
    assert back.name == "chair" and back.metadata == {"source": "test"}
    assert [p.name for p in back.parts] == ["post", "seat", "cushion"]
    assert [p.layer for p in back.parts] == ["frame", "frame", "soft"]
    assert back.part("post").metadata == {"convex": 1}
    for ours, theirs in zip(chair_asset.parts, back.parts):
        a, b = ours.geometry, theirs.geometry
        np.testing.assert_allclose(theirs.transform, ours.transform, atol=1e-6)
        np.testing.assert_allclose(b.vertices, a.vertices, atol=1e-6)
        np.testing.assert_array_equal(b.faces, a.faces)
        for attr in ("normals", "uvs", "colors"):
            if getattr(a, attr) is None:
                assert getattr(b, attr) is None
            else:
                np.testing.assert_allclose(getattr(b, attr), getattr(a, attr), atol=1e-6, err_msg=attr)
    wood = back.part("post").geometry.material
    assert wood.name == "wood" and wood.metallic == pytest.approx(0.1) and wood.roughness == pytest.approx(0.7)
    np.testing.assert_allclose(wood.base_color, [0.9, 0.7, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(wood.base_color_texture, checker(), atol=0.01)  # 8-bit sRGB storage
    np.testing.assert_allclose(wood.normal_texture, 0.5 * np.array([1, 1, 2]) * np.ones((4, 4, 3)), atol=1 / 255)
    assert back.part("seat").geometry.material.base_color_texture is None
    assert back.part("cushion").geometry.material is None


def test_file_is_y_up_with_flipped_v_and_embedded_png(tmp_path, chair_asset):
    path = write_glb(tmp_path / "chair.glb", chair_asset)
    doc = _json(path)
    assert doc["asset"]["version"] == "2.0"
    post_node = next(n for n in doc["nodes"] if n.get("name") == "post")
    prim = doc["meshes"][post_node["mesh"]]["primitives"][0]
    pos = doc["accessors"][prim["attributes"]["POSITION"]]
    # the 2 m tall box is tall along glTF +Y; world +Y (0.3 m) maps to glTF -Z
    np.testing.assert_allclose(pos["max"], [0.1, 1.0, 0.15], atol=1e-6)
    # node translation world (1, 2, 1) -> glTF (1, 1, -2), column-major matrix
    np.testing.assert_allclose(np.array(post_node["matrix"]).reshape(4, 4).T[:3, 3], [1, 1, -2], atol=1e-6)
    # TEXCOORD_0 in the file is (u, 1 - v)
    data = path.read_bytes()
    json_len = struct.unpack_from("<I", data, 12)[0]
    bin_start = 20 + json_len + 8
    acc = doc["accessors"][prim["attributes"]["TEXCOORD_0"]]
    view = doc["bufferViews"][acc["bufferView"]]
    uv = np.frombuffer(data, "<f4", count=2 * acc["count"], offset=bin_start + view["byteOffset"]).reshape(-1, 2)
    ours = chair_asset.part("post").geometry.uvs
    np.testing.assert_allclose(uv, np.stack([ours[:, 0], 1 - ours[:, 1]], 1), atol=1e-7)
    assert {img["mimeType"] for img in doc["images"]} == {"image/png"}
    assert all("uri" not in img for img in doc["images"])


def test_trimesh_reloads_same_uvs_colours_and_texture(tmp_path, chair_asset):
    import trimesh

    path = write_glb(tmp_path / "chair.glb", chair_asset)
    scene = trimesh.load(path, process=False)
    geom = scene.geometry["post"]
    post = chair_asset.part("post").geometry
    # trimesh keeps glTF's frame: compare in it
    np.testing.assert_allclose(geom.vertices, post.vertices @ np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]]).T, atol=1e-6)
    np.testing.assert_allclose(geom.visual.uv, post.uvs, atol=1e-6)  # trimesh flips V back like we do
    tex = np.asarray(geom.visual.material.baseColorTexture.convert("RGB"), np.float32) / 255
    from layerforge.assets.types import linear_to_srgb

    np.testing.assert_allclose(tex, linear_to_srgb(checker()), atol=1 / 255)
    # vertex colours (trimesh keeps COLOR_0 only on parts without a material)
    painted = box(seed=7)
    write_glb(tmp_path / "painted.glb", LayeredAsset("painted", [Part("cube", painted)]))
    geom = trimesh.load(tmp_path / "painted.glb", process=False).geometry["cube"]
    assert geom.visual.kind == "vertex"
    np.testing.assert_allclose(np.asarray(geom.visual.vertex_colors) / 255.0, painted.colors, atol=1 / 255)


def test_blender_imports_upright_at_true_scale_with_materials(tmp_path, chair_asset):
    path = write_glb(tmp_path / "chair.glb", chair_asset)
    objs = bpy_import(path)
    meshes = {k: v for k, v in objs.items() if v["type"] == "MESH"}
    assert set(meshes) == {"post", "seat", "cushion"}
    post = meshes["post"]
    assert_corner_uvs_match(post, chair_asset.part("post"))
    assert post["verts"] == 24
    size = post["bbox_max"] - post["bbox_min"]
    np.testing.assert_allclose(size, TALL, atol=1e-5)  # tall along Blender's Z, metres
    np.testing.assert_allclose((post["bbox_max"] + post["bbox_min"]) / 2, [1.0, 2.0, 1.0], atol=1e-5)
    assert post["materials"] == ["wood"] and len(post["images"]) >= 1
    assert meshes["seat"]["materials"] == ["paint"] and meshes["seat"]["images"] == []
    seat = meshes["seat"]  # rotated 90 degrees about Z: 0.6 x 0.5 footprint becomes 0.5 x 0.6
    np.testing.assert_allclose(seat["bbox_max"] - seat["bbox_min"], [0.5, 0.6, 0.05], atol=1e-5)


def test_skin_round_trips_and_imports_as_armature(tmp_path):
    part = skinned_part()
    asset = LayeredAsset("rig", [part])
    path = write_glb(tmp_path / "rig.glb", asset)
    back = read_gltf(path).part("arm")
    assert back.skin is not None and back.skin.joint_names == ["root", "tip"]
    np.testing.assert_array_equal(back.skin.parents, [-1, 0])
    np.testing.assert_allclose(back.skin.weights, part.skin.weights, atol=1e-6)
    np.testing.assert_array_equal(back.skin.joints, part.skin.joints)
    # the part transform is baked: world positions and bind matrices agree
    world = part.geometry.transformed(part.transform).vertices
    np.testing.assert_allclose(back.geometry.transformed(back.transform).vertices, world, atol=1e-6)
    np.testing.assert_allclose(back.skin.bind_matrices()[1][:3, 3], [0.5, 0, 1.0], atol=1e-6)
    objs = bpy_import(path)
    arm = objs["arm"]
    assert set(arm["vertex_groups"]) == {"root", "tip"}
    armatures = [o for o in objs.values() if o["type"] == "ARMATURE"]
    assert len(armatures) == 1 and set(armatures[0]["bones"]) == {"root", "tip"}
    np.testing.assert_allclose(arm["bbox_max"] - arm["bbox_min"], TALL, atol=1e-5)


def test_gaussian_part_becomes_points_and_meshes_still_read(tmp_path, chair_asset):
    chair_asset.parts.append(Part("splat", random_cloud(10, 1)))
    path = write_glb(tmp_path / "mixed.glb", chair_asset)
    doc = _json(path)
    splat = next(n for n in doc["nodes"] if n.get("name") == "splat")
    assert doc["meshes"][splat["mesh"]]["primitives"][0]["mode"] == 0
    assert [p.name for p in read_gltf(path).parts] == ["post", "seat", "cushion"]


def test_bad_glb_inputs_raise_one_line_input_errors(tmp_path, chair_asset):
    bad = tmp_path / "bad.glb"
    bad.write_bytes(b"glTF\x02\x00\x00\x00garbage")
    with pytest.raises(InputError, match="bad.glb"):
        read_gltf(bad)
    path = write_glb(tmp_path / "c.glb", chair_asset)
    data = bytearray(path.read_bytes())
    doc = _json(path)
    doc["extensionsRequired"] = ["KHR_draco_mesh_compression"]
    js = json.dumps(doc).encode()
    js += b" " * (-len(js) % 4)
    old_len = struct.unpack_from("<I", data, 12)[0]
    rest = bytes(data[20 + old_len :])
    new = struct.pack("<III", 0x46546C67, 2, 20 + len(js) + len(rest)) + struct.pack("<II", len(js), 0x4E4F534A) + js + rest
    (tmp_path / "draco.glb").write_bytes(new)
    with pytest.raises(InputError, match="KHR_draco_mesh_compression") as err:
        read_gltf(tmp_path / "draco.glb")
    assert "\n" not in str(err.value)


def test_gltf_with_external_files_and_a_missing_texture(tmp_path, chair_asset):
    glb = write_glb(tmp_path / "chair.glb", chair_asset)
    data = glb.read_bytes()
    doc = _json(glb)
    json_len = struct.unpack_from("<I", data, 12)[0]
    (tmp_path / "chair.bin").write_bytes(data[20 + json_len + 8 :])
    doc["buffers"][0]["uri"] = "chair.bin"
    view = doc["bufferViews"][doc["images"][0].pop("bufferView")]
    png = (tmp_path / "chair.bin").read_bytes()[view["byteOffset"] : view["byteOffset"] + view["byteLength"]]
    doc["images"][0]["uri"] = "wood%20base.png"  # URIs are percent-encoded
    (tmp_path / "chair.gltf").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="missing texture file .*wood base.png"):
        read_gltf(tmp_path / "chair.gltf")
    (tmp_path / "wood base.png").write_bytes(png)
    back = read_gltf(tmp_path / "chair.gltf")
    np.testing.assert_allclose(back.part("post").geometry.material.base_color_texture, checker(), atol=0.01)
    doc["nodes"][1]["mesh"] = 99
    (tmp_path / "broken.gltf").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="malformed glTF"):
        read_gltf(tmp_path / "broken.gltf")
