"""DP-Recon (Decompositional Neural Scene Reconstruction with Generative Diffusion Prior;
DP-Recon/DP-Recon): building blocks of the ``dp_recon`` pipeline.

- :mod:`.visibility`: :class:`VisibilityGrid` (dense max-transmittance grid from the input
  views: the authors' learned hinge fit, an exact scatter-max alternative, 5^3 Gaussian
  smoothing, trilinear query, compositing along rays) and :func:`texture_sds_mask` (texture
  stage); the geometry stage's per-pixel SDS weight is
  :func:`layerforge.models.guidance.visibility_weight_map`.
- :mod:`.losses`: the stage-1 reconstruction terms (MonoSDF / ObjectSDF++ at DP-Recon's weights).
"""

from .losses import (
    BG_GRADIENT_SCALES,
    BG_PATCH_SIZE,
    BG_RENDER_EVERY,
    DEPTH_GRADIENT_ALPHA,
    DEPTH_GRADIENT_SCALES,
    DEPTH_ROW_WIDTH,
    DEPTH_TARGET_SCALE,
    DEPTH_TARGET_SHIFT,
    OBJECT_VIOLATION_START,
    OPACITY_CLAMP,
    PAPER_WEIGHTS,
    SCANNETPP_WEIGHTS,
    SMOOTH_NORMAL_EPS,
    SMOOTH_OFFSET,
    BackgroundRegLoss,
    ObjectAlone,
    DepthLoss,
    DPEikonalLoss,
    NormalCosineLoss,
    NormalL1Loss,
    ObjectViolationLoss,
    RGBL1Loss,
    SemanticLoss,
    SmoothnessLoss,
    dp_render,
    foreground_mask,
    multiscale_gradient_error,
    normal_l1_cos,
    object_violation,
    paper_terms,
    scale_shift_invariant_depth,
    smoothness_residuals,
)
from .visibility import (
    RENDER_MAX,
    SMOOTH_KERNEL_SIZE,
    SMOOTH_SIGMA,
    TEXTURE_VIS_THRESHOLD,
    VISGRID_ADAM_BETAS,
    VISGRID_ADAM_EPS,
    VISGRID_FILL,
    VISGRID_HALF_EXTENT,
    VISGRID_INIT_ITER,
    VISGRID_LR,
    VISGRID_OPTIM_PASSES,
    VISGRID_RESOLUTION,
    VisibilityGrid,
    gaussian_kernel_3d,
    texture_sds_mask,
)

__all__ = [
    "VisibilityGrid", "gaussian_kernel_3d", "texture_sds_mask",
    "VISGRID_RESOLUTION", "VISGRID_HALF_EXTENT", "VISGRID_FILL", "VISGRID_INIT_ITER",
    "VISGRID_OPTIM_PASSES", "VISGRID_LR", "VISGRID_ADAM_BETAS", "VISGRID_ADAM_EPS",
    "SMOOTH_KERNEL_SIZE", "SMOOTH_SIGMA", "RENDER_MAX",
    "TEXTURE_VIS_THRESHOLD",
]

__all__ += [
    "RGBL1Loss", "DPEikonalLoss", "SmoothnessLoss", "DepthLoss", "NormalL1Loss", "NormalCosineLoss",
    "SemanticLoss", "ObjectViolationLoss", "BackgroundRegLoss", "paper_terms", "dp_render", "foreground_mask",
    "ObjectAlone", "scale_shift_invariant_depth", "normal_l1_cos", "smoothness_residuals", "object_violation",
    "multiscale_gradient_error", "PAPER_WEIGHTS", "SCANNETPP_WEIGHTS", "OBJECT_VIOLATION_START",
    "DEPTH_TARGET_SCALE", "DEPTH_TARGET_SHIFT", "DEPTH_GRADIENT_ALPHA", "DEPTH_GRADIENT_SCALES",
    "DEPTH_ROW_WIDTH", "SMOOTH_OFFSET", "SMOOTH_NORMAL_EPS", "OPACITY_CLAMP", "BG_PATCH_SIZE",
    "BG_GRADIENT_SCALES", "BG_RENDER_EVERY",
]

from .background import (
    ANCHOR_AZIMUTH_BIN_DEG,
    ANCHOR_ELEVATION_BIN_DEG,
    ANCHOR_JITTER,
    OPENCV_VARIANTS,
    TSDF_DEPTH_TRUNC,
    TSDF_FOV_DEG,
    TSDF_IMAGE_SIZE,
    TSDF_SDF_TRUNC,
    TSDF_VOXEL,
    UNSEEN_VIS_THRESHOLD,
    anchor_cameras,
    choose_panorama,
    panorama_candidates,
    panorama_score,
    render_background_panorama,
    tsdf_filter,
    unseen_mask,
)

__all__ += [
    "ANCHOR_AZIMUTH_BIN_DEG",
    "ANCHOR_ELEVATION_BIN_DEG",
    "ANCHOR_JITTER",
    "OPENCV_VARIANTS",
    "TSDF_DEPTH_TRUNC",
    "TSDF_FOV_DEG",
    "TSDF_IMAGE_SIZE",
    "TSDF_SDF_TRUNC",
    "TSDF_VOXEL",
    "UNSEEN_VIS_THRESHOLD",
    "anchor_cameras",
    "choose_panorama",
    "panorama_candidates",
    "panorama_score",
    "render_background_panorama",
    "tsdf_filter",
    "unseen_mask",
]
