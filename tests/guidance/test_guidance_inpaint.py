"""Inpainting: unmasked pixels unchanged, holes filled; OpenCV default without a model."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

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
