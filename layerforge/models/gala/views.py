"""GALA's camera sampling: orbit views of the whole person plus close-ups of the object, head and hands.

GALA (snuvclab/GALA ``config/default_geo.yaml``, ``dataset/dataset_mesh.py``) draws each
training view on an orbit around the person: elevation -10..20 degrees, azimuth anywhere,
vertical FoV 25.7..45 degrees; with ``enable_zoom_in`` some views are close-ups of the object
(its bounding box) and of the head and hands. Azimuths are relative to the person's front
(the -Y side in our normalised frame, Blender's Front view), which view-dependent prompts use.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from layerforge.models.view_sampling import FRONT_AZIMUTH_DEG
from layerforge.renderers.cameras import Camera, orbit_cameras

ELEVATION_DEG = (-10.0, 20.0)  # GALA elevation_range
FOV_DEG = (25.7, 45.0)  # GALA (fovy range)
FRAME_MARGIN = 1.1  # ours: the target's sphere fills the frame with 10 % to spare


@dataclasses.dataclass
class Focus:
    """A thing to look at: ``center`` [3] metres and ``radius`` metres it spans."""

    name: str
    center: Tensor
    radius: float


@dataclasses.dataclass
class ViewBatch:
    """B cameras with their orbit angles (azimuth relative to the front) and what each looks at."""

    cameras: Camera
    elevation_deg: Tensor
    azimuth_deg: Tensor
    focus: list[str]


def sample_views(n: int, resolution: int, foci: Sequence[Focus], close_up_probability: float,
                 generator: torch.Generator, *, elevation_deg: tuple[float, float] = ELEVATION_DEG,
                 fov_deg: tuple[float, float] = FOV_DEG, front_azimuth_deg: float = FRONT_AZIMUTH_DEG,
                 device: torch.device | str = "cpu") -> ViewBatch:
    """``n`` orbit views: of ``foci[0]`` (the whole person), or with ``close_up_probability`` of
    one of the other foci, drawn uniformly. Draws on the CPU ``generator`` (reproducible)."""
    u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
    el = elevation_deg[0] + (elevation_deg[1] - elevation_deg[0]) * u[:, 0]
    az = -180.0 + 360.0 * u[:, 1]
    fov = fov_deg[0] + (fov_deg[1] - fov_deg[0]) * u[:, 2]
    pick = []
    for i in range(n):
        if len(foci) > 1 and float(u[i, 3]) < close_up_probability:
            pick.append(1 + int(float(u[i, 3]) / close_up_probability * (len(foci) - 1)) % (len(foci) - 1))
        else:
            pick.append(0)
    cams = []
    for i in range(n):
        f = foci[pick[i]]
        dist = f.radius * FRAME_MARGIN / math.sin(math.radians(float(fov[i])) / 2)
        cams.append(orbit_cameras(float(el[i]), float(az[i]) + front_azimuth_deg, dist, float(fov[i]), resolution,
                                  resolution, target=f.center.float().cpu(), near=max(dist - 2.5 * f.radius, 1e-3)))
    cam = Camera(torch.cat([c.K for c in cams]), torch.cat([c.world_to_camera for c in cams]), resolution, resolution,
                 min(c.near for c in cams), cams[0].far).to(device=device)
    return ViewBatch(cam, el.float(), az.float(), [foci[p].name for p in pick])


def body_foci(vertices: Tensor, keypoints: Tensor, joint_names: Sequence[str], object_points: Tensor | None) -> list[Focus]:
    """The person (all ``vertices`` [V, 3]), the object (``object_points`` [N, 3]), the head and
    the hands (from ``keypoints`` [J + K, 3] by joint name), for :func:`sample_views`."""
    lo, hi = vertices.min(0).values, vertices.max(0).values
    out = [Focus("body", (lo + hi) / 2, float((hi - lo).norm() / 2))]
    if object_points is not None and len(object_points):
        olo, ohi = object_points.min(0).values, object_points.max(0).values
        out.append(Focus("object", (olo + ohi) / 2, float((ohi - olo).norm() / 2)))
    names = list(joint_names)
    for aliases, radius in (HEAD, 0.18), (LEFT_WRIST, 0.14), (RIGHT_WRIST, 0.14):
        name = next((a for a in aliases if a in names), None)
        if name is not None:
            out.append(Focus(aliases[0], keypoints[names.index(name)], radius))
    return out


# close-up targets by joint name: SMPL-X's, then anny's
HEAD = ("head",)
LEFT_WRIST = ("left_wrist", "wrist.L")
RIGHT_WRIST = ("right_wrist", "wrist.R")
