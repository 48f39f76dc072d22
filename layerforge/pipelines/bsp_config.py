"""Typed configs of the bsp pipeline's stages (values and sources in configs/pipeline/bsp*.yaml).

Each dataclass mirrors one config section; ``__post_init__`` checks ranges so that a bad
value is one line before any stage runs.
"""

from __future__ import annotations

import dataclasses

from layerforge.pipelines.schema import at_least, one_of, positive, require

RESOLUTIONS = (16, 32, 64)  # BSP-Net's point-sampling resolutions (IM-NET sampling)
PHASES = (0, 1, 2, 3, 4)  # BSP-Net's training phases (METHODS.md)
KDOP_DIRECTIONS = (3, 9, 13)  # k-DOP direction sets: 6, 18 or 26 planes per convex
FORMATS = ("glb", "obj", "usd", "blend")
COLLISION_NAMING = ("none", "ue", "godot")  # Unreal UCX_<name>_NN; Godot <name>_NN-convcolonly


@dataclasses.dataclass
class PrepareConfig:
    point_counts: dict[int, int] = dataclasses.field(default_factory=lambda: {16: 4096, 32: 4096, 64: 16384})

    def __post_init__(self) -> None:
        for res, n in self.point_counts.items():
            one_of("prepare.point_counts key", res, RESOLUTIONS)
            at_least(f"prepare.point_counts.{res}", n, 1)


@dataclasses.dataclass
class ModelConfig:
    ef_dim: int = 32
    z_dim: int = 256
    dec_dims: list[int] = dataclasses.field(default_factory=lambda: [512, 1024, 2048])
    p: int | None = None
    c: int = 128

    def __post_init__(self) -> None:
        at_least("model.ef_dim", self.ef_dim, 1)
        at_least("model.z_dim", self.z_dim, 1)
        require(len(self.dec_dims) >= 1 and all(d >= 1 for d in self.dec_dims), "model.dec_dims", self.dec_dims,
                "a list of widths >= 1")
        if self.p is not None:
            at_least("model.p", self.p, 1)
        at_least("model.c", self.c, 1)


@dataclasses.dataclass
class PhaseStep:
    phase: int = 0
    resolution: int = 64
    steps: int = 100


def _check_optimiser(section: str, lr: float, beta1: float, points: int, every: int, schedule: list[PhaseStep]) -> None:
    positive(f"{section}.lr", lr)
    require(0.0 <= beta1 < 1.0, f"{section}.beta1", beta1, "a number in [0, 1)")
    at_least(f"{section}.points_per_step", points, 1)
    at_least(f"{section}.checkpoint_every", every, 1)
    require(len(schedule) >= 1, f"{section}.schedule", schedule, "at least one {phase, resolution, steps} entry")
    for i, entry in enumerate(schedule):
        one_of(f"{section}.schedule[{i}].phase", entry.phase, PHASES)
        one_of(f"{section}.schedule[{i}].resolution", entry.resolution, RESOLUTIONS)
        at_least(f"{section}.schedule[{i}].steps", entry.steps, 1)


@dataclasses.dataclass
class FitConfig:
    init: str = "kdop"
    kdop_directions: int = 13
    kdop_h1_per_voxel: float = 4.0
    planes_only: bool = True
    lr: float = 0.005
    lr_tw: float | None = None
    beta1: float = 0.5
    points_per_step: int = 4096
    checkpoint_every: int = 100
    schedule: list[PhaseStep] = dataclasses.field(default_factory=lambda: [PhaseStep()])

    def __post_init__(self) -> None:
        one_of("fit.init", self.init, ("kdop", "random"))
        one_of("fit.kdop_directions", self.kdop_directions, KDOP_DIRECTIONS)
        positive("fit.kdop_h1_per_voxel", self.kdop_h1_per_voxel)
        if self.lr_tw is not None:
            positive("fit.lr_tw", self.lr_tw)
        _check_optimiser("fit", self.lr, self.beta1, self.points_per_step, self.checkpoint_every, self.schedule)


@dataclasses.dataclass
class TrainConfig:
    lr: float = 0.0001
    lr_tw: float | None = None
    beta1: float = 0.5
    shapes_per_batch: int = 24
    points_per_step: int = 4096
    checkpoint_every: int = 200
    schedule: list[PhaseStep] = dataclasses.field(default_factory=lambda: [PhaseStep()])

    def __post_init__(self) -> None:
        if self.lr_tw is not None:
            positive("train.lr_tw", self.lr_tw)
        at_least("train.shapes_per_batch", self.shapes_per_batch, 1)
        _check_optimiser("train", self.lr, self.beta1, self.points_per_step, self.checkpoint_every, self.schedule)


@dataclasses.dataclass
class InferConfig:
    checkpoint: str | None = None


@dataclasses.dataclass
class ExtractConfig:
    grid_resolution: int = 64
    drop_inner: bool = True

    def __post_init__(self) -> None:
        at_least("extract.grid_resolution", self.grid_resolution, 2)


@dataclasses.dataclass
class EvaluateConfig:
    samples: int = 4096
    edge_samples: int = 16384

    def __post_init__(self) -> None:
        at_least("evaluate.samples", self.samples, 1)
        at_least("evaluate.edge_samples", self.edge_samples, 1)


@dataclasses.dataclass
class ExportConfig:
    formats: list[str] = dataclasses.field(default_factory=lambda: list(FORMATS))
    preview_size: int = 256
    collision_naming: str = "none"

    def __post_init__(self) -> None:
        for f in self.formats:
            one_of("export.formats entry", f, FORMATS)
        at_least("export.preview_size", self.preview_size, 16)
        one_of("export.collision_naming", self.collision_naming, COLLISION_NAMING)
