"""Panorama: seamless across the left/right edge (circular padding), any SD-style pipeline."""

from __future__ import annotations

import pytest
import torch

from layerforge.errors import ConfigError
from layerforge.models.guidance import PanoramaGenerator, seam_error
from layerforge.models.guidance.panorama import horizontal_circular_padding


@pytest.fixture(scope="module")
def generator(tiny_models):
    return PanoramaGenerator({"pretrained_model_name_or_path": str(tiny_models.sd), "device": "cpu", "height": 32,
                              "width": 64, "num_inference_steps": 2, "prompt": "a beach", "guidance_scale": 3.0})


def test_panorama_wraps_around(generator):
    latents = generator.initial_latents(seed=0)
    pano = generator(latents=latents)
    assert pano.shape == (32, 64, 3) and pano.min() >= 0 and pano.max() <= 1
    # on a cylinder the left edge is not special: rotating the noise rotates the image
    # (by a multiple of the UNet's total downsampling, 2 here, 8 for real SD)
    shifted = generator(latents=torch.roll(latents, 4, dims=-1))
    rot_err = (shifted - torch.roll(pano, 32, dims=1)).abs().max()
    assert rot_err < 1e-4
    seam, interior = seam_error(pano)
    assert seam <= 1.5 * interior
    # control: the same pipeline without circular padding is not rotation-equivariant
    generator.config.seamless = False
    try:
        flat = generator(latents=latents)
        flat_shifted = generator(latents=torch.roll(latents, 4, dims=-1))
    finally:
        generator.config.seamless = True
    assert (flat_shifted - torch.roll(flat, 32, dims=1)).abs().max() > 100 * rot_err + 1e-3


def test_circular_padding_is_scoped(generator):
    conv = generator.pipe.unet.conv_in
    x = torch.randn(1, 4, 4, 8)
    before = conv(x)
    with horizontal_circular_padding(generator.pipe.unet) as n:
        assert n > 5
        inside = conv(x)
        # wraps in x, zero-pads in y
        ref = torch.nn.functional.conv2d(torch.nn.functional.pad(torch.cat([x[..., -1:], x, x[..., :1]], -1),
                                                                 (0, 0, 1, 1)), conv.weight, conv.bias)
        torch.testing.assert_close(inside, ref)
    torch.testing.assert_close(conv(x), before)


def test_size_must_be_multiple_of_8():
    with pytest.raises(ConfigError, match="panorama.height"):
        PanoramaGenerator({"height": 30, "width": 60}, pipe=object())
