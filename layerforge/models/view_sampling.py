"""Camera samplers for :func:`layerforge.pipelines.optimise.optimise`: which views a step sees.

- :class:`DatasetViews`: a random subset of the posed input views (reconstruction terms).
- :class:`RayBatches`: random pixels of the posed views as rays (NeRF-style field fitting).
- :class:`OrbitViews`: random orbit cameras round the object (SDS terms), with elevation,
  azimuth, distance and field-of-view ranges that may be schedules (DP-Recon widens its
  elevation range 5-30 deg -> 5-80 deg at 60k steps) and a defined front: azimuths are drawn
  relative to ``front_azimuth_deg`` and returned relative to it, so view-dependent prompts
  ("front view", "side view", "back view") follow the object's front, not the world's +X.

Both draw on the CPU from the step's generator, so a resumed run sees the same views.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from layerforge.models.schedules import ScheduleValue, schedule_value
from layerforge.renderers.camera_set import CameraSet
from layerforge.renderers.cameras import Camera, generate_rays, sample_orbit_cameras

# Blender's Front view looks along +Y, so an object's front faces -Y: the camera that sees the
# front sits on the -Y side, at azimuth -90 deg in orbit_cameras' convention (0 = +X side).
FRONT_AZIMUTH_DEG = -90.0


class DatasetViews:
    """``per_step`` distinct input views a step, uniformly at random, moved to ``device``.

    Args:
        views: the posed input views.
        per_step: views per step (all of them, in order, when >= their number).
        device: where the batch goes.
    """

    def __init__(self, views: CameraSet, per_step: int, device: torch.device | str = "cpu") -> None:
        self.views = views
        self.per_step = min(per_step, len(views))
        self.device = torch.device(device)

    def sample(self, step: int, generator: torch.Generator) -> CameraSet:
        if self.per_step >= len(self.views):
            return self.views.to(self.device)
        idx = torch.randperm(len(self.views), generator=generator)[: self.per_step]
        return self.views[idx].to(self.device)


@dataclass
class OrbitBatch:
    """Orbit cameras of one step and where they are relative to the object's front.

    Attributes:
        cameras: B cameras looking at the target.
        elevation_deg: [B] degrees above the XY plane.
        azimuth_deg: [B] degrees around +Z from the front (0 = front, 90 = the object's left
            side seen from its front, +-180 = back).
        distance: [B] metres; fov_y_deg: [B] degrees.
    """

    cameras: Camera
    elevation_deg: Tensor
    azimuth_deg: Tensor
    distance: Tensor
    fov_y_deg: Tensor


class OrbitViews:
    """``n`` random orbit views a step; every range is (low, high) and each end may be a schedule.

    Args:
        n: views per step.
        width, height: image size in pixels.
        elevation_deg, azimuth_deg, distance, fov_y_deg: sampling ranges (azimuth relative to the front).
        front_azimuth_deg: world azimuth (orbit_cameras' convention) of the camera that sees the front.
        target: [3] point looked at, metres.
        device: where the cameras go.
    """

    def __init__(
        self,
        n: int,
        width: int,
        height: int,
        *,
        elevation_deg: Sequence[ScheduleValue] = (-10.0, 45.0),
        azimuth_deg: Sequence[ScheduleValue] = (-180.0, 180.0),
        distance: Sequence[ScheduleValue] = (1.5, 2.0),
        fov_y_deg: Sequence[ScheduleValue] = (40.0, 70.0),
        front_azimuth_deg: float = FRONT_AZIMUTH_DEG,
        target: Sequence[float] = (0.0, 0.0, 0.0),
        device: torch.device | str = "cpu",
    ) -> None:
        self.n, self.width, self.height = n, width, height
        self.ranges = {"elevation": elevation_deg, "azimuth": azimuth_deg, "distance": distance, "fov": fov_y_deg}
        self.front = front_azimuth_deg
        self.target = tuple(target)
        self.device = device

    def range_at(self, name: str, step: int) -> tuple[float, float]:
        lo, hi = self.ranges[name]
        return float(schedule_value(lo, step)), float(schedule_value(hi, step))

    def sample(self, step: int, generator: torch.Generator) -> OrbitBatch:
        lo, hi = self.range_at("azimuth", step)
        s = sample_orbit_cameras(
            self.n, self.width, self.height,
            elevation_range=self.range_at("elevation", step),
            azimuth_range=(lo + self.front, hi + self.front),
            distance_range=self.range_at("distance", step),
            fov_range=self.range_at("fov", step),
            target=self.target, generator=generator, device=self.device,
        )
        relative = torch.remainder(s.azimuth_deg - self.front + 180.0, 360.0) - 180.0
        return OrbitBatch(s.cameras, s.elevation_deg, relative, s.distance, s.fov_y_deg)


class RayBatches:
    """``rays_per_step`` random pixels of the posed views a step, as unit world rays.

    Each batch: ``origins`` / ``directions`` [R, 3], ``rgb`` [R, 3] linear, ``object_masks``
    [R, K] float (pixel's instance id == k + 1, from ``views.masks``; K = ``objects``), and
    ``seed``: an integer drawn from the step's generator for the terms' own randomness.
    Pixels masked -1 (ignore) are never drawn.

    Args:
        views: the posed views (``masks`` needed when ``objects`` > 0).
        rays_per_step: rays per step.
        objects: number of objects K (instance ids 1..K).
        device: where the batch goes.
    """

    def __init__(self, views: CameraSet, rays_per_step: int, objects: int = 0, device: torch.device | str = "cpu") -> None:
        origins, directions = generate_rays(views.cameras)
        self.origins, self.directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
        self.rgb = views.images.reshape(-1, 3)
        ids = views.masks.reshape(-1) if views.masks is not None else torch.zeros(len(self.rgb), dtype=torch.long)
        self.object_masks = torch.stack([(ids == k + 1) for k in range(objects)], -1).float() if objects else None
        self.valid = torch.nonzero(ids >= 0).reshape(-1)
        self.rays_per_step = rays_per_step
        self.device = torch.device(device)

    def sample(self, step: int, generator: torch.Generator) -> dict[str, Tensor | int]:
        pick = self.valid[torch.randint(0, len(self.valid), (self.rays_per_step,), generator=generator)]
        batch: dict[str, Tensor | int] = {
            "origins": self.origins[pick].to(self.device),
            "directions": self.directions[pick].to(self.device),
            "rgb": self.rgb[pick].to(self.device),
            "seed": int(torch.randint(0, 2**31 - 1, (1,), generator=generator)),
        }
        if self.object_masks is not None:
            batch["object_masks"] = self.object_masks[pick].to(self.device)
        return batch
