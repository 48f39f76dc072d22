"""Reader for nerfstudio ``transforms.json`` datasets (cameras and file paths).

Format (nerfstudio "data conventions"): intrinsics ``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``,
``h`` either at the top level (shared) or per frame (per-frame values win); ``camera_angle_x``
(the Blender-NeRF synthetic format) is accepted instead of ``fl_x``. Each frame has
``file_path`` and a ``transform_matrix``: camera-to-world, 4x4, in the **OpenGL** camera
convention (camera looks down -Z, +Y up), plus optional ``mask_path`` and
``depth_file_path``. Relative paths are resolved against the json's folder.

What we do with it:

- Poses become our :class:`~layerforge.renderers.cameras.Camera` (OpenCV world-to-camera)
  through the converter in ``renderers/cameras.py`` (the one place conventions change).
  This module imports only that torch-only module from ``renderers``.
- Poses are taken as world coordinates as written (no nerfstudio auto-scale/re-centre,
  ``applied_transform`` is informational and ignored).
- ``cx``/``cy`` use the same pixel-centre-at-+0.5 convention as ours (nerfstudio and COLMAP
  both do), so they are copied unchanged.
- Distortion (``k1..k4``, ``p1``, ``p2``) and non-pinhole ``camera_model`` values are not
  modelled: non-zero coefficients are ignored with a warning.

Any missing or malformed file/field raises :class:`~layerforge.errors.InputError` with a
one-line message.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerforge.errors import InputError
from layerforge.renderers.cameras import Camera

__all__ = ["NerfstudioFrame", "NerfstudioDataset", "read_nerfstudio"]

_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
_PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")


@dataclass
class NerfstudioFrame:
    """One posed image: ``camera`` is a B = 1 :class:`Camera` (OpenCV, K in pixels)."""

    camera: Camera
    image_path: Path
    mask_path: Path | None = None
    depth_path: Path | None = None


@dataclass
class NerfstudioDataset:
    """All frames of a ``transforms.json``, in file order."""

    path: Path
    frames: list[NerfstudioFrame]
    depth_unit_scale_factor: float = 1e-3

    def __len__(self) -> int:
        return len(self.frames)

    def cameras(self) -> Camera:
        """All frames as one Camera batch [N] (needs one image size for all frames)."""
        sizes = {(f.camera.width, f.camera.height) for f in self.frames}
        if len(sizes) != 1:
            raise InputError(
                f"{self.path}: frames have different image sizes {sorted(sizes)}",
                "batch frames of one size at a time via .frames",
            )
        return Camera.cat([f.camera for f in self.frames])


def _number(d: dict[str, Any], key: str, where: str) -> float:
    try:
        value = float(d[key])
    except (TypeError, ValueError):
        raise InputError(f"{where}: '{key}' is not a number", "fix the transforms.json") from None
    if not math.isfinite(value):
        raise InputError(f"{where}: '{key}' is not finite", "fix the transforms.json")
    return value


def _intrinsics(top: dict[str, Any], frame: dict[str, Any], where: str) -> tuple[torch.Tensor, int, int]:
    merged = {**top, **frame}
    for key in ("w", "h"):
        if key not in merged:
            raise InputError(f"{where}: missing '{key}' (image size)", "add w and h to transforms.json")
    w, h = int(_number(merged, "w", where)), int(_number(merged, "h", where))
    if w <= 0 or h <= 0:
        raise InputError(f"{where}: image size {w}x{h} is not positive", "fix w and h")
    if "fl_x" in merged:
        fx = _number(merged, "fl_x", where)
    elif "camera_angle_x" in merged:
        fx = 0.5 * w / math.tan(0.5 * _number(merged, "camera_angle_x", where))
    else:
        raise InputError(f"{where}: missing 'fl_x' (focal length in pixels)", "add fl_x/fl_y to transforms.json")
    fy = _number(merged, "fl_y", where) if "fl_y" in merged else fx
    cx = _number(merged, "cx", where) if "cx" in merged else w / 2.0
    cy = _number(merged, "cy", where) if "cy" in merged else h / 2.0
    if fx <= 0 or fy <= 0:
        raise InputError(f"{where}: focal length must be positive", "fix fl_x/fl_y")
    k = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return k, w, h


def _path(root: Path, value: Any, key: str, where: str, check: bool) -> Path:
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: '{key}' must be a non-empty string", "fix the transforms.json")
    p = Path(value)
    p = p if p.is_absolute() else root / p
    if check and not p.exists():
        raise InputError(f"{where}: {key} {p} does not exist", "fix the path or add the file")
    return p


def read_nerfstudio(
    path: str | Path,
    *,
    check_files: bool = True,
    near: float = 0.01,
    far: float = 1000.0,
    dtype: torch.dtype = torch.float32,
) -> NerfstudioDataset:
    """Read a nerfstudio dataset.

    Args:
        path: the ``transforms.json`` file or the folder holding it.
        check_files: raise if a referenced image, mask or depth file is missing.
        near, far: clip range given to every Camera.
        dtype: dtype of the camera tensors (poses are converted in float64 first).

    Returns:
        :class:`NerfstudioDataset`; each frame's camera has K [1, 3, 3] and an OpenCV
        world-to-camera [1, 4, 4] (converted from the OpenGL ``transform_matrix``).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "transforms.json"
    if not p.is_file():
        raise InputError(f"nerfstudio dataset {p} not found", "pass a transforms.json or its folder")
    try:
        meta = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{p} is not valid JSON ({err})", "fix or regenerate transforms.json") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise InputError(f"{p} has no 'frames' list", "regenerate it with ns-process-data")
    root = p.parent
    model = meta.get("camera_model", "OPENCV")
    if model not in _PINHOLE_MODELS:
        warnings.warn(f"{p}: camera_model {model} is treated as a pinhole camera", stacklevel=2)
    warned = False
    frames: list[NerfstudioFrame] = []
    for n, fr in enumerate(meta["frames"]):
        where = f"{p} frame {n}"
        if not isinstance(fr, dict):
            raise InputError(f"{where} is not an object", "fix the transforms.json")
        merged = {**meta, **fr}
        if not warned and any(float(merged.get(k, 0.0) or 0.0) != 0.0 for k in _DISTORTION_KEYS):
            warnings.warn(f"{p}: lens distortion coefficients are ignored (pinhole model)", stacklevel=2)
            warned = True
        k, w, h = _intrinsics(meta, fr, where)
        try:
            c2w = torch.tensor(fr["transform_matrix"], dtype=torch.float64)
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{where}: missing or bad 'transform_matrix'", "give a 4x4 camera-to-world") from None
        if c2w.shape not in ((4, 4), (3, 4)) or not torch.isfinite(c2w).all():
            raise InputError(f"{where}: transform_matrix must be a finite 4x4", "give a 4x4 camera-to-world")
        if "file_path" not in fr:
            raise InputError(f"{where}: missing 'file_path'", "fix the transforms.json")
        cam = Camera.from_nerfstudio(c2w[None], k[None], w, h, near, far).to(dtype=dtype)
        frames.append(
            NerfstudioFrame(
                camera=cam,
                image_path=_path(root, fr["file_path"], "file_path", where, check_files),
                mask_path=_path(root, fr["mask_path"], "mask_path", where, check_files) if "mask_path" in fr else None,
                depth_path=(
                    _path(root, fr["depth_file_path"], "depth_file_path", where, check_files)
                    if "depth_file_path" in fr
                    else None
                ),
            )
        )
    scale = float(meta.get("depth_unit_scale_factor", 1e-3))
    return NerfstudioDataset(path=p, frames=frames, depth_unit_scale_factor=scale)
