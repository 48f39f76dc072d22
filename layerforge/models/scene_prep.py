"""Preparing posed views of a scene for per-object optimisation (UDC-NeRF, DP-Recon).

- :func:`normalising_frame`: the similarity from the optimisation frame (scene inside the unit
  sphere) to the user's world, from the camera centres and, when depth is known, the observed
  surface points.
- :func:`object_bounds`: each object's box in the optimisation frame, from its masked pixels'
  depths (a padded box round the back-projected points), or without depth from its visual
  hull (:func:`visual_hull_points`, the masks alone).
- :func:`object_masks`: per-view masks eroded and dilated as UDC-NeRF does before inpainting
  (its README: eroded with a 3x3 kernel, dilated with a 23x23 kernel).
- :func:`pseudo_backgrounds`: every view with its objects inpainted away (UDC-NeRF's
  "inpainted background images", the target of the background component inside object masks).
- :func:`prepare_scene`: all of the above for a train / test split (:class:`PreparedScene`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from layerforge.assets.frame import SceneFrame
from layerforge.renderers.camera_set import CameraSet
from layerforge.renderers.cameras import generate_rays

ERODE_PX = 3  # UDC-NeRF: masks eroded with a 3x3 kernel ...
DILATE_PX = 23  # ... and dilated with a 23x23 kernel before inpainting
KERNEL_REFERENCE_WIDTH = 640  # ... on ToyDesk / ScanNet frames 640 px wide
BOUNDS_PAD = 0.25  # object boxes grow by this fraction of their size on every side (ours): depth sees
# no underside, so a box of the observed points alone cuts off where an object meets the ground
SCENE_RADIUS = 1.0  # the scene fits this sphere in the optimisation frame
HULL_RESOLUTION = 64  # visual-hull grid samples per axis over the scene cube (without depth; ours)
HULL_MIN_VIEWS = 0.5  # ... a hull point must be inside at least this share of the views' images
HULL_OWN_SHARE = 0.5  # ... and on object k's pixels in this share of the views that see it on an object


def instance_ids(data) -> list[int]:
    """The object ids 1..K of a :func:`~layerforge.assets.nerfstudio_dataset.read_posed_views`
    result; one-line errors for masks without objects or ids with gaps."""
    from layerforge.errors import InputError

    if not data.instances:
        raise InputError(f"{data.path}: the masks name no object (every pixel is 0)", "give instance ids 1..K")
    ids = sorted(data.instances)
    if ids != list(range(1, len(ids) + 1)):
        raise InputError(f"{data.path}: instance ids must be 1..K without gaps, got {ids}", "renumber the masks")
    return ids


def surface_points(views: CameraSet, ids: int | None = None) -> Tensor:
    """[P, 3] world points of the views' depth maps (all pixels with depth, or those of instance ``ids``)."""
    if views.depths is None:
        return torch.zeros(0, 3)
    origins, directions = generate_rays(views.cameras, normalize=False)  # direction z = 1: depth scales it
    depth = views.depths[..., 0]
    keep = depth > 0
    if ids is not None and views.masks is not None:
        keep &= views.masks == ids
    return (origins + depth[..., None] * directions)[keep]


def normalising_frame(views: CameraSet, radius: float = SCENE_RADIUS) -> SceneFrame:
    """The frame in which the cameras and the observed surface fit a sphere of ``radius``.

    Centre: the middle of the surface points' box (the camera centres' box without depth);
    scale: the farthest camera or surface point from it.
    """
    centres = torch.linalg.inv(views.cameras.world_to_camera.double())[:, :3, 3]
    pts = surface_points(views).double()
    core = pts if len(pts) else centres
    centre = (core.min(0).values + core.max(0).values) / 2
    reach = float(torch.cat([centres, pts]).sub(centre).norm(dim=-1).max())
    to_world = np.eye(4)
    to_world[:3, :3] *= reach / radius
    to_world[:3, 3] = centre.numpy()
    return SceneFrame(to_world)


def visual_hull_points(views: CameraSet, k: int, frame: SceneFrame, resolution: int = HULL_RESOLUTION,
                       radius: float = SCENE_RADIUS) -> np.ndarray:
    """[P, 3] optimisation-frame grid points in object ``k``'s visual hull, from the masks alone.

    A point of the scene cube is kept when at least :data:`HULL_MIN_VIEWS` of the views see it
    (in front of the camera, inside the image), none of those sees the background (id 0)
    there, and at least :data:`HULL_OWN_SHARE` of them see object ``k``: another object's
    pixel may hide it in some views (occlusion), the background in none. Points of another
    object's hull, or between objects, are seen on ``k`` in few views and dropped.
    """
    if views.masks is None:
        return np.zeros((0, 3))
    g = torch.linspace(-radius, radius, resolution, dtype=torch.float64)
    local = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    world = torch.from_numpy(frame.apply(local.numpy())).float()
    cams = views.cameras
    keep = torch.ones(len(world), dtype=torch.bool)
    on_k = torch.zeros(len(world), dtype=torch.long)
    in_views = torch.zeros(len(world), dtype=torch.long)
    for i in range(len(cams)):
        w2c = cams.world_to_camera[i].float()
        p = world @ w2c[:3, :3].T + w2c[:3, 3]
        kk = cams.K[i].float()
        z = p[:, 2].clamp_min(1e-9)
        u = torch.floor(kk[0, 0] * p[:, 0] / z + kk[0, 2]).long()  # pixel i spans [i, i + 1)
        v = torch.floor(kk[1, 1] * p[:, 1] / z + kk[1, 2]).long()
        inside = (p[:, 2] > 0) & (u >= 0) & (u < cams.width) & (v >= 0) & (v < cams.height)
        ids = torch.full((len(world),), -1, dtype=torch.long)
        ids[inside] = views.masks[i].long()[v[inside], u[inside]]
        keep &= ids != 0
        on_k += (ids == k).long()
        in_views += inside.long()
    keep &= (in_views >= HULL_MIN_VIEWS * len(cams)) & (on_k >= HULL_OWN_SHARE * in_views) & (on_k > 0)
    return local[keep].numpy()


def object_bounds(views: CameraSet, objects: list[int], frame: SceneFrame, pad: float = BOUNDS_PAD,
                  radius: float = SCENE_RADIUS) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per object id, its (lo [3], hi [3]) box in the optimisation frame: round its masked pixels'
    depths (back-projected), or without depth round its visual hull from the masks; the scene
    cube when neither finds a point."""
    out = {}
    to_local = frame.inverse()
    for k in objects:
        pts = surface_points(views, k)
        local = to_local.apply(pts.double().numpy()) if len(pts) else visual_hull_points(views, k, frame, radius=radius)
        if len(local) == 0:
            out[k] = (np.full(3, -radius), np.full(3, radius))
            continue
        lo, hi = local.min(0), local.max(0)
        grow = pad * (hi - lo).max()
        out[k] = (np.maximum(lo - grow, -radius), np.minimum(hi + grow, radius))
    return out


def scaled_kernel(size: int, width: int, reference_width: int = KERNEL_REFERENCE_WIDTH) -> int:
    """The odd kernel size that covers the same share of a ``width``-px image as ``size`` px of a
    ``reference_width``-px one (at least 1, which is no change).

    UDC-NeRF's 23x23 dilation is 3.6 % of a 640-px frame; kept at 23 px, it would inpaint
    most of a 64x48 image and leave the background component no real target.
    """
    scaled = size * width / reference_width
    return max(1, 2 * round((scaled - 1) / 2) + 1)


def _morph(masks: np.ndarray, size: int, op: str) -> np.ndarray:
    import cv2

    if size <= 1:
        return masks.astype(bool)

    kernel = np.ones((size, size), np.uint8)
    fn = cv2.erode if op == "erode" else cv2.dilate
    return np.stack([fn(m.astype(np.uint8), kernel).astype(bool) for m in masks])


def object_masks(ids: Tensor, erode: int = ERODE_PX, dilate: int = DILATE_PX) -> tuple[Tensor, Tensor]:
    """(eroded, dilated) [N, H, W] bool masks of "any object" from instance ids [N, H, W] (k >= 1).

    The dilated mask grows the eroded one (erosion first drops specks of mask noise, as
    UDC-NeRF's preprocessing does before dilating the inpainting holes).
    """
    eroded = _morph((ids >= 1).cpu().numpy(), erode, "erode")
    return torch.from_numpy(eroded), torch.from_numpy(_morph(eroded, dilate, "dilate"))


def pseudo_backgrounds(views: CameraSet, inpainter, erode: int = ERODE_PX, dilate: int = DILATE_PX) -> Tensor:
    """[N, H, W, 3] linear images with every object region (eroded ``erode`` px, then dilated
    ``dilate`` px) inpainted."""
    if views.masks is None:
        return views.images.clone()
    _, holes = object_masks(views.masks, erode=erode, dilate=dilate)
    return torch.stack([inpainter(img, hole) for img, hole in zip(views.images, holes)])


@dataclass
class PreparedScene:
    """Posed views made ready for per-object optimisation (see :func:`prepare_scene`).

    Attributes:
        frame: optimisation frame -> the user's world (a similarity).
        train, test: the views in the optimisation frame.
        pseudo_train, pseudo_test: [N, H, W, 3] linear images with the objects inpainted away.
        bounds: {object id: (lo [3], hi [3])} boxes in the optimisation frame.
    """

    frame: SceneFrame
    train: CameraSet
    test: CameraSet
    pseudo_train: Tensor
    pseudo_test: Tensor
    bounds: dict[int, tuple[np.ndarray, np.ndarray]]


def prepare_scene(train: CameraSet, test: CameraSet, objects: list[int], inpainter, erode: int = ERODE_PX,
                  dilate: int = DILATE_PX) -> PreparedScene:
    """World-frame train / test views -> the normalising frame, the views in it, pseudo-backgrounds
    (masks eroded ``erode`` then dilated ``dilate`` px) and the boxes of ``objects``."""
    frame = normalising_frame(train)
    train_f, test_f = views_in_frame(train, frame), views_in_frame(test, frame)
    return PreparedScene(frame, train_f, test_f, pseudo_backgrounds(train_f, inpainter, erode, dilate),
                         pseudo_backgrounds(test_f, inpainter, erode, dilate),
                         object_bounds(train, objects, frame))  # world views: the frame maps their points in


def views_in_frame(views: CameraSet, frame: SceneFrame) -> CameraSet:
    """The same views seen in the optimisation frame of ``frame`` (a similarity: scale s, translation c).

    A world point X = s x + c projects like x through the rigid camera [R, (R c + T) / s]
    (uniform scale cancels in the projection); camera-z depths shrink by 1/s.
    """
    from dataclasses import replace

    s = frame.scale
    c = torch.as_tensor(frame.to_world[:3, 3], dtype=views.cameras.world_to_camera.dtype)
    rot = frame.to_world[:3, :3] / s
    if not np.allclose(rot, np.eye(3)):
        raise ValueError("views_in_frame supports frames without rotation (scale and translation only)")
    w2c = views.cameras.world_to_camera.clone()
    w2c[:, :3, 3] = (w2c[:, :3, :3] @ c + w2c[:, :3, 3]) / s
    cams = replace(views.cameras, world_to_camera=w2c, near=views.cameras.near / s, far=views.cameras.far / s)
    depths = None if views.depths is None else views.depths / s
    return replace(views, cameras=cams, depths=depths)  # images, masks, names, camera-frame normals: unchanged
