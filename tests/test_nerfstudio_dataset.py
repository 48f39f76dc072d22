"""nerfstudio transforms.json reader: OpenGL camera-to-world -> our OpenCV Camera."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from layerforge.assets.nerfstudio_dataset import read_nerfstudio
from layerforge.errors import InputError
from layerforge.renderers.cameras import project


def _c2w_gl(eye: list[float], target: list[float]) -> list[list[float]]:
    """OpenGL camera-to-world built by hand: columns right, up, back (-forward), eye."""
    e, t = torch.tensor(eye, dtype=torch.float64), torch.tensor(target, dtype=torch.float64)
    back = torch.nn.functional.normalize(e - t, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), back), dim=0)
    up = torch.linalg.cross(back, right)
    m = torch.eye(4, dtype=torch.float64)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, back, e
    return m.tolist()


def _write(tmp_path: Path, meta: dict, files: tuple[str, ...] = ("images/a.png", "images/b.png", "masks/a.png", "depth/a.png")) -> Path:
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"")
    p = tmp_path / "transforms.json"
    p.write_text(json.dumps(meta))
    return p


def _meta() -> dict:
    return {
        "camera_model": "OPENCV",
        "fl_x": 40.0, "fl_y": 42.0, "cx": 31.5, "cy": 23.0, "w": 64, "h": 48,
        "frames": [
            {"file_path": "images/a.png", "mask_path": "masks/a.png", "depth_file_path": "depth/a.png",
             "transform_matrix": _c2w_gl([2.0, -1.0, 0.8], [0.0, 0.0, 0.1])},
            {"file_path": "images/b.png", "fl_x": 50.0, "cx": 30.0,
             "transform_matrix": _c2w_gl([-1.5, 2.0, 1.2], [0.1, 0.0, 0.0])},
        ],
    }


def test_projection_matches_opengl_by_hand(tmp_path):
    meta = _meta()
    ds = read_nerfstudio(_write(tmp_path, meta), dtype=torch.float64)
    assert len(ds) == 2
    point = torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64)
    for frame, fr_meta in zip(ds.frames, meta["frames"]):
        m = {**meta, **fr_meta}
        fx, fy = m["fl_x"], m.get("fl_y", m["fl_x"])
        c2w = torch.tensor(fr_meta["transform_matrix"], dtype=torch.float64)
        p = torch.linalg.inv(c2w) @ torch.cat([point, torch.ones(1, dtype=torch.float64)])
        # OpenGL: camera looks down -Z, +Y up; image v grows downwards
        u = fx * p[0] / -p[2] + m["cx"]
        v = fy * -p[1] / -p[2] + m["cy"]
        pix, depth = project(frame.camera, point[None])
        assert torch.allclose(pix[0, 0], torch.stack([u, v]), atol=1e-9)
        assert torch.allclose(depth[0, 0], -p[2])
        assert (frame.camera.width, frame.camera.height) == (64, 48)
    f0, f1 = ds.frames
    assert f0.image_path == tmp_path / "images/a.png"
    assert f0.mask_path == tmp_path / "masks/a.png" and f0.depth_path == tmp_path / "depth/a.png"
    assert f1.mask_path is None and f1.depth_path is None
    assert f1.camera.K[0, 1, 1] == 42.0  # fl_y from the top level, fl_x from the frame
    assert len(ds.cameras()) == 2
    assert read_nerfstudio(tmp_path).path == tmp_path / "transforms.json"  # folder works too


def test_camera_angle_x_and_distortion_warning(tmp_path):
    meta = _meta()
    del meta["fl_x"], meta["fl_y"], meta["frames"][1]["fl_x"]
    meta["camera_angle_x"] = math.radians(90.0)
    meta["k1"] = 0.1
    with pytest.warns(UserWarning, match="distortion"):
        ds = read_nerfstudio(_write(tmp_path, meta))
    assert ds.frames[0].camera.K[0, 0, 0] == pytest.approx(32.0)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda m: m["frames"][0].pop("transform_matrix"), "transform_matrix"),
        (lambda m: m.pop("w"), "missing 'w'"),
        (lambda m: m.pop("fl_x"), "fl_x"),
        (lambda m: m["frames"][1].update(file_path="images/missing.png"), "does not exist"),
        (lambda m: m.update(frames=[]), "no 'frames'"),
        (lambda m: m["frames"][0].update(transform_matrix=[[1, 0], [0, 1]]), "4x4"),
    ],
)
def test_bad_datasets_raise_one_line_input_errors(tmp_path, mutate, match):
    meta = _meta()
    mutate(meta)
    with pytest.raises(InputError, match=match) as err:
        read_nerfstudio(_write(tmp_path, meta))
    assert "\n" not in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_nerfstudio(tmp_path / "nope.json")
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_nerfstudio(tmp_path)


# --- read_posed_views: images, instance masks, depth, split ---------------------------------


import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from layerforge.assets.nerfstudio_dataset import PosedViews, read_posed_views  # noqa: E402
from layerforge.assets.types import srgb_to_linear  # noqa: E402
from layerforge.renderers.cameras import Camera  # noqa: E402

W, H = 16, 12
EYES = [[2.0, -1.0, 0.8], [-1.5, 2.0, 1.2], [1.0, 2.5, 0.5], [-2.0, -1.5, 1.0], [0.3, -2.2, 1.6]]


def _views_folder(root: Path, n: int = 5, mask_dtype=np.uint16, depth: bool = True, split: list[str] | None = None,
                  instances: dict | None = None, ids: tuple[int, ...] = (1, 2)) -> dict:
    """A tiny nerfstudio folder: n 16x12 views, sRGB PNGs, instance-id PNGs, mm depth PNGs."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks", "depth"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    frames, truth = [], {"codes": [], "masks": [], "depth_mm": []}
    for i in range(n):
        codes = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        mask = np.zeros((H, W), dtype=mask_dtype)
        mask[2:6, 3:9] = ids[0]
        mask[7:11, 8:15] = ids[1]
        depth_mm = rng.integers(300, 9000, (H, W)).astype(np.uint16)
        Image.fromarray(codes).save(root / f"images/f{i}.png")
        Image.fromarray(mask).save(root / f"masks/f{i}.png")
        fr = {"file_path": f"images/f{i}.png", "mask_path": f"masks/f{i}.png",
              "transform_matrix": _c2w_gl(EYES[i % len(EYES)], [0.0, 0.0, 0.1 * i])}
        if depth:
            Image.fromarray(depth_mm).save(root / f"depth/f{i}.png")
            fr["depth_file_path"] = f"depth/f{i}.png"
        if split is not None:
            fr["split"] = split[i]
        frames.append(fr)
        truth["codes"].append(codes), truth["masks"].append(mask), truth["depth_mm"].append(depth_mm)
    meta = {"fl_x": 14.0, "fl_y": 15.0, "cx": 8.0, "cy": 6.5, "w": W, "h": H, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    if instances is not None:
        (root / "instances.json").write_text(json.dumps(instances))
    return {"meta": meta, **truth}


def _rewrite(root: Path, meta: dict) -> None:
    (root / "transforms.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("mask_dtype", [np.uint8, np.uint16])
def test_posed_views_cameras_images_ids_depths_exact(tmp_path, mask_dtype):
    t = _views_folder(tmp_path, mask_dtype=mask_dtype, split=["train", "test", "train", "train", "train"],
                      instances={"1": "mug", "2": "lamp"})
    pv = read_posed_views(tmp_path)
    assert isinstance(pv, PosedViews) and pv.path == tmp_path / "transforms.json"
    assert pv.train.names == ["f0", "f2", "f3", "f4"] and pv.test.names == ["f1"]
    assert pv.instances == {1: "mug", 2: "lamp"}
    for views, idx in ((pv.train, [0, 2, 3, 4]), (pv.test, [1])):
        c2w = torch.tensor([t["meta"]["frames"][i]["transform_matrix"] for i in idx], dtype=torch.float64)
        k = torch.tensor([[14.0, 0, 8.0], [0, 15.0, 6.5], [0, 0, 1]], dtype=torch.float64).expand(len(idx), 3, 3)
        want = Camera.from_nerfstudio(c2w, k, W, H)
        assert torch.allclose(views.cameras.world_to_camera.double(), want.world_to_camera, atol=1e-6)
        assert torch.allclose(views.cameras.to_nerfstudio().double(), c2w[:, :3], atol=1e-6)
        assert torch.equal(views.cameras.K.double(), want.K)
        assert views.images.dtype == torch.float32 and views.images.shape == (len(idx), H, W, 3)
        lin = np.stack([srgb_to_linear(t["codes"][i] / 255.0) for i in idx])
        assert np.allclose(views.images.numpy(), lin, atol=1e-6)  # linear, not the sRGB codes
        assert views.masks.dtype == torch.int64
        assert np.array_equal(views.masks.numpy(), np.stack([t["masks"][i] for i in idx]).astype(np.int64))
        d = np.stack([t["depth_mm"][i] for i in idx]).astype(np.float32)[..., None] * np.float32(1e-3)
        assert views.depths.dtype == torch.float32 and np.allclose(views.depths.numpy(), d, rtol=1e-6)


def test_posed_views_default_split_matches_nerfstudio_and_names_default(tmp_path):
    from nerfstudio.data.utils.dataparsers_utils import get_train_eval_split_fraction

    _views_folder(tmp_path, n=12, depth=False)
    pv = read_posed_views(tmp_path)
    i_train, i_eval = get_train_eval_split_fraction([f"f{i}" for i in range(12)], 0.9)  # sorted names
    files = sorted(f"images/f{i}.png" for i in range(12))
    assert sorted(pv.train.names) == sorted(Path(files[i]).stem for i in i_train)
    assert sorted(pv.test.names) == sorted(Path(files[i]).stem for i in i_eval)
    assert len(pv.train) == 11 and len(pv.test) == 1
    assert pv.instances == {1: "object_1", 2: "object_2"} and pv.train.depths is None


def test_posed_views_depth_scale_and_ignore_value(tmp_path):
    t = _views_folder(tmp_path, n=3, ids=(1, 65535))
    t["meta"]["depth_unit_scale_factor"] = 1e-4
    t["meta"]["mask_ignore_value"] = 65535
    _rewrite(tmp_path, t["meta"])
    pv = read_posed_views(tmp_path)
    assert np.allclose(pv.train.depths[0, ..., 0].numpy(), t["depth_mm"][0] * 1e-4, rtol=1e-6)
    assert set(torch.unique(pv.train.masks).tolist()) == {-1, 0, 1} and pv.instances == {1: "object_1"}


def _one_line_error(tmp_path: Path, **kw) -> str:
    with pytest.raises(InputError) as err:
        read_posed_views(tmp_path, **kw)
    msg = str(err.value)
    assert "\n" not in msg and ";" in msg, msg
    return msg


def test_bad_mask_size_names_both_files_and_sizes(tmp_path):
    _views_folder(tmp_path, n=4)
    Image.fromarray(np.zeros((6, 8), np.uint16)).save(tmp_path / "masks/f2.png")
    msg = _one_line_error(tmp_path)
    assert "masks/f2.png is 8x6" in msg and "images/f2.png is 16x12" in msg


def test_bad_unnamed_ids_are_listed(tmp_path):
    _views_folder(tmp_path, n=4, ids=(3, 7), instances={"3": "mug"})
    msg = _one_line_error(tmp_path)
    assert "ids [7]" in msg and "instances.json" in msg


def test_bad_frame_without_mask_is_named(tmp_path):
    t = _views_folder(tmp_path, n=4)
    del t["meta"]["frames"][2]["mask_path"]
    _rewrite(tmp_path, t["meta"])
    msg = _one_line_error(tmp_path)
    assert "frame 2 (f2.png) has no mask_path" in msg
    pv = read_posed_views(tmp_path, require_masks=False)
    assert pv.train.masks is None


def test_bad_too_few_train_views(tmp_path):
    _views_folder(tmp_path, n=4, split=["train", "test", "train", "test"])
    msg = _one_line_error(tmp_path)
    assert "2 train views" in msg and "at least 3" in msg
    assert len(read_posed_views(tmp_path, min_train=2).train) == 2


def test_bad_unreadable_image_and_mixed_sizes(tmp_path):
    t = _views_folder(tmp_path, n=4)
    (tmp_path / "images/f1.png").write_bytes(b"not a png")
    msg = _one_line_error(tmp_path)
    assert "images/f1.png" in msg and "cannot decode" in msg
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "images/f1.png")
    t["meta"]["frames"][1].update(w=8, h=6)
    _rewrite(tmp_path, t["meta"])
    assert "different image sizes" in _one_line_error(tmp_path)
    del t["meta"]["frames"][1]["w"], t["meta"]["frames"][1]["h"]
    t["meta"]["w"] = 20
    _rewrite(tmp_path, t["meta"])
    assert "is 16x12, transforms.json says 20x12" in _one_line_error(tmp_path)


def test_posed_views_nerfstudio_train_filenames_split(tmp_path):
    t = _views_folder(tmp_path, n=5, depth=False)
    t["meta"]["train_filenames"] = ["images/f4.png", "images/f0.png", "images/f2.png"]
    _rewrite(tmp_path, t["meta"])
    pv = read_posed_views(tmp_path)
    assert pv.train.names == ["f0", "f2", "f4"] and pv.test.names == ["f1", "f3"]
    t["meta"]["frames"][0]["split"] = "train"  # per-frame split, then on every frame
    _rewrite(tmp_path, t["meta"])
    assert "frame 1 (f1.png): split is None" in _one_line_error(tmp_path)


# --- read_posed_views: normal maps (normal_file_path, normal_convention) ---------------------


def _write_png16(path: Path, codes: np.ndarray) -> None:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one), rows cycling through all five
    PNG filters so that the reader's unfiltering is exercised."""
    import struct
    import zlib

    h, w, c = codes.shape
    data = codes.astype(">u2").view(np.uint8).reshape(h, w * c * 2).astype(np.int64)
    bpp = c * 2
    rows = []
    for i in range(h):
        x = data[i]
        up = data[i - 1] if i else np.zeros_like(x)
        left = np.concatenate([np.zeros(bpp, np.int64), x[:-bpp]])
        up_left = np.concatenate([np.zeros(bpp, np.int64), up[:-bpp]])
        p = left + up - up_left
        pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
        pred = [np.zeros_like(x), left, up, (left + up) // 2, paeth][i % 5]
        rows.append(bytes([i % 5]) + ((x - pred) % 256).astype(np.uint8).tobytes())

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2 if c == 3 else 6, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
                     + chunk(b"IEND", b""))


def _unit_normals(rng: np.random.Generator) -> np.ndarray:
    n = rng.normal(size=(H, W, 3))
    n[..., 2] = -np.abs(n[..., 2]) - 0.2  # facing an OpenCV camera
    return (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)


def _normals_folder(root: Path) -> tuple[dict, list[np.ndarray]]:
    """5 views: f0 .npy (with an unknown and a NaN pixel), f1 8-bit PNG, f2 16-bit PNG, f3 8-bit RGBA
    PNG with a transparent pixel, f4 none."""
    t = _views_folder(root, n=5, split=["train", "train", "train", "train", "test"])
    (root / "normals").mkdir()
    rng = np.random.default_rng(3)
    truth = [_unit_normals(rng) for _ in range(4)]
    truth[0][1, 2] = 0.0
    stored = truth[0].copy()
    stored[3, 4, 1] = np.nan
    truth[0][3, 4] = 0.0
    np.save(root / "normals/f0.npy", stored)
    Image.fromarray(np.round((truth[1] + 1) / 2 * 255).astype(np.uint8)).save(root / "normals/f1.png")
    _write_png16(root / "normals/f2.png", np.round((truth[2] + 1) / 2 * 65535).astype(np.uint16))
    rgba = np.concatenate([np.round((truth[3] + 1) / 2 * 255), np.full((H, W, 1), 255)], -1).astype(np.uint8)
    rgba[6, 7, 3] = 0
    truth[3][6, 7] = 0.0
    Image.fromarray(rgba).save(root / "normals/f3.png")
    for i, name in enumerate(("f0.npy", "f1.png", "f2.png", "f3.png")):
        t["meta"]["frames"][i]["normal_file_path"] = f"normals/{name}"
    _rewrite(root, t["meta"])
    return t, truth + [np.zeros((H, W, 3), np.float32)]


def test_posed_views_read_normals_npy_and_8_16_bit_png(tmp_path):
    _, truth = _normals_folder(tmp_path)
    pv = read_posed_views(tmp_path)
    got = torch.cat([pv.train.normals, pv.test.normals]).numpy()
    assert pv.train.normals.dtype == torch.float32 and got.shape == (5, H, W, 3)
    assert np.abs(got[0] - truth[0]).max() < 1e-6  # npy: as stored, unknown and NaN read as 0
    assert np.abs(got[2] - truth[2]).max() < 1e-4  # 16-bit: quantisation 3e-5 per channel
    for i in (1, 3):  # 8-bit: within a quantisation step, renormalised
        assert np.abs(got[i] - truth[i]).max() < 1.5 / 255
    known = np.linalg.norm(got, axis=-1) > 0
    assert np.allclose(np.linalg.norm(got[known], axis=-1), 1.0, atol=1e-6)
    assert not known[0, 1, 2] and not known[0, 3, 4] and not known[3, 6, 7] and not known[4].any()
    # opengl files (+y up, +z backward) are converted: the same files read with y and z negated
    meta = json.loads((tmp_path / "transforms.json").read_text())
    meta["normal_convention"] = "opengl"
    _rewrite(tmp_path, meta)
    gl = read_posed_views(tmp_path)
    flipped = torch.cat([gl.train.normals, gl.test.normals]).numpy()
    assert np.array_equal(flipped, got * np.array([1.0, -1.0, -1.0], np.float32))


def test_posed_views_without_normal_files_have_none(tmp_path):
    _views_folder(tmp_path, n=4)
    pv = read_posed_views(tmp_path)
    assert pv.train.normals is None and pv.test.normals is None


def test_bad_normal_files_are_one_line_errors_naming_file_and_fix(tmp_path):
    t, _ = _normals_folder(tmp_path)
    np.save(tmp_path / "normals/f0.npy", np.zeros((6, 8, 3), np.float32))
    msg = _one_line_error(tmp_path)
    assert "normals/f0.npy is 8x6" in msg and "images/f0.png is 16x12" in msg
    assert "make normal maps the size of their images" in msg
    Image.fromarray(np.zeros((H + 1, W, 3), np.uint8)).save(tmp_path / "normals/f1.png")
    np.save(tmp_path / "normals/f0.npy", np.full((H, W, 3), 0.5, np.float32))  # (n + 1) / 2 colours, not unit
    msg = _one_line_error(tmp_path)
    assert "normals/f0.npy" in msg and "neither unit nor zero" in msg and "(n + 1) / 2" in msg
    np.save(tmp_path / "normals/f0.npy", np.zeros((H, W, 3), np.float32))
    msg = _one_line_error(tmp_path)
    assert "normals/f1.png is 16x13" in msg
    (tmp_path / "normals/f1.png").write_bytes(b"not a png")
    msg = _one_line_error(tmp_path)
    assert "cannot read normal" in msg and "normals/f1.png" in msg
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "normals/f1.png")
    assert "normals/f1.png has image mode L" in _one_line_error(tmp_path)
    t["meta"]["normal_convention"] = "blender"
    _rewrite(tmp_path, t["meta"])
    assert "normal_convention is 'blender'" in _one_line_error(tmp_path)
