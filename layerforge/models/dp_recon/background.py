"""DP-Recon (DP-Recon/DP-Recon) background: the panorama from the scene centre, its unseen
pixels, a deterministic choice among inpainted candidates, and the TSDF filter of the
background mesh.

Read from the authors' code (our own implementation; paths are inside their repo's ``code/``):

- Panorama (``training/DPRecon_train.py``, end of the geometry stage; ``utils/pano_camera_tools.py``
  ``capture_pano_depth``): a 1024 x 2048 equirectangular panorama from the background mesh's
  bounding-box centre; each ray's first mesh hit is coloured by the background's colour
  network and looked up in the visibility grid; ``vis_mask = vis_map < 0.2`` marks the
  pixels to inpaint (rays that hit nothing have ``vis_map`` 0 and are inpainted too).
  :func:`render_background_panorama` volume-renders the background object alone
  (:class:`~layerforge.models.dp_recon.losses.ObjectAlone`) instead of ray-casting its mesh,
  and composites the grid along the rays (:meth:`VisibilityGrid.render`, as the authors'
  novel-view ``vis_map``) instead of reading it at the first hit.
- Inpainting (``ControlNetInpaint/inpaint_pano.py``): Stable Diffusion inpainting with a depth
  ControlNet (disparity panorama as the control image), 50 steps, CFG 7.5, masks dilated
  3/6/9 times with a 5x5 kernel, ControlNet scales 0.4/0.5/0.6, ``inpaint_repeat_times``
  seeds each; one result is then picked **at random** (``random.choice``) and the authors
  advise picking by hand. :func:`choose_panorama` replaces that with a documented,
  deterministic score (:func:`panorama_score`). The depth ControlNet is not used here.
- TSDF filter (``utils/tsdf_filter_util.py``): for every camera centre,
  ``get_scene_anchor_camera(azimuth_bin=30, elevation_bin=30)`` makes 12 x 6 anchor cameras
  (azimuths -180, -150, ..., 150; one elevation drawn uniformly in each 30-degree band from
  -90 to 90; positions jittered by U(-0.05, 0.05) in x, y and U(-0.02, 0.02) in z); the
  mesh's depth is rendered from each (pyrender, 1200 x 680, fx = fy = 600), fused with
  open3d ``ScalableTSDFVolume(voxel_length=0.01, sdf_trunc=0.03)`` (``depth_trunc`` 5.0),
  extracted, and the largest connected component kept. Lengths are in the authors'
  unit-sphere-normalised scene. Differences in :func:`tsdf_filter`: our rasterizer renders
  camera-z depth (both face sides; pyrender culls back faces); open3d's ``VoxelBlockGrid``
  fuses it (the same sparse-block TSDF; the legacy ``ScalableTSDFVolume`` fuses nothing from
  float depth in open3d 0.20, see :func:`tsdf_filter`); each anchor looks along its
  own (azimuth, elevation) direction from its centre (the authors aim at a point at a random
  radius in [0, 1] from the scene origin in that direction); the randomness is seeded; the
  largest component is the one of largest area (the authors': most vertices).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from layerforge.assets.types import Mesh
from layerforge.errors import ConfigError, InputError, OutputError
from layerforge.models.fields.base import Field
from layerforge.models.fields.extract import _largest_component
from layerforge.models.fields.render import (
    DEFAULT_CHUNK_RAYS,
    SamplerConfig,
    render_rays,
)
from layerforge.renderers.cameras import Camera, intrinsics_from_fov, look_at
from layerforge.renderers.mesh import rasterize
from layerforge.renderers.panorama import equirect_rays
from layerforge.renderers.volume import midpoints

from .losses import ObjectAlone
from .visibility import VisibilityGrid

__all__ = [
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

# Panorama pixels to inpaint: vis_mask = (vis_map < 0.2), code/training/DPRecon_train.py.
UNSEEN_VIS_THRESHOLD = 0.2
# OpenCV candidates (ours: the classical fallback has no seeds): (method, radius px) in order.
OPENCV_VARIANTS: tuple[tuple[str, int], ...] = (
    ("telea", 3), ("ns", 3), ("telea", 5), ("ns", 5), ("telea", 9), ("ns", 9), ("telea", 15), ("ns", 15),
)
# Anchor cameras per centre: get_scene_anchor_camera(azimuth_bin=30, elevation_bin=30),
# code/utils/tsdf_filter_util.py (12 azimuths x 6 elevation bands = 72 cameras).
ANCHOR_AZIMUTH_BIN_DEG = 30
ANCHOR_ELEVATION_BIN_DEG = 30
# Anchor position jitter, half-widths in x, y, z: (rand * 2 - 1) * 0.05 / 0.05 / 0.02,
# code/utils/tsdf_filter_util.py (unit-sphere-normalised scene units).
ANCHOR_JITTER = (0.05, 0.05, 0.02)
# ScalableTSDFVolume(voxel_length=0.01, sdf_trunc=3 * 0.01) and depth_trunc=5.0,
# code/utils/tsdf_filter_util.py::refuse (unit-sphere-normalised scene units).
TSDF_VOXEL = 0.01
TSDF_SDF_TRUNC = 0.03
TSDF_DEPTH_TRUNC = 5.0
# Anchor image: H = 680, W = 1200, fx = fy = 600 (code/utils/tsdf_filter_util.py), i.e. a
# vertical field of view of 2 atan(340 / 600) = 59.0 degrees.
TSDF_IMAGE_SIZE = (1200, 680)
TSDF_FOV_DEG = math.degrees(2.0 * math.atan(340.0 / 600.0))
# Ours (open3d VoxelBlockGrid set-up): 8^3 voxels per block, initial hash capacity (it grows),
# and the least fused weight a voxel needs to be meshed (open3d's default 3 would drop
# surfaces seen by fewer than three anchors).
TSDF_BLOCK_RESOLUTION = 8
TSDF_BLOCK_COUNT = 4096
TSDF_MIN_WEIGHT = 1.0


# ------------------------------------------------------------------------------------ panorama


def render_background_panorama(
    field: Field,
    grid: VisibilityGrid,
    centre: Sequence[float] | Tensor,
    height: int,
    width: int,
    sampler: SamplerConfig,
    *,
    chunk_rays: int = DEFAULT_CHUNK_RAYS,
) -> dict[str, Tensor]:
    """Equirectangular panorama of the background object (object 0) alone, with its visibility.

    Args:
        field: a :class:`~layerforge.models.fields.compose.ComposedSDFField` (object 0 is the
            background; the other objects are left out, :class:`ObjectAlone`).
        grid: the scene's :class:`VisibilityGrid` (same frame as ``field``).
        centre: [3] panorama centre, world metres (the authors: the background mesh's
            bounding-box centre).
        height, width: panorama size H x W (the authors: 1024 x 2048). The frame is
            :mod:`layerforge.renderers.panorama`'s: centre column along +X, +Z up.
        sampler: ray sampling; use ``perturb=False`` for a deterministic panorama.
        chunk_rays: rays per field pass (memory bound); the result does not depend on it.

    Returns:
        dict, no gradient, on the field's device: ``rgb`` [H, W, 3] linear (black behind an
        empty ray), ``alpha`` [H, W, 1] accumulated opacity, ``distance`` [H, W, 1] expected
        distance along each ray in metres (0 where empty), ``visibility`` [H, W] the grid
        composited along the rays, ``sum_i w_i grid(x_i)``, clamped to at most 1.
    """
    if chunk_rays < 1:
        raise ValueError(f"chunk_rays must be >= 1, got {chunk_rays}")
    background = ObjectAlone(field, 0)
    p = next(field.parameters(), None)
    device = p.device if p is not None else field.aabb.device
    dtype = p.dtype if p is not None else torch.float32
    centre_t = torch.as_tensor(centre, dtype=dtype, device=device).reshape(3)
    origins, dirs = equirect_rays(height, width, centre_t, dtype=dtype, device=device)
    o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    parts: dict[str, list[Tensor]] = {"rgb": [], "alpha": [], "distance": [], "visibility": []}
    with torch.no_grad():
        for s in range(0, o.shape[0], chunk_rays):
            r = render_rays(background, o[s:s + chunk_rays], d[s:s + chunk_rays], sampler)
            t, _ = midpoints(r["edges"])
            points = o[s:s + chunk_rays, None] + d[s:s + chunk_rays, None] * t[..., None]
            parts["visibility"].append(grid.render(r["weights"], points.to(grid.values.dtype)))
            for k in ("rgb", "alpha", "distance"):
                parts[k].append(r[k])
    out = {k: torch.cat(v) for k, v in parts.items()}
    return {
        "rgb": out["rgb"].reshape(height, width, 3),
        "alpha": out["alpha"].reshape(height, width, 1),
        "distance": out["distance"].reshape(height, width, 1),
        "visibility": out["visibility"].reshape(height, width),
    }


def unseen_mask(visibility: Tensor, threshold: float = UNSEEN_VIS_THRESHOLD) -> Tensor:
    """Pixels the input views never saw: ``visibility < threshold`` (the authors' 0.2).

    Args:
        visibility: [H, W] (or [H, W, 1]) composited visibility.
        threshold: :data:`UNSEEN_VIS_THRESHOLD`.

    Returns:
        [H, W] bool, True = to inpaint.
    """
    v = visibility[..., 0] if visibility.dim() == 3 and visibility.shape[-1] == 1 else visibility
    if v.dim() != 2:
        raise ValueError(f"visibility must be [H, W] or [H, W, 1], got {tuple(visibility.shape)}")
    return v < threshold


# ------------------------------------------------------------------------- candidates, choice


def panorama_candidates(
    pano: Tensor,
    mask: Tensor,
    inpainter: Any,
    n: int,
    seed: int,
    prompt: str | None = None,
    *,
    wrap_px: int = 0,
) -> list[Tensor]:
    """``n`` inpainted versions of a panorama, deterministic for a given ``seed``.

    Args:
        pano: [H, W, 3] linear RGB in [0, 1].
        mask: [H, W] bool, True = fill (e.g. :func:`unseen_mask`).
        inpainter: a :class:`~layerforge.models.guidance.inpaint.Inpainter`. With a diffusion
            pipeline (``backend == "diffusers"``) candidate ``i`` uses seed ``seed + i``; with
            OpenCV (no seeds) candidate ``i`` uses :data:`OPENCV_VARIANTS` ``[i]`` (method,
            radius), at most ``len(OPENCV_VARIANTS)`` = 8.
        n: number of candidates (>= 1).
        seed: base seed.
        prompt: text prompt (diffusers only); ``None`` uses the inpainter's configured one.
        wrap_px: ours, not the authors': inpaint the panorama padded with ``wrap_px`` columns
            copied across the 360-degree seam on each side (at most W), then crop, so a hole
            at the seam is filled from both of its sides; 0 inpaints the image as it is.

    Returns:
        n tensors [H, W, 3] float32, linear; pixels outside the (inpainter-dilated) mask
        equal ``pano`` bit for bit.
    """
    if n < 1:
        raise ConfigError(f"panorama candidates n={n} is out of range", "ask for at least one candidate")
    if wrap_px < 0:
        raise ConfigError(f"wrap_px={wrap_px} is negative", "pass 0 (no wrap padding) or a column count")
    width = pano.shape[1]
    pad = min(int(wrap_px), width)
    if pad:
        pano = torch.cat([pano[:, -pad:], pano, pano[:, :pad]], dim=1)
        mask = torch.cat([mask[:, -pad:], mask, mask[:, :pad]], dim=1)
    if inpainter.backend == "diffusers":
        out = [inpainter(pano, mask, prompt=prompt, seed=seed + i) for i in range(n)]
        return [o[:, pad:pad + width] for o in out]
    if n > len(OPENCV_VARIANTS):
        raise ConfigError(f"OpenCV inpainting has {len(OPENCV_VARIANTS)} variants, {n} candidates were asked for",
                          f"ask for at most {len(OPENCV_VARIANTS)} or configure a diffusion inpainting model")
    cls = type(inpainter)
    out = []
    for method, radius in OPENCV_VARIANTS[:n]:
        variant = cls(dataclasses.replace(inpainter.config, classical_method=method, classical_radius_px=radius))
        out.append(variant(pano, mask, seed=seed)[:, pad:pad + width])
    return out


def panorama_score(pano: Tensor, mask: Tensor) -> dict[str, float]:
    """Deterministic quality score of an inpainted panorama; lower is better.

    With ``P`` [H, W, C] and ``|a|_c`` the mean of ``|a|`` over the C channels, all in float64:

    - ``seam`` = mean over rows i of ``|P[i, 0] - P[i, W-1]|_c``: columns 0 and W-1 are
      neighbours across the 360-degree wrap.
    - Boundary pairs: every outside pixel ``p`` (``mask[p]`` False) and step ``e`` of the
      four directions (left/right wrapping around the seam, up/down not wrapping) with
      ``q = p + e`` inside the hole (``mask[q]`` True).
      ``boundary_colour`` = mean over those pairs of ``|P[q] - P[p]|_c`` (the step into the hole);
      ``boundary_gradient`` = mean over the pairs whose ``p - e`` exists and is outside the
      hole of ``|(P[q] - P[p]) - (P[p] - P[p - e])|_c`` (the change of slope across the
      boundary: 0 where the fill continues the known gradient). 0 when there are no pairs.
    - ``total`` = ``seam + boundary_colour + boundary_gradient``.

    Args:
        pano: [H, W, C] image (linear, [0, 1]).
        mask: [H, W] bool, True = inpainted pixels.

    Returns:
        dict of python floats: ``seam``, ``boundary_colour``, ``boundary_gradient``, ``total``.
    """
    if pano.dim() != 3 or mask.shape != pano.shape[:2]:
        raise ValueError(f"need pano [H, W, C] and mask [H, W], got {tuple(pano.shape)} and {tuple(mask.shape)}")
    P = pano.detach().to(torch.float64).cpu()
    m = mask.detach().cpu().bool()
    H, W = m.shape
    seam = float((P[:, 0] - P[:, -1]).abs().mean())
    colour_sum, colour_n, grad_sum, grad_n = 0.0, 0, 0.0, 0
    rows = torch.arange(H)[:, None].expand(H, W)
    for axis, step in ((1, 1), (1, -1), (0, 1), (0, -1)):
        # value at p + k e (wrapping along columns; along rows validity is checked separately)
        def shifted(x: Tensor, k: int, axis: int = axis, step: int = step) -> Tensor:
            return torch.roll(x, shifts=-k * step, dims=axis)

        if axis == 0:
            q_ok = (rows + step >= 0) & (rows + step < H)
            back_ok = (rows - step >= 0) & (rows - step < H)
        else:
            q_ok = back_ok = torch.ones(H, W, dtype=torch.bool)
        pairs = ~m & shifted(m, 1) & q_ok
        if not bool(pairs.any()):
            continue
        into = shifted(P, 1) - P
        colour = into.abs().mean(-1)[pairs]
        colour_sum, colour_n = colour_sum + float(colour.sum()), colour_n + colour.numel()
        with_back = pairs & back_ok & ~shifted(m, -1)
        if bool(with_back.any()):
            change = (into - (P - shifted(P, -1))).abs().mean(-1)[with_back]
            grad_sum, grad_n = grad_sum + float(change.sum()), grad_n + change.numel()
    boundary_colour = colour_sum / colour_n if colour_n else 0.0
    boundary_gradient = grad_sum / grad_n if grad_n else 0.0
    return {"seam": seam, "boundary_colour": boundary_colour, "boundary_gradient": boundary_gradient,
            "total": seam + boundary_colour + boundary_gradient}


def choose_panorama(candidates: Sequence[Tensor], mask: Tensor) -> tuple[int, list[dict[str, float]]]:
    """Pick the candidate of lowest :func:`panorama_score` ``total``; equal totals: smallest index.

    Replaces the authors' ``random.choice`` (or a human's pick) with a reproducible rule.

    Args:
        candidates: K >= 1 panoramas [H, W, C].
        mask: [H, W] bool, the inpainted pixels.

    Returns:
        (index of the chosen candidate, the K score dicts in candidate order).
    """
    if len(candidates) == 0:
        raise InputError("choose_panorama got no candidates", "pass at least one inpainted panorama")
    scores = [panorama_score(c, mask) for c in candidates]
    index = min(range(len(scores)), key=lambda i: (scores[i]["total"], i))
    return index, scores


# ------------------------------------------------------------------------------- TSDF filter


def anchor_cameras(
    camera_centres: Tensor | np.ndarray,
    *,
    azimuth_bin_deg: int = ANCHOR_AZIMUTH_BIN_DEG,
    elevation_bin_deg: int = ANCHOR_ELEVATION_BIN_DEG,
    image_size: tuple[int, int] = TSDF_IMAGE_SIZE,
    fov_deg: float = TSDF_FOV_DEG,
    jitter: Sequence[float] = ANCHOR_JITTER,
    seed: int = 0,
    near: float = 0.01,
    far: float = 1000.0,
) -> Camera:
    """The authors' anchor cameras around each centre, seeded.

    Per centre: azimuths ``-180, -180 + a, ..., < 180`` (a = ``azimuth_bin_deg``) for each
    elevation band ``[-90 + k e, -90 + (k + 1) e)`` (e = ``elevation_bin_deg``), one elevation
    drawn uniformly in the band per camera; each camera sits at the centre plus a uniform
    jitter in ``[-jitter, jitter]`` per axis and looks along its (azimuth, elevation)
    direction, +Z up. Order: centre, then band, then azimuth.

    Args:
        camera_centres: [N, 3] world positions (the input cameras' centres).
        image_size: (width, height) in pixels; fov_deg: vertical field of view.
        seed: seeds the elevations and jitter (torch CPU generator).

    Returns:
        N x (360 / a) x (180 / e) :class:`Camera` s (float32, CPU).
    """
    c = torch.as_tensor(np.asarray(camera_centres, dtype=np.float64))
    if c.dim() != 2 or c.shape[-1] != 3 or c.shape[0] == 0 or not bool(torch.isfinite(c).all()):
        raise InputError(f"camera centres have shape {list(c.shape)} or non-finite values",
                         "pass finite [N, 3] camera centres, N >= 1")
    if not (0 < azimuth_bin_deg <= 360 and 0 < elevation_bin_deg <= 180):
        raise ConfigError(f"anchor bins {azimuth_bin_deg}/{elevation_bin_deg} deg are out of range",
                          "use an azimuth bin in (0, 360] and an elevation bin in (0, 180]")
    gen = torch.Generator().manual_seed(int(seed))
    az = torch.arange(-180.0, 180.0, float(azimuth_bin_deg), dtype=torch.float64)
    bands = int(180 // elevation_bin_deg)
    n_az, n_per = az.numel(), az.numel() * bands
    az = az.repeat(bands)  # [n_per]
    band_lo = (torch.arange(bands, dtype=torch.float64) * elevation_bin_deg - 90.0).repeat_interleave(n_az)
    n = c.shape[0]
    el = band_lo[None] + torch.rand(n, n_per, generator=gen, dtype=torch.float64) * elevation_bin_deg
    j = torch.as_tensor(jitter, dtype=torch.float64).reshape(3)
    eye = c[:, None] + (torch.rand(n, n_per, 3, generator=gen, dtype=torch.float64) * 2.0 - 1.0) * j
    a, e = torch.deg2rad(az)[None].expand(n, -1), torch.deg2rad(el)
    fwd = torch.stack([e.cos() * a.cos(), e.cos() * a.sin(), e.sin()], -1)
    eye, fwd = eye.reshape(-1, 3), fwd.reshape(-1, 3)
    w2c = look_at(eye, eye + fwd)
    width, height = int(image_size[0]), int(image_size[1])
    K = intrinsics_from_fov(float(fov_deg), width, height, dtype=torch.float64)
    return Camera(K, w2c, width, height, near=near, far=far).to(dtype=torch.float32)


def tsdf_filter(
    mesh: Mesh,
    camera_centres: Tensor | np.ndarray,
    *,
    voxel: float = TSDF_VOXEL,
    trunc: float = TSDF_SDF_TRUNC,
    azimuth_bin_deg: int = ANCHOR_AZIMUTH_BIN_DEG,
    elevation_bin_deg: int = ANCHOR_ELEVATION_BIN_DEG,
    image_size: int | tuple[int, int] = TSDF_IMAGE_SIZE,
    fov_deg: float = TSDF_FOV_DEG,
    seed: int = 0,
    jitter: Sequence[float] = ANCHOR_JITTER,
    depth_trunc: float = TSDF_DEPTH_TRUNC,
    views_per_batch: int = 8,
    device: torch.device | str = "cpu",
) -> Mesh:
    """Keep only the background surfaces seen from the cameras: re-fuse the mesh's own depth.

    Renders the mesh's camera-z depth with :func:`~layerforge.renderers.mesh.rasterize` from
    :func:`anchor_cameras` at ``camera_centres``, fuses the depth maps with open3d's
    ``VoxelBlockGrid`` (the authors' ``ScalableTSDFVolume`` is broken for float depth in open3d
    0.20: it locates the blocks to update at depth / 1000), extracts its triangle mesh and keeps the connected component of
    largest area. Surfaces no anchor sees (behind walls, outside the room) are never fused;
    floaters the anchors see become separate components and are dropped.

    Defaults are the authors', in their unit-sphere-normalised scene (voxel 0.01, truncation
    0.03, depth range 5, jitter 0.05/0.02): for a scene in metres scale ``voxel``, ``trunc``,
    ``jitter`` and ``depth_trunc`` by the scene radius.

    Args:
        mesh: the background mesh (world metres); vertex colours etc. are not used.
        camera_centres: [N, 3] input camera centres, same frame.
        voxel, trunc: TSDF voxel size and truncation distance.
        azimuth_bin_deg, elevation_bin_deg, image_size ((width, height), or one int: square), fov_deg (vertical),
            seed, jitter: the anchor cameras (:func:`anchor_cameras`).
        depth_trunc: depths beyond this are not fused.
        views_per_batch: anchor views rasterized together (memory bound).
        device: where to rasterize (``"cuda"`` uses the CUDA kernel).

    Returns:
        :class:`Mesh` (float32 vertices, int64 faces) wound counter-clockwise seen from the
        free space the cameras looked through (normals towards the cameras, our SDF
        convention: outward = towards positive SDF; for a room, into the room).

    Raises:
        InputError: the mesh has no faces, or the centres are not finite [N, 3].
        OutputError: nothing was fused (no anchor sees the mesh within ``depth_trunc``).
    """
    import open3d as o3d

    if len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise InputError("tsdf_filter got a mesh with no faces", "pass the extracted background mesh")
    if not (0.0 < voxel < trunc and depth_trunc > 0.0):
        raise ConfigError(f"tsdf_filter needs 0 < voxel < trunc and depth_trunc > 0, got voxel={voxel} "
                          f"trunc={trunc} depth_trunc={depth_trunc}", "pass a voxel smaller than the truncation")
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    cams = anchor_cameras(camera_centres, azimuth_bin_deg=azimuth_bin_deg, elevation_bin_deg=elevation_bin_deg,
                          image_size=image_size, fov_deg=fov_deg, jitter=jitter, seed=seed)
    verts = torch.as_tensor(mesh.vertices, dtype=torch.float32, device=device)
    faces = torch.as_tensor(mesh.faces, dtype=torch.int64, device=device)
    width, height = cams.width, cams.height
    # open3d's legacy ScalableTSDFVolume (the authors') finds the blocks to update from the
    # depth divided by 1000 once more in open3d 0.20 for float depth, and fuses nothing; its
    # replacement VoxelBlockGrid runs the same sparse-block TSDF (and needs a colour channel).
    o3c = o3d.core
    cpu = o3c.Device("CPU:0")
    grid = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"), attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
        attr_channels=((1), (1), (3)), voxel_size=float(voxel), block_resolution=TSDF_BLOCK_RESOLUTION,
        block_count=TSDF_BLOCK_COUNT, device=cpu)
    colour = o3d.t.geometry.Image(o3c.Tensor(np.zeros((height, width, 3), np.float32)))
    K = cams.K[0].double().numpy().copy()
    K[:2, 2] -= 0.5  # open3d's pixel (u, v) has its centre at integer u; ours at u + 0.5
    K_o3d = o3c.Tensor(K, dtype=o3c.float64)
    multiplier = float(trunc) / float(voxel)
    fused = 0
    with torch.no_grad():
        for s in range(0, len(cams), views_per_batch):
            batch = cams[s:s + views_per_batch]
            depth = rasterize(verts, faces, batch.to(device=device)).depth.float().cpu().numpy()
            for b in range(depth.shape[0]):
                d = np.ascontiguousarray(depth[b])
                if not ((d > 0) & (d < depth_trunc)).any():
                    continue
                depth_o3d = o3d.t.geometry.Image(o3c.Tensor(d))
                extrinsic = o3c.Tensor(batch.world_to_camera[b].double().numpy(), dtype=o3c.float64)
                blocks = grid.compute_unique_block_coordinates(depth_o3d, K_o3d, extrinsic, 1.0, float(depth_trunc),
                                                               multiplier)
                grid.integrate(blocks, depth_o3d, colour, K_o3d, K_o3d, extrinsic, 1.0, float(depth_trunc), multiplier)
                fused += 1
    out = grid.extract_triangle_mesh(weight_threshold=TSDF_MIN_WEIGHT).to_legacy() if fused else None
    if out is None or len(out.triangles) == 0:
        raise OutputError(f"TSDF fusion kept no surface ({fused} of {len(cams)} anchor views saw the mesh)",
                          "place the camera centres inside the scene or raise depth_trunc / voxel to the scene's scale")
    v = np.asarray(out.vertices, dtype=np.float64)
    f = np.asarray(out.triangles, dtype=np.int64)
    v, f = _weld(v, f, 1e-6 * voxel)
    v, f = _largest_component(v, f)  # open3d winds towards positive TSDF (the free space), as we do
    v, f = _canonical_order(np.asarray(v, np.float32), np.asarray(f, np.int64))
    return Mesh(v, np.ascontiguousarray(f, dtype=np.int64))


def _canonical_order(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices sorted by position, each face rotated to start at its smallest index (winding
    kept), faces sorted: open3d's parallel extraction emits the same triangles in an order that
    varies between processes, and everything downstream (UVs, rasterizer ties) follows the order."""
    order = np.lexsort((v[:, 2], v[:, 1], v[:, 0]))
    remap = np.empty(len(v), np.int64)
    remap[order] = np.arange(len(v))
    f = remap[f]
    shift = np.argmin(f, axis=1)
    f = np.stack([f[np.arange(len(f)), (shift + i) % 3] for i in range(3)], axis=1)
    f = f[np.lexsort((f[:, 2], f[:, 1], f[:, 0]))]
    return v[order], f


def _weld(v: np.ndarray, f: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices closer than ``tol`` (duplicates across TSDF blocks) and drop degenerate faces."""
    key = np.round(v / tol).astype(np.int64)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    f = inverse.reshape(-1)[f]
    good = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    return v[first], f[good]
