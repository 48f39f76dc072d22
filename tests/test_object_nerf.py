"""Object-NeRF / ToyDesk / ScanNet -> nerfstudio converter: the round trip through read_posed_views
gives the source cameras (OpenCV c2w), ids, depth and split; bad data is one line (API and CLI)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from layerforge.assets.nerfstudio_dataset import read_posed_views
from layerforge.assets.object_nerf import IGNORE_ID, convert_object_nerf
from layerforge.assets.types import srgb_to_linear
from layerforge.errors import InputError, OutputError

REPO = Path(__file__).resolve().parent.parent
W, H = 16, 12
ANGLE = math.radians(60.0)


def _c2w_cv(eye: list[float], target: list[float]) -> np.ndarray:
    """OpenCV/SLAM camera-to-world by hand: columns right, down, forward, eye (world +Z up)."""
    e, t = np.array(eye), np.array(target)
    fwd = (t - e) / np.linalg.norm(t - e)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, down, fwd, e
    return m


def _toydesk(root: Path, n: int = 6, tag: str = "instance", mask_dtype=np.uint16, split_files: bool = True,
             train: tuple[int, ...] = (0, 2, 3, 5), test: tuple[int, ...] = (1, 4)) -> dict:
    """A fake ToyDesk/ScanNet folder: transforms_full.json, full/<i>.png, .<tag>.png, .depth.png (mm)."""
    rng = np.random.default_rng(1)
    (root / "full").mkdir(parents=True)
    frames, truth = [], {}
    for i in range(n):
        codes = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        ids = np.zeros((H, W), mask_dtype)
        ids[3:7, 4:10], ids[6:10, 9:14] = 5, 2
        depth_mm = rng.integers(200, 60000, (H, W)).astype(np.uint16)
        Image.fromarray(codes).save(root / f"full/{i}.png")
        Image.fromarray(ids).save(root / f"full/{i}.{tag}.png")
        Image.fromarray(depth_mm).save(root / f"full/{i}.depth.png")
        c2w = _c2w_cv([3.0 * math.cos(i), 3.0 * math.sin(i), 1.0 + 0.1 * i], [0.1, -0.2, 0.3])
        frames.append({"file_path": f"./full/{i}", "transform_matrix": c2w.tolist(), "idx": i})
        truth[i] = {"codes": codes, "ids": ids, "depth_mm": depth_mm, "c2w": c2w}
    (root / "transforms_full.json").write_text(json.dumps({"camera_angle_x": ANGLE, "frames": frames}))
    if split_files:
        (root / "split").mkdir()
        (root / "split/train.txt").write_text("".join(f"{i}\n" for i in train))
        (root / "split/test.txt").write_text("".join(f"{i}\n" for i in test))
    return truth


def _check_views(views, truth: dict, idx: list[int], border: int, scale: float = 1.0) -> None:
    assert views.names == [str(i) for i in idx]
    f = 0.5 * W / math.tan(0.5 * ANGLE)
    assert torch.allclose(views.cameras.K[0].double(), torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]],
                                                                   dtype=torch.float64), atol=1e-5)
    for n, i in enumerate(idx):
        c2w = truth[i]["c2w"].copy()
        c2w[:3, 3] *= scale
        # our Camera is OpenCV world-to-camera: the inverse of the source's OpenCV camera-to-world
        assert np.allclose(views.cameras.world_to_camera[n].double().numpy(), np.linalg.inv(c2w), atol=1e-5)
        assert np.allclose(views.images[n].numpy(), srgb_to_linear(truth[i]["codes"] / 255.0), atol=1e-6)
        m = views.masks[n].numpy()
        want = truth[i]["ids"].astype(np.int64)
        if border:
            want[:border], want[-border:], want[:, :border], want[:, -border:] = -1, -1, -1, -1
        assert np.array_equal(m, want)
        assert np.allclose(views.depths[n, ..., 0].numpy(), truth[i]["depth_mm"] * 1e-3 * scale, rtol=1e-6)


def test_toydesk_round_trip(tmp_path):
    truth = _toydesk(tmp_path / "src")
    out = convert_object_nerf(tmp_path / "src", tmp_path / "dst", split_dir=tmp_path / "src/split", border=2,
                              preset="toydesk2")
    assert out == tmp_path / "dst/transforms.json"
    meta = json.loads(out.read_text())
    assert meta["mask_ignore_value"] == IGNORE_ID and meta["depth_unit_scale_factor"] == pytest.approx(1e-3)
    assert meta["train_filenames"] == [f"images/{i}.png" for i in (0, 2, 3, 5)]
    assert (tmp_path / "dst/depth/3.png").read_bytes() == (tmp_path / "src/full/3.depth.png").read_bytes()
    for fr in meta["frames"]:  # = UDC-NeRF's own fix: pose[:3, :3] @ diag(1, -1, -1) ("right up back")
        assert np.allclose(fr["transform_matrix"], truth[fr["idx"]]["c2w"] @ np.diag([1.0, -1.0, -1.0, 1.0]), atol=1e-9)
    info = json.loads((tmp_path / "dst/object_nerf.json").read_text())
    assert info["udc_nerf_normalisation"]["scale_factor"] == 16.0 and info["border_px"] == 2
    pv = read_posed_views(tmp_path / "dst")
    _check_views(pv.train, truth, [0, 2, 3, 5], border=2)
    _check_views(pv.test, truth, [1, 4], border=2)
    assert pv.instances == {2: "object_2", 5: "object_5"}


def test_scannet_flavour_tag_json_split_invalid_pose_and_units(tmp_path):
    src = tmp_path / "src"
    truth = _toydesk(src, n=7, tag="instance-filt", mask_dtype=np.uint8, split_files=False)
    meta = json.loads((src / "transforms_full.json").read_text())
    meta["frames"][6]["transform_matrix"][0][0] = -math.inf  # ScanNet's invalid tracking
    (src / "transforms_full.json").write_text(json.dumps(meta))
    pick = (lambda ids: {"camera_angle_x": ANGLE, "frames": [meta["frames"][i] for i in ids]})
    (src / "transforms_train.json").write_text(json.dumps(pick([0, 1, 3, 4, 6])))
    (src / "transforms_test.json").write_text(json.dumps(pick([2, 5])))
    (src / "instances.json").write_text(json.dumps({"2": "chair", "5": "table"}))
    convert_object_nerf(src, tmp_path / "dst", border=0, units_to_metres=0.128)
    pv = read_posed_views(tmp_path / "dst")
    _check_views(pv.train, truth, [0, 1, 3, 4], border=0, scale=0.128)
    _check_views(pv.test, truth, [2, 5], border=0, scale=0.128)
    assert pv.instances == {2: "chair", 5: "table"}
    assert json.loads((tmp_path / "dst/object_nerf.json").read_text())["skipped_invalid_pose"] == 1


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "layerforge.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def _bad_size(src: Path) -> None:
    Image.fromarray(np.zeros((6, 8), np.uint16)).save(src / "full/3.instance.png")


def _no_mask(src: Path) -> None:
    (src / "full/4.instance.png").unlink()


def _unnamed(src: Path) -> None:
    (src / "instances.json").write_text(json.dumps({"5": "cube"}))


def _few_train(src: Path) -> None:
    (src / "split/train.txt").write_text("0\n2\n")


BAD = [
    (_bad_size, ["full/3.instance.png is 8x6", "full/3.png is 16x12"]),
    (_no_mask, ["idx 4", "full/4.instance.png not found"]),
    (_unnamed, ["ids [2]", "instances.json does not name"]),
    (_few_train, ["2 train views", "at least 3"]),
]


@pytest.mark.parametrize("spoil, words", BAD, ids=["mask-size", "no-mask", "unnamed-ids", "few-train"])
def test_bad_source_is_one_line_api_and_cli(tmp_path, spoil, words):
    src = tmp_path / "src"
    _toydesk(src)
    spoil(src)
    with pytest.raises(InputError) as err:
        convert_object_nerf(src, tmp_path / "dst", split_dir=src / "split", border=2)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert not (tmp_path / "dst").exists()  # validated before anything is written
    res = _cli("convert", "object_nerf", str(src), str(tmp_path / "dst"), "--split", str(src / "split"), "--border", "2")
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(w in lines[0] for w in words), res.stderr


def test_cli_converts_and_refuses_a_non_empty_destination(tmp_path):
    src = tmp_path / "src"
    truth = _toydesk(src)
    res = _cli("convert", "object_nerf", str(src), str(tmp_path / "dst"), "--split", str(src / "split"),
               "--border", "2", "--preset", "toydesk2")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"done: {tmp_path / 'dst' / 'transforms.json'}"
    _check_views(read_posed_views(tmp_path / "dst").train, truth, [0, 2, 3, 5], border=2)
    with pytest.raises(OutputError, match="not empty"):
        convert_object_nerf(src, tmp_path / "dst")
    res = _cli("convert", "object_nerf", str(src), str(tmp_path / "dst"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "not empty" in res.stderr
    res = _cli("convert", "object_nerf", str(tmp_path / "nowhere"), str(tmp_path / "dst2"))
    assert res.returncode == 2 and "transforms_full.json not found" in res.stderr


def test_converted_folder_loads_in_nerfstudios_own_dataparser(tmp_path):
    """nerfstudio reads our output too: same train/test files, same poses up to its auto-orient/scale."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    truth = _toydesk(tmp_path / "src")
    convert_object_nerf(tmp_path / "src", tmp_path / "dst", split_dir=tmp_path / "src/split", border=2)
    cfg = NerfstudioDataParserConfig(data=tmp_path / "dst", orientation_method="none", center_method="none",
                                     auto_scale_poses=False, load_3D_points=False)
    parser = cfg.setup()
    for split, idx in (("train", [0, 2, 3, 5]), ("test", [1, 4])):
        out = parser.get_dataparser_outputs(split=split)
        assert [p.name for p in out.image_filenames] == [f"{i}.png" for i in idx]
        c2w = out.cameras.camera_to_worlds.double()
        scale = out.dataparser_scale  # 1 with auto_scale_poses off
        for n, i in enumerate(idx):
            want = truth[i]["c2w"] @ np.diag([1.0, -1.0, -1.0, 1.0])
            assert np.allclose(c2w[n, :3, :3].numpy(), want[:3, :3], atol=1e-5)
            assert np.allclose(c2w[n, :3, 3].numpy(), want[:3, 3] * scale, atol=1e-5)
        assert float(out.cameras.fx[0]) == pytest.approx(0.5 * W / math.tan(0.5 * ANGLE))
