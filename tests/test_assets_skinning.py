"""One shared skeleton for several skinned parts (a body and its garment): GLB, USD and .blend
each hold ONE joint hierarchy that deforms both meshes, checked against analytic skinning."""

from __future__ import annotations

import math

import numpy as np
import pytest

from layerforge.assets.gltf import read_gltf, write_glb
from layerforge.assets.types import LayeredAsset, Mesh, Part, Skin
from layerforge.errors import InputError

JOINTS = ["root", "spine", "arm"]
PARENTS = [-1, 0, 1]
SPINE_HEAD = np.array([0.0, 0.0, 1.0])  # world position of the 'spine' joint
TOL = 1e-4  # metres


def _bind_world() -> np.ndarray:
    """[3, 4, 4] joint -> world at bind pose: root at the origin, spine 1 m up, arm 1.5 m up and
    0.3 m to the side, turned 90 degrees about +Y (so joint frames are not all axis-aligned)."""
    binds = np.tile(np.eye(4), (3, 1, 1))
    binds[1, :3, 3] = SPINE_HEAD
    binds[2, :3, :3] = [[0, 0, 1], [0, 1, 0], [-1, 0, 0]]
    binds[2, :3, 3] = [0.3, 0.0, 1.5]
    return binds


def _column(half_x: float, half_y: float, zs: list[float]) -> Mesh:
    """A closed box column with a ring of 4 vertices at each height in ``zs`` (outward CCW faces)."""
    ring = np.array([[-half_x, -half_y], [half_x, -half_y], [half_x, half_y], [-half_x, half_y]])
    verts = np.array([[x, y, z] for z in zs for x, y in ring])
    faces = []
    for k in range(len(zs) - 1):
        for i in range(4):
            a, b = 4 * k + i, 4 * k + (i + 1) % 4
            faces += [[a, b, b + 4], [a, b + 4, a + 4]]
    top = 4 * (len(zs) - 1)
    faces += [[0, 2, 1], [0, 3, 2], [top, top + 1, top + 2], [top, top + 2, top + 3]]
    return Mesh(verts, faces)


def _weights(z: np.ndarray, table: dict[float, tuple[float, float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """[V, 4] joints (0, 1, 2, 0) and weights (root, spine, arm, 0) per vertex from its world height."""
    w = np.array([table[round(float(h), 6)] for h in z])
    joints = np.tile([0, 1, 2, 0], (len(z), 1))
    return joints, np.concatenate([w, np.zeros((len(z), 1))], 1)


def shared_rig(garment_bind_offset: float = 0.0) -> LayeredAsset:
    """'body' (a 2 m column, all three joints, part transform identity) and 'garment' (a shell
    round its upper half, root and spine only, stored in a frame 1 m up: part transform
    translate(0, 0, 1)), both skinned to skeleton 'rig'."""
    binds = _bind_world()
    body = _column(0.2, 0.15, [0.0, 0.5, 1.0, 1.5, 2.0])
    body_joints, body_w = _weights(body.vertices[:, 2], {0.0: (1, 0, 0), 0.5: (1, 0, 0), 1.0: (0.5, 0.5, 0),
                                                          1.5: (0, 1, 0), 2.0: (0, 0.25, 0.75)})
    body_skin = Skin(JOINTS, PARENTS, np.linalg.inv(binds), body_joints, body_w, skeleton="rig")
    to_world = np.eye(4)
    to_world[2, 3] = 1.0
    garment = _column(0.25, 0.2, [-0.1, 0.25, 0.5, 0.9])  # world z 0.9 .. 1.9
    garment_joints, garment_w = _weights(garment.vertices[:, 2] + 1.0, {0.9: (1, 0, 0), 1.25: (0.2, 0.8, 0),
                                                                         1.5: (0, 1, 0), 1.9: (0, 1, 0)})
    local_binds = np.linalg.inv(to_world) @ binds
    local_binds[1, 0, 3] += garment_bind_offset
    garment_skin = Skin(JOINTS, PARENTS, np.linalg.inv(local_binds), garment_joints, garment_w, skeleton="rig")
    return LayeredAsset("avatar", [Part("body", body, layer="body", skin=body_skin),
                                   Part("garment", garment, to_world, layer="garment", skin=garment_skin,
                                        metadata={"kind": "shirt"})])


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    a = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


POSE_R = _rotation([1.0, 0.0, 0.0], math.radians(90.0))  # the spine turns 90 degrees about world +X


def _expected_posed(part: Part) -> tuple[np.ndarray, np.ndarray]:
    """([V, 3] world rest positions, [V, 3] world positions with 'spine' (and so 'arm') rotated by
    POSE_R about the spine's head), by linear blend skinning written out by hand."""
    rest = part.geometry.transformed(part.transform).vertices.astype(np.float64)
    rotated = SPINE_HEAD + (rest - SPINE_HEAD) @ POSE_R.T
    skin = part.skin
    w_moving = np.where(skin.joints >= 1, skin.weights, 0.0).sum(1, keepdims=True)  # spine's subtree
    return rest, (1 - w_moving) * rest + w_moving * rotated


def _root_only(part: Part) -> np.ndarray:
    return np.where(part.skin.joints >= 1, part.skin.weights, 0.0).sum(1) == 0


# ----------------------------------------------------------------------------- Blender helpers


def _pose_spine(bpy, arm_obj) -> None:
    """Rotate the 'spine' pose bone so that, in world space, it turns by POSE_R about its head."""
    from mathutils import Matrix

    bone = arm_obj.data.bones["spine"]
    rest = np.array(arm_obj.matrix_world @ bone.matrix_local, np.float64)[:3, :3]
    rest /= np.linalg.norm(rest, axis=0, keepdims=True)
    local = rest.T @ POSE_R @ rest  # the world rotation seen in the bone's own rest frame
    pb = arm_obj.pose.bones["spine"]
    pb.rotation_mode = "QUATERNION"
    pb.rotation_quaternion = Matrix(local.tolist()).to_quaternion()
    bpy.context.view_layer.update()


def _world_vertices(bpy, obj, evaluated: bool) -> np.ndarray:
    if evaluated:
        depsgraph = bpy.context.evaluated_depsgraph_get()
        ev = obj.evaluated_get(depsgraph)
        me = ev.to_mesh()
    else:
        me = obj.data
    co = np.empty(len(me.vertices) * 3, np.float64)
    me.vertices.foreach_get("co", co)
    m = np.array(obj.matrix_world, np.float64)
    if evaluated:
        ev.to_mesh_clear()
    return co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]


def _check_blender_rig(bpy, asset: LayeredAsset, match_by_position: bool) -> dict[str, float]:
    """One armature; both meshes driven by it; rest at true scale; posed = analytic. Returns max errors."""
    armatures = [o for o in bpy.data.objects if o.type == "ARMATURE"]
    assert len(armatures) == 1, [o.name for o in armatures]
    arm = armatures[0]
    assert sorted(b.name for b in arm.data.bones) == sorted(JOINTS), [b.name for b in arm.data.bones]
    head = np.array(arm.matrix_world @ arm.data.bones["spine"].head_local, np.float64)
    np.testing.assert_allclose(head, SPINE_HEAD, atol=1e-5)  # the joint sits where we put it
    errors: dict[str, float] = {}
    rest_world: dict[str, np.ndarray] = {}
    order: dict[str, np.ndarray] = {}
    for part in asset.parts:
        obj = bpy.data.objects[part.name]
        mods = [m for m in obj.modifiers if m.type == "ARMATURE"]
        assert len(mods) == 1 and mods[0].object == arm, part.name
        got = _world_vertices(bpy, obj, evaluated=False)
        rest, _ = _expected_posed(part)
        assert len(got) == len(rest), part.name
        if match_by_position:  # an importer may reorder vertices: match them by rest position
            dist = np.linalg.norm(got[:, None, :] - rest[None, :, :], axis=-1)
            order[part.name] = dist.argmin(1)
            assert len(set(order[part.name].tolist())) == len(rest)
        else:
            order[part.name] = np.arange(len(rest))
        errors[f"{part.name} rest"] = float(np.abs(got - rest[order[part.name]]).max())
        rest_world[part.name] = got
    assert errors["body rest"] < TOL and errors["garment rest"] < TOL, errors
    # true scale, upright: the body's shoulder ring at world z = 1.5, the top at 2.0
    body_z = rest_world["body"][:, 2]
    assert np.isclose(body_z, 1.5, atol=1e-5).sum() == 4 and abs(body_z.max() - 2.0) < 1e-5
    _pose_spine(bpy, arm)
    for part in asset.parts:
        obj = bpy.data.objects[part.name]
        _, posed = _expected_posed(part)
        got = _world_vertices(bpy, obj, evaluated=True)
        idx = order[part.name]
        err = np.abs(got - posed[idx]).max()
        errors[f"{part.name} posed"] = float(err)
        assert err < TOL, (part.name, err)
        moved = np.linalg.norm(got - rest_world[part.name], axis=1)
        assert moved.max() > 0.3, part.name  # the pose really deforms this mesh
        assert moved[_root_only(part)[idx]].max() < 1e-6, part.name  # root-only vertices stay put
    return errors


# ----------------------------------------------------------------------------- tests


def test_glb_has_one_skin_and_blender_imports_one_armature_driving_both(tmp_path):
    import json
    import struct

    import bpy

    asset = shared_rig()
    path = write_glb(tmp_path / "avatar.glb", asset)
    data = path.read_bytes()
    (length,) = struct.unpack_from("<I", data, 12)
    doc = json.loads(data[20:20 + length])
    assert len(doc["skins"]) == 1 and doc["skins"][0]["name"] == "rig"
    assert [doc["nodes"][j]["name"] for j in doc["skins"][0]["joints"]] == JOINTS
    assert sum(n.get("name") in JOINTS for n in doc["nodes"]) == 3  # one set of joint nodes
    assert [n.get("skin") for n in doc["nodes"] if n.get("name") in ("body", "garment")] == [0, 0]

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(path))
    bpy.context.view_layer.update()
    errors = _check_blender_rig(bpy, asset, match_by_position=True)
    print("glb -> Blender max vertex error (m):", errors)


def test_glb_round_trip_keeps_the_shared_skeleton(tmp_path):
    asset = shared_rig()
    back = read_gltf(write_glb(tmp_path / "a.glb", asset))
    body, garment = back.part("body"), back.part("garment")
    assert body.skin.skeleton == garment.skin.skeleton == "rig"
    assert body.skin.joint_names == garment.skin.joint_names == JOINTS
    np.testing.assert_allclose(body.transform @ body.skin.bind_matrices(), _bind_world(), atol=1e-6)
    np.testing.assert_allclose(garment.transform @ garment.skin.bind_matrices(), _bind_world(), atol=1e-6)
    np.testing.assert_array_equal(garment.skin.joints, asset.part("garment").skin.joints)
    np.testing.assert_allclose(garment.geometry.transformed(garment.transform).vertices,
                               asset.part("garment").geometry.transformed(asset.part("garment").transform).vertices,
                               atol=1e-6)
    assert garment.layer == "garment" and garment.metadata == {"kind": "shirt"}
    again = read_gltf(write_glb(tmp_path / "b.glb", back))  # write -> read -> write keeps it shared
    assert again.part("body").skin.skeleton == again.part("garment").skin.skeleton == "rig"
    raw = (tmp_path / "b.glb").read_bytes()
    assert raw.count(b'"skins":[{') == 1 and raw.count(b'"name":"spine"') == 1


def _usd_skinned_points(path, time_code=1.0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Open ``path``, author a SkelAnimation turning 'spine' by POSE_R about its head, and compute
    every bound mesh's rest and skinned world points with UsdSkel. Returns ({part: rest}, {part: posed})."""
    from pxr import Gf, Usd, UsdGeom, UsdSkel, Vt

    stage = Usd.Stage.Open(str(path))
    skels = [p for p in stage.Traverse() if p.IsA(UsdSkel.Skeleton)]
    assert len(skels) == 1, [str(p.GetPath()) for p in skels]
    skel = UsdSkel.Skeleton(skels[0])
    meshes = [p for p in stage.Traverse() if p.IsA(UsdGeom.Mesh)]
    assert len(meshes) == 2
    for m in meshes:
        assert m.HasAPI(UsdSkel.BindingAPI)
        assert UsdSkel.BindingAPI(m).GetSkeletonRel().GetTargets() == [skel.GetPath()]
    binds = np.array([np.asarray(m, np.float64).T for m in skel.GetBindTransformsAttr().Get()])
    skel_to_world = np.asarray(UsdGeom.Xformable(skel.GetPrim()).ComputeLocalToWorldTransform(0), np.float64).T
    np.testing.assert_allclose(skel_to_world @ binds, _bind_world(), atol=1e-6)
    # the animation: joint-local transforms, the spine's turned about its head in world space
    turn = np.eye(4)
    turn[:3, :3] = POSE_R
    turn[:3, 3] = SPINE_HEAD - POSE_R @ SPINE_HEAD
    world = _bind_world().copy()
    world[1] = turn @ world[1]
    world[2] = turn @ world[2]
    local = [world[0], np.linalg.inv(world[0]) @ world[1], np.linalg.inv(world[1]) @ world[2]]
    anim = UsdSkel.Animation.Define(stage, skel.GetPath().GetParentPath().AppendChild("Pose"))
    anim.CreateJointsAttr(skel.GetJointsAttr().Get())
    quats = [Gf.Matrix4d(m.T.tolist()).ExtractRotationQuat() for m in local]
    anim.CreateTranslationsAttr(Vt.Vec3fArray([Gf.Vec3f(*m[:3, 3]) for m in local]))
    anim.CreateRotationsAttr(Vt.QuatfArray([Gf.Quatf(q.GetReal(), Gf.Vec3f(q.GetImaginary())) for q in quats]))
    anim.CreateScalesAttr(Vt.Vec3hArray([Gf.Vec3h(1, 1, 1)] * 3))
    UsdSkel.BindingAPI.Apply(skel.GetPrim()).CreateAnimationSourceRel().SetTargets([anim.GetPath()])
    cache = UsdSkel.Cache()
    skel_root = UsdSkel.Root(skels[0].GetParent())
    assert skel_root
    cache.Populate(skel_root, Usd.TraverseInstanceProxies())
    skel_query = cache.GetSkelQuery(skel)
    xforms = skel_query.ComputeSkinningTransforms(time_code)
    rest, posed = {}, {}
    for m in meshes:
        name = str(m.GetParent().GetCustomDataByKey("layerforge:name"))
        query = cache.GetSkinningQuery(m)
        points = Vt.Vec3fArray(UsdGeom.Mesh(m).GetPointsAttr().Get())
        geom_world = np.asarray(UsdGeom.Xformable(m).ComputeLocalToWorldTransform(0), np.float64).T
        pts = np.asarray(points, np.float64)
        rest[name] = pts @ geom_world[:3, :3].T + geom_world[:3, 3]
        assert query.ComputeSkinnedPoints(xforms, points, time_code)
        skinned = np.asarray(points, np.float64)  # skeleton space
        posed[name] = skinned @ skel_to_world[:3, :3].T + skel_to_world[:3, 3]
    return rest, posed


def _validation_errors(path) -> list[str]:
    """Errors usd-core's validation framework reports for the stage at ``path``."""
    from pxr import Usd, UsdValidation

    registry = UsdValidation.ValidationRegistry()
    context = UsdValidation.ValidationContext(registry.GetOrLoadAllValidators())
    errors = context.Validate(Usd.Stage.Open(str(path)))
    return [f"{e.GetName()}: {e.GetMessage()}" for e in errors if e.GetType() == UsdValidation.ValidationErrorType.Error]


@pytest.mark.parametrize("suffix", [".usda", ".usdc"])
def test_usd_one_skeleton_binds_both_meshes_and_skins_them_as_expected(tmp_path, suffix):
    from pxr import Usd, UsdGeom

    from layerforge.assets.usd import read_usd, write_usd

    asset = shared_rig()
    files = write_usd(tmp_path / f"avatar{suffix}", asset)
    assert sorted(files) == ["usd", "usd_flat", "usd_layer_body", "usd_layer_garment"]
    for f in files.values():
        assert _validation_errors(f) == [], f
    for key in ("usd", "usd_flat"):  # body and garment are separate layers: composed and flat
        stage = Usd.Stage.Open(str(files[key]))
        assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.z and UsdGeom.GetStageMetersPerUnit(stage) == 1.0
        rest, posed = _usd_skinned_points(files[key])
        errors = {}
        for part in asset.parts:
            want_rest, want_posed = _expected_posed(part)
            errors[f"{part.name} rest"] = float(np.abs(rest[part.name] - want_rest).max())
            errors[f"{part.name} posed"] = float(np.abs(posed[part.name] - want_posed).max())
            moved = np.linalg.norm(posed[part.name] - want_rest, axis=1)
            assert moved.max() > 0.3 and moved[_root_only(part)].max() < 1e-6
        assert max(errors.values()) < TOL, errors
        print(f"{key}{suffix} UsdSkel max vertex error (m):", errors)
    back = read_usd(files["usd"])
    body, garment = back.part("body"), back.part("garment")
    assert body.skin.skeleton == garment.skin.skeleton == "rig"
    assert (body.layer, garment.layer, garment.metadata) == ("body", "garment", {"kind": "shirt"})
    np.testing.assert_allclose(garment.transform @ garment.skin.bind_matrices(), _bind_world(), atol=1e-5)
    again = write_usd(tmp_path / f"again{suffix}", back)  # read -> write keeps one skeleton
    again_stage = Usd.Stage.Open(str(again["usd"]))
    assert sum(p.GetTypeName() == "Skeleton" for p in again_stage.Traverse()) == 1


def test_blend_has_one_armature_that_deforms_both_meshes(tmp_path):
    import bpy

    from layerforge.assets.blend import write_blend

    asset = shared_rig()
    path = write_blend(tmp_path / "avatar.blend", asset)
    bpy.ops.wm.open_mainfile(filepath=str(path), load_ui=False)
    bpy.context.view_layer.update()
    assert [o.name for o in bpy.data.objects if o.type == "ARMATURE"] == ["rig"]
    for name in ("body", "garment"):
        assert bpy.data.objects[name].parent == bpy.data.objects["rig"]
    assert [g.name for g in bpy.data.objects["garment"].vertex_groups] == ["root", "spine"]  # the joints it uses
    errors = _check_blender_rig(bpy, asset, match_by_position=False)
    print(".blend max vertex error (m):", errors)


def test_blend_with_a_shared_skeleton_is_byte_reproducible(tmp_path):
    from layerforge.assets.blend import write_blend

    first = write_blend(tmp_path / "a.blend", shared_rig()).read_bytes()
    assert write_blend(tmp_path / "b.blend", shared_rig()).read_bytes() == first


def test_parts_of_one_skeleton_that_disagree_are_an_input_error(tmp_path):
    from layerforge.assets.blend import write_blend
    from layerforge.assets.usd import write_usd

    bad = shared_rig(garment_bind_offset=0.01)  # the garment's spine 1 cm off the body's
    for write, name in ((write_glb, "x.glb"), (write_usd, "x.usda"), (write_blend, "x.blend")):
        with pytest.raises(InputError) as err:
            write(tmp_path / name, bad)
        msg = str(err.value)
        assert "\n" not in msg and "'rig'" in msg and "'body'" in msg and "'garment'" in msg and "bind pose" in msg
        assert not (tmp_path / name).exists()
    renamed = shared_rig()
    renamed.part("garment").skin.joint_names = ["root", "torso", "arm"]
    with pytest.raises(InputError, match="joint names"):
        write_glb(tmp_path / "y.glb", renamed)


def test_skins_without_a_skeleton_name_keep_their_own_joints(tmp_path):
    asset = shared_rig()
    for part in asset.parts:
        part.skin.skeleton = None
    back = read_gltf(write_glb(tmp_path / "own.glb", asset))
    assert back.part("body").skin.skeleton is None and back.part("garment").skin.skeleton is None
    raw = (tmp_path / "own.glb").read_bytes()
    assert raw.count(b'"name":"spine"') == 2  # two joint hierarchies, as before


def test_usd_imports_into_blender_as_one_armature_driving_both(tmp_path):
    import bpy

    from layerforge.assets.usd import write_usd

    asset = shared_rig()
    files = write_usd(tmp_path / "avatar.usda", asset)
    for key in ("usd", "usd_flat"):
        bpy.ops.wm.read_factory_settings(use_empty=True)
        bpy.ops.wm.usd_import(filepath=str(files[key]))  # the default importer, no option changed
        bpy.context.view_layer.update()
        errors = _check_blender_rig(bpy, asset, match_by_position=True)
        print(f"{key} -> Blender max vertex error (m):", errors)


def test_a_gltf_skin_shared_by_two_nodes_without_our_extras_reads_as_one_skeleton(tmp_path):
    """Files from other tools: a skin used by several mesh nodes names the skeleton after itself."""
    import base64
    import json
    import struct

    data = write_glb(tmp_path / "ours.glb", shared_rig()).read_bytes()
    (length,) = struct.unpack_from("<I", data, 12)
    doc = json.loads(data[20:20 + length])
    binary = data[20 + length + 8:]
    doc["buffers"] = [{"byteLength": len(binary), "uri": "data:application/octet-stream;base64,"
                       + base64.b64encode(binary).decode()}]
    del doc["skins"][0]["extras"]
    doc["skins"][0]["name"] = "Armature"
    (tmp_path / "foreign.gltf").write_text(json.dumps(doc))
    back = read_gltf(tmp_path / "foreign.gltf")
    assert back.part("body").skin.skeleton == back.part("garment").skin.skeleton == "Armature"
    del doc["skins"][0]["name"]  # unnamed: the root joint's name
    (tmp_path / "unnamed.gltf").write_text(json.dumps(doc))
    assert read_gltf(tmp_path / "unnamed.gltf").part("garment").skin.skeleton == "root"
