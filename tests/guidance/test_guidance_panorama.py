"""Panorama: seamless across the left/right edge (circular padding), any SD-style pipeline.

The tiny UNet downsamples 3 times like Stable Diffusion's, so the total stride is 8 latent
columns = 64 pixels: the wrap-around is exact only at widths that are multiples of 64. The
generator returns linear RGB (the model decodes sRGB).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from layerforge.assets.types import srgb_to_linear
from layerforge.errors import ConfigError
from layerforge.models.guidance import PanoramaConfig, PanoramaGenerator, seam_error
from layerforge.models.guidance.panorama import WIDTH_MULTIPLE, horizontal_circular_padding, required_width_multiple

HEIGHT, WIDTH = 64, 128  # latent 8 x 16: 16 columns = 2 x the UNet's total stride of 8
STRIDE_PX = 64  # one total-stride shift: 8 latent columns x the VAE's 8 pixels


@pytest.fixture(scope="module")
def generator(tiny_models):
    return PanoramaGenerator({"pretrained_model_name_or_path": str(tiny_models.sd), "device": "cpu", "height": HEIGHT,
                              "width": WIDTH, "num_inference_steps": 2, "prompt": "a beach", "guidance_scale": 3.0})


def _roll_error(generator: PanoramaGenerator, latents: torch.Tensor) -> float:
    """max |panorama of latents rolled by 8 columns - panorama rolled by 64 px|."""
    pano = generator(latents=latents)
    shifted = generator(latents=torch.roll(latents, STRIDE_PX // 8, dims=-1))
    return float((shifted - torch.roll(pano, STRIDE_PX, dims=1)).abs().max())


def test_tiny_unet_downsamples_like_stable_diffusion(generator):
    assert len(generator.pipe.unet.config.block_out_channels) == 4  # 3 stride-2 downsamplings
    assert required_width_multiple(generator.pipe) == WIDTH_MULTIPLE == 64


def test_panorama_wraps_around(generator):
    latents = generator.initial_latents(seed=0)
    pano = generator(latents=latents)
    assert pano.shape == (HEIGHT, WIDTH, 3) and pano.min() >= 0 and pano.max() <= 1
    # on a cylinder the left edge is not special: rotating the noise by the UNet's total stride
    # rotates the image by 64 px (measured 1.1e-6)
    rot_err = _roll_error(generator, latents)
    assert rot_err < 1e-4
    seam, interior = seam_error(pano)
    assert seam <= 1.5 * interior
    # control: the same pipeline without circular padding is not rotation-equivariant
    generator.config.seamless = False
    try:
        flat_err = _roll_error(generator, latents)
    finally:
        generator.config.seamless = True
    assert flat_err > 100 * rot_err + 1e-3


def test_width_not_a_multiple_of_64_breaks_the_wrap(generator):
    """Why the rule exists: at latent width 12 (96 px) the strided convolutions see an odd width
    at the third level and the rotation error jumps from ~1e-6 to ~0.06 (measured)."""
    latents = torch.randn((1, 4, HEIGHT // 8, 96 // 8), generator=torch.Generator().manual_seed(0))
    generator.config.width = 96  # bypasses the check on purpose
    try:
        err = _roll_error(generator, latents)
    finally:
        generator.config.width = WIDTH
    assert err > 1e-2


def test_vae_tiling_is_off_for_a_seamless_decode(generator, caplog):
    """Tiled decoding wraps each tile onto itself: roll error 0.73 with tiling left on (measured)."""
    vae = generator.pipe.vae
    latents = generator.initial_latents(seed=0)
    caplog.set_level("WARNING", logger="layerforge.guidance")
    vae.enable_tiling()
    try:
        assert latents.shape[-1] > vae.tile_latent_min_size  # the tiny VAE would tile this width
        err = _roll_error(generator, latents)
        assert vae.use_tiling  # restored after each call
    finally:
        vae.disable_tiling()
    assert err < 1e-4
    assert any("VAE tiling is switched off" in r.getMessage() for r in caplog.records)


def test_invalid_width_is_refused_in_one_line():
    with pytest.raises(ConfigError) as err:
        PanoramaGenerator({"height": 720, "width": 1440}, pipe=object())  # LayerPano3D's size
    msg = str(err.value)
    assert "\n" not in msg and "not a multiple of 64" in msg and "set panorama.width to 1408 or 1472" in msg
    with pytest.raises(ConfigError, match="set panorama.width to 64$"):
        PanoramaGenerator({"height": 16, "width": 32}, pipe=object())
    PanoramaGenerator({"height": 720, "width": 1472}, pipe=object())  # height only needs a multiple of 8


def test_default_size_is_layerpano3d_rounded_to_a_valid_width():
    cfg = PanoramaConfig()
    assert (cfg.height, cfg.width) == (736, 1472) and cfg.width % WIDTH_MULTIPLE == 0 and cfg.width == 2 * cfg.height


def test_pipeline_that_downsamples_more_needs_a_larger_multiple():
    unet = SimpleNamespace(config=SimpleNamespace(down_block_types=["DownBlock2D"] * 5))  # 4 downsamplings
    deeper = SimpleNamespace(vae_scale_factor=8, unet=unet)
    assert required_width_multiple(deeper) == 128
    with pytest.raises(ConfigError, match="set panorama.width to 128 or 256"):
        PanoramaGenerator({"height": 96, "width": 192}, pipe=deeper)
    PanoramaGenerator({"height": 96, "width": 192, "seamless": False}, pipe=deeper)  # no wrap, no rule


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


def test_height_must_be_multiple_of_8():
    with pytest.raises(ConfigError, match="panorama.height"):
        PanoramaGenerator({"height": 30, "width": 64}, pipe=object())


def test_panorama_is_linear_rgb(generator, monkeypatch):
    """Contract: the returned panorama is srgb_to_linear of what the VAE decoded (before the
    fix the generator returned the model's sRGB)."""
    vae = generator.pipe.vae
    real_decode = vae.decode
    decoded: list[torch.Tensor] = []

    def decode(*args, **kwargs):
        out = real_decode(*args, **kwargs)
        decoded.append((out[0] if isinstance(out, tuple) else out.sample).detach().clone())
        return out

    monkeypatch.setattr(vae, "decode", decode)
    pano = generator(latents=generator.initial_latents(seed=0))
    assert len(decoded) == 1
    srgb = (decoded[0][0].permute(1, 2, 0).float() / 2 + 0.5).clamp(0, 1)  # the pipeline's [-1, 1] -> [0, 1]
    assert pano.dtype == torch.float32 and pano.shape == (HEIGHT, WIDTH, 3)
    torch.testing.assert_close(pano, torch.from_numpy(srgb_to_linear(srgb.numpy())), rtol=0, atol=1e-5)
    assert (pano - srgb).abs().max() > 1e-2  # and is not the sRGB itself
