"""Reader for nerfstudio ``transforms.json`` datasets (cameras and file paths).

Format (nerfstudio "data conventions"): intrinsics ``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``,
``h`` either at the top level (shared) or per frame (per-frame values win); ``camera_angle_x``
(the Blender-NeRF synthetic format) is accepted instead of ``fl_x``. Each frame has
``file_path`` and a ``transform_matrix``: camera-to-world, 4x4, in the **OpenGL** camera
convention (camera looks down -Z, +Y up), plus optional ``mask_path``, ``depth_file_path``
and ``normal_file_path``. Relative paths are resolved against the json's folder.

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

Posed views with instance masks (:func:`read_posed_views`, the ``decomp_nerf`` input)
-------------------------------------------------------------------------------------
The same ``transforms.json`` plus, per frame:

- ``mask_path``: an instance-id PNG, one channel, uint8 or uint16: 0 background, 1..K
  objects. Our extension: a top-level ``"mask_ignore_value"`` (e.g. 65535, written by
  ``layerforge convert object_nerf`` for the 20-px undistortion border) marks pixels that
  are read as -1 (ignore). Note nerfstudio itself reads ``mask_path`` as a 0/1 loss mask
  (non-zero = keep), so nerfstudio trained on such a folder drops the background pixels.
- ``depth_file_path`` (optional): camera-z depth, a 16/32-bit PNG (or ``.npy``) times
  ``depth_unit_scale_factor`` gives metres. nerfstudio's default is 1e-3 (mm PNGs;
  ``NerfstudioDataParserConfig.depth_unit_scale_factor``) and its depth losses treat the
  image as camera z (``depth_nerfacto.py`` multiplies it by ``directions_norm``); we read the
  factor from a top-level ``"depth_unit_scale_factor"`` when present, else 1e-3.
- ``normal_file_path`` (optional, our extension as nerfstudio has none): unit surface normals
  in the frame's own **camera** frame, either a ``.npy`` [H, W, 3] float array or an RGB(A)
  PNG, 8- or 16-bit, storing ``(n + 1) / 2`` per channel (x, y, z in R, G, B). The camera
  frame is OpenCV's (+x right, +y down, +z forward: a surface facing the camera has n_z < 0)
  unless a top-level ``"normal_convention": "opengl"`` says +x right, +y up, +z backward (a
  camera-facing surface has n_z > 0; Blender's and nerfstudio's camera), converted on read by
  negating y and z. Unknown pixels (read as the zero vector): in a ``.npy`` the zero vector or
  non-finite values, any other vector must be unit length within 10 % (it is renormalised);
  in a PNG, alpha 0 or a decoded vector not within 10 % of unit length (black or mid-grey
  backgrounds, edges blended with them). World normals are ``R^T n`` with ``R`` the
  world-to-camera rotation of the frame's Camera.
- ``"split"`` (optional): ``"train"`` or ``"test"`` (``"val"`` counts as test).
- an optional ``instances.json`` next to ``transforms.json``: ``{"1": "chair", ...}``.

Split rule, in order: per-frame ``"split"`` when any frame has one (then every frame must);
else nerfstudio's own top-level ``train_filenames`` list (the other frames are test); else nerfstudio's default ``eval_mode="fraction"``: frames sorted by file path,
``ceil(0.9 N)`` train frames at ``np.linspace(0, N - 1, n_train, dtype=int)``, the rest test
(``nerfstudio/data/utils/dataparsers_utils.py::get_train_eval_split_fraction``). Views keep
their file order inside each split.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layerforge.errors import InputError
from layerforge.renderers.camera_set import CameraSet
from layerforge.renderers.cameras import Camera, flip_camera_yz

__all__ = ["NerfstudioFrame", "NerfstudioDataset", "PosedViews", "read_nerfstudio", "read_posed_views",
           "NORMAL_CONVENTIONS", "TRAIN_SPLIT_FRACTION"]

# nerfstudio's NerfstudioDataParserConfig.train_split_fraction (eval_mode="fraction", its default)
TRAIN_SPLIT_FRACTION = 0.9

# camera frames a normal_file_path may be written in (the module docstring)
NORMAL_CONVENTIONS = ("opencv", "opengl")
# a stored normal counts as unit length when its length is within this of 1
_UNIT_TOLERANCE = 0.1

_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
_PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")


@dataclass
class NerfstudioFrame:
    """One posed image: ``camera`` is a B = 1 :class:`Camera` (OpenCV, K in pixels)."""

    camera: Camera
    image_path: Path
    mask_path: Path | None = None
    depth_path: Path | None = None
    normal_path: Path | None = None


@dataclass
class NerfstudioDataset:
    """All frames of a ``transforms.json``, in file order."""

    path: Path
    frames: list[NerfstudioFrame]
    depth_unit_scale_factor: float = 1e-3
    normal_convention: str = "opencv"  # camera frame of the normal files: "opencv" or "opengl"

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
        check_files: raise if a referenced image, mask, depth or normal file is missing.
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
                normal_path=(
                    _path(root, fr["normal_file_path"], "normal_file_path", where, check_files)
                    if "normal_file_path" in fr
                    else None
                ),
            )
        )
    scale = float(meta.get("depth_unit_scale_factor", 1e-3))
    convention = meta.get("normal_convention", "opencv")
    if convention not in NORMAL_CONVENTIONS:
        raise InputError(f"{p}: normal_convention is {convention!r}",
                         'set "normal_convention" to "opencv" (+y down, +z forward) or "opengl" (+y up, +z backward)')
    return NerfstudioDataset(path=p, frames=frames, depth_unit_scale_factor=scale, normal_convention=convention)


# --- posed views with instance masks ------------------------------------------------------


@dataclass
class PosedViews:
    """A decomposition dataset: train and test views, instance names, where it came from.

    Attributes:
        train, test: :class:`CameraSet` s (images [N, H, W, 3] float32 linear; masks [N, H, W]
            int64 ids, 0 background, k >= 1 object k, -1 ignore; depths [N, H, W, 1] float32
            camera z in metres, 0 unknown; normals [N, H, W, 3] float32 unit, OpenCV camera frame,
            0 unknown). ``test`` may hold 0 views.
        instances: object id (>= 1) -> name, from ``instances.json`` or ``object_<k>``.
        path: the ``transforms.json`` read.
    """

    train: CameraSet
    test: CameraSet
    instances: dict[int, str]
    path: Path


def _read_image(path: Path, where: str) -> np.ndarray:
    """sRGB PNG/JPEG -> [H, W, 3] float32 linear (an alpha channel is dropped)."""
    from layerforge.assets.types import texture_from_image

    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"{where}: cannot read image {path} ({err.strerror})", "fix the file or its path") from None
    img = texture_from_image(data, srgb=True, source=f"{where}: image {path}")
    return np.ascontiguousarray(img[..., :3])


def _read_plane_of_size(path: Path, what: str, where: str, image_path: Path, size: tuple[int, int]) -> np.ndarray:
    """:func:`_read_plane`, refusing a plane whose size differs from its image's ([H, W])."""
    plane = _read_plane(path, what, where)
    _check_size(plane, path, what, where, image_path, size)
    return plane


def _check_size(arr: np.ndarray, path: Path, what: str, where: str, image_path: Path, size: tuple[int, int]) -> None:
    if arr.shape[:2] != size:
        raise InputError(f"{where}: {what} {path} is {arr.shape[1]}x{arr.shape[0]} but image {image_path} is "
                         f"{size[1]}x{size[0]}", f"make {what} maps the size of their images")


def _png_codes(path: Path, where: str) -> tuple[np.ndarray, float]:
    """An RGB(A) PNG, 8- or 16-bit -> ([H, W, 3 or 4] integer codes as float64, the largest code)."""
    from PIL import Image, UnidentifiedImageError

    hint = "save normals as an RGB PNG (8/16-bit) or a [H, W, 3] .npy"
    try:
        with Image.open(path) as im:
            tile = im.tile[0] if len(im.tile) == 1 else None
            raw = tile[3] if tile is not None else None
            raw = raw if isinstance(raw, str) or raw is None else raw[0]
            if im.mode not in ("RGB", "RGBA"):
                raise InputError(f"{where}: normal {path} has image mode {im.mode}", hint)
            im.load()
            codes = np.asarray(im).astype(np.float64)
        if im.format != "PNG" or raw not in ("RGB;16B", "RGBA;16B"):
            return codes, 255.0
        # Pillow decodes 16-bit RGB(A) PNGs to their high bytes only; decoding the same rows with
        # the little-endian unpacker gives the low bytes (the PNG row filters are undone either way).
        with Image.open(path) as im:
            im.tile = [(tile[0], tile[1], tile[2], raw.replace(";16B", ";16L"))]
            im.load()
            low = np.asarray(im).astype(np.float64)
        return codes * 256.0 + low, 65535.0
    except (UnidentifiedImageError, OSError, ValueError, TypeError, IndexError) as err:
        raise InputError(f"{where}: cannot read normal {path} ({err})", hint) from None


def _read_normals(path: Path, where: str, convention: str) -> np.ndarray:
    """A normal file (module docstring) -> [H, W, 3] float32 OpenCV camera-frame unit normals, 0 unknown."""
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path)
        except (OSError, ValueError) as err:
            raise InputError(f"{where}: cannot read normal {path} ({err})",
                             "re-save it as a [H, W, 3] float .npy") from None
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype.kind != "f":
            raise InputError(f"{where}: normal {path} is {arr.dtype} {arr.shape}",
                             "save camera-frame unit normals as a [H, W, 3] float .npy")
        n = np.where(np.isfinite(arr).all(-1, keepdims=True), arr.astype(np.float64), 0.0)
        length = np.linalg.norm(n, axis=-1)
        bad = (length > 1e-6) & (np.abs(length - 1.0) > _UNIT_TOLERANCE)
        if bad.any():
            i, j = (int(v) for v in np.argwhere(bad)[0])
            raise InputError(f"{where}: normal {path} has {int(bad.sum())} vectors that are neither unit nor zero "
                             f"(row {i}, column {j}: length {length[i, j]:.3g})",
                             "store unit normals (not (n + 1) / 2 colours), the zero vector where unknown")
        known = length > 1e-6
    else:
        codes, top = _png_codes(path, where)
        n = codes[..., :3] / top * 2.0 - 1.0
        length = np.linalg.norm(n, axis=-1)
        known = np.abs(length - 1.0) <= _UNIT_TOLERANCE
        if codes.shape[2] == 4:
            known &= codes[..., 3] > 0
    n = np.where(known[..., None], n / np.where(known, length, 1.0)[..., None], 0.0).astype(np.float32)
    if convention == "opengl":
        n = flip_camera_yz(torch.from_numpy(n)).numpy()
    return n + 0.0  # no -0.0 where unknown


def _read_plane(path: Path, what: str, where: str) -> np.ndarray:
    """A one-channel PNG (or ``.npy``) -> its [H, W] values as stored (no scaling)."""
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path)
        except (OSError, ValueError) as err:
            raise InputError(f"{where}: cannot read {what} {path} ({err})", "re-save it as a 2-D .npy") from None
        arr = arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.load()
                if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "F", "1"):
                    raise InputError(f"{where}: {what} {path} has {len(im.getbands())} channels ({im.mode})",
                                     f"save the {what} as a one-channel 8/16-bit PNG")
                arr = np.asarray(im)
        except (UnidentifiedImageError, OSError) as err:
            raise InputError(f"{where}: cannot read {what} {path} ({err})", "re-save it as a PNG") from None
    if arr.ndim != 2:
        raise InputError(f"{where}: {what} {path} has shape {arr.shape}", f"save the {what} as one channel")
    return arr


def _split_of(meta: dict[str, Any], frames: list[dict[str, Any]], files: list[Path], root: Path,
              where: str) -> tuple[np.ndarray, str]:
    """Boolean train flag per frame and the rule used (see the module docstring)."""
    n = len(frames)
    marked = ["split" in fr for fr in frames]
    if any(marked):
        flags = np.zeros(n, dtype=bool)
        for i, fr in enumerate(frames):
            value = fr.get("split")
            if value not in ("train", "test", "val"):
                raise InputError(f"{where} frame {i} ({files[i].name}): split is {value!r}",
                                 'give every frame "split": "train" or "test" (or none)')
            flags[i] = value == "train"
        return flags, "per-frame split"
    if "train_filenames" in meta:
        train = {(root / f).resolve() for f in meta["train_filenames"]}
        return np.array([f.resolve() in train for f in files], dtype=bool), "train_filenames"
    order = sorted(range(n), key=lambda i: str(files[i]))
    n_train = math.ceil(n * TRAIN_SPLIT_FRACTION)
    flags = np.zeros(n, dtype=bool)
    for k in np.linspace(0, n - 1, n_train, dtype=int):
        flags[order[int(k)]] = True
    return flags, f"nerfstudio fraction {TRAIN_SPLIT_FRACTION}"


def _read_instances(path: Path) -> dict[int, str] | None:
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        names = {int(k): str(v) for k, v in raw.items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError, ValueError) as err:
        raise InputError(f"{path} is not a JSON object of id -> name ({err})",
                         'write it as {"1": "chair", "2": "table"}') from None
    return {k: v for k, v in names.items() if k >= 1}


def read_posed_views(
    folder_or_json: str | Path,
    *,
    require_masks: bool = True,
    min_train: int = 3,
    near: float = 0.01,
    far: float = 1000.0,
) -> PosedViews:
    """Read a nerfstudio folder with instance masks into train/test :class:`CameraSet` s.

    Cameras come from :func:`read_nerfstudio` (OpenGL ``transform_matrix`` -> our OpenCV
    Camera, poses as written). Format, split rule and units: see the module docstring.

    Args:
        folder_or_json: the ``transforms.json`` or its folder (``instances.json`` is looked
            for next to it).
        require_masks: every frame must have a ``mask_path``; when False and some frame has
            none, the views carry no masks.
        min_train: fewest train views accepted.
        near, far: clip range of the cameras (metres).

    Returns:
        :class:`PosedViews`: images [N, H, W, 3] float32 linear in [0, 1]; masks [N, H, W]
        int64; depths [N, H, W, 1] float32 camera z in metres (0 where unknown or for frames
        without a depth file; None when no frame has one); normals [N, H, W, 3] float32 unit
        normals in each view's OpenCV camera frame (``normal_convention`` "opengl" files
        converted; 0 where unknown or for frames without a ``normal_file_path``; None when no
        frame has one).

    Raises:
        InputError: one line each for: a missing or unreadable image, mask, depth or normal
            file; frames of different image sizes; an image whose size differs from ``w``/``h``;
            a mask, depth or normal map whose size differs from its image; a ``.npy`` normal
            that is neither unit nor zero; an unknown ``normal_convention``; a frame without
            ``mask_path`` (``require_masks``); mask ids that ``instances.json`` does not name; fewer than
            ``min_train`` train views.
    """
    ds = read_nerfstudio(folder_or_json, near=near, far=far)
    p = ds.path
    meta = json.loads(p.read_text())
    frames_meta: list[dict[str, Any]] = meta["frames"]
    frames = ds.frames
    if require_masks:
        for i, f in enumerate(frames):
            if f.mask_path is None:
                raise InputError(f"{p} frame {i} ({f.image_path.name}) has no mask_path",
                                 "give every frame an instance-id mask_path (0 background, 1..K objects)")
    sizes = {(f.camera.width, f.camera.height) for f in frames}
    if len(sizes) != 1:
        raise InputError(f"{p}: frames have different image sizes {sorted(sizes)}",
                         "resize all images to one size")
    w, h = sizes.pop()
    use_masks = all(f.mask_path is not None for f in frames)
    use_depth = any(f.depth_path is not None for f in frames)
    ignore = meta.get("mask_ignore_value")
    images = np.zeros((len(frames), h, w, 3), np.float32)
    masks = np.zeros((len(frames), h, w), np.int64) if use_masks else None
    depths = np.zeros((len(frames), h, w, 1), np.float32) if use_depth else None
    use_normals = any(f.normal_path is not None for f in frames)
    normals = np.zeros((len(frames), h, w, 3), np.float32) if use_normals else None
    first_seen: dict[int, Path] = {}
    for i, f in enumerate(frames):
        where = f"{p} frame {i}"
        img = _read_image(f.image_path, where)
        if img.shape[:2] != (h, w):
            raise InputError(f"{where}: image {f.image_path} is {img.shape[1]}x{img.shape[0]}, "
                             f"transforms.json says {w}x{h}", "fix w/h or resize the image")
        images[i] = img
        if masks is not None and f.mask_path is not None:
            m = _read_plane_of_size(f.mask_path, "mask", where, f.image_path, (h, w))
            if m.dtype.kind == "f":
                raise InputError(f"{where}: mask {f.mask_path} holds floats", "save instance ids as an integer PNG")
            m = m.astype(np.int64)
            if ignore is not None:
                m[m == int(ignore)] = -1
            for k in np.unique(m).tolist():
                if k >= 1:
                    first_seen.setdefault(int(k), f.mask_path)
            masks[i] = m
        if depths is not None and f.depth_path is not None:
            d = _read_plane_of_size(f.depth_path, "depth", where, f.image_path, (h, w))
            depths[i, ..., 0] = d.astype(np.float64) * ds.depth_unit_scale_factor
        if normals is not None and f.normal_path is not None:
            nrm = _read_normals(f.normal_path, where, ds.normal_convention)
            _check_size(nrm, f.normal_path, "normal", where, f.image_path, (h, w))
            normals[i] = nrm
    inst_path = p.parent / "instances.json"
    named = _read_instances(inst_path)
    if named is None:
        instances = {k: f"object_{k}" for k in sorted(first_seen)}
    else:
        unnamed = sorted(set(first_seen) - set(named))
        if unnamed:
            raise InputError(f"masks hold ids {unnamed} that {inst_path} does not name (id {unnamed[0]} first in "
                             f"{first_seen[unnamed[0]]})", "add them to instances.json or fix the masks")
        instances = dict(sorted(named.items()))
    files = [f.image_path for f in frames]
    flags, rule = _split_of(meta, frames_meta, files, p.parent, str(p))
    n_train = int(flags.sum())
    if n_train < min_train:
        raise InputError(f"{p}: {n_train} train views ({rule}), at least {min_train} needed",
                         "add posed views or mark more frames \"split\": \"train\"")
    views = CameraSet(
        ds.cameras(),
        torch.from_numpy(images),
        None if masks is None else torch.from_numpy(masks),
        None if depths is None else torch.from_numpy(depths),
        [f.image_path.stem for f in frames],
        None if normals is None else torch.from_numpy(normals),
    )
    train_idx = np.flatnonzero(flags).tolist()
    test_idx = np.flatnonzero(~flags).tolist()
    return PosedViews(train=views[train_idx], test=views[test_idx], instances=instances, path=p)
