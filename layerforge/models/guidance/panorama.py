"""Text -> 360 degree equirectangular panorama, seamless across the left/right edge.

Seamlessness comes from making the denoiser and the decoder live on a cylinder: while
generating, every zero-padded 2D convolution of the UNet and the VAE pads *horizontally* with
the columns from the other side (circular) and vertically with zeros. Attention, group norm
and nearest upsampling are already shift-equivariant, so the whole pipeline treats column
W-1 as the neighbour of column 0.

That holds only when the width divides evenly at every level. A stride-2 convolution is
equivariant to shifts by 2 columns, and only if its input width is even: Stable Diffusion's
UNet downsamples its latent 3 times (total stride 8) and the latent is 1/8 of the image, so
the image width must be a multiple of 8 * 8 = 64 pixels (``WIDTH_MULTIPLE``). Then shifting
the initial latents by 8k columns shifts the panorama by 64k pixels exactly, so the left/right
edge is no different from any interior 64-pixel boundary; elsewhere the wrap-around breaks
(measured with a 3-downsample test UNet, 2 steps, max |rolled output - output rolled|: 1e-6 at
latent widths 16 and 24, 0.06 / 0.17 / 0.11 at 12 / 18 / 20). Such widths are refused. The
height is not wrapped and only needs the VAE's multiple of 8.

VAE tiling (``vae_tiling``) decodes overlapping tiles separately, and a tile's circular padding
wraps onto its own far side, not the panorama's: with the tiny test models the roll error rises
from 1e-6 to 0.73. A seamless panorama is therefore always decoded whole (tiling is switched
off for the call, with a warning).

LayerPano3D generates 720x1440; 1440 is not a multiple of 64 (latent 180 = 8 * 22.5). We
generate 736x1472 instead (``PanoramaConfig`` default: the nearest 1:2 size with a valid
width, 2.2% larger each way) and do not resize it to 1440: resampling would blur it, and every
later stage takes any size. Widths of 1408 or 1536 are the other near choices.

Colour contract: the pipeline decodes sRGB (what Stable Diffusion was trained on); the
generator returns it converted to linear RGB, our images' encoding, right after the call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from layerforge.assets.types import srgb_to_linear
from layerforge.errors import ConfigError
from layerforge.models.guidance.loading import LoadOptions, config_from_mapping, load_pipeline

log = logging.getLogger("layerforge.guidance")

# Stable Diffusion's VAE: latent = image / 8.
VAE_SCALE_FACTOR = 8
# SD 1.x/2.x UNet: 3 stride-2 downsamplings (4 blocks, the last without); SDXL has 2.
SD_UNET_DOWNSAMPLES = 3
# Image widths must be a multiple of this for the circular padding to wrap exactly (module docstring).
WIDTH_MULTIPLE = VAE_SCALE_FACTOR * 2**SD_UNET_DOWNSAMPLES  # 64 px
# LayerPano3D's 720x1440, rounded to the nearest 1:2 size whose width is a multiple of 64.
DEFAULT_HEIGHT = 736
DEFAULT_WIDTH = 1472


def _check_width(width: int, multiple: int, why: str) -> None:
    """ConfigError (one line, naming the nearest valid widths) unless ``width`` is a multiple of ``multiple``."""
    if width % multiple == 0:
        return
    lower, upper = width // multiple * multiple, (width // multiple + 1) * multiple
    choices = f"{lower} or {upper}" if lower > 0 else f"{upper}"
    raise ConfigError(
        f"panorama width {width} is not a multiple of {multiple} ({why}, so the left/right edge would not wrap)",
        f"set panorama.width to {choices}",
    )


def required_width_multiple(pipe: Any) -> int | None:
    """Image-width multiple ``pipe`` needs to wrap exactly: VAE scale x 2^(UNet downsamplings).

    None when ``pipe`` has no diffusers-style ``unet.config.down_block_types`` to count.
    diffusers' ``UNet2DConditionModel`` downsamples after every down block but the last.
    """
    blocks = getattr(getattr(getattr(pipe, "unet", None), "config", None), "down_block_types", None)
    if blocks is None:
        return None
    factor = int(getattr(pipe, "vae_scale_factor", VAE_SCALE_FACTOR))
    return factor * 2 ** (len(blocks) - 1)


@dataclasses.dataclass
class PanoramaConfig(LoadOptions):
    """Options of :class:`PanoramaGenerator` (LayerPano3D: 50 steps, CFG 7, 1:2).

    ``width`` must be a multiple of ``WIDTH_MULTIPLE`` (64 px) and ``height`` of 8; the default
    736x1472 replaces LayerPano3D's 720x1440, whose width is not (module docstring).
    """

    pretrained_model_name_or_path: str | None = None
    lora_name_or_path: str | None = None  # panorama LoRA (needs the peft package)
    prompt: str = ""
    negative_prompt: str = ""
    height: int = DEFAULT_HEIGHT
    width: int = DEFAULT_WIDTH
    num_inference_steps: int = 50
    guidance_scale: float = 7.0
    seamless: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.height % VAE_SCALE_FACTOR:
            raise ConfigError(f"panorama height {self.height} is not a multiple of {VAE_SCALE_FACTOR}",
                              f"set panorama.height to a multiple of {VAE_SCALE_FACTOR}")
        _check_width(self.width, WIDTH_MULTIPLE, f"Stable Diffusion's UNet downsamples its 1/{VAE_SCALE_FACTOR} "
                                                 f"latent {SD_UNET_DOWNSAMPLES} times")
        if self.width != 2 * self.height:
            log.warning("panorama %dx%d is not 1:2; equirectangular images usually are", self.height, self.width)



def _wrap_conv_forward(conv: torch.nn.Conv2d):
    ph, pw = conv.padding  # type: ignore[misc]

    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x = F.pad(x, (pw, pw, 0, 0), mode="circular")
        x = F.pad(x, (0, 0, ph, ph))
        return F.conv2d(x, weight, bias, conv.stride, 0, conv.dilation, conv.groups)

    return forward


@contextlib.contextmanager
def horizontal_circular_padding(*modules: torch.nn.Module) -> Iterator[int]:
    """Within the block, zero-padded Conv2d layers of ``modules`` wrap around horizontally.

    Yields the number of convolutions patched; the original behaviour is restored on exit.
    """
    patched: list[torch.nn.Conv2d] = []
    try:
        for module in modules:
            for conv in module.modules():
                if (isinstance(conv, torch.nn.Conv2d) and conv.padding_mode == "zeros"
                        and isinstance(conv.padding, tuple) and any(conv.padding)):
                    conv._conv_forward = _wrap_conv_forward(conv)  # type: ignore[method-assign]
                    patched.append(conv)
        yield len(patched)
    finally:
        for conv in patched:
            del conv._conv_forward


def seam_error(image: torch.Tensor) -> tuple[float, float]:
    """(mean |first column - last column|, mean |column j - column j+1| over the interior).

    image: [H, W, C]. A seamless panorama has the first no larger than about the second.
    """
    seam = (image[:, 0] - image[:, -1]).abs().mean()
    interior = (image[:, 1:] - image[:, :-1]).abs().mean()
    return float(seam), float(interior)


@contextlib.contextmanager
def _untiled(vae: Any, seamless: bool) -> Iterator[None]:
    """Within the block, a seamless panorama's VAE decodes whole (tiles do not wrap); restored on exit."""
    tiled = bool(getattr(vae, "use_tiling", False))
    if not (seamless and tiled):
        yield
        return
    log.warning("panorama: VAE tiling is switched off while decoding a seamless panorama (tiles do not wrap "
                "round the left/right edge); set panorama.vae_tiling=false to silence this")
    vae.use_tiling = False
    try:
        yield
    finally:
        vae.use_tiling = True


class PanoramaGenerator:
    """Generate equirectangular panoramas (linear RGB) with any Stable-Diffusion-style text-to-image pipeline.

    The pipeline must have ``unet`` and ``vae`` and accept ``latents=``; the circular padding
    is switched on only during :meth:`__call__`, so the same loaded pipeline can be shared.
    A pipeline that downsamples more than SD (see :func:`required_width_multiple`) needs a
    correspondingly larger width multiple, checked when seamless.
    """

    def __init__(self, config: PanoramaConfig | Mapping[str, Any] | None, pipe: Any | None = None,
                 key: str = "panorama.pretrained_model_name_or_path") -> None:
        self.config = config_from_mapping(PanoramaConfig, config, "panorama")
        if pipe is None:
            pipe = load_pipeline(self.config.pretrained_model_name_or_path, key=key, options=self.config.load_options(),
                                 pipeline_class="AutoPipelineForText2Image")
            if self.config.lora_name_or_path:
                pipe.load_lora_weights(self.config.lora_name_or_path)
        self.pipe = pipe
        multiple = required_width_multiple(pipe)
        if self.config.seamless and multiple is not None:
            _check_width(self.config.width, multiple, "this pipeline's UNet and VAE shrink the width by that much")

    def initial_latents(self, seed: int | None = None) -> torch.Tensor:
        """Gaussian latents [1, C, H/8, W/8] for ``seed`` (CPU generator: same on every device)."""
        cfg = self.config
        factor = getattr(self.pipe, "vae_scale_factor", 8)
        c = self.pipe.unet.config.in_channels
        gen = torch.Generator("cpu").manual_seed(cfg.seed if seed is None else seed)
        return torch.randn((1, c, cfg.height // factor, cfg.width // factor), generator=gen)

    @torch.no_grad()
    def __call__(self, prompt: str | None = None, *, seed: int | None = None,
                 latents: torch.Tensor | None = None) -> torch.Tensor:
        """Panorama [height, width, 3] float32 linear RGB in [0, 1] (the model's sRGB, decoded to linear).

        latents: [1, C, height/8, width/8] initial noise (default from ``seed``). Rolling it by
            8k columns rolls the (seamless) panorama by 64k pixels.
        """
        cfg = self.config
        if latents is None:
            latents = self.initial_latents(seed)
        unet, vae = self.pipe.unet, self.pipe.vae
        latents = latents.to(unet.device, unet.dtype)
        ctx = horizontal_circular_padding(unet, vae) if cfg.seamless else contextlib.nullcontext(0)
        with ctx, _untiled(vae, cfg.seamless):
            out = self.pipe(prompt=cfg.prompt if prompt is None else prompt,
                            negative_prompt=cfg.negative_prompt or None, height=cfg.height, width=cfg.width,
                            num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
                            latents=latents, output_type="pt")
        return srgb_to_linear(out.images[0].permute(1, 2, 0).float().cpu().clamp(0.0, 1.0))
