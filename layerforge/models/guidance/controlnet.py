"""SDS guided by a ControlNet conditioning image (GALA: OpenPose skeleton + SD 1.5)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from layerforge.assets.types import linear_to_srgb
from layerforge.models.guidance.loading import load_model
from layerforge.models.guidance.sds import SDSConfig, SDSGuidance, SDSOutput


@dataclasses.dataclass
class ControlNetSDSConfig(SDSConfig):
    """:class:`SDSConfig` plus the ControlNet to load and how strongly it conditions."""

    controlnet_name_or_path: str | None = None
    conditioning_scale: float = 1.0
    # true: control_image is a linear colour picture (an OpenPose skeleton, a segmentation map),
    # sRGB-encoded for the ControlNet; false: a data image (depth, normals) passed as is.
    control_image_color: bool = True


class ControlNetSDSGuidance(SDSGuidance):
    """SDS whose noise prediction is conditioned on an image through a ControlNet.

    Call as :class:`SDSGuidance` with ``control_image``: [B, H, W, 3] linear RGB in [0, 1] (e.g.
    :func:`layerforge.models.guidance.openpose.draw_openpose`), resized to the UNet's pixel
    resolution (``latent_size * 8``, in linear space) and then sRGB-encoded, what ControlNets
    were trained on (``control_image_color: false`` skips the encoding for data images such as
    depth maps). Both the text-conditioned and unconditioned branches see the control image,
    as in diffusers' ControlNet pipelines without guess mode.
    """

    config_class = ControlNetSDSConfig

    def __init__(self, config: ControlNetSDSConfig | Mapping[str, Any] | None, pipe: Any | None = None,
                 controlnet: torch.nn.Module | None = None) -> None:
        super().__init__(config, pipe)
        if controlnet is None:
            controlnet = load_model("ControlNetModel", self.config.controlnet_name_or_path,
                                    key="guidance.controlnet_name_or_path", options=self.config.load_options())
        self.controlnet = controlnet.to(self.device, self.dtype).eval().requires_grad_(False)

    def __call__(  # type: ignore[override]
        self, images: torch.Tensor, *, control_image: torch.Tensor, **kwargs: Any
    ) -> SDSOutput:
        """As :meth:`SDSGuidance.__call__`; ``control_image`` [B, H, W, 3] linear RGB in [0, 1]."""
        if control_image.ndim != 4 or control_image.shape[-1] != 3:
            raise ValueError(f"control_image must be [B, H, W, 3], got {tuple(control_image.shape)}")
        return super().__call__(images, control_image=control_image, **kwargs)

    def _control_tensor(self, control_image: torch.Tensor) -> torch.Tensor:
        size = self.config.latent_size * 8  # ControlNet's conditioning encoder downsamples by 8
        x = control_image.detach().permute(0, 3, 1, 2).float().to(self.device)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
        if self.config.control_image_color:
            x = linear_to_srgb(x)  # the model boundary: ControlNets take sRGB in [0, 1]
        return x.to(self.dtype)

    def _model_eps(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
        cond = self._control_tensor(extra["control_image"])
        cond = torch.cat([cond, cond])
        down, mid = self.controlnet(x, t, encoder_hidden_states=emb, controlnet_cond=cond,
                                    conditioning_scale=self.config.conditioning_scale, return_dict=False)
        return self.unet(x, t, encoder_hidden_states=emb, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample
