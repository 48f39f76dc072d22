"""Inpainting: unmasked pixels unchanged, holes filled; OpenCV default without a model; linear in and out."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from layerforge.assets.types import srgb_to_linear
from layerforge.errors import ConfigError, ModelNotFoundError
from layerforge.models.guidance import Inpainter


def _scene(h: int = 40, w: int = 56) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    image = torch.stack([xx, yy, 0.5 * (xx + yy)], -1).float()
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[12:24, 20:34] = True
    return image, mask


def test_opencv_default_is_logged_and_fills_smoothly(caplog):
    with caplog.at_level(logging.INFO, logger="layerforge.guidance"):
        inp = Inpainter(None)
    assert inp.backend == "opencv" and "OpenCV" in caplog.text
    image, mask = _scene()
    holed = image.clone()
    holed[mask] = 1.0  # garbage in the hole
    out = inp(holed, mask)
    assert torch.equal(out[~mask], holed[~mask])
    # a smooth ramp is continued into the hole (8-bit sRGB round trip + diffusion of the border)
    assert (out[mask] - image[mask]).abs().mean() < 0.05
    assert (holed[mask] - image[mask]).abs().mean() > 0.3


def test_dilation_and_ns(tmp_path):
    image, mask = _scene()
    out = Inpainter({"mask_dilation_px": 2, "classical_method": "ns"})(image, mask)
    ring = torch.zeros_like(mask)
    ring[10:26, 18:36] = True
    assert torch.equal(out[~ring], image[~ring])
    with pytest.raises(ConfigError, match="inpaint.classical_method"):
        Inpainter({"classical_method": "lama"})
    with pytest.raises(ModelNotFoundError, match="inpaint.pretrained_model_name_or_path"):
        Inpainter({"pretrained_model_name_or_path": str(tmp_path / "missing")})


def test_diffusion_inpainting_keeps_unmasked_pixels(tiny_models):
    inp = Inpainter({"pretrained_model_name_or_path": str(tiny_models.inpaint), "device": "cpu",
                     "num_inference_steps": 2, "prompt": "a chair", "prefill": True})
    assert inp.backend == "diffusers"
    image, mask = _scene(44, 60)  # not a multiple of 8: resized for the model and back
    out = inp(image, mask)
    assert out.shape == image.shape and torch.isfinite(out).all()
    assert torch.equal(out[~mask], image[~mask])
    assert (out[mask] - image[mask]).abs().mean() > 1e-3  # the random model did paint the hole
    np.testing.assert_array_equal(inp(image, mask).numpy(), out.numpy())  # seeded


def _linear_from_srgb_codes(h: int, w: int) -> tuple[np.ndarray, torch.Tensor]:
    """(a smooth 8-bit sRGB picture [H, W, 3], the linear float image it encodes)."""
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    codes = np.round(np.stack([xx, yy, 0.5 * (xx + yy)], -1) * 255).astype(np.uint8)
    return codes, torch.from_numpy(srgb_to_linear(codes / 255.0))


class _SpyPipe:
    """Delegates to a real diffusers pipeline, recording what each call received and returned."""

    def __init__(self, pipe) -> None:
        self._pipe, self.calls = pipe, []

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, **kwargs):
        out = self._pipe(**kwargs)
        self.calls.append((kwargs, np.array(out.images[0], copy=True)))
        return out


def test_diffusion_inpainter_takes_linear_and_feeds_the_model_srgb(tiny_models):
    """Contract: the model gets the image's 8-bit sRGB encoding; its sRGB result comes back as
    linear in the hole; unmasked pixels are the input's linear values, bit for bit."""
    inp = Inpainter({"pretrained_model_name_or_path": str(tiny_models.inpaint), "device": "cpu",
                     "num_inference_steps": 2, "prompt": "a chair"})
    inp.pipe = spy = _SpyPipe(inp.pipe)
    codes, image = _linear_from_srgb_codes(48, 64)  # multiples of 8: no resize on either side
    mask = torch.zeros(48, 64, dtype=torch.bool)
    mask[10:30, 16:40] = True
    out = inp(image, mask)
    (kwargs, returned), = spy.calls
    np.testing.assert_array_equal(np.asarray(kwargs["image"]), codes)
    np.testing.assert_array_equal(np.asarray(kwargs["mask_image"]) > 127, mask.numpy())
    torch.testing.assert_close(out[mask], torch.from_numpy(srgb_to_linear(returned))[mask], rtol=0, atol=1e-5)
    assert (out[mask] - torch.from_numpy(returned)[mask]).abs().max() > 1e-2  # not the model's sRGB itself
    assert torch.equal(out[~mask], image[~mask])


def test_opencv_inpainter_works_on_srgb_and_returns_linear(monkeypatch):
    import cv2

    seen = []
    fill = np.full((40, 56, 3), 128, np.uint8)

    def fake_inpaint(src, mask, radius, flags):
        seen.append(src.copy())
        return fill

    monkeypatch.setattr(cv2, "inpaint", fake_inpaint)
    codes, image = _linear_from_srgb_codes(40, 56)
    _, mask = _scene()
    out = Inpainter(None)(image, mask)
    np.testing.assert_array_equal(seen[0], codes)
    torch.testing.assert_close(out[mask], torch.full_like(out[mask], float(srgb_to_linear(np.float32(128 / 255)))))
    assert torch.equal(out[~mask], image[~mask])


@pytest.mark.slow
def test_decomp_nerf_prepare_inpaints_with_the_model_folder_it_is_given(tmp_path, tiny_models):
    """prepare.inpaint_model=<folder> loads that diffusers pipeline through the real loading path and
    fills the object regions of the pseudo-backgrounds with it; pixels away from objects stay as taken."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from layerforge.assets.synthetic_scene import cached_toy_scene
    from layerforge.pipelines.artifacts import load_artifact

    scene = cached_toy_scene(tmp_path / "scenes", objects=2, width=32, height=24, n_train=4, n_test=1)
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "2"}
    overrides = [f"input={scene}", f"out={tmp_path / 'out'}", "run=r", "device=cpu", "quiet=true",
                 f"prepare.inpaint_model={tiny_models.inpaint}", "train.steps=1", "model.encoding=frequency",
                 "model.width=8", "model.code_dim=4", "model.num_samples=4", "model.num_importance=0",
                 "extract.resolution=8", "extract.density_threshold=1e-3", "edit.turntable_frames=1",
                 "export.formats=[glb]"]
    proc = subprocess.run([sys.executable, "-m", "layerforge.cli", "run", "decomp_nerf", *overrides],
                          capture_output=True, text=True, env=env, timeout=600)
    run = tmp_path / "out" / "decomp_nerf" / "r"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["prepare"]["status"] == "done", proc.stderr
    assert manifest["stages"]["prepare"]["metrics"]["inpainter"] == "diffusers"
    views = load_artifact(run / "stages" / "prepare" / "views.npz", "cameras")
    pseudo = torch.from_numpy(np.load(run / "stages" / "prepare" / "pseudo_background.npz")["train"])
    from layerforge.models.scene_prep import object_masks
    from layerforge.pipelines.decomp_nerf_config import PrepareConfig

    erode, dilate = PrepareConfig().kernels(views.cameras.width)  # the paper's kernels scaled to 32 px
    _, holes = object_masks(views.masks, erode=erode, dilate=dilate)
    assert torch.equal(pseudo[~holes], views.images[~holes])
    assert (pseudo[holes] - views.images[holes]).abs().mean() > 0.01  # the model painted the holes
