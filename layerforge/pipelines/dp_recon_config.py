"""Typed configs of the dp_recon pipeline's stages (values and sources in configs/pipeline/dp_recon*.yaml)."""

from __future__ import annotations

import dataclasses
from typing import Any

from layerforge.pipelines.schema import at_least, one_of, positive, require


@dataclasses.dataclass
class PrepareConfig:
    min_train_views: int = 3
    max_train_views: int | None = 10  # evenly spaced subset of the training views (sparse-view runs); null: all
    scene_radius: float = 0.8  # cameras and surface fit this sphere (ours: the background sphere must enclose them)
    default_prompt: str = "a {name}"  # per-object prompt when prompts.json has none ({name}: the instance name)
    depth_model: str | None = None  # a transformers depth model when the views have no depth; null: none
    normals_from_depth: bool = True  # derive camera-frame normal priors from depth when no normal files are given

    def __post_init__(self) -> None:
        at_least("prepare.min_train_views", self.min_train_views, 1)
        if self.max_train_views is not None:
            at_least("prepare.max_train_views", self.max_train_views, self.min_train_views)
        require(0.0 < self.scene_radius <= 1.0, "prepare.scene_radius", self.scene_radius, "a number in (0, 1]")


@dataclasses.dataclass
class ModelConfig:
    hashgrid: dict[str, int] = dataclasses.field(default_factory=lambda: {
        "num_levels": 8, "features_per_level": 2, "log2_hashmap_size": 15, "base_resolution": 8, "max_resolution": 128})
    hidden: list[int] = dataclasses.field(default_factory=lambda: [64])  # paper [256, 256]
    geo_features: int = 15
    color_hidden: list[int] = dataclasses.field(default_factory=lambda: [64])  # paper [256, 256]
    view_dependent: bool = True
    beta_init: float = 0.1
    background_radius: float = 0.9
    object_sphere_fraction: float = 0.6
    confine_objects: bool = True
    num_samples: int = 24
    num_importance: int = 24

    def __post_init__(self) -> None:
        at_least("model.num_samples", self.num_samples, 2)
        at_least("model.num_importance", self.num_importance, 0)
        positive("model.beta_init", self.beta_init)
        require(0.0 < self.object_sphere_fraction <= 1.0, "model.object_sphere_fraction", self.object_sphere_fraction,
                "a number in (0, 1]")

    def scene_config(self) -> Any:
        from layerforge.models.dp_recon.model import SceneFieldConfig

        return SceneFieldConfig(hashgrid=dict(self.hashgrid), hidden=tuple(self.hidden), geo_features=self.geo_features,
                                color_hidden=tuple(self.color_hidden), view_dependent=self.view_dependent,
                                beta_init=self.beta_init, background_radius=self.background_radius,
                                object_sphere_fraction=self.object_sphere_fraction, confine_objects=self.confine_objects)

    def sampler(self, perturb: bool) -> Any:
        from layerforge.models.fields.render import SamplerConfig

        return SamplerConfig(num_samples=self.num_samples, num_importance=self.num_importance, perturb=perturb)


@dataclasses.dataclass
class VisibilityConfig:
    start: int = 350  # step at which the grid is filled (paper add_prior_iter 35000)
    resolution: int = 64  # vertices per axis (paper 256)
    method: str = "learned"  # learned: the authors' hinge fit; max: exact running maximum (ours)
    passes: int = 20  # learned: passes over the input images (paper visgrid_optim_iter 20)
    smooth: bool = False  # 5^3 Gaussian smoothing after the fit (the paper's text; the released code never calls it)

    def __post_init__(self) -> None:
        at_least("recon.visibility.start", self.start, 0)
        at_least("recon.visibility.resolution", self.resolution, 2)
        one_of("recon.visibility.method", self.method, ("learned", "max"))
        at_least("recon.visibility.passes", self.passes, 1)


@dataclasses.dataclass
class PriorConfig:
    model: str | None = None  # a Stable Diffusion 2.1-base folder or hub id; null: no geometry prior
    start: int = 350  # first SDS step (paper add_prior_iter 35000)
    weight: float = 1.0e-5  # in the recon loss (paper)
    views_per_object: int = 2  # paper batch 8
    resolution: int = 32  # paper 128
    latent_size: int = 64  # the renders resized to this latent side (paper: SD-2.1-base's 64)
    objects_per_step: int | None = 1  # null: every object each step (paper)
    guidance_scale: float = 50.0  # paper CFG 50
    # t range: min 0.20 -> 0.02, max 0.98 -> 0.40 linearly over SDS steps 2500 -> 5000 (paper);
    # steps here are counted from prior.start
    min_step_percent: list[float] = dataclasses.field(default_factory=lambda: [2500, 0.20, 0.02, 5000])
    max_step_percent: list[float] = dataclasses.field(default_factory=lambda: [2500, 0.98, 0.40, 5000])
    elevation_deg: list[float] = dataclasses.field(default_factory=lambda: [5.0, 30.0])  # paper 5-30
    fov_deg: list[float] = dataclasses.field(default_factory=lambda: [40.0, 45.0])  # paper 40-45
    dtype: str = "auto"  # fp16 on CUDA, fp32 on CPU

    def __post_init__(self) -> None:
        at_least("recon.prior.views_per_object", self.views_per_object, 1)
        at_least("recon.prior.resolution", self.resolution, 8)
        require(self.weight >= 0, "recon.prior.weight", self.weight, "a number >= 0")


@dataclasses.dataclass
class ReconConfig:
    steps: int = 400  # paper: the geometry run stops at add_color_prior_iter 75000 (Replica)
    rays_per_step: int = 256  # paper num_pixels 1024 (a multiple of 32)
    lr: float = 3.0e-3  # paper 5e-4 (Adam), hash grid x grid_lr_factor
    grid_lr_factor: float = 10.0  # paper lr_factor_for_grid 20
    lr_decay_to: float = 0.1  # exponential decay to this fraction over the steps (MonoSDF's ExponentialLR to 0.1)
    eikonal_points: int = 256  # uniform points per step for eikonal / smoothness / violation (paper: one per ray)
    weights: dict[str, Any] = dataclasses.field(default_factory=dict)  # override a loss weight by term name
    object_violation_start: int = 200  # paper add_objectvio_iter 10000
    checkpoint_every: int = 200
    visibility: VisibilityConfig = dataclasses.field(default_factory=VisibilityConfig)
    prior: PriorConfig = dataclasses.field(default_factory=PriorConfig)

    def __post_init__(self) -> None:
        at_least("recon.steps", self.steps, 1)
        at_least("recon.rays_per_step", self.rays_per_step, 32)
        require(self.rays_per_step % 32 == 0, "recon.rays_per_step", self.rays_per_step, "a multiple of 32")
        positive("recon.lr", self.lr)
        require(0.0 < self.lr_decay_to <= 1.0, "recon.lr_decay_to", self.lr_decay_to, "a number in (0, 1]")
        at_least("recon.checkpoint_every", self.checkpoint_every, 1)
        if isinstance(self.visibility, dict):
            self.visibility = VisibilityConfig(**self.visibility)
        if isinstance(self.prior, dict):
            self.prior = PriorConfig(**self.prior)


@dataclasses.dataclass
class MeshConfig:
    resolution: int = 64  # marching-cubes samples per axis of each object's box (paper 512 for the scene)
    background_resolution: int = 96
    tsdf_voxel: float = 0.02  # paper 0.01 (voxel_length), optimisation frame
    tsdf_trunc_voxels: float = 3.0  # paper sdf_trunc = 3 voxels
    tsdf_image_size: int = 64  # anchor-view renders for the TSDF fusion (paper: the 1200 x 680 input size)
    tsdf_fov_deg: float = 90.0
    tsdf_azimuth_bin_deg: float = 60.0  # paper 30: anchor views every 30 degrees of azimuth ...
    tsdf_elevation_bin_deg: float = 60.0  # ... and of elevation (paper 30), at every input camera

    def __post_init__(self) -> None:
        at_least("mesh.resolution", self.resolution, 8)
        at_least("mesh.background_resolution", self.background_resolution, 8)
        positive("mesh.tsdf_voxel", self.tsdf_voxel)


@dataclasses.dataclass
class BackgroundConfig:
    height: int = 64  # panorama rows (paper 1024 x 2048 inpainted)
    width: int = 128
    unseen_threshold: float = 0.2  # paper: visibility < 0.2 is inpainted
    candidates: int = 4  # inpaintings to choose among (the authors pick by hand)
    inpaint_model: str | None = None  # a diffusers inpainting model; null: OpenCV
    prompt: str = "an empty room"
    chunk_rays: int = 4096

    def __post_init__(self) -> None:
        at_least("background.height", self.height, 4)
        require(self.width == 2 * self.height, "background.width", self.width, "2 x background.height (equirectangular)")
        at_least("background.candidates", self.candidates, 1)


@dataclasses.dataclass
class TextureConfig:
    steps: int = 150  # paper color_max_iter 5000
    lr: float = 1.0e-2
    views_per_step: int = 2
    texture_size: int = 256  # baked UV map side (paper 2048)
    pad_px: int = 4
    weights: dict[str, Any] = dataclasses.field(default_factory=dict)
    pano_views: int = 2  # panorama crops per step (paper 8)
    pano_size: int = 32  # their side in pixels (paper 384)
    sds_model: str | None = None  # a Stable Diffusion folder for the RGB SDS; null: no SDS
    sds_resolution: int = 64
    sds_latent_size: int = 64  # SD-2.1-base: 64 x 64 latents of 512 x 512 images
    checkpoint_every: int = 100
    hashgrid: dict[str, int] = dataclasses.field(default_factory=lambda: {
        "num_levels": 8, "features_per_level": 2, "log2_hashmap_size": 15, "base_resolution": 8, "max_resolution": 256})
    hidden: list[int] = dataclasses.field(default_factory=lambda: [64])

    def __post_init__(self) -> None:
        at_least("texture.steps", self.steps, 1)
        at_least("texture.texture_size", self.texture_size, 8)
        at_least("texture.views_per_step", self.views_per_step, 1)

