"""Shared test set-up: CPU-only by default, no downloads, GPU tests skipped without CUDA."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ---- gala: the synthetic clothed scan (layerforge.models.gala.synthetic_scan), made once per session
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
