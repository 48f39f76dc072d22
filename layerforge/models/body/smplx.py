"""Read an SMPL-X (or SMPL-layout) model file into a :class:`BodyModel`.

Accepts the published array layout: ``.npz`` (SMPLX_NEUTRAL.npz) or ``.pkl`` (SMPLX_NEUTRAL.pkl,
read with ``encoding="latin1"``; a scipy.sparse J_regressor and chumpy arrays are handled without
chumpy installed: chumpy classes unpickle as a stand-in whose ``x`` / ``r`` array is taken).
SMPL-X is non-commercial: this reads the user's file and never ships one.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from layerforge.errors import InputError
from layerforge.models.body.model import BodyModel
from layerforge.models.guidance.openpose import SMPLX_TO_OPENPOSE18

SMPLX_JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "jaw",
    "left_eye_smplhf", "right_eye_smplhf",
    *(f"{side}_{finger}{k}" for side in ("left", "right")
      for finger in ("index", "middle", "pinky", "ring", "thumb") for k in (1, 2, 3)),
)
# The smplx package's SMPL-X vertex landmarks (vertex_ids.py), in the order keypoints() appends them.
SMPLX_KEYPOINT_VERTICES = {"nose": 9120, "reye": 9929, "leye": 9448, "rear": 616, "lear": 6}
SMPLX_NUM_VERTICES = 10475
# native +Y up -> world +Z up: (x, y, z) -> (x, -z, y), as layerforge.assets.mesh_io reads OBJ files
Y_UP_TO_Z_UP = ((1.0, 0.0, 0.0, 0.0), (0.0, 0.0, -1.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0))
_SHAPE_SPACE, _EXPR_SPACE = 300, 100
_REQUIRED = ("v_template", "f", "shapedirs", "J_regressor", "weights", "kintree_table")


class _ChumpyStandIn:
    """Unpickles any chumpy class; the array is its ``x`` (a Ch leaf) or cached ``r``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        elif isinstance(state, tuple) and state and isinstance(state[-1], dict):
            self.__dict__.update(state[-1])
        else:
            self._state = state

    def array(self) -> np.ndarray | None:
        for key in ("x", "r", "_r"):
            val = self.__dict__.get(key)
            if val is not None and not isinstance(val, _ChumpyStandIn):
                return np.asarray(val)
        return None


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "chumpy" or module.startswith("chumpy."):
            return _ChumpyStandIn
        return super().find_class(module, name)


def load_pickle(path: Path) -> Any:
    """Unpickle ``path`` (latin1, chumpy classes replaced by a stand-in)."""
    with open(path, "rb") as fh:
        return _Unpickler(fh, encoding="latin1").load()


def as_array(value: Any, key: str, path: Path | str) -> np.ndarray:
    """A plain numpy array from a file value (numpy, scipy.sparse, chumpy stand-in, torch, list)."""
    if isinstance(value, _ChumpyStandIn):
        arr = value.array()
        if arr is None:
            raise InputError(f"{path}: {key} is a chumpy expression without a stored array", "re-save the file with numpy arrays (e.g. the .npz release)")
        return arr
    if hasattr(value, "toarray"):
        return np.asarray(value.toarray())
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _read_model_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"SMPL-X model file {path} does not exist", "pass the path of SMPLX_NEUTRAL.npz or .pkl (from smpl-x.is.tue.mpg.de)")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=True) as z:
                return {k: z[k] for k in z.files}
        if path.suffix == ".pkl":
            data = load_pickle(path)
            if not isinstance(data, dict):
                raise InputError(f"{path} holds a {type(data).__name__}, not a dict of SMPL-X arrays", "pass an SMPL-X model .pkl or .npz")
            return data
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure is an unreadable input
        raise InputError(f"cannot read SMPL-X model file {path} ({type(err).__name__}: {err})", "pass an SMPL-X .npz or .pkl model file") from None
    raise InputError(f"SMPL-X model file {path} is not .npz or .pkl", "pass SMPLX_NEUTRAL.npz or SMPLX_NEUTRAL.pkl")


def hand_pose_from_pca(coeffs: Tensor, components: Tensor, mean: Tensor | None = None) -> Tensor:
    """Hand joint rotations from PCA coefficients (the smplx package's ``use_pca`` hands).

    coeffs: [B, n] coefficients, n <= 45. components: [45, 45] (rows are components, axis-angle of
    the 15 finger joints). mean: [45] axis-angle added afterwards (smplx adds ``hands_mean`` unless
    ``flat_hand_mean``), None = zero. Returns [B, 15, 3] axis-angle, radians.
    """
    n = coeffs.shape[-1]
    if n > components.shape[0]:
        raise ValueError(f"{n} hand PCA coefficients, the basis has {components.shape[0]}")
    pose = coeffs.to(components.dtype) @ components[:n]
    if mean is not None:
        pose = pose + mean.to(pose.dtype)
    return pose.reshape(*coeffs.shape[:-1], 15, 3)


def _head_keypoint_vertices(v: np.ndarray, weights: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """Vertex ids standing in for nose, right eye, left eye, right ear, left ear on a non-SMPL-X mesh.

    From the rest template (native frame: +Y up, facing +Z) and regressed joints: among vertices
    skinned mostly to the head or jaw (joints 15, 22), the nose is the frontmost (max z) within 2 cm
    of the midline between the eye height and the jaw joint; each eye the frontmost within 2 cm (x
    and y) of its eye joint (23 left, 24 right); each ear the outermost (max |x|) on its side within
    3 cm of the eye height. Falls back to the vertex nearest the joint-based guess.
    """
    head = weights[:, [15, 22]].sum(1) > 0.5
    if not head.any():
        head = np.ones(len(v), bool)
    leye, reye, jaw = joints[23], joints[24], joints[22]
    eye_y = 0.5 * (leye[1] + reye[1])

    def pick(mask: np.ndarray, score: np.ndarray, guess: np.ndarray) -> int:
        m = mask & head
        if m.any():
            return int(np.flatnonzero(m)[np.argmax(score[m])])
        return int(np.argmin(np.linalg.norm(v - guess, axis=1)))

    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    nose = pick((np.abs(x - 0.5 * (leye[0] + reye[0])) < 0.02) & (y < eye_y) & (y > jaw[1]), z, 0.5 * (leye + reye))
    ids = [nose]
    for eye in (reye, leye):
        ids.append(pick((np.abs(x - eye[0]) < 0.02) & (np.abs(y - eye[1]) < 0.02), z, eye))
    band = np.abs(y - eye_y) < 0.03
    ids.append(pick(band & (x < joints[15, 0]), -x, reye))
    ids.append(pick(band & (x > joints[15, 0]), x, leye))
    return np.array(ids, np.int64)


def load_smplx(
    path: str | os.PathLike[str],
    *,
    num_betas: int = 10,
    num_expression: int = 10,
    use_pca_hands: bool | None = None,
    device: torch.device | str = "cpu",
) -> BodyModel:
    """Load an SMPL-X model file (published layout, module docstring) as a :class:`BodyModel`.

    num_betas: shape coefficients kept (SMPL-X 2020 files have 300; v1.0 files 10).
    num_expression: expression coefficients kept (100 / 10 available); 0 drops expression.
    use_pca_hands: stored as ``BodyModel.hand_pca``: how :func:`~layerforge.models.body.fit.read_fit`
        reads hand poses (True PCA coefficients, False 45 axis-angle values, None by size).
    The model's frame is the file's (+Y up); ``to_world`` maps it to +Z up. With 55 joints the model
    gets SMPL-X joint names, 5 keypoint vertices (nose, right eye, left eye, right ear, left ear: the
    smplx package's ids on the 10,475-vertex mesh, otherwise picked by :func:`_head_keypoint_vertices`)
    and the OpenPose-18 mapping. Raises InputError for a missing/unreadable file, a missing key,
    inconsistent shapes, or more coefficients asked for than the file has.
    """
    path = Path(path)
    raw = _read_model_file(path)
    for key in _REQUIRED:
        if key not in raw:
            raise InputError(f"SMPL-X model file {path} lacks the array {key!r}", "pass an SMPL-X model file (SMPLX_NEUTRAL.npz/.pkl)")
    arr = {k: as_array(raw[k], k, path) for k in raw if k in (*_REQUIRED, "posedirs", "hands_componentsl", "hands_componentsr", "hands_meanl", "hands_meanr")}
    v = arr["v_template"].astype(np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise InputError(f"{path}: v_template has shape {v.shape}, expected [V, 3]", "pass an SMPL-X model file")
    V = v.shape[0]

    def bad(key: str, want: str) -> InputError:
        return InputError(f"{path}: {key} has shape {tuple(arr[key].shape)}, expected {want} for V={V}", "the file is corrupt or not an SMPL-X model; re-download it")

    faces = arr["f"].astype(np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= V:
        raise bad("f", "[F, 3] indices below V")
    kin = arr["kintree_table"].astype(np.int64)
    if kin.ndim != 2 or kin.shape[0] != 2:
        raise bad("kintree_table", "[2, J]")
    J = kin.shape[1]
    parents = kin[0].copy()
    parents[(parents == 2**32 - 1) | (parents < 0)] = -1
    if parents[0] != -1 or (parents[1:] < 0).any() or (parents[1:] >= np.arange(1, J)).any():
        raise InputError(f"{path}: kintree_table parents are not a tree with every parent before its children", "pass an SMPL-X model file")
    jreg = arr["J_regressor"].astype(np.float64)
    if jreg.shape != (J, V):
        raise bad("J_regressor", f"[{J}, {V}]")
    weights = arr["weights"].astype(np.float64)
    if weights.shape != (V, J):
        raise bad("weights", f"[{V}, {J}]")
    sd = arr["shapedirs"].astype(np.float64)
    if sd.ndim == 2:
        sd = sd[:, :, None]
    if sd.ndim != 3 or sd.shape[:2] != (V, 3):
        raise bad("shapedirs", "[V, 3, S]")
    total = sd.shape[-1]
    if J == 55 and total >= _SHAPE_SPACE + 1:
        shape_n, expr_start, expr_n = _SHAPE_SPACE, _SHAPE_SPACE, total - _SHAPE_SPACE
    elif J == 55 and total > 10:
        shape_n, expr_start, expr_n = 10, 10, total - 10
    else:
        shape_n, expr_start, expr_n = total, total, 0
    if num_betas > shape_n:
        raise InputError(f"num_betas={num_betas} but {path.name} has {shape_n} shape components", f"pass num_betas={shape_n} or fewer")
    if num_expression > expr_n:
        raise InputError(f"num_expression={num_expression} but {path.name} has {expr_n} expression components", f"pass num_expression={expr_n} or fewer")
    posedirs = None
    if "posedirs" in arr:
        pd = arr["posedirs"].astype(np.float64)
        P = (J - 1) * 9
        if pd.shape == (V, 3, P):
            posedirs = pd.reshape(V * 3, P).T
        elif pd.shape == (P, V * 3):
            posedirs = pd
        else:
            raise bad("posedirs", f"[{V}, 3, {P}]")
    hands = None
    hand_keys = ("hands_componentsl", "hands_componentsr", "hands_meanl", "hands_meanr")
    if all(k in arr for k in hand_keys):
        comp_l, comp_r = arr["hands_componentsl"], arr["hands_componentsr"]
        mean_l, mean_r = arr["hands_meanl"].reshape(-1), arr["hands_meanr"].reshape(-1)
        if comp_l.shape != (45, 45) or comp_r.shape != (45, 45) or mean_l.shape != (45,) or mean_r.shape != (45,):
            raise bad("hands_componentsl", "[45, 45] (and hands_mean* [45])")
        hands = {"left_components": comp_l, "right_components": comp_r, "left_mean": mean_l, "right_mean": mean_r}

    names = SMPLX_JOINT_NAMES if J == 55 else tuple(f"joint_{i}" for i in range(J))
    kp = None
    openpose = None
    if J == 55:
        if V == SMPLX_NUM_VERTICES:
            kp = np.array(list(SMPLX_KEYPOINT_VERTICES.values()), np.int64)
        else:
            kp = _head_keypoint_vertices(v, weights, jreg @ v)
        openpose = tuple(int(i) for i in SMPLX_TO_OPENPOSE18)

    def t(x: np.ndarray, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype, device=device)

    return BodyModel(
        name=path.stem.lower(),
        v_template=t(v),
        faces=t(faces, torch.int64),
        shapedirs=t(sd[..., :num_betas]),
        posedirs=None if posedirs is None else t(posedirs),
        J_regressor=t(jreg),
        parents=t(parents, torch.int64),
        lbs_weights=t(weights),
        joint_names=names,
        to_world=t(np.array(Y_UP_TO_Z_UP)),
        expr_dirs=t(sd[..., expr_start : expr_start + num_expression]) if num_expression > 0 else None,
        openpose18=openpose,
        keypoint_vertices=None if kp is None else t(kp, torch.int64),
        hands=None if hands is None else {k: t(val) for k, val in hands.items()},
        hand_pca=use_pca_hands,
    )
