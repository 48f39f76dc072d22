"""A short single-shape BSP-Net fit (auto-decoder, phase 0 then phase 1) reaches a low CD."""

from __future__ import annotations

import pytest
import torch
import trimesh

from layerforge.errors import NonFiniteError

from layerforge.models import metrics
from layerforge.models.bsp import data, extract, network, training


def _l_shape() -> trimesh.Trimesh:
    a = trimesh.creation.box(extents=(1.0, 0.4, 0.4))
    a.apply_translation((0, -0.3, 0))
    b = trimesh.creation.box(extents=(0.4, 1.0, 0.4))
    b.apply_translation((-0.3, 0, 0))
    return trimesh.util.concatenate([a, b])  # two overlapping boxes: a soup, fine for GWN


def test_fit_l_shape_reaches_low_chamfer() -> None:
    torch.manual_seed(0)
    mesh = _l_shape()
    shape = data.prepare_shape(mesh.vertices, mesh.faces, seed=0)
    model = network.BSPNet(network.BSPConfig(p=64, c=8, z_dim=32, dec_dims=(64, 128), n_shapes=1))
    opt = training.make_optimizer(model, {"lr": 3e-4})
    gen = torch.Generator().manual_seed(0)
    for phase, res, steps in [(0, 16, 500), (0, 32, 500), (0, 64, 500), (1, 64, 900)]:
        stack = training.stack_prepared([shape], res)
        for _ in range(steps):
            losses = training.train_step(model, opt, training.fit_points(stack, 2048, gen), phase)
    assert set(losses) == {"recon", "total"}
    planes, T = training.shape_planes(model, shape_idx=0)
    parts = extract.extract_convexes(planes, T)
    assert 2 <= len(parts) <= 8
    for part in parts:
        assert trimesh.Trimesh(part.vertices, part.faces, process=False).is_watertight
    v = data.normalise_mesh(mesh.vertices, mesh.faces)[0]
    gt, gn = data.surface_samples(v, mesh.faces, 8192, seed=1)
    gt = gt[data.winding_number(gt + 1e-3 * gn, v, mesh.faces) < 0.5][:4096]  # drop the hidden overlap
    pred, _ = extract.union_surface_samples(parts, 4096, seed=2)
    cd = metrics.chamfer_distance(gt, pred)
    # measured 6.8e-4 (CPU, this seed); an untrained or broken fit gives > 1e-2
    assert cd < 1.5e-3, cd


def test_train_step_encoder_mode_and_nonfinite() -> None:
    torch.manual_seed(0)
    model = network.BSPNet(network.BSPConfig(ef_dim=4, p=16, c=4, z_dim=32, dec_dims=(32,)))
    opt = training.make_optimizer(model, {"lr": 1e-3, "lr_tw": 1e-4})
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-4]
    data_ = {
        "points": torch.rand(2, 100, 3) - 0.5,
        "values": (torch.rand(2, 100) > 0.5).float(),
        "voxels": torch.rand(2, 1, 64, 64, 64),
    }
    batch = training.fit_points(data_, 50, torch.Generator().manual_seed(0), with_voxels=True)
    assert batch["points"].shape == (2, 50, 3) and batch["voxels"].shape == (2, 1, 64, 64, 64)
    before = model.decoder.linears[0].weight.detach().clone()
    out = training.train_step(model, opt, batch, phase=4)
    assert set(out) == {"recon", "T", "overlap", "total"}
    assert not torch.equal(before, model.decoder.linears[0].weight)
    batch["points"][0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        training.train_step(model, opt, batch, phase=0)
