"""Diffusion priors and pretrained estimators: SDS, ControlNet-SDS, inpainting, panoramas, and
monocular depth, camera-frame normals and segmentation.

Colour contract: every image these modules take or return is float32 linear RGB in [0, 1]
([H, W, 3] or [B, H, W, 3]), as everywhere in layerforge. The models were trained on sRGB, so
each module sRGB-encodes right at the diffusers / transformers call (to [0, 1], 8-bit or the
VAE's [-1, 1]) and decodes back to linear right after, with ``layerforge.assets.types``'
``linear_to_srgb`` / ``srgb_to_linear``. Non-colour images (SDS ``latent_mode: direct``
normals and masks, ControlNet ``control_image_color: false``) are passed as is.

Importing this package is cheap: diffusers / transformers are imported only when a model
is loaded.
"""

from layerforge.models.guidance.controlnet import ControlNetSDSConfig, ControlNetSDSGuidance
from layerforge.models.guidance.estimators import DepthEstimator, NormalEstimator, Segment, Segmenter
from layerforge.models.guidance.inpaint import InpaintConfig, Inpainter
from layerforge.models.guidance.loading import LoadOptions, load_model, load_pipeline
from layerforge.models.guidance.openpose import draw_openpose, project_points
from layerforge.models.guidance.panorama import PanoramaConfig, PanoramaGenerator, seam_error
from layerforge.models.guidance.sds import (
    SDSConfig,
    SDSGuidance,
    SDSOutput,
    sds_surrogate_loss,
    sds_weighting,
    visibility_weight_map,
)

__all__ = [
    "ControlNetSDSConfig", "ControlNetSDSGuidance", "DepthEstimator", "InpaintConfig", "Inpainter", "LoadOptions",
    "NormalEstimator", "PanoramaConfig", "PanoramaGenerator", "SDSConfig", "SDSGuidance", "SDSOutput", "Segment",
    "Segmenter", "draw_openpose", "load_model", "load_pipeline", "project_points", "sds_surrogate_loss",
    "sds_weighting", "seam_error", "visibility_weight_map",
]
