"""The frame a run's deliverables are written in, relative to the user's world.

Optimisation runs in a normalised frame (objects scaled to the unit sphere, a panorama's
camera at the origin). A :class:`SceneFrame` is the similarity (uniform scale, rotation,
translation) that maps that frame's coordinates to the user's world; every pipeline uses
it on export and states it in ``export/scene_frame.json`` as ``{"to_world": 4x4 row-major}``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from layerforge.assets.atomic import atomic_write_json
from layerforge.errors import InputError

SCENE_FRAME_FILE = "scene_frame.json"


@dataclass
class SceneFrame:
    """A similarity ``to_world`` [4, 4] (row-major, acting on column vectors [x, y, z, 1])."""

    to_world: np.ndarray = field(default_factory=lambda: np.eye(4))

    def __post_init__(self) -> None:
        m = np.asarray(self.to_world, np.float64)
        if m.shape != (4, 4) or not np.isfinite(m).all() or not np.allclose(m[3], [0, 0, 0, 1]):
            raise InputError(f"scene frame must be a finite 4x4 affine matrix, got {m.tolist()}", "check scene_frame.json")
        r = m[:3, :3]
        s = np.cbrt(abs(np.linalg.det(r)))
        if s <= 0 or not np.allclose(r.T @ r, s * s * np.eye(3), atol=1e-6 * max(s * s, 1.0)):
            raise InputError("scene frame is not a similarity (uniform scale, rotation, translation)", "check scene_frame.json")
        self.to_world = m

    @classmethod
    def normalising(cls, lo: np.ndarray, hi: np.ndarray, radius: float = 1.0) -> SceneFrame:
        """The frame in which the box [lo, hi] (world, metres) is centred and fits a sphere of ``radius``."""
        lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        half_diag = float(np.linalg.norm(hi - lo)) / 2
        if not half_diag > 0:
            raise InputError("cannot normalise an empty or flat bounding box", "check the input geometry")
        m = np.eye(4)
        m[:3, :3] *= half_diag / radius
        m[:3, 3] = (lo + hi) / 2
        return cls(m)

    @property
    def scale(self) -> float:
        """World metres per unit of the frame."""
        return float(np.cbrt(abs(np.linalg.det(self.to_world[:3, :3]))))

    def inverse(self) -> SceneFrame:
        return SceneFrame(np.linalg.inv(self.to_world))

    def apply(self, points: np.ndarray) -> np.ndarray:
        """[..., 3] frame coordinates -> world coordinates (same dtype)."""
        p = np.asarray(points)
        out = p.astype(np.float64) @ self.to_world[:3, :3].T + self.to_world[:3, 3]
        return out.astype(p.dtype if np.issubdtype(p.dtype, np.floating) else np.float64)

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_json(path, {"to_world": self.to_world.tolist()})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SceneFrame:
        try:
            data = json.loads(Path(path).read_text())
            return cls(np.asarray(data["to_world"], np.float64))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(f"{path}: not a scene frame ({err})", 'write {"to_world": [[...4 rows of 4...]]}') from None
