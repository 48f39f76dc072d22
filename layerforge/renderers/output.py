"""One render output for mesh, Gaussian and field renders alike.

Every renderer returns a :class:`RenderOutput` with one meaning per field, as nerfstudio's
renderers share one ray-bundle contract: ``rgb`` linear colour, ``alpha`` coverage/opacity,
``depth`` camera-space z (not ray distance), ``normals`` world-space unit normals, and named
``extras`` (object ids, per-object alpha, weights, ...).

Who fills what:

- :func:`layerforge.renderers.mesh.render_mesh`: depth is the visible surface's camera z,
  normals world unit normals, extras ``face_id`` [B, H, W] int64 (-1 empty) and
  ``barycentrics`` [B, H, W, 3].
- :func:`layerforge.renderers.gaussians.render_gaussians`: depth is the opacity-weighted
  expected camera z of the splat centres (``depth_mode="ED"``), no normals, meta ``radii``
  [B, N] and ``means2d`` [B, N, 2].
- :func:`layerforge.renderers.volume.render_output_from_rays`: per-ray
  :func:`~layerforge.renderers.volume.volume_render` outputs of full camera images, with the
  ray distance converted to camera z.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class RenderOutput:
    """What a render call returns for B images of H x W pixels.

    Attributes:
        rgb: [B, H, W, 3] linear colour, background composited where ``alpha`` < 1
            ([B, H, W, C] when a renderer draws C feature channels instead of colour).
        alpha: [B, H, W, 1] coverage (meshes: antialiased mask) or accumulated opacity
            (Gaussians, fields), in [0, 1].
        depth: [B, H, W, 1] camera-space z in metres (OpenCV camera: +z forward) of the
            surface, or the opacity-weighted expected z; 0 where nothing was hit.
        normals: [B, H, W, 3] world-space unit normals (0 where nothing was hit), or None
            when the renderer has none.
        extras: other named per-pixel outputs, each [B, H, W, ...] (e.g. ``face_id``
            [B, H, W], ``object_alpha`` [B, H, W, K]).
        meta: named outputs that are not images (e.g. Gaussians' ``radii`` [B, N] and
            ``means2d`` [B, N, 2], as gsplat's ``meta``); no shape contract.
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    normals: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        b, h, w, _ = self.rgb.shape
        for name in ("alpha", "depth"):
            t = getattr(self, name)
            if tuple(t.shape) != (b, h, w, 1):
                raise ValueError(f"RenderOutput.{name} must be [B, H, W, 1] = {(b, h, w, 1)}, got {tuple(t.shape)}")
        if self.normals is not None and tuple(self.normals.shape) != (b, h, w, 3):
            raise ValueError(f"RenderOutput.normals must be [B, H, W, 3], got {tuple(self.normals.shape)}")
        for name, t in self.extras.items():
            if tuple(t.shape[:3]) != (b, h, w):
                raise ValueError(f"RenderOutput.extras[{name!r}] must be [B, H, W, ...] = {(b, h, w)}, got {tuple(t.shape)}")
