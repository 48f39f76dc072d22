"""gala's geometry against the synthetic scan's answers: the jacket recovered and re-posed.

The geometry stage runs with reconstruction losses only (no prior) at the issue's 64^3 grid on
CPU; the object layer must match the true jacket (Chamfer, silhouette IoU from six views),
and re-posed by the layers stage to a new fit it must match the true jacket in that pose.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_runs import run_cli
from scipy.spatial import cKDTree

from layerforge.models.metrics import sample_surface

NEW_POSE = {"left_shoulder": (0.0, 0.0, -1.0), "right_elbow": (0.0, 1.2, 0.0), "spine2": (0.3, 0.0, 0.0)}


def _chamfer_mm(va, fa, vb, fb) -> tuple[float, float]:
    a = sample_surface(va, fa, 20000)[0]
    b = sample_surface(vb, fb, 20000)[0]
    return 1e3 * float(cKDTree(b).query(a)[0].mean()), 1e3 * float(cKDTree(a).query(b)[0].mean())


def _iou(va, fa, vb, fb) -> float:
    from layerforge.renderers.cameras import orbit_cameras
    from layerforge.renderers.layers import render_layers

    v = torch.from_numpy(np.asarray(vb, np.float32))
    c = (v.min(0).values + v.max(0).values) / 2
    cams = orbit_cameras(torch.tensor([0.0, 0, 0, 0, 30, 30]), torch.tensor([0.0, 90, 180, 270, 45, 225]), 3.0, 40.0,
                         128, 128, target=c)
    ra = render_layers([torch.from_numpy(np.asarray(va, np.float32))], [torch.from_numpy(fa)], cams, antialiased=False).alpha > 0.5
    rb = render_layers([v], [torch.from_numpy(fb)], cams, antialiased=False).alpha > 0.5
    return float((ra & rb).sum() / (ra | rb).sum())


@pytest.mark.slow
def test_recon_only_geometry_recovers_and_reposes_the_jacket(tmp_path, clothed_scan, scan_truth, body_model):
    from layerforge.assets.mesh_io import read_asset
    from layerforge.models.gala.canonical import CanonicalSpace, pose_body

    names = list(body_model.joint_names)
    pose = np.zeros((body_model.num_joints, 3))
    for k, aa in NEW_POSE.items():
        pose[names.index(k)] = aa
    fit = json.loads((clothed_scan / "smplx_param.json").read_text())
    hands = np.asarray(fit["left_hand_pose"]), np.asarray(fit["right_hand_pose"])
    fit.update(global_orient=[0.0, 0.0, 0.0], body_pose=pose[1:22].reshape(-1).tolist(), translation=[0.0, 0.0, 0.0],
               scale=1.0, left_hand_pose=hands[0].tolist(), right_hand_pose=hands[1].tolist())
    (tmp_path / "new_fit.json").write_text(json.dumps(fit))
    proc = run_cli("run", "gala", f"input={clothed_scan}", f"out={tmp_path}", "run=q", "geometry.grid_resolution=64",
                   "geometry.init_steps=100", "geometry.steps=200", "geometry.checkpoint_every=100",
                   "segment.resolution=96", "segment.vote_resolution=256", "texture.steps=4", "texture.resolution=48",
                   "texture.texture_size=64", "export.preview_size=48", "layers.turntable_frames=4",
                   f"layers.poses=[{tmp_path / 'new_fit.json'}]", "device=cpu", "quiet=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "gala" / "q"
    geo = {p.name: p.geometry for p in read_asset(run / "stages" / "geometry" / "geometry.glb").parts}
    jc, jf = scan_truth["jacket_canonical_vertices"], scan_truth["jacket_faces"]
    ours_to_true, true_to_ours = _chamfer_mm(geo["object"].vertices, geo["object"].faces, jc, jf)
    space = CanonicalSpace(body_model)
    posed = pose_body(body_model, torch.from_numpy(scan_truth["betas"]), torch.from_numpy(scan_truth["pose"]))
    with torch.no_grad():
        ours_posed = space.to_posed(torch.from_numpy(geo["object"].vertices), posed).numpy()
    iou = _iou(ours_posed, geo["object"].faces, scan_truth["jacket_posed_vertices"], jf)
    print(f"jacket: Chamfer ours->true {ours_to_true:.1f} mm, true->ours {true_to_ours:.1f} mm, IoU {iou:.3f}")
    assert ours_to_true < 12.0 and true_to_ours < 12.0  # mm; measured 8.3-10.3 / 7.2-8.4 over runs
    assert iou > 0.93  # measured 0.943-0.946
    # re-posed by the layers stage to the new fit: against the true jacket in that pose
    new = pose_body(body_model, torch.from_numpy(scan_truth["betas"]), torch.from_numpy(pose).float())
    with torch.no_grad():
        true_new = space.to_posed(torch.from_numpy(jc), new).numpy()
    parts = {p.name: p for p in read_asset(run / "export" / "pose_00" / "pose_00.obj").parts}
    jacket = parts["jacket"].geometry.transformed(parts["jacket"].transform)
    a, b = _chamfer_mm(jacket.vertices, jacket.faces, true_new, jf)
    print(f"re-posed jacket: Chamfer {a:.1f} / {b:.1f} mm")
    assert a < 13.0 and b < 13.0  # measured 8.2-8.5 / 7.0-7.2
