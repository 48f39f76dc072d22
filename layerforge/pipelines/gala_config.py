"""Typed configs of the gala pipeline's stages (values and sources in configs/pipeline/gala*.yaml)."""

from __future__ import annotations

import dataclasses
from typing import Any

from layerforge.pipelines.schema import at_least, positive, require


@dataclasses.dataclass
class BodyConfig:
    model: str | None = None  # SMPL-X .npz/.pkl path, "anny", or null: the body_model.npz next to the scan
    num_betas: int = 10  # GALA smplx_config n_shape
    num_expression: int = 10  # GALA n_exp
    flat_hand_mean: bool | None = None  # null: the fit file's convention (THuman: false)

    def __post_init__(self) -> None:
        at_least("body.num_betas", self.num_betas, 0)
        at_least("body.num_expression", self.num_expression, 0)


@dataclasses.dataclass
class NormaliseConfig:
    fit: str | None = None  # the body fit file; null: smplx_param.{pkl,npz,json} (or *fit*) next to the scan
    max_scan_distance: float = 0.08  # metres: the scan's median distance to the posed body above this is an error (ours)

    def __post_init__(self) -> None:
        positive("normalise.max_scan_distance", self.max_scan_distance)


@dataclasses.dataclass
class SegmentConfig:
    resolution: int = 256  # paper 512: the images the segmenter sees
    vote_resolution: int = 512  # paper 2048 (segm_3d.py res_upsample): face ids for the vote, masks upsampled
    elevations_deg: list[float] = dataclasses.field(default_factory=lambda: [-30.0, 0.0, 30.0])  # GALA render.py
    azimuths: int = 12  # GALA render.py
    fov_deg: float = 30.0  # ours (GALA renders orthographic)
    threshold: float = 0.5  # GALA segm_3d.py vote
    min_component_faces: int = 25  # GALA segm_3d.py
    fill_unseen: bool = True  # ours: faces no view sees take their neighbours' label
    labels: str | None = None  # a .npy [F] bool of object faces (oracle); "truth" reads truth.npz next to the scan
    detector: str | None = None  # Grounding DINO folder (Grounded-SAM), with sam
    sam: str | None = None
    clipseg: str | None = None  # or one CLIPSeg folder
    box_threshold: float = 0.3  # GALA Grounded-SAM
    text_threshold: float = 0.25

    def __post_init__(self) -> None:
        at_least("segment.resolution", self.resolution, 16)
        at_least("segment.vote_resolution", self.vote_resolution, self.resolution)
        at_least("segment.azimuths", self.azimuths, 1)
        require(0.0 < self.threshold <= 1.0, "segment.threshold", self.threshold, "a number in (0, 1]")

    def uses_model(self) -> bool:
        return bool(self.detector or self.sam or self.clipseg)


@dataclasses.dataclass
class CanonicaliseConfig:
    leg_deg: float = 15.0  # GALA set_smplx: legs +-15 deg
    neighbours: int = 4  # ours: body vertices blended per point (GALA: a nearest-vertex volume)

    def __post_init__(self) -> None:
        at_least("canonicalise.neighbours", self.neighbours, 1)


@dataclasses.dataclass
class GeometryConfig:
    grid_resolution: int = 64  # paper 128 (nvdiffrec/GALA tet grid)
    hashgrid: dict[str, int] = dataclasses.field(default_factory=lambda: {
        "hash_levels": 16, "hash_base_resolution": 16, "hash_max_resolution": 1024, "hash_log2_size": 14})  # GALA (tcnn table 2^19)
    hidden: int = 32  # GALA MLP 2 x 32
    layers: int = 2
    grid_margin: float = 0.1  # metres around the canonical body's box (ours)
    steps: int = 300  # paper 2000 (iter)
    init_steps: int = 100  # paper 400 (init_iter): SDF regression to the canonical body
    init_points: int = 4096  # per step (GALA: surface + jittered + 3000 uniform)
    views_per_step: int = 2  # paper 4 (batch)
    resolution: int = 128  # paper 512 (train_res)
    lr: float = 0.01  # paper AdamW 0.01 (the initialisation)
    lr_fit: float = 0.003  # ours after the initialisation: Adam steps at 0.01 empty our layers (see the note)
    close_up_probability: float = 0.25  # ours: share of zoomed-in views (GALA enable_zoom_in)
    take_turns: bool = True  # GALA: human terms on even steps, object on odd
    checkpoint_every: int = 100
    weights: dict[str, float] = dataclasses.field(default_factory=dict)  # term name -> weight (paper: models/gala/losses.py)
    prior: dict[str, Any] = dataclasses.field(default_factory=dict)  # ControlNet SDS (configs/guidance/sd15_controlnet_openpose.yaml keys)
    prior_model: str | None = None  # SD 1.5 folder; null: no SDS
    controlnet: str | None = None  # ControlNet-OpenPose folder
    sds_resolution: int = 64  # paper 512 renders, resized to the 64^2 latent
    prompt_human: str = "a photo of a person"  # GALA th_0001: "a photo of a man wearing a white t-shirt"
    prompt_object: str = "a photo of a person wearing a {object}"  # GALA text_obj

    def __post_init__(self) -> None:
        at_least("geometry.grid_resolution", self.grid_resolution, 4)
        at_least("geometry.steps", self.steps, 1)
        at_least("geometry.init_steps", self.init_steps, 0)
        require(self.init_steps < self.steps, "geometry.init_steps", self.init_steps, "fewer than geometry.steps")
        at_least("geometry.views_per_step", self.views_per_step, 1)
        at_least("geometry.resolution", self.resolution, 16)
        positive("geometry.lr", self.lr)
        positive("geometry.lr_fit", self.lr_fit)
        require(0.0 <= self.close_up_probability <= 1.0, "geometry.close_up_probability", self.close_up_probability,
                "a number in [0, 1]")
        if bool(self.prior_model) != bool(self.controlnet):
            require(False, "geometry.controlnet", self.controlnet, "set together with geometry.prior_model (or neither)")

    def dmtet(self) -> Any:
        from layerforge.models.dmtet import DMTetConfig

        return DMTetConfig(grid_resolution=self.grid_resolution, hidden=self.hidden, layers=self.layers,
                           **{k: int(v) for k, v in self.hashgrid.items()})


@dataclasses.dataclass
class TextureConfig:
    steps: int = 150  # paper 2000
    views_per_step: int = 2  # paper 5
    resolution: int = 128  # paper 512
    lr: float = 0.01
    texture_size: int = 256  # UV map texels a side
    weight_rgb: float = 1.0e8  # GALA w_recon_rgb
    weight_sds: float = 1.0  # GALA w_sds (texture), with a prior model
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        at_least("texture.steps", self.steps, 1)
        at_least("texture.texture_size", self.texture_size, 16)


@dataclasses.dataclass
class LayersConfig:
    poses: list[str] = dataclasses.field(default_factory=list)  # more fit files to re-pose both layers to
    compose_fit: str | None = None  # another body's fit: the object composed onto it
    turntable_frames: int = 24

    def __post_init__(self) -> None:
        at_least("layers.turntable_frames", self.turntable_frames, 1)
