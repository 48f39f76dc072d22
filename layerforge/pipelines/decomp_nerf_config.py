"""Typed configs of the decomp_nerf pipeline's stages (values and sources in configs/pipeline/decomp_nerf*.yaml)."""

from __future__ import annotations

import dataclasses
from typing import Any

from layerforge.pipelines.schema import at_least, one_of, positive, require


@dataclasses.dataclass
class PrepareConfig:
    min_train_views: int = 3
    erode_px: int = 3  # UDC-NeRF: object masks eroded 3x3 ...
    dilate_px: int = 23  # ... and dilated 23x23 before inpainting
    kernel_reference_width: int | None = 640  # ... on 640-px frames: kernels scale with the width; null: as given
    inpaint_model: str | None = None  # a diffusers inpainting model; null: OpenCV (Telea)

    def __post_init__(self) -> None:
        at_least("prepare.min_train_views", self.min_train_views, 1)
        at_least("prepare.erode_px", self.erode_px, 1)
        at_least("prepare.dilate_px", self.dilate_px, 1)
        if self.kernel_reference_width is not None:
            at_least("prepare.kernel_reference_width", self.kernel_reference_width, 1)

    def kernels(self, width: int) -> tuple[int, int]:
        """(erode, dilate) kernel sizes for images ``width`` px wide."""
        from layerforge.models.scene_prep import scaled_kernel

        if self.kernel_reference_width is None:
            return self.erode_px, self.dilate_px
        return (scaled_kernel(self.erode_px, width, self.kernel_reference_width),
                scaled_kernel(self.dilate_px, width, self.kernel_reference_width))


@dataclasses.dataclass
class ModelConfig:
    encoding: str = "hashgrid"
    xyz_frequencies: int = 10
    dir_frequencies: int = 4
    hashgrid: dict[str, int] = dataclasses.field(default_factory=lambda: {
        "num_levels": 8, "features_per_level": 2, "log2_hashmap_size": 15, "base_resolution": 8, "max_resolution": 128})
    width: int = 64
    depth: int = 2
    skips: list[int] = dataclasses.field(default_factory=list)
    code_dim: int = 16
    num_samples: int = 24
    num_importance: int = 24
    near: float = 0.02
    far: float = 2.0
    sigma_bias_init: float = 1.0  # raw-density bias at start (paper 0; the hash-grid variant starts dead without it)
    confine_to_boxes: bool = True  # each object's density only inside its box from prepare (ours; paper: false)

    def __post_init__(self) -> None:
        one_of("model.encoding", self.encoding, ("frequency", "hashgrid"))
        for key in ("width", "depth", "code_dim", "num_samples"):
            at_least(f"model.{key}", getattr(self, key), 1)
        at_least("model.num_importance", self.num_importance, 0)
        require(0 <= self.near < self.far, "model.near", self.near, "a number in [0, model.far)")

    def udc_config(self, objects: int, boxes: Any = None) -> Any:
        """The :class:`~layerforge.models.udc_nerf.UDCNeRFConfig` of this section for K = ``objects``;
        ``boxes`` (K ((lo), (hi)) boxes, optimisation frame) are used when ``confine_to_boxes``."""
        from layerforge.models.fields import HashGridConfig
        from layerforge.models.udc_nerf import UDCNeRFConfig

        return UDCNeRFConfig(objects=objects, object_boxes=boxes if self.confine_to_boxes else None,
                             encoding=self.encoding, xyz_frequencies=self.xyz_frequencies,
                             dir_frequencies=self.dir_frequencies, hashgrid=HashGridConfig(**self.hashgrid),
                             width=self.width, depth=self.depth, skips=tuple(self.skips), code_dim=self.code_dim,
                             num_samples=self.num_samples, num_importance=self.num_importance, near=self.near,
                             far=self.far, sigma_bias_init=self.sigma_bias_init)


@dataclasses.dataclass
class TrainConfig:
    steps: int = 800
    rays_per_step: int = 256
    lr: float = 0.01
    lr_exponent: float = 2.0  # UDC-NeRF: poly decay, exponent 2
    fg_fraction: float = 0.3  # UDC-NeRF: 0.7 background / 0.3 object rays
    adam_betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.99])  # Instant-NGP's, for hash grids
    adam_eps: float = 1e-15  # Instant-NGP (Mueller et al. 2022); the paper config: PyTorch's defaults
    checkpoint_every: int = 250
    weights: dict[str, Any] = dataclasses.field(default_factory=dict)  # override a loss weight by term name

    def __post_init__(self) -> None:
        at_least("train.steps", self.steps, 1)
        at_least("train.rays_per_step", self.rays_per_step, 1)
        positive("train.lr", self.lr)
        positive("train.lr_exponent", self.lr_exponent)
        require(0.0 <= self.fg_fraction <= 1.0, "train.fg_fraction", self.fg_fraction, "a number in [0, 1]")
        require(len(self.adam_betas) == 2 and all(0.0 <= b < 1.0 for b in self.adam_betas), "train.adam_betas",
                self.adam_betas, "two numbers in [0, 1)")
        positive("train.adam_eps", self.adam_eps)
        at_least("train.checkpoint_every", self.checkpoint_every, 1)


@dataclasses.dataclass
class EvaluateConfig:
    chunk_rays: int = 4096

    def __post_init__(self) -> None:
        at_least("evaluate.chunk_rays", self.chunk_rays, 1)


@dataclasses.dataclass
class EditConfig:
    edits: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # [{remove: 2}, {move: 1, by: [0.1, 0, 0]}, ...]
    turntable_frames: int = 24
    chunk_rays: int = 4096

    def __post_init__(self) -> None:
        for e in self.edits:
            kinds = [k for k in ("remove", "move", "rotate", "duplicate") if k in e]
            require(len(kinds) == 1, "edit.edits entry", e, "one of {remove: k}, {move: k, by: [x,y,z]}, "
                    "{rotate: k, deg: d}, {duplicate: k, to: [x,y,z]}")
        at_least("edit.turntable_frames", self.turntable_frames, 1)


@dataclasses.dataclass
class ExtractConfig:
    resolution: int = 64
    density_threshold: float = 50.0  # per optimisation-frame unit (scene in the unit sphere); measured best 40-60 (ours)

    def __post_init__(self) -> None:
        at_least("extract.resolution", self.resolution, 8)
        positive("extract.density_threshold", self.density_threshold)

