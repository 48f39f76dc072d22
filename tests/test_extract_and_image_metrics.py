"""Marching-cubes extraction against analytic shapes; image metrics against scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layerforge.errors import OutputError
from layerforge.models.fields.extract import extract_level_set
from layerforge.models.image_metrics import mask_iou, mean_iou, psnr, ssim

CENTRE = torch.tensor([0.1, -0.2, 0.3])
RADIUS = 0.4


def _sphere_density(p: torch.Tensor) -> torch.Tensor:
    """A density that decreases with the distance from CENTRE and equals 10 on the sphere of RADIUS."""
    return 10.0 * torch.exp(-8.0 * ((p - CENTRE).norm(dim=-1) - RADIUS))


def test_density_level_set_is_the_analytic_sphere_with_outward_faces():
    mesh = extract_level_set(_sphere_density, [-0.5, -0.8, -0.3], [0.7, 0.4, 0.9], resolution=48, level=10.0,
                             color=lambda p: torch.ones(len(p), 3) * torch.tensor([0.9, 0.2, 0.1]))
    r = np.linalg.norm(mesh.vertices - CENTRE.numpy(), axis=1)
    voxel = 1.2 / 47
    assert np.abs(r - RADIUS).max() < 0.1 * voxel  # marching cubes interpolates the crossing
    tri = mesh.vertices[mesh.faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    outward = ((tri.mean(1) - CENTRE.numpy()) * normals).sum(1)
    assert (outward > 0).mean() > 0.999
    np.testing.assert_allclose(mesh.colors[:, :3], np.tile([0.9, 0.2, 0.1], (len(mesh.vertices), 1)), atol=1e-6)


def test_sdf_level_set_keeps_the_largest_component_only():
    def two_spheres(p):  # SDF of the union of a big and a small sphere
        big = (p - torch.tensor([0.0, 0.0, 0.0])).norm(dim=-1) - 0.4
        small = (p - torch.tensor([0.7, 0.0, 0.0])).norm(dim=-1) - 0.1
        return torch.minimum(big, small)

    every = extract_level_set(two_spheres, [-0.5] * 3, [0.9, 0.5, 0.5], resolution=40, level=0.0, inside="below", keep="all")
    largest = extract_level_set(two_spheres, [-0.5] * 3, [0.9, 0.5, 0.5], resolution=40, level=0.0, inside="below")
    assert every.vertices[:, 0].max() > 0.75 and largest.vertices[:, 0].max() < 0.45


def test_empty_level_set_is_a_one_line_error():
    with pytest.raises(OutputError, match="never crosses level 100"):
        extract_level_set(_sphere_density, [-1] * 3, [1] * 3, resolution=8, level=100.0)


def test_ssim_and_psnr_match_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    g = torch.Generator().manual_seed(0)
    a = torch.rand(40, 48, 3, generator=g)
    b = (a + 0.1 * torch.randn(40, 48, 3, generator=g)).clamp(0, 1)
    ref = structural_similarity(a.numpy(), b.numpy(), channel_axis=2, data_range=1.0, gaussian_weights=True,
                                sigma=1.5, use_sample_covariance=False)
    assert ssim(a, b) == pytest.approx(ref, abs=1e-5)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a.numpy(), b.numpy(), data_range=1.0), abs=1e-4)
    assert ssim(a, a) == pytest.approx(1.0) and psnr(a, a) == float("inf")


def test_miou_and_mask_iou_on_hand_counted_maps():
    gt = torch.tensor([[0, 0, 1, 1], [0, 2, 2, -1]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 1]])
    # class 0: inter 2 (of gt {00,01,10} and pred {00,10,12}) -> 2/4; class 1: 2/3; class 2: 1/2 (the -1 pixel ignored)
    assert mean_iou(pred, gt) == pytest.approx((2 / 4 + 2 / 3 + 1 / 2) / 3)
    assert mask_iou(pred == 1, gt == 1) == pytest.approx(2 / 4)  # the ignored pixel counts as predicted 1 here
