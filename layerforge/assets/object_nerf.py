"""Convert an Object-NeRF / ToyDesk / ScanNet folder (the layout UDC-NeRF reads) to our nerfstudio layout.

Source layout, as read by UDC-NeRF's ``datasets/udc_dataset_toydesk.py`` and
``datasets/udc_dataset_scannet_multi.py`` (github W-Ted/UDC-NeRF) and Object-NeRF's
``datasets/generic_dataset.py`` (github zju3dv/object_nerf), written for ScanNet by Object-NeRF's
``data_preparation/scannet_sens_reader/convert_to_nerf_style_data.py``:

- ``transforms_full.json``: ``camera_angle_x`` (radians, horizontal FoV; the loaders set
  ``focal = 0.5 W / tan(camera_angle_x / 2)``, fx = fy, principal point at the centre) and
  ``frames`` of ``{"idx": int, "file_path": "./full/12", "transform_matrix": 4x4}``.
  ``transform_matrix`` is camera-to-world in the **OpenCV/SLAM** camera convention (x right,
  y down, z forward): Object-NeRF's ``data_preparation/README.md`` says so and both loaders
  right-multiply its rotation by ``diag(1, -1, -1)`` ("right down forward" -> "right up back").
  ScanNet's writer stores ScanNet's ``pose/<i>.txt`` there unchanged; some are ``-inf``
  (invalid tracking), which the loaders drop (``obs_check``); so do we.
- per frame, next to ``file_path`` (no extension): ``<file_path>.png`` (RGB),
  ``<file_path>.<tag>.png`` (instance ids, one channel; ``tag`` is ``instance`` for ToyDesk and
  ``instance-filt`` for ScanNet, the configs' ``inst_seg_tag``), ``<file_path>.depth.png``
  (uint16 millimetres, camera z; the loaders multiply by 1e-3, and tolerate a missing one).
- split: ``train.txt`` / ``test.txt`` with one frame ``idx`` per line (``np.loadtxt``), in a
  split folder that ships with UDC-NeRF (``datasets/split/our_desk_2_train_0.8/``), not with the
  data; ScanNet multi-object configs use ``train_list_near_obj.txt`` / ``test_list_near_obj.txt``.
  ScanNet folders also hold ``transforms_train.json`` / ``transforms_test.json``.
- the loaders ignore a 20-px border of every image (``bmask``, "black border caused by image
  undistortion").
- normalisation the loaders apply (we do **not**): subtract ``scene_center``, divide
  translations and depth by ``scale_factor``; ``near``/``far`` are in source units. Values from
  UDC-NeRF's configs: toydesk1 0.3 / 9 / 5, toydesk2 0.8 / 24 / 16, ScanNet 0.3 / 6 / 2.
  They also zero depth above 4 (after the mm -> unit conversion); we keep depth as stored.

What we write (``dst``), read back by :func:`layerforge.assets.nerfstudio_dataset.read_posed_views`:

- ``transforms.json``: ``fl_x = fl_y`` from ``camera_angle_x`` and the image width,
  ``cx = W/2``, ``cy = H/2`` (pixel centres at +0.5, as nerfstudio reads ``camera_angle_x``;
  UDC-NeRF's rays omit the +0.5, i.e. they sit half a pixel off ours), per frame
  ``transform_matrix`` = nerfstudio/OpenGL camera-to-world converted through our
  :class:`~layerforge.renderers.cameras.Camera`, ``"split"`` per frame when the source has a
  split, nerfstudio's ``train_filenames`` / ``val_filenames`` / ``test_filenames`` to match,
  ``depth_unit_scale_factor`` and ``"mask_ignore_value": 65535``.
- ``images/<idx>.png`` and ``depth/<idx>.png`` copied byte for byte; ``masks/<idx>.png`` as
  uint16 with the ids as stored and the 20-px border set to 65535 (= ignore, read as -1).
- ``instances.json`` copied when the source folder has one (the source formats do not name
  instances; ScanNet names live in its ``*.aggregation.json``).
- ``object_nerf.json``: where it came from, the border, units and the UDC-NeRF normalisation
  of the chosen preset (recorded, not applied).

Units: poses and depth keep the source's units unless ``units_to_metres`` is given (then pose
translations are multiplied by it and ``depth_unit_scale_factor = 1e-3 * units_to_metres``).
ScanNet poses are metres. ToyDesk's are not: UDC-NeRF's toydesk2 config notes "desk real
width 1.06m, recon width 8.3" (about 0.128 m per unit).
"""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layerforge.assets.atomic import atomic_write_bytes, atomic_write_json
from layerforge.errors import InputError, OutputError
from layerforge.renderers.cameras import Camera

__all__ = ["convert_object_nerf", "PRESETS", "IGNORE_ID", "BORDER_PX"]

log = logging.getLogger("layerforge")

IGNORE_ID = 65535  # written into masks for ignored pixels; transforms.json "mask_ignore_value"
BORDER_PX = 20  # Object-NeRF / UDC-NeRF loaders' undistortion border
# UDC-NeRF config/<scene>.yml dataset_extra: near, far, scale_factor, scene_center (source units)
PRESETS: dict[str, dict[str, Any]] = {
    "toydesk1": {"near": 0.3, "far": 9.0, "scale_factor": 5.0, "scene_center": [0.08, 0.13, 2.40],
                 "inst_seg_tag": "instance"},
    "toydesk2": {"near": 0.8, "far": 24.0, "scale_factor": 16.0, "scene_center": [0.2, 1.4, 7.1],
                 "inst_seg_tag": "instance"},
    "scannet": {"near": 0.3, "far": 6.0, "scale_factor": 2.0, "scene_center": None,
                "inst_seg_tag": "instance-filt"},
}
_TAGS = ("instance", "instance-filt")


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is not valid JSON ({err})", "fix or regenerate it") from None


def _read_ids(path: Path) -> set[int]:
    try:
        return {int(float(v)) for v in path.read_text().split()}
    except (OSError, ValueError) as err:
        raise InputError(f"split file {path} is not a list of frame idx ({err})", "write one idx per line") from None


def _split_lists(src: Path, split_dir: Path | None, train_list: str, test_list: str) -> tuple[set[int], set[int] | None] | None:
    """(train ids, test ids or None = the rest) from split files, else ScanNet's json splits, else None."""
    folders = [split_dir] if split_dir is not None else [src]
    for folder in folders:
        train, test = folder / train_list, folder / test_list
        if train.is_file():
            return _read_ids(train), (_read_ids(test) if test.is_file() else None)
        if split_dir is not None:
            raise InputError(f"split folder {folder} has no {train_list}", "pass the folder holding train.txt/test.txt")
    tj, vj = src / "transforms_train.json", src / "transforms_test.json"
    if tj.is_file():
        ids = (lambda p: {int(f["idx"]) for f in _load_json(p).get("frames", []) if "idx" in f})
        return ids(tj), (ids(vj) if vj.is_file() else None)
    return None


_ID_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")


def _size(path: Path, what: str, where: str) -> tuple[int, int]:
    """(width, height) from the file header; a mask must also be one integer channel."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if what == "mask" and im.mode not in _ID_MODES:
                raise InputError(f"{where}: mask {path} is not a one-channel integer PNG (mode {im.mode})",
                                 "save instance ids as an 8/16-bit one-channel PNG")
            return im.size
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"{where}: cannot read {what} {path} ({err})", "re-save it as a PNG") from None


def _frame_base(src: Path, file_path: str) -> Path:
    p = Path(file_path)
    if p.suffix.lower() in (".png", ".jpg", ".jpeg"):
        p = p.with_suffix("")
    return p if p.is_absolute() else src / p


def _sibling(base: Path, suffix: str) -> Path:
    return base.with_name(base.name + suffix)


def convert_object_nerf(
    src: str | Path,
    dst: str | Path,
    *,
    split_dir: str | Path | None = None,
    train_list: str = "train.txt",
    test_list: str = "test.txt",
    instance_tag: str | None = None,
    preset: str | None = None,
    border: int = BORDER_PX,
    units_to_metres: float = 1.0,
    min_train: int = 3,
) -> Path:
    """Convert an Object-NeRF-style folder ``src`` into a new nerfstudio folder ``dst``.

    Args:
        src: folder with ``transforms_full.json`` (see the module docstring for the layout).
        dst: new or empty folder to write (nothing existing is overwritten).
        split_dir: folder with ``train_list`` / ``test_list`` (UDC-NeRF's
            ``datasets/split/<scene>``); default: look in ``src``, then for ScanNet's
            ``transforms_train.json`` / ``transforms_test.json``; without any, no split is
            written (the reader then uses nerfstudio's 0.9 fraction split). Frames in neither
            list are left out, as the loaders do; without a test list, the rest are test.
        train_list, test_list: split file names (ScanNet multi: ``train_list_near_obj.txt``).
        instance_tag: mask suffix ``<file_path>.<tag>.png``; default: the preset's, else
            ``instance``, else ``instance-filt``, whichever exists for the first frame.
        preset: ``toydesk1``, ``toydesk2`` or ``scannet``: its UDC-NeRF normalisation is
            recorded in ``object_nerf.json`` (not applied).
        border: pixels at each image edge marked ignore (65535) in the masks; 0 for none.
        units_to_metres: multiply pose translations by this, and depth through
            ``depth_unit_scale_factor = 1e-3 * units_to_metres``.
        min_train: fewest train views accepted when the source has a split.

    Returns:
        The written ``dst / "transforms.json"``.

    Raises:
        InputError: one line for a missing or malformed ``transforms_full.json``, a frame
            without image or mask, a mask or depth whose size differs from its image, images
            of different sizes, a bad split file, fewer than ``min_train`` train views, mask ids
            that the source's ``instances.json`` does not name. OutputError: ``dst`` is not empty.
    """
    src, dst = Path(src), Path(dst)
    if preset is not None and preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}", f"use one of {', '.join(PRESETS)}")
    if not math.isfinite(units_to_metres) or units_to_metres <= 0:
        raise InputError(f"units_to_metres {units_to_metres} is not positive", "pass metres per source unit")
    js = src / "transforms_full.json"
    if not js.is_file():
        raise InputError(f"{js} not found", "pass an Object-NeRF/ToyDesk/ScanNet folder holding transforms_full.json")
    meta = _load_json(js)
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise InputError(f"{js} has no 'frames' list", "regenerate it")
    try:
        angle = float(meta["camera_angle_x"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{js}: missing or bad 'camera_angle_x'", "give the horizontal FoV in radians") from None
    if not 0.0 < angle < math.pi:
        raise InputError(f"{js}: camera_angle_x {angle} is not in (0, pi) radians", "give the horizontal FoV in radians")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise OutputError(f"{dst} exists and is not empty", "choose a new folder or remove it")

    # pass 1: validate everything before writing anything
    splits = _split_lists(src, Path(split_dir) if split_dir is not None else None, train_list, test_list)
    tag = instance_tag or (PRESETS[preset]["inst_seg_tag"] if preset else None)
    rows: list[dict[str, Any]] = []
    skipped_pose = skipped_split = 0
    size: tuple[int, int] | None = None
    seen_idx: set[int] = set()
    for n, fr in enumerate(meta["frames"]):
        where = f"{js} frame {n}"
        if not isinstance(fr, dict) or not isinstance(fr.get("file_path"), str):
            raise InputError(f"{where}: missing 'file_path'", "fix transforms_full.json")
        try:
            idx = int(fr.get("idx", n))
        except (TypeError, ValueError):
            raise InputError(f"{where}: 'idx' {fr.get('idx')!r} is not an integer", "fix transforms_full.json") from None
        if idx in seen_idx:
            raise InputError(f"{where}: idx {idx} appears twice", "give every frame its own idx")
        seen_idx.add(idx)
        try:
            c2w_cv = torch.tensor(fr["transform_matrix"], dtype=torch.float64)
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{where}: missing or bad 'transform_matrix'", "give a 4x4 camera-to-world") from None
        if c2w_cv.shape != (4, 4):
            raise InputError(f"{where}: transform_matrix is {tuple(c2w_cv.shape)}", "give a 4x4 camera-to-world")
        if not torch.isfinite(c2w_cv).all():
            skipped_pose += 1  # ScanNet's invalid poses (-inf); the loaders drop them too
            continue
        split = None
        if splits is not None:
            train_ids, test_ids = splits
            split = "train" if idx in train_ids else "test" if (test_ids is None or idx in test_ids) else None
            if split is None:
                skipped_split += 1
                continue
        base = _frame_base(src, fr["file_path"])
        image = _sibling(base, ".png")
        if not image.is_file():
            raise InputError(f"{where} (idx {idx}): image {image} not found", "fix file_path or add the image")
        if tag is None:
            found = [t for t in _TAGS if _sibling(base, f".{t}.png").is_file()]
            tag = found[0] if found else _TAGS[0]
        mask = _sibling(base, f".{tag}.png")
        if not mask.is_file():
            raise InputError(f"{where} (idx {idx}): mask {mask} not found",
                             "add the instance mask or pass the right instance tag")
        depth = _sibling(base, ".depth.png")
        wh = _size(image, "image", where)
        if size is None:
            size = wh
        elif wh != size:
            raise InputError(f"{where}: image {image} is {wh[0]}x{wh[1]}, earlier frames are {size[0]}x{size[1]}",
                             "resize all images to one size")
        for what, path in (("mask", mask), ("depth", depth)):
            if what == "mask" or path.is_file():
                other = _size(path, what, where)
                if other != wh:
                    raise InputError(f"{where}: {what} {path} is {other[0]}x{other[1]} but image {image} is "
                                     f"{wh[0]}x{wh[1]}", f"make the {what} the size of its image")
        rows.append({"idx": idx, "c2w_cv": c2w_cv, "image": image, "mask": mask,
                     "depth": depth if depth.is_file() else None, "split": split})
    if not rows:
        raise InputError(f"{js}: no usable frames ({skipped_pose} invalid poses, {skipped_split} outside the split)",
                         "check the split files and poses")
    n_train = sum(r["split"] == "train" for r in rows)
    if splits is not None and n_train < min_train:
        raise InputError(f"{js}: {n_train} train views after the split and pose checks, at least {min_train} needed",
                         "list more frame idx in the train split file")
    names_file = src / "instances.json"
    if names_file.is_file():
        try:
            named = {int(k) for k in _load_json(names_file)}
        except (TypeError, ValueError):
            raise InputError(f"{names_file} is not a JSON object of id -> name", 'write {"1": "chair", ...}') from None
        from PIL import Image

        seen: dict[int, Path] = {}
        for r in rows:
            with Image.open(r["mask"]) as im:
                for v in np.unique(np.asarray(im)).tolist():
                    if v >= 1:
                        seen.setdefault(int(v), r["mask"])
        unnamed = sorted(set(seen) - named)
        if unnamed:
            raise InputError(f"masks hold ids {unnamed} that {names_file} does not name (id {unnamed[0]} first in "
                             f"{seen[unnamed[0]]})", "add them to instances.json or fix the masks")
    if skipped_pose:
        log.warning("%s: %d frames with non-finite poses left out", js, skipped_pose)
    assert size is not None
    w, h = size
    if border < 0 or 2 * border >= min(w, h):
        raise InputError(f"border {border} px does not fit the {w}x{h} images", "pass a smaller --border (0 for none)")
    focal = 0.5 * w / math.tan(0.5 * angle)
    k = torch.tensor([[focal, 0.0, w / 2.0], [0.0, focal, h / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float64)

    # OpenCV camera-to-world -> our Camera (world-to-camera = its inverse) -> nerfstudio/OpenGL c2w
    c2w = torch.stack([r["c2w_cv"] for r in rows])
    c2w[:, :3, 3] *= units_to_metres
    cams = Camera(k.expand(len(rows), 3, 3), torch.linalg.inv(c2w), w, h)
    gl = cams.to_nerfstudio()  # [N, 3, 4]

    # pass 2: write
    from PIL import Image

    dst.mkdir(parents=True, exist_ok=True)
    frames = []
    for r, m in zip(rows, gl):
        name = f"{r['idx']}.png"
        atomic_write_bytes(dst / "images" / name, r["image"].read_bytes())
        with Image.open(r["mask"]) as im:
            ids = np.asarray(im).astype(np.uint16)  # one integer channel, checked in pass 1
        if border > 0:
            ids[:border, :] = IGNORE_ID
            ids[-border:, :] = IGNORE_ID
            ids[:, :border] = IGNORE_ID
            ids[:, -border:] = IGNORE_ID
        buf = io.BytesIO()
        Image.fromarray(ids).save(buf, format="PNG")
        atomic_write_bytes(dst / "masks" / name, buf.getvalue())
        fr: dict[str, Any] = {"file_path": f"images/{name}", "mask_path": f"masks/{name}",
                              "transform_matrix": [*m.tolist(), [0.0, 0.0, 0.0, 1.0]], "idx": r["idx"]}
        if r["depth"] is not None:
            atomic_write_bytes(dst / "depth" / name, r["depth"].read_bytes())
            fr["depth_file_path"] = f"depth/{name}"
        if r["split"] is not None:
            fr["split"] = r["split"]
        frames.append(fr)
    out: dict[str, Any] = {"camera_model": "PINHOLE", "fl_x": focal, "fl_y": focal, "cx": w / 2.0, "cy": h / 2.0,
                           "w": w, "h": h, "depth_unit_scale_factor": 1e-3 * units_to_metres,
                           "mask_ignore_value": IGNORE_ID, "frames": frames}
    if splits is not None:
        out["train_filenames"] = [f["file_path"] for f in frames if f["split"] == "train"]
        out["test_filenames"] = [f["file_path"] for f in frames if f["split"] == "test"]
        out["val_filenames"] = out["test_filenames"]
    if (src / "instances.json").is_file():
        atomic_write_bytes(dst / "instances.json", (src / "instances.json").read_bytes())
    atomic_write_json(dst / "object_nerf.json", {
        "source": str(src.resolve()), "instance_tag": tag, "border_px": border, "ignore_id": IGNORE_ID,
        "source_camera": "OpenCV camera-to-world (x right, y down, z forward)",
        "units_to_metres": units_to_metres, "frames": len(frames), "skipped_invalid_pose": skipped_pose,
        "skipped_outside_split": skipped_split, "preset": preset,
        "udc_nerf_normalisation": None if preset is None else {
            k2: v for k2, v in PRESETS[preset].items() if k2 != "inst_seg_tag"},
    })
    return atomic_write_json(dst / "transforms.json", out)
