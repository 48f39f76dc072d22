"""Diffusion priors and pretrained estimators: SDS, ControlNet-SDS, inpainting, panoramas.

Importing this package is cheap: diffusers / transformers are imported only when a model
is loaded.
"""

from layerforge.models.guidance.controlnet import ControlNetSDSConfig, ControlNetSDSGuidance
from layerforge.models.guidance.estimators import DepthEstimator, Segment, Segmenter
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
    "PanoramaConfig", "PanoramaGenerator", "SDSConfig", "SDSGuidance", "SDSOutput", "Segment", "Segmenter",
    "draw_openpose", "load_model", "load_pipeline", "project_points", "sds_surrogate_loss", "sds_weighting",
    "seam_error", "visibility_weight_map",
]
