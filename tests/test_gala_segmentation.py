"""GALA's 36-view face vote and the canonical space, against the synthetic scan's known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from layerforge.models.gala.canonical import CanonicalSpace, canonical_pose, pose_body
from layerforge.models.gala.segmentation import (
    OracleSegmenter,
    fill_unseen,
    remove_small_components,
    segmentation_cameras,
    vote_faces,
)
from layerforge.renderers.mesh import render_mesh


def test_vote_counts_views_and_threshold():
    # 3 faces, 4 views: face 0 seen 4x segmented 2x (ratio 0.5 -> object), face 1 seen 4x segmented 1x,
    # face 2 never seen
    ids = torch.tensor([[[0, 1]], [[0, 1]], [[0, 1]], [[0, -1]]])
    masks = torch.tensor([[[True, True]], [[True, False]], [[False, False]], [[False, False]]])
    vote = vote_faces(ids, masks, 3)
    assert vote.visible.tolist() == [4, 3, 0]
    assert vote.segmented.tolist() == [2, 1, 0]
    assert vote.is_object.tolist() == [True, False, False]
    assert vote.unseen.tolist() == [False, False, True]
    assert vote_faces(ids, masks, 3, threshold=0.3).is_object.tolist() == [True, True, False]


def test_small_components_dropped_and_unseen_filled():
    # a strip of 40 triangles and an island of 2 triangles, sharing no edge
    strip = np.array([[i, i + 1, i + 2] for i in range(40)])
    island = np.array([[100, 101, 102], [101, 103, 102]])
    faces = np.concatenate([strip, island])
    lab = np.ones(len(faces), bool)
    out = remove_small_components(faces, lab, min_faces=25)
    assert out[:40].all() and not out[40:].any()
    # the middle of the strip unseen: it takes its neighbours' label
    lab = np.ones(40, bool)
    lab[:5] = False
    unseen = np.zeros(40, bool)
    unseen[15:25] = True
    lab[15:25] = False
    filled = fill_unseen(strip, lab, unseen)
    assert filled[15:25].all() and not filled[:5].any()


def _scan_face_ids(scan_truth, resolution: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(faces [F, 3], true labels [F], face ids [36, R, R]) of the posed synthetic scan's 36 views."""
    v = torch.from_numpy(scan_truth["scan_vertices"])
    f = torch.from_numpy(scan_truth["scan_faces"])
    lo, hi = v.min(0).values, v.max(0).values
    cams = segmentation_cameras((lo + hi) / 2, float((hi - lo).norm() / 2), resolution)
    assert len(cams) == 36
    ids = torch.cat([render_mesh(v, f, cams[i], antialias_edges=False).extras["face_id"] for i in range(len(cams))])
    return f, torch.from_numpy(scan_truth["face_is_object"]), ids


def test_oracle_vote_recovers_the_jacket(clothed_scan, scan_truth):
    """36 views at 256 px (face ids at 384), the oracle masks: the vote matches the true labels."""
    f, truth, ids = _scan_face_ids(scan_truth, 384)
    masks = OracleSegmenter(truth)(None, ids, "jacket")
    vote = vote_faces(ids, masks, len(f))
    lab = fill_unseen(f.numpy(), remove_small_components(f.numpy(), vote.is_object.numpy()), vote.unseen.numpy())
    accuracy = float((torch.from_numpy(lab) == truth).float().mean())
    seen = ~vote.unseen
    assert float(seen.float().mean()) > 0.9  # measured 0.953 at 384 px
    assert float((vote.is_object[seen] == truth[seen]).float().mean()) > 0.999  # perfect masks, seen faces
    assert accuracy > 0.99  # measured 0.9998 with the unseen faces filled


def test_noisy_masks_still_vote_right(clothed_scan, scan_truth):
    """Masks dilated by 2 px (a segmenter bleeding over the boundary): the majority vote holds."""
    f, truth, ids = _scan_face_ids(scan_truth, 256)
    masks = OracleSegmenter(truth)(None, ids, "jacket").float()
    masks = torch.nn.functional.max_pool2d(masks[:, None], 5, 1, 2)[:, 0] > 0.5
    vote = vote_faces(ids, masks, len(f))
    seen = ~vote.unseen
    assert float((vote.is_object[seen] == truth[seen]).float().mean()) > 0.95  # measured 0.968


def test_canonical_pose_spreads_the_legs(body_model):
    pose = canonical_pose(body_model)
    names = list(body_model.joint_names)
    # SMPL-X faces +Z in its native frame: GALA's pose[1, 2] = +15 deg, pose[2, 2] = -15 deg
    assert torch.allclose(pose[names.index("left_hip")], torch.tensor([0.0, 0.0, math.radians(15)]), atol=1e-6)
    assert torch.allclose(pose[names.index("right_hip")], torch.tensor([0.0, 0.0, -math.radians(15)]), atol=1e-6)
    assert float(pose.abs().sum()) == pytest.approx(2 * math.radians(15), abs=1e-6)
    space = CanonicalSpace(body_model)
    rest = pose_body(body_model, None, torch.zeros_like(pose))
    ank = names.index("left_ankle")
    hip = names.index("left_hip")
    a = rest.joints[ank] - rest.joints[hip]
    b = space.body.joints[ank] - space.body.joints[hip]
    angle = math.degrees(math.acos(float(torch.dot(a, b) / a.norm() / b.norm())))
    assert angle == pytest.approx(15.0, abs=0.05)
    assert float(space.body.joints[ank, 0]) > float(rest.joints[ank, 0])  # the left foot moved outwards (+X)


def test_canonicalisation_error(body_model, scan_truth):
    """The posed scan brought back by inverse LBS lands on the canonical scan it was posed from."""
    space = CanonicalSpace(body_model)
    posed = pose_body(body_model, torch.from_numpy(scan_truth["betas"]), torch.from_numpy(scan_truth["pose"]))
    assert float((space.to_posed(space.body.vertices, posed) - posed.vertices).norm(dim=1).max()) < 1e-5
    canon = space.to_canonical(torch.from_numpy(scan_truth["scan_vertices"]), posed)
    err = (canon - torch.from_numpy(scan_truth["canonical_scan_vertices"])).norm(dim=1).numpy() * 1e3
    assert err.mean() < 1.0  # mm; measured 0.50
    assert np.percentile(err, 95) < 4.0  # measured 2.69 (armpits, crotch: posed and canonical neighbours differ)
    assert np.percentile(err, 99) < 12.0  # measured 7.98


def test_reposed_garment_keeps_its_offset_over_the_body(body_model, scan_truth):
    """Independent of the map itself: in a new pose the jacket still sits outside the body, at the
    offset it had in canonical space (a rigid-ish LBS keeps distances to the nearest body surface)."""
    space = CanonicalSpace(body_model)
    names = list(body_model.joint_names)
    pose = torch.zeros(body_model.num_joints, 3)
    pose[names.index("left_shoulder")] = torch.tensor([0.0, 0.0, -1.0])
    pose[names.index("right_elbow")] = torch.tensor([0.0, 1.2, 0.0])
    pose[names.index("spine2")] = torch.tensor([0.3, 0.0, 0.0])
    new = pose_body(body_model, torch.from_numpy(scan_truth["betas"]), pose)
    jacket = torch.from_numpy(scan_truth["jacket_canonical_vertices"])
    reposed = space.to_posed(jacket, new)
    d_c, _ = cKDTree(space.body.vertices.numpy()).query(jacket.numpy())
    d_p, _ = cKDTree(new.vertices.numpy()).query(reposed.numpy())
    assert abs(np.median(d_p) - np.median(d_c)) < 0.002  # metres
    assert np.percentile(np.abs(d_p - d_c), 90) < 0.005
