"""Scene preparation: normalisation frame, object boxes from depth, UDC-NeRF's mask morphology."""

from __future__ import annotations

import numpy as np
import torch

from layerforge.models.guidance.inpaint import Inpainter
from layerforge.models.scene_prep import normalising_frame, object_bounds, object_masks, pseudo_backgrounds, scaled_kernel
from layerforge.renderers.camera_set import CameraSet
from layerforge.renderers.cameras import orbit_cameras
from layerforge.renderers.mesh import rasterize

W, H = 32, 24


def _box_views():
    """A 0.4 m cube centred at (1, 2, 0.5) seen by 6 orbit cameras, with its depth and id 1."""
    import trimesh

    box = trimesh.creation.box(extents=(0.4, 0.4, 0.4))
    box.apply_translation((1.0, 2.0, 0.5))
    v, f = torch.tensor(box.vertices, dtype=torch.float32), torch.tensor(box.faces)
    cams = orbit_cameras(torch.full((6,), 30.0), torch.arange(6) * 60.0, 2.0, 50.0, W, H, target=(1.0, 2.0, 0.5))
    frags = rasterize(v, f, cams)
    ids = (frags.face_id >= 0).long()
    return CameraSet(cams, torch.rand(6, H, W, 3), ids, frags.depth[..., None]), box


def test_frame_puts_cameras_and_surface_in_the_unit_sphere_and_object_box_on_the_cube():
    views, box = _box_views()
    frame = normalising_frame(views)
    centres = torch.linalg.inv(views.cameras.world_to_camera.double())[:, :3, 3].numpy()
    local = frame.inverse().apply(centres)
    assert np.linalg.norm(local, axis=1).max() <= 1.0 + 1e-9
    (lo, hi), = object_bounds(views, [1], frame, pad=0.0).values()
    world_lo, world_hi = frame.apply(lo), frame.apply(hi)
    # the visible faces' points span the cube (the views see every side except the bottom)
    np.testing.assert_allclose(world_lo[:2], box.bounds[0][:2], atol=0.02)
    np.testing.assert_allclose(world_hi, box.bounds[1], atol=0.02)


def test_masks_are_eroded_3_then_dilated_23_pixels():
    ids = torch.zeros(1, 40, 40, dtype=torch.long)
    ids[0, 15:25, 15:25] = 2
    ids[0, 2, 2] = 1  # a one-pixel speck of mask noise: erosion drops it before the dilation
    eroded, dilated = object_masks(ids)
    assert int(eroded.sum()) == 8 * 8 and int(dilated.sum()) == 30 * 30  # 3x3 takes 1 px, 23x23 adds 11 px a side
    assert not dilated[0, 2, 2]


def test_kernels_scale_with_the_image_width():
    assert scaled_kernel(23, 640) == 23 and scaled_kernel(3, 640) == 3
    assert scaled_kernel(23, 320) == 11 and scaled_kernel(23, 64) == 3  # 11.5 and 2.3 px: the nearest odd sizes
    assert scaled_kernel(3, 64) == 1  # 0.3 px: no erosion
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, 3:5, 3:5] = 1
    assert torch.equal(object_masks(mask, erode=1, dilate=1)[1], mask.bool())  # size 1 changes nothing


def test_pseudo_background_fills_objects_and_keeps_the_rest():
    views, _ = _box_views()
    views.images[:] = torch.tensor([0.2, 0.4, 0.6])
    views.images[views.masks == 1] = torch.tensor([1.0, 0.0, 0.0])
    bg = pseudo_backgrounds(views, Inpainter(), dilate=5)
    _, holes = object_masks(views.masks, dilate=5)
    assert torch.equal(bg[~holes], views.images[~holes])
    assert (bg[views.masks == 1] - torch.tensor([0.2, 0.4, 0.6])).abs().max() < 0.02  # red object painted out


def test_views_in_frame_project_frame_points_where_the_world_points_project():
    from layerforge.models.scene_prep import views_in_frame
    from layerforge.renderers.cameras import project

    views, box = _box_views()
    frame = normalising_frame(views)
    local = views_in_frame(views, frame)
    world = torch.tensor(box.vertices, dtype=torch.float64)
    x = torch.as_tensor(frame.inverse().apply(box.vertices), dtype=torch.float64)
    pix_w, z_w = project(views.cameras.to(dtype=torch.float64), world)
    pix_l, z_l = project(local.cameras.to(dtype=torch.float64), x)
    torch.testing.assert_close(pix_l, pix_w, atol=1e-3, rtol=0)  # pixels (cameras are float32)
    torch.testing.assert_close(z_l * frame.scale, z_w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(local.depths * frame.scale, views.depths)
