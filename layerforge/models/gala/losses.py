"""GALA's geometry losses (snuvclab/GALA ``geometry/dmtet.py`` ``tick``), as scheduled terms.

Per step, with the scan and both layers posed and rendered at the step's views (all
``F.mse_loss``, mean over pixels):

- ``segmentation`` x 2e5 (``w_recon_segm``): the composition's per-pixel layer one-hot times its
  coverage against the scan's face labels times the scan's coverage, channels (object, human).
- ``human_recon`` x 5e3 (``w_recon_full``), even steps (``take_turns``): the human layer's normal
  image vs the scan's, both masked by coverage and by the scan's human segment eroded 5 px
  (``-dilate_seg(-seg_hum)``); plus ``overlap`` x 1e5: the human layer must cover the pixels where
  the body fit and the eroded scan silhouette overlap.
- ``object_recon`` x 5e3, odd steps: the object is the outermost layer (``is_obj_most_outer``):
  its mask vs the mask of the scan's object faces rendered alone (x 50) plus its normal image vs
  theirs.
- ``sdf_reg``: nvdiffrec's sign-change regulariser on both grids (GALA leaves it commented out;
  weight 0 by default, kept for runs without a prior).
- ``sds`` x 1: pose-guided SDS in canonical space (:class:`PoseGuidedSDS`).

Batch keys (from :class:`~layerforge.models.gala.views` via the pipeline's sampler): ``seed``,
``cameras``, ``gt`` (:class:`~layerforge.renderers.layers.LayerImages` of the scan with face labels 0 object / 1
human), ``gt_object`` (the object faces alone), ``body_alpha`` [B, H, W, 1], ``canonical``
(:class:`~.views.ViewBatch` in canonical space), ``keypoints`` [18, 3] canonical OpenPose joints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from layerforge.models.gala.model import LAYERS, GalaLayers, LayerMeshes
from layerforge.models.gala.render import min_pool
from layerforge.models.optimisation import PaperTerm, batch_generator
from layerforge.renderers.layers import LayerImages, render_layers

PAPER_WEIGHTS = {
    "segmentation": 2.0e5,  # w_recon_segm (config/default_geo.yaml)
    "human_recon": 5.0e3,  # w_recon_full
    "object_recon": 5.0e3,  # w_recon_full
    "overlap": 1.0e5,  # dmtet.py: 1e5 * loss_fn(mask_hum * overlap_mask, overlap_mask)
    "sdf_reg": 0.0,  # commented out in GALA's tick
    "sds": 1.0,  # w_sds
    "init_sdf": 1.0,  # pre_train_sdf (init_iter steps)
    "texture_rgb": 1.0e8,  # config/default_tex.yaml w_recon_rgb
    "texture_sds": 1.0,  # config/default_tex.yaml w_sds
}
OBJECT_MASK_FACTOR = 50.0  # dmtet.py: loss_fn(mask_obj, gt_mask_obj) * 50
ERODE_PX = 5  # dmtet.py: erode_size = 5 (overlap); dilate_seg is a 5 px max-pool too
SEG_DILATE_PX = 5


def step_meshes(model: GalaLayers, step: int, info: dict) -> LayerMeshes:
    """Both layers extracted and posed once per step, shared by the terms through ``info``."""
    if info.get("_meshes_step") != step:
        info["_meshes"] = model.meshes()
        info["_meshes_step"] = step
    return info["_meshes"]


def step_renders(model: GalaLayers, batch: dict, step: int, info: dict) -> dict[str, LayerImages]:
    """Posed renders at the step's views: ``composite`` (object = 0, human = 1), ``human``, ``object``."""
    if info.get("_renders_step") != step:
        m = step_meshes(model, step, info)
        cams = batch["cameras"]
        info["_renders"] = {
            "composite": render_layers([m.posed["object"], m.posed["human"]], [m.faces["object"], m.faces["human"]], cams),
            "human": render_layers([m.posed["human"]], [m.faces["human"]], cams),
            "object": render_layers([m.posed["object"]], [m.faces["object"]], cams),
        }
        info["_renders_step"] = step
    return info["_renders"]


class GalaTerm(PaperTerm):
    paper_weights = PAPER_WEIGHTS


class SegmentationLoss(GalaTerm):
    key = "segmentation"

    def loss(self, model, batch, step, info) -> Tensor:
        r = step_renders(model, batch, step, info)["composite"]
        gt: LayerImages = batch["gt"]
        # 0 x the grid SDFs keeps the graph alive while a layer is empty (it renders nothing)
        alive = sum(0.0 * s.sum() for s in step_meshes(model, step, info).sdf.values())
        return F.mse_loss(r.segmentation * r.alpha, gt.segmentation * gt.alpha) + alive


class _TakeTurns(GalaTerm):
    """A term evaluated on even (human) or odd (object) steps only (GALA ``take_turns``)."""

    parity = 0

    def __init__(self, weight=None, name=None, take_turns: bool = True) -> None:
        super().__init__(weight, name)
        self.take_turns = take_turns

    def __call__(self, model, batch, step, info) -> Tensor:
        if self.take_turns and step % 2 != self.parity:  # off turn: a zero that keeps the graph connected
            return 0.0 * next(model.parameters()).sum()
        return super().__call__(model, batch, step, info)


class HumanReconLoss(_TakeTurns):
    """Normals of the human layer where the scan is human (even steps)."""

    key = "human_recon"

    def loss(self, model, batch, step, info) -> Tensor:
        r = step_renders(model, batch, step, info)["human"]
        gt: LayerImages = batch["gt"]
        seg_h = min_pool(gt.segmentation[..., 1:2], SEG_DILATE_PX)
        return F.mse_loss(r.normals * r.alpha * seg_h, gt.normals * gt.alpha * seg_h)


class OverlapLoss(_TakeTurns):
    """The human layer covers where the body fit and the eroded scan silhouette overlap (even steps)."""

    key = "overlap"

    def loss(self, model, batch, step, info) -> Tensor:
        r = step_renders(model, batch, step, info)["human"]
        overlap = batch["body_alpha"] * min_pool(batch["gt"].alpha, ERODE_PX)
        return F.mse_loss(r.alpha * overlap, overlap)


class ObjectReconLoss(_TakeTurns):
    """The object as the outermost layer: its mask (x 50) and normals vs the scan's object faces alone (odd steps)."""

    key = "object_recon"
    parity = 1

    def loss(self, model, batch, step, info) -> Tensor:
        r = step_renders(model, batch, step, info)["object"]
        gt: LayerImages = batch["gt_object"]
        return (F.mse_loss(r.alpha, gt.alpha) * OBJECT_MASK_FACTOR
                + F.mse_loss(r.normals * r.alpha, gt.normals * gt.alpha))


class SDFRegulariser(GalaTerm):
    key = "sdf_reg"

    def loss(self, model, batch, step, info) -> Tensor:
        m = step_meshes(model, step, info)
        return sum(model.layer(n).sdf_reg(m.sdf[n]) for n in LAYERS)


class PoseGuidedSDS(GalaTerm):
    """Pose-guided SDS in canonical space (GALA ``use_canonical_sds``, ``apply_SDS``).

    Even steps render the human layer alone with ``prompts["human"]``, odd steps the
    composition with ``prompts["object"]``; the latent is (normals, coverage) resized to the
    prior's latent grid (Fantasia3D's normal + mask latent), the ControlNet sees the OpenPose-18
    skeleton of the canonical body drawn with the same camera.

    Args:
        guidance: a :class:`~layerforge.models.guidance.controlnet.ControlNetSDSGuidance` (or any
            callable with its signature: ``guidance(images, control_image=..., step=...,
            elevation_deg=..., azimuth_deg=..., prompt=..., generator=...)``).
        prompts: ``{"human": ..., "object": ...}``.
    """

    key = "sds"

    def __init__(self, guidance, prompts: dict[str, str], weight=None, name=None) -> None:
        super().__init__(weight, name)
        self.guidance = guidance
        self.prompts = prompts

    def loss(self, model, batch, step, info) -> Tensor:
        m = step_meshes(model, step, info)
        views = batch["canonical"]
        cams = views.cameras
        if step % 2 == 0:
            img = render_layers([m.canonical["human"]], [m.faces["human"]], cams)
            prompt = self.prompts["human"]
        else:
            img = render_layers([m.canonical["object"], m.canonical["human"]], [m.faces["object"], m.faces["human"]], cams)
            prompt = self.prompts["object"]
        latent_image = torch.cat([img.normals, img.alpha], dim=-1)
        out = self.guidance(latent_image, control_image=skeleton_images(batch["keypoints"], cams).to(latent_image), step=step,
                            elevation_deg=views.elevation_deg, azimuth_deg=views.azimuth_deg, prompt=prompt,
                            generator=batch_generator(batch, 7))
        for k, v in out.logs.items():
            info["log"][f"sds_{k}"] = v
        return out.loss


def gala_terms(weights: dict[str, float], guidance=None, prompts: dict[str, str] | None = None,
               take_turns: bool = True) -> list[PaperTerm]:
    """The geometry stage's terms with the paper's weights, overridden by ``weights`` (term name -> weight)."""
    w = {**PAPER_WEIGHTS, **weights}
    terms: list[PaperTerm] = [
        SegmentationLoss(w["segmentation"]),
        HumanReconLoss(w["human_recon"], take_turns=take_turns),
        OverlapLoss(w["overlap"], take_turns=take_turns),
        ObjectReconLoss(w["object_recon"], take_turns=take_turns),
    ]
    if w["sdf_reg"]:
        terms.append(SDFRegulariser(w["sdf_reg"]))
    if guidance is not None and w["sds"]:
        terms.append(PoseGuidedSDS(guidance, prompts or {}, w["sds"]))
    return terms


__all__ = [
    "PAPER_WEIGHTS",
    "GalaTerm",
    "HumanReconLoss",
    "InitSDFLoss",
    "ObjectReconLoss",
    "OverlapLoss",
    "PoseGuidedSDS",
    "SDFRegulariser",
    "SegmentationLoss",
    "TextureReconLoss",
    "TextureSDSLoss",
    "gala_terms",
    "init_sdf_samples",
    "skeleton_images",
    "step_meshes",
    "step_renders",
]


class InitSDFLoss(GalaTerm):
    """GALA's initialisation (``pre_train_sdf``): both layers' SDFs regress the canonical body's.

    Points: the body's surface samples, the same jittered by N(0, 0.05 m), and points uniform in
    the grid box; targets from the body mesh (exact signed distance), computed once.

    Args:
        points: [P, 3] canonical points, metres. sdf: [P] their body signed distance, metres.
        per_step: points drawn per step.
    """

    key = "init_sdf"

    def __init__(self, points: Tensor, sdf: Tensor, per_step: int, weight=None, name=None) -> None:
        super().__init__(weight, name)
        self.points, self.sdf, self.per_step = points, sdf, int(per_step)

    def loss(self, model, batch, step, info) -> Tensor:
        g = batch_generator(batch, 11)
        idx = torch.randint(len(self.points), (self.per_step,), generator=g)
        p = self.points[idx].to(model.human.vertices.device)
        target = self.sdf[idx].to(p)
        return sum(F.mse_loss(model.layer(n).sdf_at(p), target) for n in LAYERS)


def init_sdf_samples(body_vertices: Tensor, body_faces: Tensor, bounds: Tensor, generator: torch.Generator,
                     surface: int = 20000, uniform: int = 20000, jitter: float = 0.05) -> tuple[Tensor, Tensor]:
    """Points and exact body signed distances for :class:`InitSDFLoss` (GALA: surface + N(0, 0.05) + uniform).

    body_vertices [V, 3] / body_faces [F, 3]: a closed body mesh (metres); bounds [2, 3] the grid box.
    """
    import numpy as np
    import open3d as o3d

    v = body_vertices.detach().cpu().float()
    f = body_faces.detach().cpu().long()
    tri = v[f]
    area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1)
    pick = torch.multinomial(area.double(), surface, replacement=True, generator=generator)
    r = torch.rand(surface, 2, generator=generator)
    s = r[:, :1].sqrt()
    bary = torch.cat([1 - s, s * (1 - r[:, 1:]), s * r[:, 1:]], dim=1)
    on = (tri[pick] * bary[..., None]).sum(1)
    near = on + jitter * torch.randn(on.shape, generator=generator)
    lo, hi = bounds[0].cpu(), bounds[1].cpu()
    box = lo + (hi - lo) * torch.rand(uniform, 3, generator=generator)
    pts = torch.cat([on, near, box])
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(v.numpy()), o3d.core.Tensor(f.numpy().astype(np.uint32)))
    sdf = torch.from_numpy(scene.compute_signed_distance(o3d.core.Tensor(pts.numpy())).numpy()).float()
    return pts, sdf


class TextureReconLoss(GalaTerm):
    """GALA's texture term (``w_recon_rgb`` 1e8): each layer's colour where the scan shows that layer.

    Batch keys: ``cameras``, ``gt_rgb`` [B, H, W, 3], ``gt_alpha`` [B, H, W, 1], ``gt_labels``
    [B, H, W] (0 object, 1 human, -1 empty). The model is a :class:`TexturedLayers`-like module
    with ``render(name, cameras) -> (rgb, alpha)``.
    """

    key = "texture_rgb"

    def loss(self, model, batch, step, info) -> Tensor:
        total = 0.0
        for label, name in ((1, "human"), (0, "object")):
            seg = min_pool((batch["gt_labels"] == label).to(batch["gt_rgb"])[..., None], SEG_DILATE_PX)
            rgb, _ = model.render(name, batch["cameras"])
            total = total + F.mse_loss(rgb * seg, batch["gt_rgb"] * batch["gt_alpha"] * seg)
        return total


class TextureSDSLoss(GalaTerm):
    """GALA's texture SDS (``w_sds`` 1): the textured layers in canonical space, RGB through the
    VAE, the OpenPose skeleton of the canonical body as the ControlNet's condition.

    Batch keys: ``canonical`` (:class:`~.views.ViewBatch`), ``keypoints`` [18, 3]. The model is a
    :class:`~.model.TexturedLayers`.
    """

    key = "texture_sds"

    def __init__(self, guidance, prompt: str, weight=None, name=None) -> None:
        super().__init__(weight, name)
        self.guidance, self.prompt = guidance, prompt

    def loss(self, model, batch, step, info) -> Tensor:
        views = batch["canonical"]
        rgb, alpha = model.render_canonical(views.cameras)
        rgb = rgb + (1.0 - alpha)  # on white, as GALA's renders over a white background
        out = self.guidance(rgb, control_image=skeleton_images(batch["keypoints"], views.cameras).to(rgb), step=step,
                            elevation_deg=views.elevation_deg, azimuth_deg=views.azimuth_deg, prompt=self.prompt,
                            generator=batch_generator(batch, 13))
        for k, v in out.logs.items():
            info["log"][f"texture_sds_{k}"] = v
        return out.loss


def skeleton_images(keypoints: Tensor, cameras) -> Tensor:
    """[B, H, W, 3] OpenPose-18 drawings of ``keypoints`` [18, 3] (world metres) seen by ``cameras``."""
    from layerforge.models.guidance.openpose import draw_openpose, project_points

    kp = keypoints.to(cameras.K)
    out = []
    for i in range(len(cameras)):
        uv, front = project_points(kp, cameras.K[i], cameras.world_to_camera[i])
        out.append(draw_openpose(uv, cameras.height, cameras.width, visible=front))
    return torch.stack(out)
