"""Body model (SMPL-X-layout LBS), its file readers and the synthetic SMPL-X body."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from layerforge.errors import InputError
from layerforge.models.body import (
    batch_rodrigues,
    designed_joints,
    hand_pose_from_pca,
    load_smplx,
    posed_body,
    read_fit,
    skin_points,
    synthetic_smplx_arrays,
    unskin_points,
    write_synthetic_smplx,
)

RES = 32
L_ELBOW, L_WRIST = 18, 20
FOREARM = [L_ELBOW, L_WRIST, *range(25, 40)]  # left elbow, wrist and the 15 left-hand finger joints


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("smplx")
    return write_synthetic_smplx(d / "SMPLX_NEUTRAL.npz", resolution=RES), write_synthetic_smplx(d / "SMPLX_NEUTRAL.pkl", resolution=RES)


@pytest.fixture(scope="module")
def raw():
    return {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in synthetic_smplx_arrays(resolution=RES).items()}


@pytest.fixture(scope="module")
def model(files):
    return load_smplx(files[0])


def test_synthetic_body_is_a_closed_human_sized_surface(raw):
    import trimesh

    mesh = trimesh.Trimesh(raw["v_template"], raw["f"].astype(np.int64), process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert len(mesh.split(only_watertight=False)) == 1
    assert mesh.volume > 0.04  # outward normals; a 1.7 m adult is ~0.07 m^3
    ext = mesh.bounds[1] - mesh.bounds[0]
    assert 1.6 < ext[1] < 1.8 and 1.5 < ext[0] < 1.9 and ext[2] < 0.45  # +Y up, T-pose arms along x
    assert abs(mesh.bounds[0, 1] - (-1.28)) < 0.02
    w = raw["weights"]
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-5)
    assert (w >= 0).all() and ((w > 0).sum(1) <= 4).all()
    assert raw["shapedirs"].shape == (len(mesh.vertices), 3, 400) and raw["posedirs"].shape == (len(mesh.vertices), 3, 486)
    joints = raw["J_regressor"] @ raw["v_template"]
    err = np.linalg.norm(joints - designed_joints(), axis=1)
    assert err[:23].max() < 0.03, err[:23].max()  # the body joints; fingertips of the coarse mitten are rougher
    assert raw["kintree_table"][0, 0] == 2**32 - 1
    comp = raw["hands_componentsl"]
    np.testing.assert_allclose(comp @ comp.T, np.eye(45), atol=1e-5)


def test_loads_npz_and_pkl_alike(files, raw):
    with open(files[1], "rb") as fh:
        blob = fh.read()
    assert b"chumpy" in blob and b"csc_matrix" in blob  # the pkl really holds a chumpy object and a sparse matrix
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(blob)  # plain unpickling needs chumpy; load_smplx must not
    a, b = load_smplx(files[0], num_betas=12, num_expression=5), load_smplx(files[1], num_betas=12, num_expression=5)
    V = len(raw["v_template"])
    for m in (a, b):
        assert m.v_template.shape == (V, 3) and m.faces.shape == (len(raw["f"]), 3) and m.faces.dtype == torch.int64
        assert m.shapedirs.shape == (V, 3, 12) and m.expr_dirs.shape == (V, 3, 5)
        assert m.posedirs.shape == (486, V * 3) and m.J_regressor.shape == (55, V) and m.lbs_weights.shape == (V, 55)
        assert m.parents[0] == -1 and m.parents[L_WRIST] == L_ELBOW and m.parents[25] == L_WRIST
        assert m.joint_names[L_ELBOW] == "left_elbow" and m.joint_names[54] == "right_thumb3" and len(m.joint_names) == 55
        np.testing.assert_allclose(m.shapedirs.numpy(), raw["shapedirs"][..., :12], atol=1e-6)
        np.testing.assert_allclose(m.expr_dirs.numpy(), raw["shapedirs"][..., 300:305], atol=1e-6)
        np.testing.assert_allclose(m.J_regressor.numpy(), raw["J_regressor"], atol=1e-6)
        # posedirs row p is pose feature p: file layout [V, 3, P]
        np.testing.assert_allclose(m.posedirs[7].reshape(V, 3).numpy(), raw["posedirs"][:, :, 7], atol=1e-7)
        assert m.hands["left_components"].shape == (45, 45) and m.openpose18[0] == 55


def test_zero_pose_is_the_scaled_translated_template(model, raw):
    s, t = 1.3, torch.tensor([[0.2, -0.1, 0.5]])
    out = model(pose=torch.zeros(1, 55, 3), transl=t, scale=torch.tensor([s]))
    np.testing.assert_allclose(out.vertices[0].numpy(), raw["v_template"] * s + t.numpy(), atol=2e-6)
    np.testing.assert_allclose(out.pose_offsets.numpy(), 0.0, atol=0)
    plain = model()
    np.testing.assert_allclose(plain.vertices[0].numpy(), raw["v_template"], atol=1e-6)


def test_joints_are_regressed_from_the_shaped_template(model, raw):
    betas = np.array([[1.5, -2.0, 0.5, 0.0, 0.3]])
    expr = np.array([[0.7, -0.4]])
    out = model(betas=torch.tensor(betas, dtype=torch.float32), expression=torch.tensor(expr, dtype=torch.float32))
    shaped = raw["v_template"] + raw["shapedirs"][:, :, :5] @ betas[0] + raw["shapedirs"][:, :, 300:302] @ expr[0]
    np.testing.assert_allclose(out.rest_vertices[0].numpy(), shaped, atol=1e-5)
    np.testing.assert_allclose(out.joints[0].numpy(), raw["J_regressor"] @ shaped, atol=1e-5)
    np.testing.assert_allclose(model.rest_joints(torch.tensor(betas, dtype=torch.float32))[0].numpy(),
                               raw["J_regressor"] @ (raw["v_template"] + raw["shapedirs"][:, :, :5] @ betas[0]), atol=1e-5)
    assert out.rest_vertices[0, :, 1].max() - out.rest_vertices[0, :, 1].min() > 1.7  # beta 0 is height


def test_elbow_rotation_is_rigid_on_the_forearm(model, raw):
    pose = torch.zeros(1, 55, 3)
    pose[0, L_ELBOW] = torch.tensor([0.0, 0.0, math.pi / 2])  # 90 deg about native +Z
    rz = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    w = raw["weights"]
    on_subtree = w[:, FOREARM].sum(1) > 0
    only_subtree = np.abs(w[:, FOREARM].sum(1) - 1.0) < 1e-6
    assert only_subtree.sum() > 10
    elbow = (raw["J_regressor"] @ raw["v_template"])[L_ELBOW]
    rigid = dataclasses.replace(model, posedirs=None)
    out = rigid(pose=pose)
    v0, v1 = raw["v_template"], out.vertices[0].numpy().astype(np.float64)
    moved = np.linalg.norm(v1 - v0, axis=1) > 1e-6
    assert moved.any() and not (moved & ~on_subtree).any()
    expect = (v0[only_subtree] - elbow) @ rz.T + elbow
    np.testing.assert_allclose(v1[only_subtree], expect, atol=1e-5)
    wrist = (raw["J_regressor"] @ v0)[L_WRIST]
    np.testing.assert_allclose(out.joints[0, L_WRIST].numpy(), (wrist - elbow) @ rz.T + elbow, atol=1e-5)
    # with pose blend shapes: offsets are (R - I) of the elbow against its 9 posedirs rows; other vertices stay put
    full = model(pose=pose)
    feat = (rz - np.eye(3)).reshape(9)
    rows = slice(9 * (L_ELBOW - 1), 9 * L_ELBOW)
    np.testing.assert_allclose(full.pose_offsets[0].numpy(), raw["posedirs"][:, :, rows] @ feat, atol=1e-6)
    moved = np.linalg.norm(full.vertices[0].numpy() - v0, axis=1) > 1e-6
    assert not (moved & ~on_subtree).any()


def test_global_orient_scale_transl_is_a_similarity(model, raw):
    rotvec = np.array([0.3, -1.1, 0.6])
    s, t = 0.8, np.array([1.0, 2.0, -0.5])
    pose = torch.zeros(1, 55, 3)
    pose[0, 0] = torch.tensor(rotvec, dtype=torch.float32)
    out = model(pose=pose, transl=torch.tensor(t[None], dtype=torch.float32), scale=torch.tensor([[s]]))
    r = Rotation.from_rotvec(rotvec).as_matrix()
    joints0 = raw["J_regressor"] @ raw["v_template"]
    root = joints0[0]
    expect = s * ((raw["v_template"] - root) @ r.T + root) + t
    np.testing.assert_allclose(out.vertices[0].numpy(), expect, atol=1e-5)
    np.testing.assert_allclose(out.joints[0].numpy(), s * ((joints0 - root) @ r.T + root) + t, atol=1e-5)


def test_skin_unskin_round_trip(model):
    g = torch.Generator().manual_seed(0)
    pose = 0.5 * torch.randn(2, 55, 3, generator=g)
    out = model(pose=pose, transl=torch.randn(2, 3, generator=g), scale=torch.tensor([1.1, 0.9]))
    rest = out.rest_vertices + out.pose_offsets
    posed = skin_points(rest, model.lbs_weights, out.transforms)
    np.testing.assert_allclose(posed.numpy(), out.vertices.numpy(), atol=1e-5)
    back = unskin_points(posed, model.lbs_weights, out.transforms)
    assert (back - rest).abs().max() < 1e-5
    # batched weights [B, N, J] give the same
    wb = model.lbs_weights[None].expand(2, -1, -1)
    assert (skin_points(rest, wb, out.transforms) - posed).abs().max() < 1e-6


def test_batch_rodrigues_matches_scipy_and_has_gradients():
    g = torch.Generator().manual_seed(1)
    r = torch.randn(64, 3, generator=g, dtype=torch.float64) * 2.0
    r[0] = 0.0
    r[1] = torch.tensor([1e-7, -2e-7, 3e-8])
    r[2] = torch.tensor([math.pi, 0.0, 0.0])
    got = batch_rodrigues(r)
    np.testing.assert_allclose(got.numpy(), Rotation.from_rotvec(r.numpy()).as_matrix(), atol=1e-10)
    assert batch_rodrigues(r.float().reshape(4, 16, 3)).shape == (4, 16, 3, 3)
    x = torch.tensor([[0.3, -0.2, 0.9], [1e-6, 2e-6, -1e-6], [0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(batch_rodrigues, (x,), eps=1e-7, atol=1e-6)
    # the gradient of R at zero is the skew generator: dR/dr_x at 0 = [[0,0,0],[0,0,-1],[0,1,0]]
    z = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    batch_rodrigues(z)[2, 1].backward()
    np.testing.assert_allclose(z.grad.numpy(), [1.0, 0.0, 0.0], atol=1e-12)


def test_posing_gradients_match_finite_differences(model):
    small = dataclasses.replace(model, posedirs=model.posedirs.double(), v_template=model.v_template.double(),
                                shapedirs=model.shapedirs.double(), J_regressor=model.J_regressor.double(),
                                lbs_weights=model.lbs_weights.double(), expr_dirs=None)
    idx = torch.arange(0, model.num_vertices, 23)

    def f(root: torch.Tensor, elbow: torch.Tensor, betas: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        pose = torch.zeros(1, 55, 3, dtype=torch.float64).index_put((torch.tensor([0]), torch.tensor([0])), root)
        pose = pose.index_put((torch.tensor([0]), torch.tensor([L_ELBOW])), elbow)
        return small(betas=betas, pose=pose, scale=scale).vertices[:, idx]

    g = torch.Generator().manual_seed(2)
    args = [(0.4 * torch.randn(1, 3, dtype=torch.float64, generator=g)).requires_grad_() for _ in range(2)]
    args += [torch.randn(1, 2, dtype=torch.float64, generator=g).requires_grad_(), torch.tensor([1.1], dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(f, tuple(args), eps=1e-6, atol=1e-5, fast_mode=True)


def _thuman_fit(raw):
    rng = np.random.default_rng(3)
    return {
        "betas": rng.normal(size=(1, 10)).astype(np.float32), "global_orient": rng.normal(size=(1, 3)).astype(np.float32),
        "body_pose": 0.2 * rng.normal(size=(1, 63)).astype(np.float32), "left_hand_pose": rng.normal(size=(1, 12)).astype(np.float32),
        "right_hand_pose": rng.normal(size=(1, 12)).astype(np.float32), "jaw_pose": rng.normal(size=(1, 3)).astype(np.float32),
        "leye_pose": rng.normal(size=(1, 3)).astype(np.float32), "reye_pose": rng.normal(size=(1, 3)).astype(np.float32),
        "expression": rng.normal(size=(1, 10)).astype(np.float32), "transl": np.array([[0.01, 0.02, 0.03]], np.float32),
        "translation": np.array([0.5, -0.2, 1.0], np.float32), "scale": np.array([1.2], np.float32),
    }


def test_read_thuman_fit_with_pca_hands(model, raw, tmp_path):
    d = _thuman_fit(raw)
    with open(tmp_path / "smplx_param.pkl", "wb") as fh:
        pickle.dump(d, fh)
    fit = read_fit(tmp_path / "smplx_param.pkl", model)
    assert fit.scale == pytest.approx(1.2)
    np.testing.assert_allclose(fit.transl, 1.2 * d["transl"][0] + d["translation"], atol=1e-6)
    left = d["left_hand_pose"][0] @ raw["hands_componentsl"][:12] + raw["hands_meanl"]  # smplx: flat_hand_mean=False
    right = d["right_hand_pose"][0] @ raw["hands_componentsr"][:12] + raw["hands_meanr"]
    full = fit.full_pose(model).numpy()
    assert full.shape == (55, 3)
    np.testing.assert_allclose(full[0], d["global_orient"][0], atol=1e-6)
    np.testing.assert_allclose(full[1:22], d["body_pose"][0].reshape(21, 3), atol=1e-6)
    np.testing.assert_allclose(full[22], d["jaw_pose"][0], atol=1e-6)
    np.testing.assert_allclose(full[23], d["leye_pose"][0], atol=1e-6)
    np.testing.assert_allclose(full[24], d["reye_pose"][0], atol=1e-6)
    np.testing.assert_allclose(full[25:40].reshape(-1), left, atol=1e-5)
    np.testing.assert_allclose(full[40:55].reshape(-1), right, atol=1e-5)
    flat = read_fit(tmp_path / "smplx_param.pkl", model, flat_hand_mean=True)
    np.testing.assert_allclose(flat.left_hand_pose.reshape(-1), d["left_hand_pose"][0] @ raw["hands_componentsl"][:12], atol=1e-5)
    h = hand_pose_from_pca(torch.tensor(d["left_hand_pose"]), torch.tensor(raw["hands_componentsl"]), torch.tensor(raw["hands_meanl"]))
    assert h.shape == (1, 15, 3)
    # scan = scale * body(no transl) + transl, GALA's normalisation (scan - transl) / scale
    out = posed_body(model, fit)
    bare = model(betas=torch.tensor(fit.betas)[None], pose=fit.full_pose(model)[None], expression=torch.tensor(fit.expression)[None])
    np.testing.assert_allclose(((out.vertices - torch.tensor(fit.transl)) / 1.2).numpy(), bare.vertices.numpy(), atol=1e-5)


def test_read_renderpeople_and_amass_style_fits(model, raw, tmp_path):
    rng = np.random.default_rng(4)
    body = 0.2 * rng.normal(size=63)
    lh = 0.1 * rng.normal(size=45)
    np.savez(tmp_path / "rp.npz", betas=rng.normal(size=10), global_orient=np.zeros(3), body_pose=body,
             left_hand_pose=lh, right_hand_pose=np.zeros(45), global_body_translation=np.array([0.1, 0.2, 0.3]), body_scale=np.array(0.9))
    fit = read_fit(tmp_path / "rp.npz", model)
    assert fit.scale == pytest.approx(0.9)
    np.testing.assert_allclose(fit.transl, [0.1, 0.2, 0.3], atol=1e-6)
    np.testing.assert_allclose(fit.body_pose, body.reshape(21, 3), atol=1e-6)
    np.testing.assert_allclose(fit.left_hand_pose.reshape(-1), lh + raw["hands_meanl"], atol=1e-6)  # 45 values: axis-angle
    poses = 0.1 * rng.normal(size=165)
    (tmp_path / "agora.json").write_text(json.dumps({"smplx_param": {"poses": poses.tolist(), "trans": [1.0, 0.0, 0.0], "shape": [0.5, 0.1]}}))
    fit = read_fit(tmp_path / "agora.json", model)
    assert fit.scale == 1.0
    np.testing.assert_allclose(fit.full_pose(model).numpy(), poses.reshape(55, 3), atol=1e-6)  # AMASS hands: flat mean
    np.testing.assert_allclose(fit.betas[:3], [0.5, 0.1, 0.0], atol=1e-7)
    np.testing.assert_allclose(fit.transl, [1.0, 0.0, 0.0])


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"betas": np.zeros((1, 20))}, ["betas", "20", "10", "num_betas=20"]),
        ({"body_pose": np.zeros((1, 60))}, ["body_pose", "60", "63"]),
        ({"jaw_pose": np.array([[0.0, np.nan, 0.0]])}, ["jaw_pose", "NaN"]),
        ({"expression": np.zeros(12)}, ["expression", "num_expression=12"]),
    ],
)
def test_read_fit_errors_name_the_key(model, raw, tmp_path, change, words):
    d = _thuman_fit(raw)
    d.update(change)
    with open(tmp_path / "fit.pkl", "wb") as fh:
        pickle.dump(d, fh)
    with pytest.raises(InputError) as err:
        read_fit(tmp_path / "fit.pkl", model)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_read_fit_file_and_joint_count_errors(model, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_fit(tmp_path / "nope.pkl", model)
    (tmp_path / "bad.pkl").write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="cannot read"):
        read_fit(tmp_path / "bad.pkl", model)
    (tmp_path / "smpl.json").write_text(json.dumps({"pose": [0.0] * 72}))
    with pytest.raises(InputError, match="24 joints but model"):
        read_fit(tmp_path / "smpl.json", model)


def test_load_smplx_errors(files, raw, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_smplx(tmp_path / "missing.npz")
    np.savez(tmp_path / "noweights.npz", **{k: v for k, v in raw.items() if k != "weights"})
    with pytest.raises(InputError, match="'weights'"):
        load_smplx(tmp_path / "noweights.npz")
    bad = dict(raw)
    bad["J_regressor"] = raw["J_regressor"][:, :-1]
    np.savez(tmp_path / "badshape.npz", **bad)
    with pytest.raises(InputError, match="J_regressor"):
        load_smplx(tmp_path / "badshape.npz")
    with pytest.raises(InputError, match="num_betas=300"):
        load_smplx(files[0], num_betas=301)


def test_to_world_puts_the_head_up_and_openpose_keypoints(model):
    out = model(pose=torch.zeros(1, 55, 3))
    world = out.vertices[0] @ model.to_world[:3, :3].T + model.to_world[:3, 3]
    native = out.vertices[0]
    np.testing.assert_allclose(world.numpy(), torch.stack([native[:, 0], -native[:, 2], native[:, 1]], 1).numpy(), atol=1e-7)
    joints_w = out.joints[0] @ model.to_world[:3, :3].T
    head, pelvis, ankle = joints_w[15], joints_w[0], joints_w[7]
    assert head[2] > pelvis[2] + 0.4 and pelvis[2] > ankle[2] + 0.6
    assert int(world[:, 2].argmax()) in set(torch.nonzero(model.lbs_weights[:, 15] > 0.5)[:, 0].tolist())  # the top is head
    kp = model.keypoints(out)
    assert kp.shape == (1, 60, 3)
    op = model.openpose_keypoints(out)[0]
    nose, neck, r_eye, l_eye, r_ear, l_ear = op[0], op[1], op[14], op[15], op[16], op[17]
    assert nose[2] > max(r_eye[2], l_eye[2]) - 0.01 and nose[2] > r_ear[2] + 0.03  # faces native +Z
    assert r_eye[0] < 0 < l_eye[0] and r_ear[0] < r_eye[0] and l_ear[0] > l_eye[0]  # SMPL-X: the left is +X
    assert nose[1] > neck[1] and torch.equal(op[2], out.joints[0, 17])  # right shoulder


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(model):
    pose = 0.3 * torch.randn(2, 55, 3, generator=torch.Generator().manual_seed(5))
    cpu = model(pose=pose, betas=torch.ones(2, 4))
    gpu = model.to("cuda")(pose=pose.cuda(), betas=torch.ones(2, 4, device="cuda"))
    assert (gpu.vertices.cpu() - cpu.vertices).abs().max() < 1e-4
