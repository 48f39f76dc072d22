"""Posed views with their images: what the lifting pipelines optimise against.

A :class:`CameraSet` is N cameras (one :class:`~layerforge.renderers.cameras.Camera` batch)
with, per view, a linear RGB image and optionally an instance-id mask, a camera-z depth and
camera-frame normals (monocular priors or ground truth).
It saves to and loads from one ``.npz`` (the artifact codec of the stage engine).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from layerforge.assets.atomic import atomic_path
from layerforge.errors import InputError
from layerforge.renderers.cameras import Camera


@dataclass
class CameraSet:
    """N posed views.

    Attributes:
        cameras: N cameras of one image size H x W (OpenCV convention, see :class:`Camera`).
        images: [N, H, W, 3] float32 linear RGB in [0, 1].
        masks: optional [N, H, W] int64 instance ids (0 background, k >= 1 object k, -1 ignore).
        depths: optional [N, H, W, 1] float32 camera-space z in metres (0 unknown).
        names: one name per view (file stems), default ``view_000``...
        normals: optional [N, H, W, 3] float32 unit normals in each view's own OpenCV camera
            frame (+x right, +y down, +z forward; world normal = ``R^T n`` with ``R`` the
            world-to-camera rotation), the zero vector where unknown. After ``names`` so that
            positional construction ``CameraSet(cams, images, masks, depths, names)`` keeps working.
    """

    cameras: Camera
    images: Tensor
    masks: Tensor | None = None
    depths: Tensor | None = None
    names: list[str] = field(default_factory=list)
    normals: Tensor | None = None

    def __post_init__(self) -> None:
        n, h, w = len(self.cameras), self.cameras.height, self.cameras.width
        expect = {"images": (n, h, w, 3), "masks": (n, h, w), "depths": (n, h, w, 1), "normals": (n, h, w, 3)}
        for key, shape in expect.items():
            t = getattr(self, key)
            if t is not None and tuple(t.shape) != shape:
                raise InputError(f"CameraSet.{key} is {tuple(t.shape)}, expected {shape} for {n} views of {w}x{h}",
                                 "give one image per camera at the cameras' size")
        if self.normals is not None and not self.normals.is_floating_point():
            raise InputError(f"CameraSet.normals is {self.normals.dtype}, expected float unit vectors",
                             "give float32 camera-frame unit normals (0 where unknown)")
        if not self.names:
            self.names = [f"view_{i:03d}" for i in range(n)]
        if len(self.names) != n:
            raise InputError(f"CameraSet has {len(self.names)} names for {n} views", "give one name per view")

    def __len__(self) -> int:
        return len(self.cameras)

    def __getitem__(self, index: Tensor | list[int] | slice) -> CameraSet:
        """The views at ``index`` (a CameraSet, batch dimension kept)."""
        idx = index if isinstance(index, slice) else torch.as_tensor(index, dtype=torch.long).reshape(-1)
        pick = (lambda t: None if t is None else t[idx])
        names = self.names[index] if isinstance(index, slice) else [self.names[int(i)] for i in idx]
        return CameraSet(self.cameras[idx], self.images[idx], pick(self.masks), pick(self.depths), names,
                         pick(self.normals))

    def to(self, device: torch.device | str) -> CameraSet:
        move = (lambda t: None if t is None else t.to(device))
        return replace(self, cameras=self.cameras.to(device), images=self.images.to(device), masks=move(self.masks),
                       depths=move(self.depths), normals=move(self.normals))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write one compressed ``.npz``, atomically."""
        c = self.cameras
        arrays = {"K": c.K.detach().cpu().numpy(), "world_to_camera": c.world_to_camera.detach().cpu().numpy(),
                  "size": np.array([c.width, c.height]), "clip": np.array([c.near, c.far]),
                  "images": self.images.detach().cpu().numpy().astype(np.float32), "names": np.array(self.names)}
        if self.masks is not None:
            arrays["masks"] = self.masks.detach().cpu().numpy().astype(np.int64)
        if self.depths is not None:
            arrays["depths"] = self.depths.detach().cpu().numpy().astype(np.float32)
        if self.normals is not None:
            arrays["normals"] = self.normals.detach().cpu().numpy().astype(np.float32)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CameraSet:
        try:
            z = np.load(path)
            w, h = (int(v) for v in z["size"])
            near, far = (float(v) for v in z["clip"])
            cams = Camera(torch.from_numpy(z["K"]), torch.from_numpy(z["world_to_camera"]), w, h, near, far)
            get = (lambda k: torch.from_numpy(z[k]) if k in z.files else None)
            return cls(cams, torch.from_numpy(z["images"]), get("masks"), get("depths"), [str(n) for n in z["names"]],
                       get("normals"))
        except (OSError, KeyError, ValueError) as err:
            raise InputError(f"{path}: not a camera set ({err})", "re-run the stage that made it") from None
