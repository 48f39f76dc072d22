"""The synthetic clothed scan, made once per test session (layerforge.models.gala.synthetic_scan)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SCAN_RESOLUTION = 48  # the synthetic body's marching-cubes resolution (builtin:clothed_scan's)
SCAN_VOXEL = 0.015


@pytest.fixture(scope="session")
def clothed_scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from layerforge.models.gala.synthetic_scan import cached_clothed_scan

    return cached_clothed_scan(tmp_path_factory.mktemp("gala_scan"), resolution=SCAN_RESOLUTION, voxel=SCAN_VOXEL)


@pytest.fixture(scope="session")
def scan_truth(clothed_scan: Path) -> dict[str, np.ndarray]:
    return dict(np.load(clothed_scan / "truth.npz"))


@pytest.fixture(scope="session")
def body_model(clothed_scan: Path):
    from layerforge.models.body import load_smplx

    return load_smplx(clothed_scan / "body_model.npz")
