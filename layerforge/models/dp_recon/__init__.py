"""DP-Recon (Decompositional Neural Scene Reconstruction with Generative Diffusion Prior;
DP-Recon/DP-Recon): building blocks of the ``dp_recon`` pipeline.

- :mod:`.visibility`: :class:`VisibilityGrid` (dense max-transmittance grid from the input
  views: the authors' learned hinge fit, an exact scatter-max alternative, 5^3 Gaussian
  smoothing, trilinear query, compositing along rays), :func:`sds_pixel_weight` (geometry
  stage) and :func:`texture_sds_mask` (texture stage).
"""

from .visibility import (
    RENDER_MAX,
    SDS_NONE_VIS_REGION_MAX,
    SDS_VIS_REGION_MAX,
    SDS_VIS_THRESHOLD,
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
    sds_pixel_weight,
    texture_sds_mask,
)

__all__ = [
    "VisibilityGrid", "gaussian_kernel_3d", "sds_pixel_weight", "texture_sds_mask",
    "VISGRID_RESOLUTION", "VISGRID_HALF_EXTENT", "VISGRID_FILL", "VISGRID_INIT_ITER",
    "VISGRID_OPTIM_PASSES", "VISGRID_LR", "VISGRID_ADAM_BETAS", "VISGRID_ADAM_EPS",
    "SMOOTH_KERNEL_SIZE", "SMOOTH_SIGMA", "RENDER_MAX",
    "SDS_VIS_THRESHOLD", "SDS_VIS_REGION_MAX", "SDS_NONE_VIS_REGION_MAX", "TEXTURE_VIS_THRESHOLD",
]
