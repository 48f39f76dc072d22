"""Text -> 360 degree equirectangular panorama, seamless across the left/right edge.

Seamlessness comes from making the denoiser and the decoder live on a cylinder: while
generating, every zero-padded 2D convolution of the UNet and the VAE pads *horizontally* with
the columns from the other side (circular) and vertically with zeros. Attention, group norm
and nearest upsampling are already shift-equivariant, so the whole pipeline treats column
W-1 as the neighbour of column 0 and no seam can form; shifting the initial latents by k
columns shifts the panorama by 8k pixels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from layerforge.errors import ConfigError
from layerforge.models.guidance.loading import LoadOptions, config_from_mapping, load_pipeline

log = logging.getLogger("layerforge.guidance")


@dataclasses.dataclass
class PanoramaConfig(LoadOptions):
    """Options of :class:`PanoramaGenerator` (defaults: LayerPano3D, 720x1440, 50 steps, CFG 7)."""

    pretrained_model_name_or_path: str | None = None
    lora_name_or_path: str | None = None  # panorama LoRA (needs the peft package)
    prompt: str = ""
    negative_prompt: str = ""
    height: int = 720
    width: int = 1440
    num_inference_steps: int = 50
    guidance_scale: float = 7.0
    seamless: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.height % 8 or self.width % 8:
            raise ConfigError(f"panorama size {self.height}x{self.width} is not a multiple of 8",
                              "set panorama.height and panorama.width to multiples of 8")
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


class PanoramaGenerator:
    """Generate equirectangular panoramas with any Stable-Diffusion-style text-to-image pipeline.

    The pipeline must have ``unet`` and ``vae`` and accept ``latents=``; the circular padding
    is switched on only during :meth:`__call__`, so the same loaded pipeline can be shared.
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
        """Panorama [height, width, 3] float32, sRGB as the model produces it, in [0, 1].

        latents: [1, C, height/8, width/8] initial noise (default from ``seed``).
        """
        cfg = self.config
        if latents is None:
            latents = self.initial_latents(seed)
        unet, vae = self.pipe.unet, self.pipe.vae
        latents = latents.to(unet.device, unet.dtype)
        ctx = horizontal_circular_padding(unet, vae) if cfg.seamless else contextlib.nullcontext(0)
        with ctx:
            out = self.pipe(prompt=cfg.prompt if prompt is None else prompt,
                            negative_prompt=cfg.negative_prompt or None, height=cfg.height, width=cfg.width,
                            num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
                            latents=latents, output_type="pt")
        return out.images[0].permute(1, 2, 0).float().cpu()
