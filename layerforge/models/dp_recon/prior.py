"""DP-Recon's geometry prior: SDS on each object's rendered normals and opacity, weighted per
pixel by how well the input views saw it.

Read from the authors' code (DP-Recon/DP-Recon, ``code/``; our own implementation):

- Views (``geometry.yaml`` ``data``): per object, random orbit cameras at 128 x 128, FoV
  40-45 degrees, elevation 5-30 degrees (``elevation_range``; 5-80 after 60k in the paper's
  text), full azimuth, distance 0.8-1.0 *relative* (``relative_radius``: the distance that
  makes the object's bounding sphere fill the view, times 0.8-1.0), batch 8.
- Latent (``collect_inputs: ['comp_normal_cam_vis', 'opacity']``,
  ``nd_mvdream.py``): the object rendered alone; its normals in the camera frame shown as
  ``(n + 1) / 2`` blended with 0.5 grey where empty (``comp_normal_cam_vis``) and its opacity,
  4 channels resized to 64 x 64 and used directly as Stable Diffusion 2.1-base's latent
  (``x 2 - 1``; our :class:`~layerforge.models.guidance.sds.SDSGuidance` with
  ``latent_mode: direct``). threestudio's camera frame is OpenGL's (+x right, +y up, +z
  towards the viewer), which we use for the latent.
- Guidance (``geometry.yaml`` ``guidance``): CFG 50, ``w(t) = sqrt(abar)(1 - abar)``
  (fantasia3d weighting), t range min 0.20 -> 0.02 and max 0.98 -> 0.40 linearly over SDS
  steps 2500-5000, and the per-pixel weight
  :func:`~layerforge.models.guidance.sds.visibility_weight_map` of the rendered visibility
  (:meth:`~layerforge.models.dp_recon.visibility.VisibilityGrid.render`).
- Weight in the recon loss: 1e-5 from ``add_prior_iter`` = 35k (``confs/replica_grid.conf``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from layerforge.models.fields.base import Field
from layerforge.models.fields.render import SamplerConfig, render_rays
from layerforge.models.guidance.sds import visibility_weight_map
from layerforge.models.optimisation import PaperTerm, batch_generator
from layerforge.models.schedules import ScheduleValue
from layerforge.models.view_sampling import OrbitBatch, OrbitViews
from layerforge.renderers.cameras import generate_rays
from layerforge.renderers.volume import midpoints

from .losses import ObjectAlone
from .visibility import VISGRID_INIT_ITER, VisibilityGrid

__all__ = [
    "EMPTY_NORMAL",
    "SDS_ELEVATION_DEG",
    "SDS_FOV_DEG",
    "SDS_RELATIVE_DISTANCE",
    "SDS_RESOLUTION",
    "SDS_START",
    "SDS_VIEWS",
    "SDS_WEIGHT",
    "GeometrySDSLoss",
    "ObjectViewRange",
    "normal_latent_images",
    "object_view_sampler",
    "render_object_for_prior",
]

# confs/replica_grid.conf: the prior's weight in the recon loss, on from add_prior_iter.
SDS_WEIGHT = 1e-5
SDS_START = VISGRID_INIT_ITER
# geometry.yaml data: batch_size 8, width/height 128, fovy_range [40, 45],
# elevation_range [5, 30], azimuth_range [-180, 180], camera_distance_range [0.8, 1.0] (relative).
SDS_VIEWS = 8
SDS_RESOLUTION = 128
SDS_FOV_DEG = (40.0, 45.0)
SDS_ELEVATION_DEG = (5.0, 30.0)
SDS_RELATIVE_DISTANCE = (0.8, 1.0)
# neus_volume_renderer.py comp_normal_cam_vis: (n + 1) / 2 * opacity + 0.5 * (1 - opacity).
EMPTY_NORMAL = 0.5
SALT = 11  # batch_generator salt of the prior's views and noise


@dataclass
class ObjectViewRange:
    """Where an object is: the centre [3] and bounding-sphere radius (metres, optimisation frame)."""

    centre: tuple[float, float, float]
    radius: float


def object_view_sampler(obj: ObjectViewRange, n: int, size: int, *,
                        elevation_deg: Sequence[ScheduleValue] = SDS_ELEVATION_DEG,
                        fov_deg: tuple[float, float] = SDS_FOV_DEG,
                        relative_distance: tuple[float, float] = SDS_RELATIVE_DISTANCE,
                        device: torch.device | str = "cpu") -> OrbitViews:
    """threestudio's ``relative_radius`` orbit views of one object: the distance at which the
    bounding sphere fills the (narrowest) view, ``r / sin(fov / 2)``, times the relative range."""
    fit = obj.radius / math.sin(math.radians(min(float(f) for f in fov_deg)) / 2)
    dist = (relative_distance[0] * fit, relative_distance[1] * fit)
    return OrbitViews(n, size, size, elevation_deg=elevation_deg, distance=dist, fov_y_deg=fov_deg,
                      target=obj.centre, device=device)


def render_object_for_prior(field: Field, k: int, views: OrbitBatch, sampler: SamplerConfig,
                            grid: VisibilityGrid | None, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Object ``k`` of a composed SDF field rendered alone at orbit views, with gradients.

    Returns ``normals`` [B, H, W, 3] world (unit; 0 where empty), ``alpha`` [B, H, W, 1],
    ``visibility`` [B, H, W] (the grid composited along the rays, no gradient; ones without a
    grid) and ``w2c_rotation`` [B, 3, 3].
    """
    cams = views.cameras
    b, h, w = len(cams), cams.height, cams.width
    o, d = generate_rays(cams)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    r = render_rays(ObjectAlone(field, k), o, d, sampler, generator=generator, compute_normals=True)
    if grid is not None:
        t, _ = midpoints(r["edges"])
        vis = grid.render(r["weights"].detach(), (o[:, None] + d[:, None] * t[..., None]).detach())
    else:
        vis = torch.ones(o.shape[0], dtype=o.dtype, device=o.device)
    return {"normals": r["normals"].reshape(b, h, w, 3), "alpha": r["alpha"].reshape(b, h, w, 1),
            "visibility": vis.reshape(b, h, w), "w2c_rotation": cams.world_to_camera[:, :3, :3]}


def normal_latent_images(normals: Tensor, alpha: Tensor, w2c_rotation: Tensor) -> Tensor:
    """DP-Recon's 4-channel SDS image: OpenGL-camera-frame normals as ``(n + 1) / 2`` over 0.5
    grey by opacity, and the opacity.

    Args:
        normals: [B, H, W, 3] unit world normals (0 where empty). alpha: [B, H, W, 1].
        w2c_rotation: [B, 3, 3] world-to-camera rotations (OpenCV).

    Returns:
        [B, H, W, 4] in [0, 1] (what ``latent_mode: direct`` maps to [-1, 1]).
    """
    n_cv = torch.einsum("bij,bhwj->bhwi", w2c_rotation.to(normals), normals)
    n_gl = n_cv * torch.tensor([1.0, -1.0, -1.0], dtype=normals.dtype, device=normals.device)
    vis = (n_gl + 1.0) * 0.5 * alpha + EMPTY_NORMAL * (1.0 - alpha)
    return torch.cat([vis, alpha], dim=-1)


Condition = Callable[[int, OrbitBatch], dict[str, Any]]


class GeometrySDSLoss(PaperTerm):
    """Visibility-weighted SDS on the objects' normal + opacity renders (the prior of DP-Recon).

    Each step, ``objects_per_step`` objects (round robin over ``objects``) are rendered alone
    at their orbit views; the SDS gradient of each is weighted per pixel by
    :func:`visibility_weight_map` of the rendered visibility, and the term is the mean over
    those objects. Logs ``geometry_sds`` (unweighted) and ``sds_weight_mean``.

    Args:
        guidance: an :class:`~layerforge.models.guidance.sds.SDSGuidance` in ``latent_mode: direct``.
        grid: the visibility grid (filled before the term's first step), or None (weight from
            visibility 1 everywhere, i.e. at most 0.1: only for tests).
        views: one :class:`OrbitViews` per entry of ``objects``.
        objects: object indices in the composed field (1..K-1; 0 is the background).
        prompts: one prompt per entry of ``objects``.
        sampler: ray sampling of the renders.
        objects_per_step: how many objects a step (paper: all).
        condition: optional ``(object index, views) -> extra guidance kwargs`` (a ControlNet's
            ``control_image``, or a test oracle's target).
    """

    key = "geometry_sds"
    paper_weights = {"geometry_sds": [SDS_START, 0.0, SDS_WEIGHT, SDS_START]}

    def __init__(self, guidance: Any, grid: VisibilityGrid | None, views: Sequence[OrbitViews], objects: Sequence[int],
                 prompts: Sequence[str], sampler: SamplerConfig, *, objects_per_step: int | None = None,
                 condition: Condition | None = None, weight: ScheduleValue | None = None, name: str | None = None) -> None:
        super().__init__(weight, name)
        if not (len(views) == len(objects) == len(prompts)) or not objects:
            raise ValueError(f"need one view sampler and prompt per object, got {len(views)} / {len(objects)} / {len(prompts)}")
        if getattr(guidance.config, "latent_mode", None) != "direct":
            raise ValueError("the geometry prior needs guidance.latent_mode=direct (normals + opacity as the latent)")
        self.guidance, self.grid, self.views = guidance, grid, list(views)
        self.objects, self.prompts = list(objects), list(prompts)
        self.per_step = len(self.objects) if objects_per_step is None else max(1, min(objects_per_step, len(self.objects)))
        self.sampler, self.condition = sampler, condition

    def loss(self, field: Field, batch: dict[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        gen = batch_generator(batch, SALT)
        total, weights = None, []
        first = (step * self.per_step) % len(self.objects)
        for j in range(self.per_step):
            i = (first + j) % len(self.objects)
            views = self.views[i].sample(step, gen)
            r = render_object_for_prior(field, self.objects[i], views, self.sampler, self.grid, gen)
            images = normal_latent_images(r["normals"], r["alpha"], r["w2c_rotation"])
            w = visibility_weight_map(r["visibility"])
            extra = self.condition(self.objects[i], views) if self.condition is not None else {}
            out = self.guidance(images, step=step, elevation_deg=views.elevation_deg, azimuth_deg=views.azimuth_deg,
                                weight_map=w, prompt=self.prompts[i], generator=gen, **extra)
            total = out.loss if total is None else total + out.loss
            weights.append(float(w.mean()))
        info["log"]["sds_weight_mean"] = sum(weights) / len(weights)
        return total / self.per_step
