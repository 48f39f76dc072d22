"""BSP-Net phase losses against values computed by hand on tiny inputs."""

from __future__ import annotations

import pytest
import torch

from layerforge.models.bsp.losses import phase_loss

# B=1, N=2 points, c=2 convexes, p=2 planes
V = torch.tensor([[1.0, 0.0]])  # first point inside, second outside
T = torch.tensor([[0.5, 1.5], [-0.2, 0.005]])
W = torch.tensor([[0.8], [1.0]])


def test_phase0_terms() -> None:
    h3 = torch.tensor([[[0.6], [0.1]]])
    h2 = torch.zeros(1, 2, 2)
    t = phase_loss(0, h2, h3, V, T, W)
    # recon = ((1-0.6)^2 + (0-0.1)^2) / 2 = (0.16 + 0.01) / 2
    assert t["recon"].item() == pytest.approx(0.085)
    assert t["W"].item() == pytest.approx(0.2)  # |0.8-1| + |1-1|
    # T: max(T-1,0) = 0.5 (from 1.5); -min(T,0) = 0.2 (from -0.2)
    assert t["T"].item() == pytest.approx(0.7)
    assert t["total"].item() == pytest.approx(0.985)


def test_phase1_hard_recon() -> None:
    # inside point h3 = 0.3 -> cost 0.3; outside point h3 = 0.4 -> cost 1 - 0.4 = 0.6
    h3 = torch.tensor([[[0.3], [0.4]]])
    t = phase_loss(1, torch.zeros(1, 2, 2), h3, V, T, W)
    assert t["recon"].item() == pytest.approx(0.45)
    assert set(t) == {"recon", "total"}
    # clamps: inside h3 < 0 costs nothing, outside h3 > 1 costs nothing
    t = phase_loss(1, torch.zeros(1, 2, 2), torch.tensor([[[-2.0], [3.0]]]), V, T, W)
    assert t["recon"].item() == pytest.approx(0.0)


def test_phase2_overlap() -> None:
    # point 0 (inside) lies in both convexes (h2 < 0.01): mask on both; point 1 is outside
    h2 = torch.tensor([[[0.005, 0.002], [0.0, 0.5]]])
    h3 = torch.tensor([[[0.002], [0.0]]])
    t = phase_loss(2, h2, h3, V, T, W)
    # overlap = -(0.005 + 0.002) * 1 / (1*2*2)
    assert t["overlap"].item() == pytest.approx(-0.007 / 4)
    # recon: 0.002 (inside) + 1 (outside at 0) over 2
    assert t["recon"].item() == pytest.approx(0.501)
    assert t["total"].item() == pytest.approx(0.501 - 0.00175)


def test_phase3_phase4_binary_T() -> None:
    h2 = torch.tensor([[[0.005, 0.002], [0.0, 0.5]]])
    h3 = torch.tensor([[[0.002], [0.0]]])
    t3 = phase_loss(3, h2, h3, V, T, W)
    # T < 0.01: |-0.2| + |0.005| ; T >= 0.01: |0.5-1| + |1.5-1|
    assert t3["T"].item() == pytest.approx(0.205 + 1.0)
    assert "overlap" not in t3
    t4 = phase_loss(4, h2, h3, V, T, W)
    assert t4["total"].item() == pytest.approx(0.501 + 1.205 - 0.00175)


def test_bad_phase() -> None:
    with pytest.raises(ValueError):
        phase_loss(5, torch.zeros(1, 2, 2), torch.zeros(1, 2, 1), V, T, W)
