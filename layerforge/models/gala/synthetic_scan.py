"""A synthetic clothed scan with known answers: a body in a jacket, posed, with its body fit.

The jacket is a shell ``offset`` metres over the torso and upper arms of the canonical body
(the region whose skinning weights belong to ``JACKET_JOINTS``). The scan is the outer surface
of body and jacket, made in canonical space by marching cubes of
``min(body_sdf, max(body_sdf - offset, region_sdf))`` and posed to the fit's pose by the same
canonical-to-posed map the pipeline uses. What the pipeline must recover is known exactly:
which scan faces are jacket, the canonical jacket, and the jacket posed in any pose.

Files written by :func:`write_clothed_scan` (the ``builtin:clothed_scan`` input):

- ``scan.obj`` with vertex colours, +Y up as SMPL-X scans are (our OBJ reader turns it +Z up),
  in the fit's frame: ``scale * lbs(...) + transl``;
- ``smplx_param.json`` the body fit in THuman naming (``betas, global_orient, body_pose,
  transl, scale``...);
- ``body_model.npz`` the synthetic SMPL-X-layout body (:mod:`layerforge.models.body.synthetic`);
- ``truth.npz``: ``face_is_object`` [F] of the scan, the canonical scan and jacket
  (normalised frame), the posed jacket (normalised frame) and the pose.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

JACKET_JOINTS = ("spine1", "spine2", "spine3", "left_collar", "right_collar", "left_shoulder",
                 "right_shoulder", "left_elbow", "right_elbow")
JACKET_OFFSET = 0.015  # metres, the "a centimetre or two"
SKIN_RGB = (0.80, 0.58, 0.46)
JACKET_RGB = (0.12, 0.25, 0.60)
# the scan's pose, axis-angle radians per SMPL-X joint name (native frame, +Y up, facing +Z)
SCAN_POSE = {
    "pelvis": (0.0, math.radians(20.0), 0.0),
    "left_shoulder": (0.0, 0.0, math.radians(-45.0)),
    "right_shoulder": (0.0, 0.0, math.radians(45.0)),
    "left_elbow": (0.0, math.radians(-30.0), 0.0),
    "right_elbow": (0.0, math.radians(30.0), 0.0),
    "left_knee": (math.radians(15.0), 0.0, 0.0),
}
SCAN_BETAS = (0.6, -0.4)
SCAN_SCALE = 1.05
SCAN_TRANSL = (0.1, 0.2, -0.05)


def _signed_distance(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[N] signed distance (negative inside) of points to a closed mesh (open3d)."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    return scene.compute_signed_distance(o3d.core.Tensor(points.astype(np.float32))).numpy().astype(np.float64)


def _region_sdf(space, points: np.ndarray, joints: tuple[str, ...]) -> np.ndarray:
    """Negative where the nearest canonical body vertices belong to ``joints`` (metres-scaled)."""
    idx = [space.model.joint_names.index(j) for j in joints]
    skin = space.skinning(torch.from_numpy(points).float())
    r = skin.weights[:, idx].sum(1).double().numpy()
    return (0.5 - r) * 0.1


def _marching_cubes(sdf_fn, lo: np.ndarray, hi: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    from skimage.measure import marching_cubes

    shape = np.ceil((hi - lo) / voxel).astype(int) + 1
    axes = [lo[i] + voxel * np.arange(shape[i]) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    vol = sdf_fn(grid).reshape(shape)
    v, f, _, _ = marching_cubes(vol, 0.0, spacing=(voxel,) * 3)
    return (v + lo).astype(np.float32), f.astype(np.int64)


def clothed_scan(model, *, voxel: float = 0.015, offset: float = JACKET_OFFSET) -> dict[str, np.ndarray]:
    """Make the scan and its answers for ``model`` (a synthetic SMPL-X-layout BodyModel).

    Returns arrays in the normalised frame (see :mod:`layerforge.models.gala.canonical`):
    ``canonical_scan_vertices/faces``, ``face_is_object`` [F], ``scan_vertices`` (posed),
    ``jacket_canonical_vertices/faces``, ``jacket_posed_vertices``, ``pose`` [J, 3], ``betas``.
    """
    from layerforge.models.gala.canonical import CanonicalSpace, pose_body

    space = CanonicalSpace(model)
    body_v = space.body.vertices.double().numpy()
    body_f = model.faces.numpy()
    lo, hi = body_v.min(0) - 4 * voxel - offset, body_v.max(0) + 4 * voxel + offset

    def body_sdf(p):
        return _signed_distance(body_v, body_f, p)

    def jacket_sdf(p):
        return np.maximum(body_sdf(p) - offset, _region_sdf(space, p, JACKET_JOINTS))

    def scan_sdf(p):
        b = body_sdf(p)
        return np.minimum(b, np.maximum(b - offset, _region_sdf(space, p, JACKET_JOINTS)))

    scan_v, scan_f = _marching_cubes(scan_sdf, lo, hi, voxel)
    jacket_v, jacket_f = _marching_cubes(jacket_sdf, lo, hi, voxel)
    centroids = scan_v[scan_f].mean(1).astype(np.float64)
    face_is_object = jacket_sdf(centroids) < body_sdf(centroids) - 0.25 * offset

    pose = torch.zeros(model.num_joints, 3)
    for name, aa in SCAN_POSE.items():
        pose[list(model.joint_names).index(name)] = torch.tensor(aa)
    betas = torch.zeros(model.num_betas)
    betas[: len(SCAN_BETAS)] = torch.tensor(SCAN_BETAS)
    posed = pose_body(model, betas, pose)
    scan_p = space.to_posed(torch.from_numpy(scan_v), posed).numpy()
    jacket_p = space.to_posed(torch.from_numpy(jacket_v), posed).numpy()
    return {
        "canonical_scan_vertices": scan_v, "scan_faces": scan_f, "face_is_object": face_is_object,
        "scan_vertices": scan_p.astype(np.float32), "jacket_canonical_vertices": jacket_v,
        "jacket_faces": jacket_f, "jacket_posed_vertices": jacket_p.astype(np.float32),
        "pose": pose.numpy(), "betas": betas.numpy(),
    }


def _obj_text(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> str:
    lines = ["# layerforge synthetic clothed scan (+Y up)"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f} {r:.4f} {g:.4f} {b:.4f}" for (x, y, z), (r, g, b) in zip(vertices, colors)]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    return "\n".join(lines) + "\n"


def write_clothed_scan(folder: str | Path, *, resolution: int = 32, voxel: float = 0.015) -> Path:
    """Write the ``builtin:clothed_scan`` folder (see the module docstring); returns it."""
    from layerforge.assets.atomic import atomic_write_bytes
    from layerforge.models.body import load_smplx
    from layerforge.models.body.synthetic import write_synthetic_smplx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    body_path = write_synthetic_smplx(folder / "body_model.npz", resolution=resolution)
    model = load_smplx(body_path)
    t = clothed_scan(model, voxel=voxel)
    r = torch.as_tensor(model.to_world, dtype=torch.float32)[:3, :3].double().numpy()
    # normalised frame -> the fit's native frame: native = scale * R^T x + transl
    native = SCAN_SCALE * t["scan_vertices"].astype(np.float64) @ r + np.asarray(SCAN_TRANSL)
    # native +Y up is what an OBJ stores: our reader's Y-up -> Z-up turn equals model.to_world
    vert_colors = np.tile(np.asarray(SKIN_RGB), (len(native), 1))
    on_jacket = np.zeros(len(native), bool)
    on_jacket[t["scan_faces"][t["face_is_object"]].reshape(-1)] = True
    vert_colors[on_jacket] = JACKET_RGB
    atomic_write_bytes(folder / "scan.obj", _obj_text(native, t["scan_faces"], vert_colors).encode())
    pose = t["pose"].copy()
    if model.hands is not None:  # THuman fits store hand poses relative to the hands' mean (flat_hand_mean false)
        pose[25:40] -= np.asarray(model.hands["left_mean"]).reshape(15, 3)
        pose[40:55] -= np.asarray(model.hands["right_mean"]).reshape(15, 3)
    fit = {"betas": t["betas"].tolist(), "global_orient": pose[0].tolist(), "body_pose": pose[1:22].reshape(-1).tolist(),
           "jaw_pose": pose[22].tolist(), "leye_pose": pose[23].tolist(), "reye_pose": pose[24].tolist(),
           "left_hand_pose": pose[25:40].reshape(-1).tolist(), "right_hand_pose": pose[40:55].reshape(-1).tolist(),
           "expression": [0.0] * 10, "translation": list(SCAN_TRANSL), "scale": SCAN_SCALE}
    atomic_write_bytes(folder / "smplx_param.json", json.dumps(fit, indent=1).encode())
    buf = __import__("io").BytesIO()
    np.savez_compressed(buf, **{k: v for k, v in t.items()})
    atomic_write_bytes(folder / "truth.npz", buf.getvalue())
    return folder


GENERATOR_VERSION = 2


def cached_clothed_scan(cache_root: str | Path, **kwargs) -> Path:
    """:func:`write_clothed_scan` under ``cache_root/clothed_scan-<hash of kwargs>/``, made on
    first use in a temporary sibling and renamed into place (a crash leaves no half folder)."""
    from layerforge.assets.atomic import cached_folder

    key = hashlib.sha256(json.dumps({"v": GENERATOR_VERSION, **kwargs}, sort_keys=True).encode()).hexdigest()[:16]
    return cached_folder(Path(cache_root) / f"clothed_scan-{key}", "scan.obj", lambda folder: write_clothed_scan(folder, **kwargs))
