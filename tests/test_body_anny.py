"""Anny as a BodyModel (layerforge.models.body.anny) against anny's own rest mesh and posing.

Needs the optional package ``anny`` (not in the default environment): skipped without it. The
first run builds anny's cache (about 1 min, several on a loaded 2-core machine, ~790 MB under
$ANNY_CACHE_DIR or build/anny); later runs load it in well under a second.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("anny", reason="the optional body model package `anny` is not installed (pip install anny)")

from layerforge.models.body.anny import (  # noqa: E402
    ANNY_SHAPE_PARAMS,
    anny_deltas_from_rotations,
    anny_rest,
    build_anny,
    load_anny,
)
from layerforge.models.body.model import batch_rodrigues  # noqa: E402

pytestmark = pytest.mark.slow

# float32 (ours) vs float64 (anny) on a 1.6 m body: vertices agree to ~1e-6 m, joints to ~1e-5 m.
JOINT_TOL_M = 2e-5
POSE_TOL_M = 1e-4


@pytest.fixture(scope="module")
def anny_model():
    return build_anny()


@pytest.fixture(scope="module")
def body():
    return load_anny()


def _p0(batch: int = 1) -> torch.Tensor:
    return torch.full((batch, len(ANNY_SHAPE_PARAMS)), 0.5, dtype=torch.float64)


def test_layout(body):
    V, J = body.num_vertices, body.num_joints
    assert (V, J) == (13718, 104)
    assert body.faces.shape[1] == 3 and body.faces.dtype == torch.int64
    assert int(body.faces.min()) >= 0 and int(body.faces.max()) < V
    assert body.shapedirs.shape == (V, 3, len(ANNY_SHAPE_PARAMS))
    assert body.J_regressor.shape == (J, V)
    torch.testing.assert_close(body.J_regressor.sum(1), torch.ones(J), atol=1e-5, rtol=0)
    assert float(body.J_regressor.abs().max()) < 10.0
    torch.testing.assert_close(body.lbs_weights.sum(1), torch.ones(V), atol=1e-5, rtol=0)
    assert bool((body.lbs_weights >= 0).all())
    assert int(body.parents[0]) == -1
    assert all(0 <= int(p) < j for j, p in enumerate(body.parents.tolist()) if j > 0)
    assert len(body.joint_names) == J and body.posedirs is None
    torch.testing.assert_close(body.to_world, torch.eye(4))


def test_zero_pose_is_anny_rest_mesh(body, anny_model):
    rest = anny_rest(anny_model, _p0())
    out = body.forward()
    ref = rest["rest_vertices"][0].float()
    assert torch.equal(body.v_template, ref)
    torch.testing.assert_close(out.vertices[0], ref, atol=1e-6, rtol=0)
    # joints = bone heads (up to float32 round-off of the signed regressor rows)
    torch.testing.assert_close(out.joints[0], rest["rest_bone_heads"][0].float(), atol=JOINT_TOL_M, rtol=0)
    # anny's own posing with the converted identity pose gives the same mesh
    deltas = anny_deltas_from_rotations(anny_model, rest["rest_bone_poses"], torch.eye(3).expand(1, 104, 3, 3))
    with torch.no_grad():
        posed = anny_model(pose_parameters=deltas, pose_parameterization="local-ref")["vertices"][0]
    torch.testing.assert_close(posed.float(), ref, atol=1e-6, rtol=0)


def test_elbow_90_degrees_matches_anny(body, anny_model):
    names = body.joint_names
    elbow, shoulder = names.index("lowerarm01.L"), names.index("upperarm01.L")
    rest = anny_rest(anny_model, _p0())
    heads = rest["rest_bone_heads"][0]
    axis = torch.linalg.cross(heads[elbow] - heads[shoulder], torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64))
    axis = axis / axis.norm()
    pose = torch.zeros(1, body.num_joints, 3)
    pose[0, elbow] = (math.pi / 2) * axis.float()
    ours = body.forward(pose=pose).vertices[0]

    rot = batch_rodrigues(pose.double())
    deltas = anny_deltas_from_rotations(anny_model, rest["rest_bone_poses"], rot)
    with torch.no_grad():
        theirs = anny_model(pose_parameters=deltas, pose_parameterization="local-ref")["vertices"][0]
    moved = (ours - body.v_template).norm(dim=1)
    assert float(moved.max()) > 0.15  # the forearm really moved (a ~25 cm forearm, 90 degrees)
    err = (ours.double() - theirs).norm(dim=1).max()
    assert float(err) < POSE_TOL_M, f"max vertex error {float(err):.2e} m"
    # the delta anny gets for the elbow is the same 90-degree rotation, up to anny's reference-frame offsets
    D = deltas[0, elbow, :3, :3]
    angle = torch.arccos(((torch.diagonal(D).sum() - 1) / 2).clamp(-1, 1))
    assert abs(math.degrees(float(angle)) - 90.0) < 12.0


def test_anny_identity_pose_reproduced(body, anny_model):
    """anny's default output (all deltas identity, its reference pose) from our model with the
    converted rotations Rot_c = A_parent^T A_c, root R_0^T, transl -h_0."""
    rest = anny_rest(anny_model, _p0())
    P = rest["rest_bone_poses"][0]
    R, h = P[:, :3, :3], P[:, :3, 3]
    A = anny_model.reference_bone_orientations.double() @ R.transpose(-1, -2)
    par = [max(int(p), 0) for p in anny_model.bone_parents]
    rot = A[par].transpose(-1, -2) @ A
    rot[0] = R[0].T
    if bool((A[0] - torch.eye(3, dtype=A.dtype)).abs().max() > 1e-9):
        pytest.skip("root reference orientation differs from its rest orientation")
    out = body.forward(pose=rot[None].float(), transl=-h[0][None].float())
    with torch.no_grad():
        ref = anny_model()["vertices"][0]
    assert float((out.vertices[0].double() - ref).norm(dim=1).max()) < POSE_TOL_M


def test_shape_linearisation(body, anny_model):
    s = ANNY_SHAPE_PARAMS.index("gender")  # gender interpolates linearly between 2 anchors
    p = _p0()
    p[0, s] += 0.2
    rest = anny_rest(anny_model, p)
    betas = torch.zeros(1, len(ANNY_SHAPE_PARAMS))
    betas[0, s] = 0.2
    v = body.shaped_vertices(betas)[0]
    torch.testing.assert_close(v.double(), rest["rest_vertices"][0], atol=1e-5, rtol=0)
    joints = body.rest_joints(betas)[0].double()
    torch.testing.assert_close(joints, rest["rest_bone_heads"][0], atol=JOINT_TOL_M, rtol=0)
    # weight is nonlinear (kink at 0.5): first-order only, still close for a small step
    s = ANNY_SHAPE_PARAMS.index("weight")
    p = _p0()
    p[0, s] += 0.05
    betas = torch.zeros(1, len(ANNY_SHAPE_PARAMS))
    betas[0, s] = 0.05
    err = (body.shaped_vertices(betas)[0].double() - anny_rest(anny_model, p)["rest_vertices"][0]).norm(dim=1)
    assert float(err.max()) < 0.01


def test_height_and_up_axis(body):
    v = body.v_template
    height = float(v[:, 2].max() - v[:, 2].min())
    assert 1.5 < height < 1.9
    j = dict(zip(body.joint_names, body.rest_joints()[0]))
    assert float(j["head"][2]) > float(j["neck01"][2]) > float(j["root"][2]) > float(j["foot.L"][2])
    assert float(j["upperarm01.L"][0]) > 0 > float(j["upperarm01.R"][0])  # left at +X
    nose = v[body.keypoint_vertices[0]]
    assert float(nose[1]) < float(j["head"][1])  # facing -Y


def test_openpose18_on_body(body, anny_model):
    import anny

    assert body.openpose18 is not None and len(body.openpose18) == 18
    out = body.forward()
    kp = body.openpose_keypoints(out)[0]
    v = out.vertices[0]
    lo, hi = v.min(0).values, v.max(0).values
    assert bool(((kp >= lo - 0.01) & (kp <= hi + 0.01)).all())
    assert float(torch.cdist(kp, v).min(1).values.max()) < 0.12  # joints sit inside limbs
    right = [2, 3, 4, 8, 9, 10, 14, 16]
    left = [5, 6, 7, 11, 12, 13, 15, 17]
    assert bool((kp[right, 0] < 0).all()) and bool((kp[left, 0] > 0).all())
    # against anny's own COCO keypoints (same names)
    coco_names = ("nose", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
                  "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee",
                  "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear")
    op_index = (0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17)
    coco = anny.KeypointsRegressor.coco(anny_model, labels=list(coco_names))
    ref = coco({"vertices": v[None].double()})[0].float()
    dist = (kp[list(op_index)] - ref).norm(dim=1)
    assert float(dist.max()) < 0.05, dict(zip(coco_names, dist.tolist()))


def test_other_phenotype_and_errors(anny_model):
    phen = {"gender": 1.0, "age": 0.9, "height": 0.2}
    body = load_anny(phenotype=phen)
    p = _p0()
    for k, val in phen.items():
        p[0, ANNY_SHAPE_PARAMS.index(k)] = val
    rest = anny_rest(anny_model, p)
    assert torch.equal(body.v_template, rest["rest_vertices"][0].float())
    torch.testing.assert_close(body.rest_joints()[0].double(), rest["rest_bone_heads"][0], atol=JOINT_TOL_M, rtol=0)
    assert body.name.startswith("anny[")
    with pytest.raises(ValueError, match="unknown anny phenotype"):
        load_anny(phenotype={"bmi": 0.5})
    with pytest.raises(ValueError, match="outside"):
        load_anny(phenotype={"age": 1.5})
