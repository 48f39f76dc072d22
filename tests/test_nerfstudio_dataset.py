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
