"""DP-Recon's texture stage: a colour field on the extracted meshes, its losses, UV baking.

After geometry, DP-Recon (CVPR 2025) colours the extracted meshes with one hash-grid colour
field queried at the rasterized surface points, fitted for ~5000 iterations to the input
views (RGB MSE x 1e6), to perspective crops of the inpainted background panorama
(MSE x 1e4, background mesh only, where the input views saw little) and to an RGB SDS prior
per object (x 1, Stable Diffusion 2.1-base, t in [0.02, 0.98]) that is zeroed where the
visibility grid says the input views saw the surface (v >= 0.3). Each mesh is then unwrapped
with xatlas and the field baked into a 2048^2 texture (OBJ + MTL).

Read from the authors' code (DP-Recon/DP-Recon, paths inside ``code/``; our own
implementation):

- ``training/DPRecon_train.py`` (colour block): per step the loss is
  ``scene_rgb x 1e6 + sds_rgb x 1 + bg_pano x 1e4`` (``confs/replica_grid.conf``
  ``scene_rgb_loss_weight``, ``sds_rgb_loss_weight``, ``bg_pano_rgb_loss_weight``) for
  ``color_max_iter`` 5000 iterations. The scene term renders the whole scene mesh at one
  input view plus 5 "anchor" views rendered from the stage-1 NeRF, masked for the anchors by
  ``vis >= bg_vis_thresh`` (0.1); ``F.mse_loss`` over all pixels.
- ``model/network.py::MeshColorNetwork``: tcnn hash grid (``texture.yaml`` 16 levels x 2,
  T = 2^19, N_min 16, per-level scale 1.4473 -> N_max 4096) + one hidden layer of 64 ReLU
  units; ``hybrid-rgb-latent-material`` with ``color_activation: sigmoid``. Its optimiser
  group ``mesh_color_net`` has lr 5e-4 x 20 = 1e-2.
- ``model/network.py::get_bg_pano_loss``: renders the **background mesh alone** from 8 random
  of the panorama's anchor cameras (384^2) against perspective crops of the inpainted
  panorama, masked to ``vis < bg_vis_thresh`` (0.1), ``F.mse_loss``.
- ``model/network.py::get_color_prior_loss``: one object per step, cycling through the
  objects and skipping the background; 128^2 renders; ``texture.yaml`` data: 8 views,
  elevation 5-30 deg, fov 40-45 deg, azimuth -180..180, relative distance 0.8-1.0.
- ``threestudio/models/guidance/stable_diffusion_guidance.py`` (``begin_color_prior``):
  min/max step 20/980 of 1000, weight map 1 where ``vis < color_vis_thresh`` (0.3) else 0,
  guidance scale 50 (``texture.yaml``); its ``fantasia3d_2`` weighting is
  ``sqrt(abar) (1 - abar)`` while ``current_step_ratio`` <= 0.2, and the caller never passes
  that ratio (default 0), so the weighting in effect is fantasia3d's.
- ``threestudio/models/renderers/nvdiff_rasterizer.py``: rasterize, interpolate world
  positions, query the colour network at covered pixels, lerp with the background,
  antialias; the visibility map is the grid queried at the vertices, interpolated,
  antialiased and clamped to 1.
- ``threestudio/models/exporters/mesh_exporter.py``: xatlas unwrap (default options),
  rasterize the UV layout at ``texture_size`` 2048, query the network at the interpolated
  world positions, fill empty texels with ``cv2.inpaint`` (Telea, radius = xatlas padding,
  default 2). We dilate by ``pad_px`` texels instead (vectorised, no OpenCV).

Object indices follow the stage-1 convention: mesh 0 of a :class:`TexturedScene` is the
background (as :class:`~layerforge.models.fields.compose.ComposedSDFField`'s object 0).

Batch keys (:class:`TextureBatches` makes them; every term reads only its own):

- ``seed`` int: each term's own randomness (:func:`~layerforge.models.optimisation.batch_generator`).
- ``cameras`` :class:`Camera` [B] and ``images`` [B, H, W, 3] linear in [0, 1]: posed views
  (``rgb``). Optional ``rgb_masks`` [B, H, W, 1] in {0, 1}: pixels to fit (the authors'
  anchor-view visibility mask); default every covered pixel.
- ``pano_cameras`` :class:`Camera` [P] at the panorama's centre and ``pano_images``
  [P, h, w, 3]: perspective crops of the background panorama (``panorama``).
- ``sds_object`` int and ``sds_views`` :class:`~layerforge.models.view_sampling.OrbitBatch`:
  the object and orbit views of this step's SDS (``sds``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layerforge.assets.types import Material, Mesh
from layerforge.errors import InputError
from layerforge.models.dp_recon.visibility import (
    RENDER_MAX,
    TEXTURE_VIS_THRESHOLD,
    texture_sds_mask,
)
from layerforge.models.fields.hashgrid import HashGrid, HashGridConfig
from layerforge.models.fields.mlp_fields import MLP
from layerforge.models.guidance.sds import SDSGuidance
from layerforge.models.optimisation import PaperTerm, batch_generator
from layerforge.models.schedules import ScheduleValue
from layerforge.models.view_sampling import OrbitBatch, OrbitViews
from layerforge.renderers.camera_set import CameraSet
from layerforge.renderers.cameras import Camera
from layerforge.renderers.mesh import (
    Fragments,
    antialias,
    edge_neighbours,
    interpolate,
    normal_map,
    rasterize,
    rasterize_uv,
)
from layerforge.renderers.output import RenderOutput
from layerforge.renderers.panorama import equirect_to_perspective, pano_cameras

__all__ = [
    "TEXTURE_ADAM_BETAS",
    "TEXTURE_ADAM_EPS",
    "TEXTURE_ANCHOR_VIEWS",
    "TEXTURE_BG_VIS_THRESHOLD",
    "TEXTURE_GUIDANCE",
    "TEXTURE_HASHGRID",
    "TEXTURE_ITERATIONS",
    "TEXTURE_LR",
    "TEXTURE_MLP_HIDDEN",
    "TEXTURE_NEGATIVE_PROMPT",
    "TEXTURE_OBJECT_HALF_EXTENT",
    "TEXTURE_PANO_SIZE",
    "TEXTURE_PANO_VIEWS",
    "TEXTURE_PAPER_WEIGHTS",
    "TEXTURE_SDS_ELEVATION_DEG",
    "TEXTURE_SDS_FOV_DEG",
    "TEXTURE_SDS_RELATIVE_DISTANCE",
    "TEXTURE_SDS_SIZE",
    "TEXTURE_SDS_VIEWS",
    "TEXTURE_SIZE",
    "UV_PADDING_PX",
    "PanoramaLoss",
    "TextureBatches",
    "TextureField",
    "TextureFieldConfig",
    "TextureRGBLoss",
    "TextureSDSLoss",
    "TexturedScene",
    "bake_texture",
    "dilate_texture",
    "object_orbit_views",
    "textured_mesh",
    "unwrap_uv",
]

# --- paper / authors' constants --------------------------------------------------------------
# Loss weights, confs/replica_grid.conf: scene_rgb_loss_weight 1e6, bg_pano_rgb_loss_weight 1e4,
# sds_rgb_loss_weight 1 (times texture.yaml lambda_rgb_sds 1).
TEXTURE_PAPER_WEIGHTS: dict[str, ScheduleValue] = {"rgb": 1.0e6, "panorama": 1.0e4, "sds": 1.0}
# Iterations of the texture stage: color_max_iter 5000, confs/replica_grid.conf (youtube: 5400).
TEXTURE_ITERATIONS = 5000
# Exported texture size: color_exporter.texture_size 2048, texture.yaml.
TEXTURE_SIZE = 2048
# texture.yaml geometry.pos_encoding_config: 16 levels x 2 features, log2_hashmap_size 19,
# base_resolution 16, per_level_scale 1.447269237440378 ("max resolution 4096").
TEXTURE_HASHGRID = HashGridConfig(16, 2, 19, 16, 4096)
# model/network.py MeshColorNetwork(n_neurons=64, n_hidden_layers=1).
TEXTURE_MLP_HIDDEN: tuple[int, ...] = (64,)
# 'mesh_color_net' group lr: learning_rate 5e-4 x lr_factor_for_grid 20 (replica_grid.conf,
# training/DPRecon_train.py), Adam betas (0.9, 0.99), eps 1e-15 as the other grid groups.
TEXTURE_LR = 5.0e-4 * 20.0
TEXTURE_ADAM_BETAS = (0.9, 0.99)
TEXTURE_ADAM_EPS = 1e-15
# Anchor views' visibility threshold for the scene RGB term and the panorama term's mask
# (pixels with vis < 0.1 only): texture.yaml guidance.bg_vis_thresh 0.1.
TEXTURE_BG_VIS_THRESHOLD = 0.1
# NeRF anchor views per step beside the input view: anchor_batch_size 5, DPRecon_train.py.
TEXTURE_ANCHOR_VIEWS = 5
# Panorama crops per step and their size: batch_size 8, 384 x 384, network.py get_bg_pano_loss.
TEXTURE_PANO_VIEWS = 8
TEXTURE_PANO_SIZE = 384
# SDS: 8 views of 128^2 (texture.yaml data.batch_size 8, network.py get_color_prior_loss 128),
# elevation 5-30 deg, fovy 40-45 deg, camera_distance_range 0.8-1.0 relative (texture.yaml).
TEXTURE_SDS_VIEWS = 8
TEXTURE_SDS_SIZE = 128
TEXTURE_SDS_ELEVATION_DEG = (5.0, 30.0)
TEXTURE_SDS_FOV_DEG = (40.0, 45.0)
TEXTURE_SDS_RELATIVE_DISTANCE = (0.8, 1.0)
# Objects are normalised to a half-extent of shape_init_params 0.8 (prior.py init_color_mesh)
# before threestudio's relative distance (distance = relative / tan(fovy / 2)) applies.
TEXTURE_OBJECT_HALF_EXTENT = 0.8
# UV padding: mesh_exporter.py inpaints with radius xatlas_pack_options padding (default 2).
UV_PADDING_PX = 2
# texture.yaml prompt_processor.negative_prompt.
TEXTURE_NEGATIVE_PROMPT = (
    "bright light, sunlight, reflections, highlights, glossy surfaces, shiny textures, luminescence, "
    "ambient light, shadows, specular highlights, bloom, glow, vivid colors, HDR, illumination, "
    "detailed lighting, caustics, reflections, emissive materials, photorealism"
)
# SDSConfig settings of the texture stage: guidance_scale 50, view_dependent_prompting false
# (texture.yaml); t in [20, 980] of 1000 and fantasia3d weighting (stable_diffusion_guidance.py,
# begin_color_prior; see the module docstring); RGB through the VAE.
TEXTURE_GUIDANCE: dict[str, Any] = {
    "pretrained_model_name_or_path": "stabilityai/stable-diffusion-2-1-base",
    "guidance_scale": 50.0,
    "min_step_percent": 0.02,
    "max_step_percent": 0.98,
    "weighting": "fantasia3d",
    "view_dependent_prompting": False,
    "negative_prompt": TEXTURE_NEGATIVE_PROMPT,
    "latent_mode": "encode",
}


# --- UV unwrapping ---------------------------------------------------------------------------


def unwrap_uv(mesh: Mesh, *, resolution: int | None = None, padding: int = UV_PADDING_PX) -> Mesh:
    """xatlas parametrisation of ``mesh``, vertices split at UV seams.

    xatlas runs single-threaded-deterministic for a given input (same charts and packing every
    call; tested). Each output vertex copies the position (and normal, colour) of the input
    vertex xatlas maps it to, so the geometry is unchanged; faces keep their order.

    Args:
        mesh: [V, 3] vertices, [F, 3] faces (metres).
        resolution: xatlas' packing resolution in texels (e.g. the texture size, so the
            ``padding`` is in that texture's texels); None: xatlas chooses.
        padding: texels between charts when packing (xatlas' ``PackOptions.padding``).

    Returns:
        A :class:`Mesh` with V' >= V vertices, the same F faces (re-indexed), ``uvs`` [V', 2]
        in [0, 1] (u right, v up: v = 0 is the texture's bottom row, :class:`Mesh`'s
        convention), normals / colours carried over where present; no material.
    """
    import xatlas

    if len(mesh.faces) == 0:
        raise InputError("cannot unwrap a mesh without faces", "pass a triangle mesh")
    atlas = xatlas.Atlas()
    atlas.add_mesh(mesh.vertices.astype(np.float32), mesh.faces.astype(np.uint32))
    chart = xatlas.ChartOptions()
    pack = xatlas.PackOptions()
    pack.padding = int(padding)
    if resolution is not None:
        pack.resolution = int(resolution)
    atlas.generate(chart, pack)
    vmapping, indices, uvs = atlas.get_mesh(0)
    vmap = vmapping.astype(np.int64)
    uvs = np.clip(np.asarray(uvs, np.float32), 0.0, 1.0)
    return Mesh(
        vertices=mesh.vertices[vmap],
        faces=indices.astype(np.int64),
        normals=None if mesh.normals is None else mesh.normals[vmap],
        uvs=uvs,
        colors=None if mesh.colors is None else mesh.colors[vmap],
    )


# --- colour field ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TextureFieldConfig:
    """Sizes of :class:`TextureField`; defaults are the authors' (``texture.yaml``, ``MeshColorNetwork``).

    Attributes:
        hashgrid: the hash grid's levels, features, table size and resolutions.
        hidden: widths of the MLP's hidden ReLU layers.
    """

    hashgrid: HashGridConfig = TEXTURE_HASHGRID
    hidden: tuple[int, ...] = TEXTURE_MLP_HIDDEN


class TextureField(nn.Module):
    """Linear RGB at world points: hash grid on the box-normalised point, MLP, sigmoid.

    Args:
        aabb: [2, 3] min and max corner of the box the field covers, world metres (points
            outside are clamped to it).
        config: sizes.

    Attributes:
        encoding: :class:`HashGrid`; mlp: :class:`MLP` (give them their own learning rates).
    """

    def __init__(self, aabb: Tensor | Sequence[Sequence[float]] | np.ndarray, config: TextureFieldConfig = TextureFieldConfig()) -> None:
        super().__init__()
        box = torch.as_tensor(np.asarray(aabb, dtype=np.float32) if not isinstance(aabb, Tensor) else aabb).float()
        if box.shape != (2, 3) or not bool((box[1] > box[0]).all()):
            raise InputError(f"aabb must be [2, 3] with max > min, got {tuple(box.shape)}", "pass [[xmin, ymin, zmin], [xmax, ymax, zmax]]")
        self.register_buffer("aabb", box)
        self.config = config
        self.encoding = HashGrid(config.hashgrid)
        self.mlp = MLP(self.encoding.out_dim, tuple(config.hidden), 3)

    def normalise(self, points: Tensor) -> Tensor:
        """[..., 3] world metres -> [..., 3] in [0, 1]^3 of the box (clamped)."""
        lo, hi = self.aabb[0].to(points), self.aabb[1].to(points)
        return ((points - lo) / (hi - lo)).clamp(0.0, 1.0)

    def forward(self, points: Tensor) -> Tensor:
        """points [..., 3] world metres -> [..., 3] linear RGB in (0, 1)."""
        lead = points.shape[:-1]
        x = self.normalise(points.reshape(-1, 3).float())
        rgb = torch.sigmoid(self.mlp(self.encoding(x)))
        return rgb.reshape(*lead, 3)


# --- rendering -------------------------------------------------------------------------------


class TexturedScene:
    """Several meshes in one world frame, rendered together with a colour field.

    Args:
        vertices: K tensors [V_k, 3], world metres (no gradient needed; geometry is fixed).
        faces: K integer tensors [F_k, 3] indexing their own mesh's vertices.
        visibility: optional K tensors [V_k] per-vertex visibility (``VisibilityGrid.query``
            of the vertices); clamped to at most 1 (the authors' ``vis_map`` clamp). Missing:
            0 everywhere (never seen: the prior applies everywhere).

    The meshes are concatenated into one (faces offset), so one rasterization resolves
    occlusion between objects; ``face_object`` [F] says whose each face is. Object 0 is the
    background by DP-Recon's convention.
    """

    def __init__(
        self,
        vertices: Sequence[Tensor],
        faces: Sequence[Tensor],
        visibility: Sequence[Tensor] | None = None,
    ) -> None:
        if len(vertices) == 0 or len(vertices) != len(faces):
            raise InputError(f"got {len(vertices)} vertex sets and {len(faces)} face sets", "pass one of each per mesh")
        if visibility is not None and len(visibility) != len(vertices):
            raise InputError(f"got {len(visibility)} visibility arrays for {len(vertices)} meshes", "pass one per mesh")
        device = vertices[0].device
        verts, tris, owner, vis = [], [], [], []
        offset = 0
        for k, (v, f) in enumerate(zip(vertices, faces)):
            v = torch.as_tensor(v).float().to(device)
            f = torch.as_tensor(f).long().to(device)
            if v.dim() != 2 or v.shape[1] != 3 or f.dim() != 2 or f.shape[1] != 3:
                raise InputError(f"mesh {k}: vertices {tuple(v.shape)}, faces {tuple(f.shape)}", "pass [V, 3] and [F, 3]")
            verts.append(v)
            tris.append(f + offset)
            owner.append(torch.full((len(f),), k, dtype=torch.long, device=device))
            if visibility is not None:
                vk = torch.as_tensor(visibility[k]).float().to(device).reshape(-1)
                if len(vk) != len(v):
                    raise InputError(f"mesh {k}: {len(vk)} visibility values for {len(v)} vertices", "pass one per vertex")
                vis.append(vk.clamp(max=RENDER_MAX))
            else:
                vis.append(torch.zeros(len(v), device=device))
            offset += len(v)
        self.num_objects = len(verts)
        self.vertices = torch.cat(verts)  # [V, 3]
        self.faces = torch.cat(tris)  # [F, 3]
        self.face_object = torch.cat(owner)  # [F]
        self.visibility = torch.cat(vis)  # [V]
        self._neighbours = edge_neighbours(self.faces)

    @classmethod
    def from_meshes(
        cls, meshes: Sequence[Mesh], visibility: Sequence[Tensor | np.ndarray] | None = None, device: torch.device | str = "cpu"
    ) -> TexturedScene:
        """From :class:`Mesh` es (numpy) in one frame; ``visibility`` as in the constructor."""
        return cls(
            [torch.from_numpy(m.vertices).to(device) for m in meshes],
            [torch.from_numpy(m.faces).to(device) for m in meshes],
            None if visibility is None else [torch.as_tensor(np.asarray(v)).to(device) for v in visibility],
        )

    def object(self, index: int) -> TexturedScene:
        """Mesh ``index`` alone (for its SDS views and the background panorama term)."""
        if not 0 <= index < self.num_objects:
            raise InputError(f"object {index} out of range for {self.num_objects} meshes", "pick an existing object")
        sel = self.face_object == index
        faces = self.faces[sel]
        used = torch.unique(faces)
        remap = torch.full((len(self.vertices),), -1, dtype=torch.long, device=faces.device)
        remap[used] = torch.arange(len(used), device=faces.device)
        scene = TexturedScene([self.vertices[used]], [remap[faces]], [self.visibility[used]])
        scene.face_object = torch.full_like(scene.face_object, index)
        return scene

    def bounds(self, index: int | None = None) -> Tensor:
        """[2, 3] min / max corner of object ``index`` (all meshes when None), metres."""
        if index is None:
            v = self.vertices
        else:
            v = self.vertices[torch.unique(self.faces[self.face_object == index])]
        return torch.stack([v.min(0).values, v.max(0).values])

    def rasterize(self, cameras: Camera, *, backend: str = "auto") -> Fragments:
        """:func:`~layerforge.renderers.mesh.rasterize` of all meshes as one ([B, H, W] fragments)."""
        return rasterize(self.vertices, self.faces, cameras.to(device=self.vertices.device), backend)

    def visibility_map(self, fragments: Fragments) -> Tensor:
        """[B, H, W, 1] interpolated per-vertex visibility (0 where empty), not antialiased."""
        return interpolate(self.visibility[:, None], fragments, self.faces)

    def render(
        self,
        field: nn.Module,
        cameras: Camera,
        *,
        background: float | Tensor | None = None,
        fragments: Fragments | None = None,
        with_normals: bool = False,
        backend: str = "auto",
    ) -> RenderOutput:
        """Render the field's colour on the meshes.

        Args:
            field: maps world points [N, 3] to linear RGB [N, 3] (:class:`TextureField`).
            cameras: B cameras (OpenCV), H x W.
            background: colour where no mesh is: a float, [3], or [B, H, W, 3]; default 0.
            fragments: a :meth:`rasterize` result of these cameras to reuse.
            with_normals: also interpolate world normals (previews; the losses need none).
            backend: rasterizer backend.

        Returns:
            :class:`RenderOutput`: ``rgb`` [B, H, W, 3] (the field at the interpolated world
            point of each covered pixel, background elsewhere, antialiased at silhouettes;
            differentiable w.r.t. the field's parameters), ``alpha`` [B, H, W, 1] antialiased
            coverage, ``depth`` [B, H, W, 1] camera z (0 empty), ``normals`` world unit
            normals (None unless ``with_normals``), extras ``object_id`` [B, H, W] int64 (-1 empty), ``visibility``
            [B, H, W, 1] (interpolated, antialiased, clamped to [0, 1]), ``face_id``.
        """
        cams = cameras.to(device=self.vertices.device)
        frags = self.rasterize(cams, backend=backend) if fragments is None else fragments
        mask = frags.mask  # [B, H, W]
        pos = interpolate(self.vertices, frags, self.faces)  # [B, H, W, 3]
        colour = field(pos[mask])  # [N, 3]
        b, h, w = mask.shape
        fg = torch.zeros(b, h, w, 3, dtype=colour.dtype, device=colour.device)
        fg = fg.index_put(mask.nonzero(as_tuple=True), colour)
        m = mask[..., None].to(fg.dtype)
        if background is None:
            bg: Tensor = torch.zeros((), dtype=fg.dtype, device=fg.device)
        else:
            bg = torch.as_tensor(background, dtype=fg.dtype, device=fg.device)
        rgb = fg * m + bg * (1.0 - m)
        vis = self.visibility_map(frags).to(fg.dtype)
        both = antialias(torch.cat([rgb, m, vis], -1), frags, self.vertices, self.faces, cams, neighbours=self._neighbours)
        object_id = torch.where(mask, self.face_object[frags.face_id.clamp_min(0)], torch.full_like(frags.face_id, -1))
        return RenderOutput(
            rgb=both[..., :3],
            alpha=both[..., 3:4],
            depth=frags.depth[..., None],
            normals=normal_map(frags, self.vertices, self.faces) if with_normals else None,
            extras={"object_id": object_id, "visibility": both[..., 4:5].clamp(0.0, RENDER_MAX), "face_id": frags.face_id},
        )


def _masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean over the masked pixels and the channels of (pred - target)^2; mask [B, H, W, 1]."""
    den = mask.sum() * pred.shape[-1]
    num = (mask * (pred - target) ** 2).sum()
    return num / den.clamp_min(1.0)


# --- loss terms ------------------------------------------------------------------------------


class _TextureTerm(PaperTerm):
    paper_weights = TEXTURE_PAPER_WEIGHTS

    def __init__(self, scene: TexturedScene, weight: ScheduleValue | None = None, name: str | None = None) -> None:
        super().__init__(weight, name)
        self.scene = scene


class TextureRGBLoss(_TextureTerm):
    """Scene RGB MSE against the posed views (authors' ``scene_rgb_loss``, weight 1e6).

    Renders all meshes together at ``batch["cameras"]`` and takes the mean squared error over
    the covered pixels (``object_id >= 0``) times the optional ``batch["rgb_masks"]``, per
    channel. The authors take ``F.mse_loss`` over all pixels of a closed room, where every
    pixel is covered; we skip empty pixels so scenes that do not fill the frame are not pulled
    towards the background colour.

    Batch keys: ``cameras`` [B], ``images`` [B, H, W, 3]; optional ``rgb_masks`` [B, H, W, 1].
    """

    key = "rgb"

    def loss(self, field: nn.Module, batch: Mapping[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        out = self.scene.render(field, batch["cameras"])
        target = batch["images"].to(out.rgb)
        mask = (out.extras["object_id"] >= 0)[..., None].to(out.rgb.dtype)
        if batch.get("rgb_masks") is not None:
            mask = mask * batch["rgb_masks"].to(mask).reshape(mask.shape)
        info.setdefault("texture", {})["rgb_render"] = out
        return _masked_mse(out.rgb, target, mask)


class PanoramaLoss(_TextureTerm):
    """Background-panorama MSE (authors' ``bg_pano_loss``, weight 1e4).

    Renders the **background mesh alone** (``background_index``, 0) from
    ``batch["pano_cameras"]`` (at the panorama's centre) and compares it with
    ``batch["pano_images"]``, the perspective crops of the inpainted panorama, over the pixels
    the background mesh covers and whose visibility is below ``vis_threshold`` (0.1, the
    authors' ``bg_vis_thresh``: where the input views did not see the background, which the
    RGB term already fits). Background only, because the panorama is the background with the
    objects inpainted away: rendering all meshes would fit the objects' surfaces to the colours
    behind them. Mean over those pixels and channels (0 when there are none).

    Batch keys: ``pano_cameras`` [P], ``pano_images`` [P, h, w, 3].
    """

    key = "panorama"

    def __init__(self, scene: TexturedScene, weight: ScheduleValue | None = None, name: str | None = None, *,
                 background_index: int = 0, vis_threshold: float | None = TEXTURE_BG_VIS_THRESHOLD) -> None:
        super().__init__(scene, weight, name)
        self.background = scene.object(background_index)
        self.vis_threshold = vis_threshold

    def loss(self, field: nn.Module, batch: Mapping[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        out = self.background.render(field, batch["pano_cameras"])
        mask = (out.extras["object_id"] >= 0)[..., None].to(out.rgb.dtype)
        if self.vis_threshold is not None:
            mask = mask * (out.extras["visibility"] < self.vis_threshold).to(mask.dtype)
        return _masked_mse(out.rgb, batch["pano_images"].to(out.rgb), mask)


class TextureSDSLoss(_TextureTerm):
    """RGB SDS on one object's orbit renders, zeroed where the input views saw it (weight 1).

    Renders object ``batch["sds_object"]`` alone at ``batch["sds_views"].cameras`` over
    ``background`` and calls ``guidance`` with the object's prompt and the per-pixel weight
    map ``texture_sds_mask(visibility) x coverage`` (1 on the object's pixels with visibility
    < 0.3, 0 elsewhere; empty pixels carry no field colour). When that map is all zero the
    field is not queried and the guidance not called: the term is an exact 0 (attached to the
    field's parameters, so it backpropagates zero gradients).

    Args:
        guidance: an :class:`SDSGuidance` (texture settings: :data:`TEXTURE_GUIDANCE`).
        scene: the meshes.
        prompts: object index -> prompt (a sequence indexed by object, or a mapping).
        background: colour behind the object in the SDS renders (float or [3]); default 1, white.
        threshold: the visibility threshold (0.3).

    Batch keys: ``sds_object`` int, ``sds_views`` :class:`OrbitBatch`, ``seed``.
    """

    key = "sds"

    def __init__(self, guidance: SDSGuidance, scene: TexturedScene, prompts: Sequence[str] | Mapping[int, str],
                 weight: ScheduleValue | None = None, name: str | None = None, *,
                 background: float | Sequence[float] = 1.0, threshold: float = TEXTURE_VIS_THRESHOLD) -> None:
        super().__init__(scene, weight, name)
        self.guidance = guidance
        self.prompts = prompts
        self.background = background
        self.threshold = threshold
        self._objects: dict[int, TexturedScene] = {}

    def _object(self, index: int) -> TexturedScene:
        if index not in self._objects:
            self._objects[index] = self.scene.object(index)
        return self._objects[index]

    def loss(self, field: nn.Module, batch: Mapping[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        index = int(batch["sds_object"])
        views: OrbitBatch = batch["sds_views"]
        scene = self._object(index)
        frags = scene.rasterize(views.cameras)
        weight_map = texture_sds_mask(scene.visibility_map(frags), self.threshold) * frags.mask[..., None]
        if not bool(weight_map.any()):
            info.setdefault("log", {})["sds_masked_fraction"] = 0.0
            return sum((p.sum() * 0.0 for p in field.parameters()), torch.zeros((), device=self.scene.vertices.device))
        out = scene.render(field, views.cameras, background=self.background, fragments=frags)
        sds = self.guidance(
            out.rgb,
            step=step,
            elevation_deg=views.elevation_deg,
            azimuth_deg=views.azimuth_deg,
            weight_map=weight_map,
            prompt=self.prompts[index],
            generator=batch_generator(batch, 0x5D5),
        )
        log = info.setdefault("log", {})
        log["sds_masked_fraction"] = float(weight_map.float().mean())
        log["sds_grad_norm"] = sds.logs["grad_norm"]
        return sds.loss


# --- sampler ---------------------------------------------------------------------------------


def object_orbit_views(
    bounds: Tensor | np.ndarray,
    *,
    n: int = TEXTURE_SDS_VIEWS,
    size: int = TEXTURE_SDS_SIZE,
    elevation_deg: tuple[float, float] = TEXTURE_SDS_ELEVATION_DEG,
    fov_y_deg: tuple[float, float] = TEXTURE_SDS_FOV_DEG,
    relative_distance: tuple[float, float] = TEXTURE_SDS_RELATIVE_DISTANCE,
    device: torch.device | str = "cpu",
) -> OrbitViews:
    """The authors' SDS orbit around one object, in world metres.

    threestudio's relative distance puts the camera at ``relative / tan(fovy / 2)`` from an
    object normalised to half-extent 0.8; in world units that is
    ``relative / 0.8 x half_extent / tan(fovy / 2)`` (``fovy`` taken at its range's upper end).

    Args:
        bounds: [2, 3] the object's min / max corner, metres.
        n, size: views per step and their square size in pixels.
        elevation_deg, fov_y_deg, relative_distance: ranges (the authors' defaults).
    """
    box = torch.as_tensor(np.asarray(bounds, np.float64) if not isinstance(bounds, Tensor) else bounds).double()
    centre = ((box[0] + box[1]) / 2).tolist()
    half = float((box[1] - box[0]).max()) / 2
    scale = half / TEXTURE_OBJECT_HALF_EXTENT / math.tan(math.radians(fov_y_deg[1]) / 2)
    return OrbitViews(
        n, size, size,
        elevation_deg=elevation_deg,
        azimuth_deg=(-180.0, 180.0),
        distance=(relative_distance[0] * scale, relative_distance[1] * scale),
        fov_y_deg=fov_y_deg,
        target=centre,
        device=device,
    )


class TextureBatches:
    """The batches of the texture stage (see the module docstring for the keys).

    Per step, drawn in this order from the step's generator: ``per_step`` distinct posed views
    (all, in order, when ``per_step`` >= their number); ``pano_views`` panorama crops at
    uniformly random yaw in [-180, 180) and pitch in ``pano_pitch_deg`` (when a panorama is
    given); the orbit views of the SDS object, which cycles through ``sds_objects`` with the
    step (the authors' round robin, skipping the background); then ``seed``.

    Args:
        views: posed input views (images linear [N, H, W, 3]).
        per_step: views per step.
        rgb_masks: optional [N, H, W, 1] masks per view (anchor views' visibility masks).
        panorama: optional [Hp, Wp, 3] equirectangular background panorama (linear).
        pano_center: [3] where it was taken, world metres.
        pano_views, pano_size, pano_fov_deg, pano_pitch_deg: crops per step, their square
            size, vertical field of view and pitch range (degrees).
        sds_views: object index -> :class:`OrbitViews` (e.g. :func:`object_orbit_views`).
        sds_objects: the objects the SDS cycles through (default: the keys of ``sds_views``).
        device: where the batch goes.
    """

    def __init__(
        self,
        views: CameraSet,
        per_step: int = 1,
        *,
        rgb_masks: Tensor | None = None,
        panorama: Tensor | None = None,
        pano_center: Sequence[float] = (0.0, 0.0, 0.0),
        pano_views: int = TEXTURE_PANO_VIEWS,
        pano_size: int = TEXTURE_PANO_SIZE,
        pano_fov_deg: float = 90.0,
        pano_pitch_deg: tuple[float, float] = (-30.0, 30.0),
        sds_views: Mapping[int, OrbitViews] | None = None,
        sds_objects: Sequence[int] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.views = views
        self.per_step = min(int(per_step), len(views))
        self.rgb_masks = rgb_masks
        self.panorama = panorama
        self.pano_center = tuple(float(c) for c in pano_center)
        self.pano_views, self.pano_size, self.pano_fov = pano_views, pano_size, pano_fov_deg
        self.pano_pitch = pano_pitch_deg
        self.sds_views = dict(sds_views or {})
        self.sds_objects = list(self.sds_views) if sds_objects is None else list(sds_objects)
        missing = [k for k in self.sds_objects if k not in self.sds_views]
        if missing:
            raise InputError(f"sds_objects {missing} have no orbit views", "give every SDS object an OrbitViews")
        self.device = torch.device(device)

    def sample(self, step: int, generator: torch.Generator) -> dict[str, Any]:
        n = len(self.views)
        if self.per_step >= n:
            idx = torch.arange(n)
        else:
            idx = torch.randperm(n, generator=generator)[: self.per_step]
        batch: dict[str, Any] = {
            "cameras": self.views.cameras[idx].to(self.device),
            "images": self.views.images[idx].to(self.device),
        }
        if self.rgb_masks is not None:
            batch["rgb_masks"] = self.rgb_masks[idx].to(self.device)
        if self.panorama is not None:
            u = torch.rand(self.pano_views, 2, generator=generator, dtype=torch.float64)
            yaw = -180.0 + 360.0 * u[:, 0]
            lo, hi = self.pano_pitch
            pitch = lo + (hi - lo) * u[:, 1]
            cams = pano_cameras(yaw, pitch, self.pano_fov, self.pano_size, self.pano_size, center=self.pano_center)
            batch["pano_cameras"] = cams.to(self.device)
            batch["pano_images"] = equirect_to_perspective(self.panorama.float(), cams).to(self.device)
        if self.sds_objects:
            k = self.sds_objects[step % len(self.sds_objects)]
            batch["sds_object"] = k
            batch["sds_views"] = self.sds_views[k].sample(step, generator)
        batch["seed"] = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        return batch


# --- baking ----------------------------------------------------------------------------------


def dilate_texture(texture: Tensor, filled: Tensor, pad_px: int) -> tuple[Tensor, Tensor]:
    """Grow filled texels into empty ones by ``pad_px`` rings (mean of filled 8-neighbours).

    Args:
        texture: [H, W, C] values (anything in empty texels).
        filled: [H, W] bool, True where ``texture`` holds a value.
        pad_px: rings to add.

    Returns:
        the dilated texture [H, W, C] (empty texels out of reach are 0) and the new ``filled``.
    """
    tex = (texture * filled[..., None]).permute(2, 0, 1)[None]  # [1, C, H, W]
    m = filled[None, None].to(tex.dtype)
    kernel_c = torch.ones(tex.shape[1], 1, 3, 3, dtype=tex.dtype, device=tex.device)
    kernel_1 = torch.ones(1, 1, 3, 3, dtype=tex.dtype, device=tex.device)
    for _ in range(int(pad_px)):
        total = F.conv2d(tex, kernel_c, padding=1, groups=tex.shape[1])
        count = F.conv2d(m, kernel_1, padding=1)
        grow = (m == 0) & (count > 0)
        tex = torch.where(grow, total / count.clamp_min(1.0), tex)
        m = torch.where(grow, torch.ones_like(m), m)
    return tex[0].permute(1, 2, 0), m[0, 0] > 0


@torch.no_grad()
def bake_texture(
    field: nn.Module,
    mesh_with_uvs: Mesh,
    resolution: int = TEXTURE_SIZE,
    *,
    pad_px: int = UV_PADDING_PX,
    chunk: int = 1 << 18,
    backend: str = "auto",
) -> np.ndarray:
    """Bake the field's colour into the mesh's UV layout.

    Rasterizes the UV layout (:func:`rasterize_uv`, texel centres, v up), interpolates world
    positions there, queries the field in chunks of ``chunk`` texels, then dilates the colours
    ``pad_px`` texels into the empty texels around each island (:func:`dilate_texture`), so
    bilinear and mip-mapped sampling at island edges does not blend in black.

    Args:
        field: world points [N, 3] -> linear RGB [N, 3] in [0, 1].
        mesh_with_uvs: a :class:`Mesh` with ``uvs`` [V, 2] (e.g. from :func:`unwrap_uv`).
        resolution: texture side in texels (the authors' 2048).
        pad_px: dilation rings.
        chunk: texels per field query.

    Returns:
        [resolution, resolution, 3] float32 linear RGB in [0, 1]; row 0 is the top of the image
        (v = 1); texels farther than ``pad_px`` from every island are 0.
    """
    if mesh_with_uvs.uvs is None:
        raise InputError("bake_texture needs a mesh with uvs", "unwrap it first (unwrap_uv)")
    device = next((p.device for p in field.parameters()), torch.device("cpu"))
    uv = torch.from_numpy(mesh_with_uvs.uvs).to(device)
    faces = torch.from_numpy(mesh_with_uvs.faces).to(device)
    verts = torch.from_numpy(mesh_with_uvs.vertices).to(device)
    frags = rasterize_uv(uv, faces, resolution, backend=backend)
    pos = interpolate(verts, frags, faces)[0]  # [H, W, 3]
    filled = frags.mask[0]
    points = pos[filled]
    colour = torch.cat([field(points[i : i + chunk]).float() for i in range(0, len(points), chunk)]) \
        if len(points) else torch.zeros(0, 3, device=device)
    tex = torch.zeros(*filled.shape, 3, device=device)
    tex[filled] = colour
    # a triangle smaller than a texel may cover no texel centre at all (marching cubes makes
    # many): its centroid's texel then takes the field's colour at its 3D centroid, so
    # every triangle samples its own colour rather than black or a neighbouring island's
    h, w = filled.shape
    cuv = uv[faces].mean(1)  # [F, 2]
    col = (cuv[:, 0] * w).long().clamp(0, w - 1)
    row = ((1.0 - cuv[:, 1]) * h).long().clamp(0, h - 1)
    empty = ~filled[row, col]
    if bool(empty.any()):
        # several faces may share a texel: the smallest face index wins (an index_put with
        # repeated indices keeps an unspecified one, which made bakes differ between runs)
        texel = row * w + col
        first = torch.full((h * w,), len(faces), dtype=torch.long, device=device)
        ids = torch.nonzero(empty).reshape(-1)
        first.scatter_reduce_(0, texel[ids], ids, reduce="amin")
        pick = first[first < len(faces)]
        centroids = verts[faces[pick]].mean(1)
        with torch.no_grad():
            tex[row[pick], col[pick]] = torch.cat([field(centroids[i : i + chunk]).float()
                                                   for i in range(0, len(centroids), chunk)])
        filled = filled.clone()
        filled[row[pick], col[pick]] = True
    tex, _ = dilate_texture(tex, filled, pad_px)
    return tex.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)


def textured_mesh(
    field: nn.Module,
    mesh: Mesh,
    resolution: int = TEXTURE_SIZE,
    pad_px: int = UV_PADDING_PX,
    name: str = "material",
) -> Mesh:
    """The deliverable mesh: ``mesh`` unwrapped (:func:`unwrap_uv`, packed for ``resolution``;
    a mesh that has ``uvs`` already keeps them) with the baked texture as its material's
    ``base_color_texture`` ([resolution, resolution, 3] linear)."""
    unwrapped = mesh if mesh.uvs is not None else unwrap_uv(mesh, resolution=resolution, padding=pad_px)
    tex = bake_texture(field, unwrapped, resolution, pad_px=pad_px)
    return Mesh(
        vertices=unwrapped.vertices,
        faces=unwrapped.faces,
        normals=unwrapped.normals,
        uvs=unwrapped.uvs,
        colors=unwrapped.colors,
        material=Material(name=name, base_color_texture=tex),
    )
