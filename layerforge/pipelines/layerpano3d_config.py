"""Typed configs of the layerpano3d pipeline's stages (values and sources in configs/pipeline/layerpano3d*.yaml)."""

from __future__ import annotations

import dataclasses
from typing import Any

from layerforge.pipelines.schema import at_least, one_of, positive, require


@dataclasses.dataclass
class PanoramaSection:
    model: str | None = None  # SD-style text-to-image folder or hub id (needed with prompt=)
    lora: str | None = None  # panorama LoRA (LayerPano3D's FLUX LoRA has no open SD equivalent)
    height: int = 736  # generation size; LayerPano3D 720 x 1440 (see guidance/panorama.py for 736 x 1472)
    width: int = 1472
    steps: int = 50  # LayerPano3D
    guidance_scale: float = 7.0  # LayerPano3D
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # overrides of guidance/panorama_layerpano3d.yaml
    max_height: int = 736  # input panoramas taller than this are downsampled (area) to it
    max_seam_ratio: float = 1.5  # ours: a generated seam above this x the interior column step is an error

    def __post_init__(self) -> None:
        at_least("panorama.height", self.height, 8)
        at_least("panorama.steps", self.steps, 1)
        at_least("panorama.max_height", self.max_height, 8)
        positive("panorama.max_seam_ratio", self.max_seam_ratio)


@dataclasses.dataclass
class DepthSection:
    model: str | None = None  # a transformers depth-estimation folder (DPT, Depth Anything); null: given depth or the room prior
    prediction: str = "inverse_depth"  # what the model predicts: inverse_depth (relative models) | depth (metric models)
    layout: str = "icosahedron"  # LayerPano3D (360MonoDepth): 20 icosahedral tangent views; or cubemap
    view_size: int = 512  # pixels of each tangent view
    fov_deg: float | None = None  # null: the layout's default (depth_alignment.py)
    camera_height_m: float = 1.6  # ours: the metric scale (estimated depth) and the room prior's floor
    ceiling_height_m: float = 2.8  # room prior (no model, no depth given): ceiling above the floor
    wall_distance_m: float = 3.0  # room prior: walls this far around the camera

    def __post_init__(self) -> None:
        one_of("depth_estimation.prediction", self.prediction, ("inverse_depth", "depth"))
        one_of("depth_estimation.layout", self.layout, ("icosahedron", "cubemap"))
        at_least("depth_estimation.view_size", self.view_size, 16)
        positive("depth_estimation.camera_height_m", self.camera_height_m)
        require(self.ceiling_height_m > self.camera_height_m, "depth_estimation.ceiling_height_m", self.ceiling_height_m,
                "a height above depth_estimation.camera_height_m")
        positive("depth_estimation.wall_distance_m", self.wall_distance_m)


@dataclasses.dataclass
class LayeringSection:
    segmenter: str | None = None  # a transformers panoptic segmentation folder; null: depth discontinuities
    max_layers: int = 3  # LayerPano3D: k = min(3, #instances); 0: one layer, no completion (the baseline)
    percentile: float = 25.0  # LayerPano3D: instance depth = mean of the values above this percentile
    min_ratio: float = 1.3  # ours: adjacent layers whose depths differ by less than 1.3x are merged (1: the paper's k)
    jump: float = 0.08  # ours, depth-discontinuity instances: relative depth jump that separates surfaces
    min_fraction: float = 0.002  # ours: smaller components are noise
    min_pixels: int = 16  # ours: instances smaller than this are ignored

    def __post_init__(self) -> None:
        at_least("layering.max_layers", self.max_layers, 0)
        require(self.min_ratio >= 1.0, "layering.min_ratio", self.min_ratio, "a ratio >= 1 (1: never merge)")
        require(0.0 <= self.percentile < 100.0, "layering.percentile", self.percentile, "a number in [0, 100)")
        positive("layering.jump", self.jump)
        at_least("layering.min_pixels", self.min_pixels, 1)


@dataclasses.dataclass
class CompletionSection:
    inpaint_model: str | None = None  # a diffusers inpainting folder; null: OpenCV (logged)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # overrides of guidance/inpaint_sd2.yaml
    prompt: str = ""  # LayerPano3D captions each layer; the same prompt for all here
    strength: float = 0.6  # LayerPano3D
    steps: int = 50  # LayerPano3D
    prefill: bool = True  # LayerPano3D: classical pre-fill, then diffusion
    mask_dilation_px: int = 50  # LayerPano3D, at 1440 px wide (scaled with the width)
    ring_px: int = 4  # ours: the outer-layer ring the depth completion fits
    max_planes: int = 4  # ours: planes round one hole (two walls, floor and ceiling)

    def __post_init__(self) -> None:
        require(0.0 < self.strength <= 1.0, "completion.strength", self.strength, "a number in (0, 1]")
        at_least("completion.steps", self.steps, 1)
        at_least("completion.mask_dilation_px", self.mask_dilation_px, 0)
        at_least("completion.ring_px", self.ring_px, 1)
        at_least("completion.max_planes", self.max_planes, 0)


@dataclasses.dataclass
class GaussiansSection:
    view_size: int = 512  # LayerPano3D's training views
    steps_first: int = 3001  # LayerPano3D: layer 0 (the background)
    steps_later: int = 2001  # LayerPano3D: every later layer
    stride: int = 1  # ours: one initial point per stride x stride pixels (LayerPano3D: every pixel)
    lambda_dssim: float = 0.2  # 3DGS / LayerPano3D
    sh_degree: int = 3  # LayerPano3D
    sh_every: int = 1000  # 3DGS oneupSHdegree
    lr: dict[str, Any] = dataclasses.field(default_factory=lambda: {
        "means": [1.6e-4, 1.6e-6, 8990], "scales": 5e-3, "quats": 1e-3, "opacities": 0.05, "sh0": 2.5e-3,
        "shN": 1.25e-4})
    densify: dict[str, Any] = dataclasses.field(default_factory=dict)  # gsplat DefaultStrategy arguments
    background: list[float] = dataclasses.field(default_factory=lambda: [1.0, 1.0, 1.0])  # LayerPano3D: white
    backend: str = "auto"  # gsplat on CUDA, the torch reference elsewhere
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        at_least("gaussians.view_size", self.view_size, 8)
        at_least("gaussians.steps_first", self.steps_first, 1)
        at_least("gaussians.steps_later", self.steps_later, 1)
        at_least("gaussians.stride", self.stride, 1)
        require(0.0 <= self.lambda_dssim <= 1.0, "gaussians.lambda_dssim", self.lambda_dssim, "a number in [0, 1]")
        require(0 <= self.sh_degree <= 3, "gaussians.sh_degree", self.sh_degree, "0..3")
        one_of("gaussians.backend", self.backend, ("auto", "torch", "gsplat"))
        missing = {"means", "scales", "quats", "opacities", "sh0", "shN"} - set(self.lr)
        require(not missing, "gaussians.lr", sorted(missing), "a rate for means, scales, quats, opacities, sh0, shN")
        require(len(self.background) == 3, "gaussians.background", self.background, "an RGB triple")
        at_least("gaussians.checkpoint_every", self.checkpoint_every, 1)


@dataclasses.dataclass
class ExportSection:
    formats: list[str] = dataclasses.field(default_factory=lambda: ["glb", "usd"])  # the per-layer meshes
    mesh_stride: int = 1  # ours: mesh vertices every stride pixels
    max_stretch: float = 0.1  # ours: mesh triangles whose depths differ by more than this fraction are cut
    walk_offsets_m: list[float] = dataclasses.field(default_factory=lambda: [0.3, 0.5])  # the issue: 0.3-0.5 m
    walk_frames: int = 12  # frames per offset circle in the walk-through
    preview_size: int = 256

    def __post_init__(self) -> None:
        for f in self.formats:
            one_of("export.formats entry", f, ("glb", "usd", "obj", "blend"))
        at_least("export.mesh_stride", self.mesh_stride, 1)
        positive("export.max_stretch", self.max_stretch)
        at_least("export.walk_frames", self.walk_frames, 1)
        at_least("export.preview_size", self.preview_size, 16)
