"""Read a body fit (SMPL-X parameters of one person) and pose a :class:`BodyModel` with it.

Accepted files: ``.pkl`` (latin1, chumpy/torch values tolerated), ``.npz`` and ``.json``, holding
one person's parameters, optionally nested under ``smplx_param``/``smplx_params``/``smplx``/
``params``/``param`` or as a one-element list, arrays optionally with a leading batch dim of 1.

Key names (aliases in :data:`_ALIASES`):
- THuman2.0 ``smplx_param.pkl``: betas, global_orient, body_pose (63, or 66 with the root first, as
  GALA accepts), left/right_hand_pose (PCA coefficients, 12 in THuman2.0, or 45 axis-angle),
  jaw_pose, leye_pose, reye_pose, expression, ``translation`` and ``scale`` (GALA normalises a
  THuman scan as ``(scan - translation) / scale``); a SMPL-X ``transl`` inside is also honoured.
- RenderPeople fits as GALA reads them: the same pose keys with ``global_body_translation`` and
  ``body_scale``.
- AMASS / AGORA-style: root_orient, pose_body, pose_hand (90), pose_jaw, pose_eye (6), trans,
  shape, or one ``poses``/``pose``/``full_pose`` of J*3 values; ``scale`` absent means 1.
Rotation-matrix poses ([..., 3, 3]) are converted to axis-angle.

Global similarity: the posed body is ``scale * LBS(...) + transl`` (BodyModel.forward); a fit with
both an inner SMPL-X ``transl`` t_in and an outer translation t_out gives
``transl = scale * t_in + t_out``.

Hands: smplx's default ``flat_hand_mean=False`` adds ``hands_mean`` to the hand pose (PCA or not),
and THuman2.0 / GALA use it; AMASS stores flat-mean axis-angle hands. ``read_fit(flat_hand_mean=None)``
picks False for per-part keys (left_hand_pose) and True for AMASS-style pose_hand / poses.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from layerforge.errors import InputError
from layerforge.models.body.model import BodyModel, BodyOutput
from layerforge.models.body.smplx import as_array, hand_pose_from_pca, load_pickle


@dataclass
class BodyFit:
    """One person's body parameters, numpy float32, radians (axis-angle) and metres.

    betas: [S]. global_orient: [3]. body_pose: [21, 3]. jaw_pose, leye_pose, reye_pose: [3].
    left_hand_pose, right_hand_pose: [15, 3] axis-angle (PCA already expanded, hands_mean already
    added when the fit uses it). expression: [E]. transl: [3] metres (applied after scale).
    scale: global uniform scale (1 = none). pose: [J, 3] full pose for a model that is not
    SMPL-X, or when the fit gave one; it then overrides the per-part fields.
    """

    betas: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    global_orient: np.ndarray = field(default_factory=lambda: np.zeros((3,), np.float32))
    body_pose: np.ndarray = field(default_factory=lambda: np.zeros((21, 3), np.float32))
    jaw_pose: np.ndarray = field(default_factory=lambda: np.zeros((3,), np.float32))
    leye_pose: np.ndarray = field(default_factory=lambda: np.zeros((3,), np.float32))
    reye_pose: np.ndarray = field(default_factory=lambda: np.zeros((3,), np.float32))
    left_hand_pose: np.ndarray = field(default_factory=lambda: np.zeros((15, 3), np.float32))
    right_hand_pose: np.ndarray = field(default_factory=lambda: np.zeros((15, 3), np.float32))
    expression: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    transl: np.ndarray = field(default_factory=lambda: np.zeros((3,), np.float32))
    scale: float = 1.0
    pose: np.ndarray | None = None

    def full_pose(self, model: BodyModel) -> Tensor:
        """The pose [J, 3] float32 on ``model.device``: SMPL-X joint order (global, 21 body, jaw,
        leye, reye, 15 left hand, 15 right hand) for a 55-joint model, else ``pose``."""
        if self.pose is not None:
            p = np.asarray(self.pose, np.float32).reshape(-1, 3)
        else:
            if model.num_joints != 55:
                raise InputError(f"the fit has SMPL-X part poses but model {model.name} has {model.num_joints} joints", "give the fit a 'pose' of J x 3 values")
            p = np.concatenate([
                np.reshape(self.global_orient, (1, 3)), np.reshape(self.body_pose, (21, 3)), np.reshape(self.jaw_pose, (1, 3)),
                np.reshape(self.leye_pose, (1, 3)), np.reshape(self.reye_pose, (1, 3)),
                np.reshape(self.left_hand_pose, (15, 3)), np.reshape(self.right_hand_pose, (15, 3)),
            ]).astype(np.float32)
        if p.shape[0] != model.num_joints:
            raise InputError(f"the fit's pose has {p.shape[0]} joints, model {model.name} has {model.num_joints}", "use the body model the fit was made with")
        return torch.as_tensor(p, device=model.device)


_ALIASES: dict[str, tuple[str, ...]] = {
    "betas": ("betas", "shape", "shapes", "beta"),
    "global_orient": ("global_orient", "root_orient", "global_pose", "root_pose"),
    "body_pose": ("body_pose", "pose_body"),
    "jaw_pose": ("jaw_pose", "pose_jaw"),
    "leye_pose": ("leye_pose",),
    "reye_pose": ("reye_pose",),
    "eye_pose": ("pose_eye", "eye_pose"),
    "left_hand_pose": ("left_hand_pose", "lhand_pose"),
    "right_hand_pose": ("right_hand_pose", "rhand_pose"),
    "hand_pose": ("pose_hand", "hand_pose"),
    "expression": ("expression", "expr", "exp", "expressions"),
    "transl": ("transl",),
    "outer_transl": ("translation", "global_body_translation", "trans", "global_translation"),
    "scale": ("scale", "body_scale", "scales"),
    "pose": ("full_pose", "pose", "poses", "thetas"),
}
_NESTED = ("smplx_param", "smplx_params", "smplx", "params", "param", "smpl_param", "smpl_params")


def _read_raw(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"body fit file {path} does not exist", "pass the path of the scan's SMPL-X fit (.pkl, .npz or .json)")
    try:
        if path.suffix == ".pkl":
            data: Any = load_pickle(path)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=True) as z:
                data = {k: (z[k].item() if z[k].dtype == object and z[k].ndim == 0 else z[k]) for k in z.files}
        elif path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            raise InputError(f"body fit file {path} is not .pkl, .npz or .json", "convert the fit to one of those")
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure is an unreadable input
        raise InputError(f"cannot read body fit file {path} ({type(err).__name__})", "pass a readable .pkl, .npz or .json fit") from None
    for _ in range(3):
        if isinstance(data, (list, tuple)) and len(data) == 1:
            data = data[0]
        if isinstance(data, dict):
            nested = [k for k in _NESTED if isinstance(data.get(k), dict)]
            if nested:
                data = data[nested[0]]
                continue
        break
    if not isinstance(data, dict):
        raise InputError(f"body fit file {path} holds a {type(data).__name__}, not a dict of parameters", "save the fit as a dict (betas, body_pose, ...)")
    return data


def _get(data: dict[str, Any], name: str, path: Path) -> tuple[str, np.ndarray] | None:
    for key in _ALIASES[name]:
        if key in data and data[key] is not None and not isinstance(data[key], str):
            arr = as_array(data[key], key, path).astype(np.float64)
            if not np.isfinite(arr).all():
                raise InputError(f"body fit {path.name}: {key} has NaN or infinite values", "re-export the fit")
            return key, arr
    return None


def _axis_angle(arr: np.ndarray, key: str, n: int, path: Path) -> np.ndarray:
    """[n, 3] axis-angle from n*3 values or n rotation matrices (any leading batch dim of 1)."""
    if arr.size == n * 9 and arr.shape[-2:] == (3, 3):
        from scipy.spatial.transform import Rotation

        return Rotation.from_matrix(arr.reshape(n, 3, 3)).as_rotvec()
    if arr.size != n * 3:
        raise InputError(f"body fit {path.name}: {key} has {arr.size} values, expected {n * 3} ({n} joints x 3 axis-angle)", f"give {key} as {n * 3} values")
    return arr.reshape(n, 3)


def _coeffs(arr: np.ndarray, key: str, limit: int, what: str, path: Path) -> np.ndarray:
    vec = arr.reshape(-1)
    if vec.size > limit:
        raise InputError(f"body fit {path.name}: {key} has {vec.size} values but the model has {limit} {what} components",
                         f"load the model with num_{'betas' if what == 'shape' else 'expression'}={vec.size}")
    return np.pad(vec, (0, limit - vec.size))


def _hand(arr: np.ndarray, key: str, side: str, model: BodyModel, mean: bool, path: Path) -> np.ndarray:
    vec = arr.reshape(-1) if arr.shape[-2:] != (3, 3) else _axis_angle(arr, key, 15, path).reshape(-1)
    pca = model.hand_pca if model.hand_pca is not None else vec.size < 45
    hands = model.hands
    if pca:
        if hands is None:
            raise InputError(f"body fit {path.name}: {key} has {vec.size} PCA coefficients but the model has no hand PCA basis", "use an SMPL-X model file with hands_components")
        comp = hands[f"{side}_components"].detach().cpu().double()
        m = hands[f"{side}_mean"].detach().cpu().double() if mean else None
        if vec.size > comp.shape[0]:
            raise InputError(f"body fit {path.name}: {key} has {vec.size} values, more than the {comp.shape[0]} hand PCA components", "give at most 45 values")
        return hand_pose_from_pca(torch.as_tensor(vec)[None], comp, m)[0].numpy()
    out = _axis_angle(vec, key, 15, path)
    if mean and hands is not None:
        out = out + hands[f"{side}_mean"].detach().cpu().double().numpy().reshape(15, 3)
    return out


def read_fit(path: str | os.PathLike[str], model: BodyModel, *, flat_hand_mean: bool | None = None) -> BodyFit:
    """Read one person's body fit for ``model`` (formats and conventions: module docstring).

    flat_hand_mean: True: hand poses as given; False: the model's hands_mean added (smplx default);
    None: False for left/right_hand_pose keys, True for AMASS-style pose_hand / poses.
    Raises InputError (one line naming the key) for an unreadable file, betas or expression longer
    than the model has, a pose part of the wrong size, a full pose for another joint count, NaN values.
    """
    path = Path(path)
    data = _read_raw(path)
    fit = BodyFit(betas=np.zeros(model.num_betas, np.float32), expression=np.zeros(model.num_expression, np.float32))
    got = {name: _get(data, name, path) for name in _ALIASES}
    if got["betas"] is not None:
        fit.betas = _coeffs(got["betas"][1], got["betas"][0], model.num_betas, "shape", path).astype(np.float32)
    if got["expression"] is not None:
        fit.expression = _coeffs(got["expression"][1], got["expression"][0], model.num_expression, "expression", path).astype(np.float32)
    s = 1.0
    if got["scale"] is not None:
        sv = got["scale"][1].reshape(-1)
        if sv.size != 1 or not sv[0] > 0:
            raise InputError(f"body fit {path.name}: {got['scale'][0]} must be one positive number, got {sv.tolist()}", "give a scalar scale")
        s = float(sv[0])
    fit.scale = s
    transl = np.zeros(3)
    for name, factor in (("transl", s), ("outer_transl", 1.0)):
        if got[name] is not None:
            key, arr = got[name]
            if arr.size != 3:
                raise InputError(f"body fit {path.name}: {key} has {arr.size} values, expected 3", f"give {key} as 3 values (metres)")
            transl = transl + factor * arr.reshape(3)
    fit.transl = transl.astype(np.float32)

    part_keys = [n for n in ("global_orient", "body_pose", "jaw_pose", "leye_pose", "reye_pose", "eye_pose",
                             "left_hand_pose", "right_hand_pose", "hand_pose") if got[n] is not None]
    J = model.num_joints
    if got["pose"] is not None and (not part_keys or J != 55):
        key, arr = got["pose"]
        if arr.shape[-2:] == (3, 3):
            n = arr.size // 9
        else:
            if arr.size % 3:
                raise InputError(f"body fit {path.name}: {key} has {arr.size} values, not joints x 3", f"give {key} as {J} x 3 axis-angle values")
            n = arr.size // 3
        if n != J:
            raise InputError(f"body fit {path.name}: {key} has {n} joints but model {model.name} has {J}", "use the body model the fit was made with")
        pose = _axis_angle(arr, key, J, path)
        if J == 55 and not (flat_hand_mean if flat_hand_mean is not None else True) and model.hands is not None:
            pose[25:40] += model.hands["left_mean"].detach().cpu().double().numpy().reshape(15, 3)
            pose[40:55] += model.hands["right_mean"].detach().cpu().double().numpy().reshape(15, 3)
        fit.pose = pose.astype(np.float32)
        return fit
    if J != 55:
        raise InputError(f"body fit {path.name} has SMPL-X part poses but model {model.name} has {J} joints", "give the fit a 'pose' key with J x 3 values")
    if got["global_orient"] is not None:
        fit.global_orient = _axis_angle(got["global_orient"][1], got["global_orient"][0], 1, path).reshape(3).astype(np.float32)
    if got["body_pose"] is not None:
        key, arr = got["body_pose"]
        if arr.size in (66, 22 * 9):  # root first, as GALA accepts
            full = _axis_angle(arr, key, 22, path)
            if got["global_orient"] is None:
                fit.global_orient = full[0].astype(np.float32)
            fit.body_pose = full[1:].astype(np.float32)
        else:
            fit.body_pose = _axis_angle(arr, key, 21, path).astype(np.float32)
    for name in ("jaw_pose", "leye_pose", "reye_pose"):
        if got[name] is not None:
            setattr(fit, name, _axis_angle(got[name][1], got[name][0], 1, path).reshape(3).astype(np.float32))
    if got["eye_pose"] is not None:
        eyes = _axis_angle(got["eye_pose"][1], got["eye_pose"][0], 2, path)
        fit.leye_pose, fit.reye_pose = eyes[0].astype(np.float32), eyes[1].astype(np.float32)
    for side in ("left", "right"):
        name = f"{side}_hand_pose"
        if got[name] is not None:
            mean = not (flat_hand_mean if flat_hand_mean is not None else False)
            setattr(fit, name, _hand(got[name][1], got[name][0], side, model, mean, path).astype(np.float32))
    if got["hand_pose"] is not None:
        key, arr = got["hand_pose"]
        both = _axis_angle(arr, key, 30, path)
        mean = not (flat_hand_mean if flat_hand_mean is not None else True)
        for i, side in enumerate(("left", "right")):
            h = both[15 * i : 15 * (i + 1)]
            if mean and model.hands is not None:
                h = h + model.hands[f"{side}_mean"].detach().cpu().double().numpy().reshape(15, 3)
            setattr(fit, f"{side}_hand_pose", h.astype(np.float32))
    return fit


def posed_body(model: BodyModel, fit: BodyFit) -> BodyOutput:
    """Pose ``model`` with ``fit`` (batch of one): vertices [1, V, 3] = scale * LBS + transl, native frame."""
    dev = model.device
    betas = torch.as_tensor(fit.betas, dtype=torch.float32, device=dev).reshape(1, -1)
    expr = torch.as_tensor(fit.expression, dtype=torch.float32, device=dev).reshape(1, -1)
    return model(
        betas=betas if betas.numel() else None,
        pose=fit.full_pose(model)[None],
        transl=torch.as_tensor(fit.transl, dtype=torch.float32, device=dev).reshape(1, 3),
        scale=torch.tensor([fit.scale], dtype=torch.float32, device=dev),
        expression=expr if expr.numel() and model.expr_dirs is not None else None,
    )
