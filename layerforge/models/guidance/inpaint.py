"""Image inpainting: a diffusers inpainting pipeline, or OpenCV when no model is configured."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from layerforge.assets.types import linear_to_srgb, srgb_to_linear
from layerforge.errors import ConfigError
from layerforge.models.guidance.loading import LoadOptions, config_from_mapping, load_pipeline

log = logging.getLogger("layerforge.guidance")


@dataclasses.dataclass
class InpaintConfig(LoadOptions):
    """Options of :class:`Inpainter`. ``pretrained_model_name_or_path: null`` selects OpenCV."""

    pretrained_model_name_or_path: str | None = None
    prompt: str = ""
    negative_prompt: str = ""
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    strength: float = 1.0
    mask_dilation_px: int = 0
    classical_method: str = "telea"  # telea | ns (Navier-Stokes)
    classical_radius_px: int = 5
    prefill: bool = False  # classical fill of the hole before diffusion (LayerPano3D)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.classical_method not in ("telea", "ns"):
            raise ConfigError(f"inpaint.classical_method={self.classical_method!r} is unknown", "use telea or ns")
        if not 0.0 < self.strength <= 1.0:
            raise ConfigError(f"inpaint.strength={self.strength} is out of range", "use a value in (0, 1]")



class Inpainter:
    """Fill masked pixels of an image; unmasked pixels are returned bit-identical.

    Colour contract: takes and returns linear RGB. The diffusion model (and OpenCV) see 8-bit
    sRGB, what they were trained on / designed for; the image is sRGB-encoded right before that
    call and its result decoded back to linear right after. Unmasked pixels never make the trip.
    """

    def __init__(self, config: InpaintConfig | Mapping[str, Any] | None = None, pipe: Any | None = None,
                 key: str = "inpaint.pretrained_model_name_or_path") -> None:
        self.config = config_from_mapping(InpaintConfig, config, "inpaint")
        if pipe is None and self.config.pretrained_model_name_or_path:
            pipe = load_pipeline(self.config.pretrained_model_name_or_path, key=key, options=self.config.load_options(),
                                 pipeline_class="AutoPipelineForInpainting")
        self.pipe = pipe
        if pipe is None:
            log.info("inpainting with OpenCV (%s): no diffusion model configured (%s)", self.config.classical_method, key)

    @property
    def backend(self) -> str:
        """``diffusers`` or ``opencv``."""
        return "opencv" if self.pipe is None else "diffusers"

    def __call__(self, image: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray,
                 prompt: str | None = None, seed: int | None = None) -> torch.Tensor:
        """Inpaint.

        image: [H, W, 3] float linear RGB in [0, 1]. mask: [H, W] bool (or {0,1}), True = fill.
        Returns [H, W, 3] float32 linear RGB torch tensor; pixels outside the (dilated) mask equal
        the input bit for bit.
        """
        img = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
        m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask).astype(bool)
        if img.ndim != 3 or img.shape[2] != 3 or m.shape != img.shape[:2]:
            raise ValueError(f"need image [H, W, 3] and mask [H, W], got {img.shape} and {m.shape}")
        m = self._dilate(m)
        if not m.any():
            return torch.from_numpy(img.copy())
        filled = self._classical(img, m)
        if self.pipe is not None:
            source = filled if self.config.prefill else img
            filled = self._diffusion(source, m, self.config.prompt if prompt is None else prompt,
                                     self.config.seed if seed is None else seed)
        out = np.where(m[..., None], filled, img).astype(np.float32)
        return torch.from_numpy(out)

    def _dilate(self, m: np.ndarray) -> np.ndarray:
        r = self.config.mask_dilation_px
        if r <= 0:
            return m
        import cv2

        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        return cv2.dilate(m.astype(np.uint8), kernel).astype(bool)

    def _classical(self, img: np.ndarray, m: np.ndarray) -> np.ndarray:
        import cv2

        flag = cv2.INPAINT_TELEA if self.config.classical_method == "telea" else cv2.INPAINT_NS
        srgb8 = np.round(linear_to_srgb(img) * 255).astype(np.uint8)  # OpenCV works on 8-bit sRGB
        filled = cv2.inpaint(srgb8, m.astype(np.uint8), self.config.classical_radius_px, flag)
        return srgb_to_linear(filled.astype(np.float32) / 255.0)

    def _diffusion(self, img: np.ndarray, m: np.ndarray, prompt: str, seed: int) -> np.ndarray:
        import cv2
        from PIL import Image

        h, w = m.shape
        h8, w8 = max(8, round(h / 8) * 8), max(8, round(w / 8) * 8)
        srgb8 = np.round(linear_to_srgb(img) * 255).astype(np.uint8)  # the model boundary: 8-bit sRGB in
        pil = Image.fromarray(srgb8)
        if (h8, w8) != (h, w):
            pil = pil.resize((w8, h8), Image.BICUBIC)
        pil_mask = Image.fromarray(m.astype(np.uint8) * 255).resize((w8, h8), Image.NEAREST)
        device = getattr(self.pipe, "_execution_device", None) or self.pipe.device
        gen = torch.Generator(device="cpu" if torch.device(device).type != "cuda" else device).manual_seed(seed)
        cfg = self.config
        out = self.pipe(prompt=prompt, negative_prompt=cfg.negative_prompt or None, image=pil, mask_image=pil_mask,
                        height=h8, width=w8, num_inference_steps=cfg.num_inference_steps,
                        guidance_scale=cfg.guidance_scale, strength=cfg.strength, generator=gen,
                        output_type="np").images[0]
        out = cv2.resize(out.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) if (h8, w8) != (h, w) else out
        return srgb_to_linear(out)  # ... and sRGB out, back to linear
