"""DP-Recon's ray batches: random input-view pixels with their monocular priors, and the
virtual-camera patch of the background regulariser.

Read from the authors' code (DP-Recon/DP-Recon, ``code/``; our own implementation):
``datasets/scene_dataset.py`` draws ``num_pixels`` = 1024 random pixels of one random image
per step (``train.num_pixels``, ``confs/replica_grid.conf``) with their RGB, Omnidata depth
and normal, instance id and pose; ``model/network.py`` renders, every ``render_bg_iter``
steps, one 32 x 32 pixel patch of a *virtual* camera (``use_virtual_camera_views``) placed
at the training view's centre and looking in a random direction
(``get_scene_camera_views``: azimuth and elevation uniform over the sphere), with the
training view's intrinsics. We draw the rays of one step from *all* views (as UDC-NeRF and
nerfstudio's pixel samplers do); ``one_view_per_step`` restores the authors' choice.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from layerforge.renderers.camera_set import CameraSet
from layerforge.renderers.cameras import Camera, generate_rays, look_at

from .losses import BG_PATCH_SIZE, DEPTH_ROW_WIDTH

__all__ = ["VIRTUAL_ELEVATION_RANGE_DEG", "DPReconRays"]

# get_scene_anchor_camera / get_scene_camera_views: elevation over [-90, 90] degrees, any azimuth.
VIRTUAL_ELEVATION_RANGE_DEG = (-90.0, 90.0)


class DPReconRays:
    """``rays_per_step`` random pixels of the posed views a step, with DP-Recon's batch keys.

    Each batch (see :mod:`layerforge.models.dp_recon.losses` for who reads what):
    ``origins`` / ``directions`` [R, 3] (unit, world), ``rgb`` [R, 3] linear, ``segs`` [R]
    long (0 background .. K-1), ``w2c_rotation`` [R, 3, 3], ``seed`` int; with depth priors
    ``depth`` [R] (the views' camera z; 0 unknown), with normal priors ``normal`` [R, 3]
    (camera frame, OpenCV); ``mask`` [R] 1 where every prior present is known; and
    ``bg_origins`` / ``bg_directions`` [P^2, 3], ``bg_w2c_rotation`` [3, 3]: a P x P patch
    (row-major) of a virtual camera at a random view's centre looking in a random direction.

    Args:
        views: posed views with instance ``masks`` (ids 0..K-1; -1 = ignore, never drawn),
            optional ``depths`` [N, H, W, 1] and ``normals`` [N, H, W, 3].
        rays_per_step: R, a multiple of :data:`DEPTH_ROW_WIDTH` (the depth loss's layout;
            paper 1024).
        patch_size: P (paper :data:`BG_PATCH_SIZE` = 32), at most the image size.
        one_view_per_step: draw every ray of a step from one random view (the authors').
        device: where the batch goes.
    """

    def __init__(self, views: CameraSet, rays_per_step: int, *, patch_size: int = BG_PATCH_SIZE,
                 one_view_per_step: bool = False, device: torch.device | str = "cpu") -> None:
        if views.masks is None:
            raise ValueError("DPReconRays needs views with instance masks")
        if rays_per_step < DEPTH_ROW_WIDTH or rays_per_step % DEPTH_ROW_WIDTH:
            raise ValueError(f"rays_per_step must be a multiple of {DEPTH_ROW_WIDTH} (the depth loss's row width), "
                             f"got {rays_per_step}")
        cams = views.cameras
        n, h, w = len(cams), cams.height, cams.width
        origins, directions = generate_rays(cams)
        self.origins, self.directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
        self.rgb = views.images.reshape(-1, 3)
        self.segs = views.masks.reshape(-1).long()
        self.view = torch.arange(n).repeat_interleave(h * w)
        self.rotations = cams.world_to_camera[:, :3, :3].float()
        known = torch.ones(n * h * w, dtype=torch.bool)
        self.depth = None if views.depths is None else views.depths.reshape(-1).float()
        if self.depth is not None:
            known &= self.depth > 0
        normals = views.normals
        self.normal = None if normals is None else normals.reshape(-1, 3).float()
        if self.normal is not None:
            known &= self.normal.norm(dim=-1) > 0
        self.known = known.float()
        valid = self.segs >= 0
        self.valid = torch.nonzero(valid).reshape(-1)
        self.valid_by_view = [torch.nonzero(valid & (self.view == i)).reshape(-1) for i in range(n)]
        self.cameras = cams
        self.rays_per_step = rays_per_step
        self.patch = min(patch_size, h, w)
        self.one_view = one_view_per_step
        self.device = torch.device(device)

    @property
    def has_depth(self) -> bool:
        return self.depth is not None

    @property
    def has_normal(self) -> bool:
        return self.normal is not None

    def _pick(self, generator: torch.Generator) -> Tensor:
        pool = self.valid
        if self.one_view:
            nonempty = [p for p in self.valid_by_view if len(p)]
            pool = nonempty[int(torch.randint(0, len(nonempty), (1,), generator=generator))]
        return pool[torch.randint(0, len(pool), (self.rays_per_step,), generator=generator)]

    def virtual_patch(self, view: int, generator: torch.Generator) -> dict[str, Tensor]:
        """A P x P pixel patch of a camera at view ``view``'s centre looking in a random direction."""
        cam = self.cameras[view]
        u = torch.rand(3, generator=generator, dtype=torch.float64)
        az = 2.0 * math.pi * float(u[0])
        lo, hi = (math.radians(a) for a in VIRTUAL_ELEVATION_RANGE_DEG)
        el = lo + (hi - lo) * float(u[1])
        centre = cam.center.reshape(3).double()
        look = torch.tensor([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], dtype=torch.float64)
        w2c = look_at(centre[None], (centre + look)[None]).to(cam.K.dtype)
        virtual = Camera(cam.K, w2c, cam.width, cam.height, cam.near, cam.far)
        o, d = generate_rays(virtual)
        p = self.patch
        y0 = int(torch.randint(0, cam.height - p + 1, (1,), generator=generator))
        x0 = int(torch.randint(0, cam.width - p + 1, (1,), generator=generator))
        o, d = o[0, y0:y0 + p, x0:x0 + p].reshape(-1, 3), d[0, y0:y0 + p, x0:x0 + p].reshape(-1, 3)
        return {"bg_origins": o.float(), "bg_directions": d.float(), "bg_w2c_rotation": w2c[0, :3, :3].float()}

    def sample(self, step: int, generator: torch.Generator) -> dict[str, Tensor | int]:
        pick = self._pick(generator)
        dev = self.device
        batch: dict[str, Tensor | int] = {
            "origins": self.origins[pick].to(dev),
            "directions": self.directions[pick].to(dev),
            "rgb": self.rgb[pick].to(dev),
            "segs": self.segs[pick].to(dev),
            "w2c_rotation": self.rotations[self.view[pick]].to(dev),
            "mask": self.known[pick].to(dev),
            "seed": int(torch.randint(0, 2**31 - 1, (1,), generator=generator)),
        }
        if self.depth is not None:
            batch["depth"] = self.depth[pick].to(dev)
        if self.normal is not None:
            batch["normal"] = self.normal[pick].to(dev)
        patch = self.virtual_patch(int(self.view[pick[0]]), generator)
        batch.update({k: v.to(dev) for k, v in patch.items()})
        return batch
