"""USD: Z up / metres stage, one Xform per part, textured UsdPreviewSurface, layers, validation, Blender import."""

from __future__ import annotations

import numpy as np
import pytest
from assets_fixtures import TALL, assert_corner_uvs_match, bpy_import, chair_asset, checker  # noqa: F401

from layerforge.assets.types import LayeredAsset
from layerforge.assets.usd import read_usd, write_usd
from layerforge.errors import InputError


def _validation_errors(path):
    """Errors reported by usd-core's validation framework (the successor of UsdUtils.ComplianceChecker)."""
    from pxr import Usd, UsdValidation

    registry = UsdValidation.ValidationRegistry()
    context = UsdValidation.ValidationContext(registry.GetOrLoadAllValidators())
    errors = context.Validate(Usd.Stage.Open(str(path)))
    return [f"{e.GetName()}: {e.GetMessage()}" for e in errors if e.GetType() == UsdValidation.ValidationErrorType.Error]


def test_stage_layout_and_metadata(tmp_path, chair_asset):
    from pxr import Usd, UsdGeom, UsdShade

    files = write_usd(tmp_path / "chair.usda", chair_asset)
    stage = Usd.Stage.Open(str(files["usd_flat"]))
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.z
    assert UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    root = stage.GetDefaultPrim()
    assert root.GetName() == "chair" and Usd.ModelAPI(root).GetKind() == "component"
    part = stage.GetPrimAtPath("/chair/post")
    assert part.IsA(UsdGeom.Xform)
    mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/chair/post/post"))
    st = UsdGeom.PrimvarsAPI(mesh).GetPrimvar("st")
    assert st and st.GetTypeName() == "texCoord2f[]" and len(st.Get()) == 24
    material, _ = UsdShade.MaterialBindingAPI(mesh.GetPrim()).ComputeBoundMaterial()
    tex = UsdShade.Shader(stage.GetPrimAtPath(material.GetPath().AppendChild("BaseColorTexture")))
    file = tex.GetInput("file").Get()
    assert file.path == "./chair_textures/wood_basecolor.png" and (tmp_path / "chair_textures" / "wood_basecolor.png").is_file()
    assert tex.GetInput("sourceColorSpace").Get() == "sRGB"
    world = np.array(UsdGeom.XformCache().GetLocalToWorldTransform(mesh.GetPrim())).T
    np.testing.assert_allclose(world, chair_asset.part("post").transform, atol=1e-6)


def test_layers_are_sublayers_and_flat_file_composes_the_same(tmp_path, chair_asset):
    from pxr import Sdf

    files = write_usd(tmp_path / "chair.usda", chair_asset)
    root = Sdf.Layer.FindOrOpen(str(files["usd"]))
    assert list(root.subLayerPaths) == ["./chair_layer_frame.usda", "./chair_layer_soft.usda"]
    frame = read_usd(files["usd_layer_frame"], validate=False)
    assert [p.name for p in frame.parts] == ["post", "seat"]
    composed, flat = read_usd(files["usd"]), read_usd(files["usd_flat"])
    assert [p.name for p in composed.parts] == [p.name for p in flat.parts] == ["post", "seat", "cushion"]
    for a, b in zip(composed.parts, flat.parts):
        np.testing.assert_array_equal(a.geometry.vertices, b.geometry.vertices)
        np.testing.assert_array_equal(a.transform, b.transform)


def test_round_trip_through_our_reader(tmp_path, chair_asset):
    back = read_usd(write_usd(tmp_path / "chair.usda", chair_asset)["usd"])
    assert back.name == "chair" and back.metadata == {"source": "test"}
    assert [p.layer for p in back.parts] == ["frame", "frame", "soft"]
    for ours, theirs in zip(chair_asset.parts, back.parts):
        np.testing.assert_allclose(theirs.transform, ours.transform, atol=1e-6)
        np.testing.assert_array_equal(theirs.geometry.vertices, ours.geometry.vertices)
        np.testing.assert_array_equal(theirs.geometry.faces, ours.geometry.faces)
        if ours.geometry.uvs is not None:
            np.testing.assert_array_equal(theirs.geometry.uvs, ours.geometry.uvs)
    wood = back.part("post").geometry.material
    assert wood.name == "wood" and wood.roughness == pytest.approx(0.7) and wood.metallic == pytest.approx(0.1)
    np.testing.assert_allclose(wood.base_color, [0.9, 0.7, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(wood.base_color_texture, checker(), atol=0.01)
    assert wood.normal_texture is not None
    assert back.part("cushion").geometry.material is None


def test_usd_validation_reports_no_errors_and_catches_a_broken_stage(tmp_path, chair_asset):
    files = write_usd(tmp_path / "chair.usda", chair_asset)
    for key in ("usd", "usd_flat", "usd_layer_frame"):
        assert _validation_errors(files[key]) == [], key
    # negative control: the same checks do flag a stage without its stage metadata
    broken = tmp_path / "broken.usda"
    broken.write_text('#usda 1.0\n\ndef Mesh "m"\n{\n    point3f[] points = [(0, 0, 0)]\n}\n')
    assert _validation_errors(broken)


def test_blender_imports_parts_upright_with_textures(tmp_path, chair_asset):
    files = write_usd(tmp_path / "chair.usda", chair_asset)
    for key in ("usd", "usd_flat"):
        objs = bpy_import(files[key])
        meshes = {k: v for k, v in objs.items() if v["type"] == "MESH"}
        assert set(meshes) == {"post", "seat", "cushion"}, key
        post = meshes["post"]
        assert_corner_uvs_match(post, chair_asset.part("post"))
        assert post["verts"] == 24
        np.testing.assert_allclose(post["bbox_max"] - post["bbox_min"], TALL, atol=1e-5)
        np.testing.assert_allclose((post["bbox_max"] + post["bbox_min"]) / 2, [1.0, 2.0, 1.0], atol=1e-5)
        assert post["materials"] == ["wood"] and post["images"], key


def test_bad_usd_inputs(tmp_path):
    with pytest.raises(InputError, match="not a USD file name"):
        write_usd(tmp_path / "x.glb", LayeredAsset("a"))
    (tmp_path / "empty.usda").write_text("#usda 1.0\n")
    with pytest.raises(InputError, match="no meshes"):
        read_usd(tmp_path / "empty.usda")


def test_skinned_part_is_a_valid_usdskel_rig_and_gaussians_are_points(tmp_path):
    from assets_fixtures import random_cloud, skinned_part
    from pxr import Usd, UsdGeom, UsdSkel

    from layerforge.assets.types import Part

    part = skinned_part()
    asset = LayeredAsset("rig", [part, Part("splat", random_cloud(17, 1))])
    path = write_usd(tmp_path / "rig.usda", asset)["usd"]
    assert _validation_errors(path) == []
    stage = Usd.Stage.Open(str(path))
    assert stage.GetPrimAtPath("/rig/arm").IsA(UsdSkel.Root)
    skel = UsdSkel.Skeleton(stage.GetPrimAtPath("/rig/arm/Skeleton"))
    assert list(skel.GetJointsAttr().Get()) == ["root", "root/tip"]
    points = UsdGeom.Points(stage.GetPrimAtPath("/rig/splat/splat"))
    assert len(points.GetPointsAttr().Get()) == 17
    back = read_usd(path).part("arm")
    assert back.skin.joint_names == ["root", "tip"] and back.skin.parents.tolist() == [-1, 0]
    np.testing.assert_allclose(back.skin.inverse_bind_matrices, part.skin.inverse_bind_matrices, atol=1e-6)
    np.testing.assert_allclose(back.skin.weights, part.skin.weights, atol=1e-6)
    np.testing.assert_allclose(back.transform, part.transform, atol=1e-6)
    objs = bpy_import(path)
    assert set(objs["arm"]["vertex_groups"]) == {"root", "tip"}
    assert any(o["type"] == "ARMATURE" and set(o["bones"]) == {"root", "tip"} for o in objs.values())
    np.testing.assert_allclose(objs["arm"]["bbox_max"] - objs["arm"]["bbox_min"], TALL, atol=1e-5)


def test_unparsable_usd_is_an_input_error(tmp_path):
    (tmp_path / "junk.usda").write_text("#usda 1.0\ndef Mesh {{{\n")
    with pytest.raises(InputError, match="junk.usda: cannot open USD stage") as err:
        read_usd(tmp_path / "junk.usda")
    assert "\n" not in str(err.value)


def test_missing_usd_texture_is_an_input_error(tmp_path, chair_asset):
    files = write_usd(tmp_path / "chair.usda", chair_asset)
    files["wood_basecolor.png"].unlink()
    with pytest.raises(InputError, match="missing texture file.*wood_basecolor.png"):
        read_usd(files["usd_flat"])


def test_names_that_clash_once_made_prim_safe_stay_separate(tmp_path):
    from assets_fixtures import box

    from layerforge.assets.types import Material, Part

    red, blue = Material("my mat", [1, 0, 0, 1]), Material("my-mat", [0, 0, 1, 1])
    a, b = box(seed=1), box(seed=2)
    a.material, b.material = red, blue
    asset = LayeredAsset("clash", [Part("part 1", a), Part("part-1", b),
                                   Part("Looks", box(seed=3))])
    back = read_usd(write_usd(tmp_path / "clash.usda", asset)["usd"])
    assert [p.name for p in back.parts] == ["part 1", "part-1", "Looks"]
    np.testing.assert_allclose(back.part("part 1").geometry.material.base_color, [1, 0, 0, 1])
    np.testing.assert_allclose(back.part("part-1").geometry.material.base_color, [0, 0, 1, 1])


def test_visibility_variant_set_per_part(tmp_path):
    from pxr import Usd, UsdGeom

    from assets_fixtures import box

    from layerforge.assets.types import Part
    from layerforge.assets.usd import VISIBILITY_VARIANTS

    asset = LayeredAsset("scene", [Part("table", box(), metadata={VISIBILITY_VARIANTS: True}),
                                   Part("floor", box(center=(0, 0, -1.0)))])
    path = write_usd(tmp_path / "scene.usda", asset)["usd"]
    stage = Usd.Stage.Open(str(path))
    table = next(p for p in stage.Traverse() if p.GetName() == "table" and p.IsA(UsdGeom.Xform))
    vset = table.GetVariantSets().GetVariantSet("visibility")
    assert vset.GetVariantNames() == ["hidden", "shown"] and vset.GetVariantSelection() == "shown"
    mesh = next(c for c in Usd.PrimRange(table) if c.IsA(UsdGeom.Mesh))
    assert UsdGeom.Imageable(mesh).ComputeVisibility() == UsdGeom.Tokens.inherited
    vset.SetVariantSelection("hidden")
    assert UsdGeom.Imageable(mesh).ComputeVisibility() == UsdGeom.Tokens.invisible
    assert [p.name for p in read_usd(path).parts] == ["table", "floor"]  # our reader sees both (default: shown)
