"""BSP-Net network: shapes, the CSG layers on hand-made planes, encoder and fit modes."""

from __future__ import annotations

import pytest
import torch

from layerforge.models.bsp.network import BSPConfig, BSPNet, csg_layers

# unit cube [-0.25, 0.25]^3 as 6 planes (inside where n.x + d <= 0), one convex
CUBE = torch.tensor(
    [[1, -1, 0, 0, 0, 0], [0, 0, 1, -1, 0, 0], [0, 0, 0, 0, 1, -1], [-0.25] * 6], dtype=torch.float32
)[None]  # [1, 4, 6]


def test_csg_layers_cube() -> None:
    pts = torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.35, 0.35, 0.0]]])
    T = torch.ones(6, 1)
    h1, h2, h3 = csg_layers(pts, CUBE, T, torch.ones(1, 1), phase=1)
    assert h1.shape == (1, 3, 6) and h2.shape == (1, 3, 1) and h3.shape == (1, 3, 1)
    assert h3[0, :, 0].tolist() == pytest.approx([0.0, 0.25, 0.2])  # 0 inside; summed excess outside
    _, h2_0, h3_0 = csg_layers(pts, CUBE, T, torch.ones(1, 1), phase=0)
    assert h3_0[0, :, 0].tolist() == pytest.approx([1.0, 0.75, 0.8])  # clamp(1 - h1 T)
    # phase 1 ignores connections below 0.01; phase 3 uses raw T
    T_small = torch.full((6, 1), 0.005)
    assert csg_layers(pts, CUBE, T_small, torch.ones(1, 1), phase=1)[2][0, 1, 0].item() == 0.0
    assert csg_layers(pts, CUBE, T_small, torch.ones(1, 1), phase=3)[2][0, 1, 0].item() == pytest.approx(0.00125)


def test_encoder_model_shapes_and_init() -> None:
    torch.manual_seed(0)
    net = BSPNet(BSPConfig(ef_dim=4, p=16, c=8, z_dim=32, dec_dims=(32, 32)))
    out = net(torch.rand(2, 10, 3) - 0.5, voxels=torch.rand(2, 1, 64, 64, 64), phase=0)
    assert out.z.shape == (2, 32) and out.planes.shape == (2, 4, 16)
    assert out.h2.shape == (2, 10, 8) and out.h3.shape == (2, 10, 1)
    assert ((out.z > 0) & (out.z < 1)).all()
    big = BSPNet(BSPConfig(ef_dim=4, p=512, c=256, z_dim=32, dec_dims=(32,)))
    assert big.T.std().item() == pytest.approx(0.02, rel=0.05)
    assert big.W.mean().abs().item() < 0.01


def test_auto_decoder_mode() -> None:
    net = BSPNet(BSPConfig(p=16, c=8, z_dim=8, dec_dims=(16,), n_shapes=3))
    assert net.encoder is None
    out = net(torch.zeros(2, 5, 3), shape_idx=torch.tensor([0, 2]), phase=2)
    assert out.h3.shape == (2, 5, 1)
    with pytest.raises(ValueError):
        net(torch.zeros(1, 5, 3), phase=0)
