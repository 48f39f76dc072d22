"""The gala pipeline end to end on builtin:clothed_scan, at smoke-test sizes.

What this checks: every stage runs through the engine; the skinned glTF opens in Blender's
default importer as one armature driving body and jacket, and posing a bone there moves both
exactly as linear blend skinning of our weights says; the USD has one UsdSkel skeleton binding
both; a kill in geometry resumes to the same result; bad inputs are one line. The quality bounds
(the garment recovered at 64^3) are in test_gala_quality.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_runs import kill_when, run_cli
from scipy.spatial import cKDTree

SMOKE = [
    "geometry.grid_resolution=24", "geometry.steps=110", "geometry.init_steps=80", "geometry.resolution=64",
    "geometry.checkpoint_every=40", "segment.resolution=64", "segment.vote_resolution=192", "texture.steps=10",
    "texture.resolution=64", "texture.texture_size=64", "export.preview_size=64", "layers.turntable_frames=8",
    "device=cpu", "quiet=true",
]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gala")


OTHER_BETAS = [-1.5, 1.0]  # another body: shorter and wider than the scan's


@pytest.fixture(scope="module")
def other_fit(out) -> Path:
    """A fit of another person (other betas, zero pose) for layers.compose_fit."""
    fit = {"betas": OTHER_BETAS + [0.0] * 8, "global_orient": [0.0] * 3, "body_pose": [0.0] * 63, "translation": [0.0] * 3,
           "scale": 1.0}
    path = out / "other_fit.json"
    path.write_text(json.dumps(fit))
    return path


@pytest.fixture(scope="module")
def smoke(out, other_fit) -> Path:
    proc = run_cli("run", "gala", f"out={out}", "run=r", *SMOKE, f"layers.compose_fit={other_fit}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "gala" / "r"


@pytest.fixture(scope="module")
def scan_folder(out, smoke) -> Path:
    return next((out / ".cache" / "scenes").glob("clothed_scan-*"))


def _subtree(parents: np.ndarray, root: int) -> np.ndarray:
    inside = np.zeros(len(parents), bool)
    inside[root] = True
    for j in range(len(parents)):  # parents precede children
        if parents[j] >= 0 and inside[parents[j]]:
            inside[j] = True
    return inside


def _rotation(axis, angle: float) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.asarray(axis, float) / np.linalg.norm(axis) * angle).as_matrix()


@pytest.mark.slow
def test_every_stage_delivers(smoke):
    export = smoke / "export"
    for name in ("avatar.glb", "avatar.usda", "avatar.blend", "canonical/canonical.obj", "posed/posed.obj",
                 "posed/posed.glb", "composed/composed.obj", "scene_frame.json"):
        assert (export / name).is_file(), name
    for name in ("segment_vote.png", "canonical_layers.png", "reposed_turntable.gif", "canonical_scan.png"):
        assert (smoke / "previews" / name).is_file(), name
    manifest = json.loads((smoke / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in manifest["stages"].values())


@pytest.mark.slow
def test_posed_layers_overlay_the_scan(smoke, scan_folder):
    """The posed deliverables sit on the input scan in its own world (an OBJ read +Y up, as Blender does)."""
    from layerforge.assets.mesh_io import read_asset, read_mesh

    scan = read_mesh(scan_folder / "scan.obj")
    posed = read_asset(smoke / "export" / "posed" / "posed.obj")
    pts = np.concatenate([p.geometry.transformed(p.transform).vertices for p in posed.parts])
    d, _ = cKDTree(scan.vertices).query(pts)
    assert np.median(d) < 0.02 and np.percentile(d, 90) < 0.05  # metres, at these smoke sizes


@pytest.mark.slow
def test_the_jacket_composed_onto_another_body_fits_it(smoke, scan_folder):
    """layers.compose_fit: the jacket on a body of other betas sits on that body, not on the scan's."""
    from layerforge.assets.mesh_io import read_asset
    from layerforge.models.body import load_smplx
    from layerforge.models.gala.canonical import pose_body

    parts = {p.name: p.geometry.transformed(p.transform) for p in read_asset(smoke / "export" / "composed" / "composed.obj").parts}
    assert set(parts) == {"jacket", "other_body"}
    model = load_smplx(scan_folder / "body_model.npz")
    import torch

    betas = torch.zeros(model.num_betas)
    betas[:2] = torch.tensor(OTHER_BETAS)
    other = pose_body(model, betas, torch.zeros(model.num_joints, 3)).vertices.numpy()
    assert np.abs(parts["other_body"].vertices - other).max() < 1e-4
    d_other, _ = cKDTree(other).query(parts["jacket"].vertices)
    d_mean, _ = cKDTree(pose_body(model, None, torch.zeros(model.num_joints, 3)).vertices.numpy()).query(
        parts["jacket"].vertices)
    assert np.median(d_other) < 0.04  # metres: on the other body (a 24-cell smoke fit)
    assert np.median(d_other) < np.median(d_mean)  # closer to it than to the mean-shape body


@pytest.mark.slow
def test_blender_imports_one_armature_and_a_bone_moves_body_and_jacket(smoke):
    import bpy
    from mathutils import Matrix

    from layerforge.assets.gltf import read_gltf

    ours = read_gltf(smoke / "export" / "avatar.glb")
    assert [p.name for p in ours.parts] == ["body", "jacket"]
    skin = ours.parts[0].skin
    assert {p.skin.skeleton for p in ours.parts} == {"body_rig"} and len(skin.joint_names) == 55
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(smoke / "export" / "avatar.glb"))
    bpy.context.view_layer.update()
    armatures = [o for o in bpy.data.objects if o.type == "ARMATURE"]
    assert len(armatures) == 1, [o.name for o in armatures]
    arm = armatures[0]
    # the importer may add bone-shape meshes (an Icosphere); the skinned ones are ours
    meshes = {o.name: o for o in bpy.data.objects if o.type == "MESH" and any(m.type == "ARMATURE" for m in o.modifiers)}
    assert set(meshes) == {"body", "jacket"}
    for o in meshes.values():
        assert [m.object for m in o.modifiers if m.type == "ARMATURE"] == [arm], o.name

    def world(obj, evaluated: bool) -> np.ndarray:
        if evaluated:
            ev = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
            me = ev.to_mesh()
        else:
            me = obj.data
        co = np.empty(len(me.vertices) * 3)
        me.vertices.foreach_get("co", co)
        m = np.array(obj.matrix_world)
        if evaluated:
            ev.to_mesh_clear()
        return co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]

    rest = {n: world(o, False) for n, o in meshes.items()}
    # upright at true scale: feet on the ground (the body fit's soles at z = 0), 1.05 x the ~1.7 m body
    allz = np.concatenate([r[:, 2] for r in rest.values()])
    assert abs(allz.min()) < 0.05 and 1.6 < allz.max() < 1.95  # a coarse (24-cell) fit of the body: +-5 cm
    bone = "left_shoulder"
    b = arm.data.bones[bone]
    head = np.array(arm.matrix_world @ b.head_local)
    r_world = _rotation([0.0, 1.0, 0.0], np.radians(40.0))  # raise the left arm about the body's front axis
    basis = np.array(arm.matrix_world @ b.matrix_local)[:3, :3]
    basis /= np.linalg.norm(basis, axis=0, keepdims=True)
    pb = arm.pose.bones[bone]
    pb.rotation_mode = "QUATERNION"
    pb.rotation_quaternion = Matrix((basis.T @ r_world @ basis).tolist()).to_quaternion()
    bpy.context.view_layer.update()
    moving = _subtree(skin.parents, skin.joint_names.index(bone))
    for part in ours.parts:
        obj = meshes[part.name]
        got = world(obj, True)
        v = part.geometry.vertices.astype(np.float64)
        order = cKDTree(rest[part.name]).query(v)[1]  # the importer may reorder or split vertices
        assert np.abs(rest[part.name][order] - v).max() < 1e-4, part.name
        w_move = (part.skin.weights * moving[part.skin.joints]).sum(1)
        expected = v + w_move[:, None] * ((v - head) @ r_world.T + head - v)  # LBS of a world rotation
        err = np.abs(got[order] - expected).max()
        assert err < 1e-3, (part.name, err)
        assert np.linalg.norm(got[order] - v, axis=1).max() > 0.05, part.name  # this mesh really moved
        assert np.abs(got[order][w_move == 0] - v[w_move == 0]).max() < 1e-5, part.name  # the rest stayed


@pytest.mark.slow
def test_usd_has_one_skeleton_binding_body_and_jacket(smoke):
    from pxr import Usd, UsdGeom, UsdSkel

    stage = Usd.Stage.Open(str(smoke / "export" / "avatar.usda"))
    assert UsdGeom.GetStageUpAxis(stage) == "Z" and UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    skels = [p for p in stage.Traverse() if p.IsA(UsdSkel.Skeleton)]
    assert len(skels) == 1
    assert len(UsdSkel.Skeleton(skels[0]).GetJointsAttr().Get()) == 55
    meshes = [p for p in stage.Traverse() if p.IsA(UsdGeom.Mesh)]
    assert len(meshes) == 2
    roots = [p for p in stage.Traverse() if p.IsA(UsdSkel.Root)]
    assert len(roots) == 1
    cache = UsdSkel.Cache()
    cache.Populate(UsdSkel.Root(roots[0]), Usd.PrimDefaultPredicate)
    bindings = cache.ComputeSkelBindings(UsdSkel.Root(roots[0]), Usd.PrimDefaultPredicate)
    assert len(bindings) == 1 and bindings[0].GetSkeleton().GetPrim() == skels[0]
    targets = sorted(str(t.GetPrim().GetPath()) for t in bindings[0].GetSkinningTargets())
    assert targets == sorted(str(m.GetPath()) for m in meshes)  # body and jacket, one skeleton


@pytest.mark.slow
def test_a_kill_in_geometry_resumes_to_the_same_result(out, smoke):
    import torch

    run = out / "gala" / "killed"
    proc = run_cli("run", "gala", f"out={out}", "run=killed", *SMOKE, wait=False)
    kill_when(proc, run / "stages" / "geometry" / "checkpoint.pt")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["geometry"]["status"] == "running"
    resumed = run_cli("run", "gala", f"out={out}", "run=killed", *SMOKE)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at step" in (run / "log.txt").read_text()
    a = torch.load(smoke / "stages" / "geometry" / "model.pt", weights_only=True)
    b = torch.load(run / "stages" / "geometry" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _copy_scan(src: Path, dst: Path, *, fit: dict | None = None, colours: bool = True, body: bool = True) -> Path:
    dst.mkdir(parents=True)
    text = (src / "scan.obj").read_text()
    if not colours:
        text = "\n".join(" ".join(ln.split()[:4]) if ln.startswith("v ") else ln for ln in text.splitlines()) + "\n"
    (dst / "scan.obj").write_text(text)
    data = json.loads((src / "smplx_param.json").read_text())
    (dst / "smplx_param.json").write_text(json.dumps({**data, **(fit or {})}))
    if body:
        shutil.copy(src / "body_model.npz", dst / "body_model.npz")
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("case, expect", [
    ("far", "from its posed body fit"),
    ("betas", "betas"),
    ("texture", "no texture and no vertex colours"),
    ("nobody", "no body model given"),
    ("nofit", "no body fit next to scan.obj"),
])
def test_bad_inputs_are_one_line(tmp_path, scan_folder, case, expect):
    folder = tmp_path / "in"
    if case == "far":
        _copy_scan(scan_folder, folder, fit={"translation": [1.5, 0.2, -0.05]})
    elif case == "betas":
        _copy_scan(scan_folder, folder, fit={"betas": [0.1] * 16})
    elif case == "texture":
        _copy_scan(scan_folder, folder, colours=False)
    elif case == "nobody":
        _copy_scan(scan_folder, folder, body=False)
    else:
        _copy_scan(scan_folder, folder)
        (folder / "smplx_param.json").unlink()
    proc = run_cli("run", "gala", f"input={folder}", f"out={tmp_path}", "run=bad", *SMOKE)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and expect in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
