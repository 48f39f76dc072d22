"""DP-Recon's stage-1 reconstruction losses (MonoSDF / ObjectSDF++ terms) as LossTerm objects.

Read from the authors' code (DP-Recon/DP-Recon, paths inside ``code/``; our own
implementation): ``model/loss.py`` (``MonoSDFLoss``, ``DPReconLoss``), ``model/network.py``
(``DPReconNetwork.forward``: what each term is fed), ``training/DPRecon_train.py`` (when) and
``confs/replica_grid.conf`` (weights; ``scannetpp_grid.conf`` / ``youtube_grid.conf`` differ
where :data:`SCANNETPP_WEIGHTS` says). The model is a
:class:`~layerforge.models.fields.compose.ComposedSDFField` (object 0 the background); the
terms of one step share one render of the batch with normals (:func:`dp_render`, stored as
``info["render"]`` so :func:`layerforge.models.fields.losses.rendered` reuses it).

==================  ==============================  =============  ==============================================
term                authors' source                 weight         form (R rays, P points, K objects)
==================  ==============================  =============  ==============================================
rgb                 MonoSDFLoss.get_rgb_loss        1              ``mean_{r,c} |rgb_rc - gt_rc|`` (L1Loss)
eikonal             MonoSDFLoss.get_eikonal_loss    0.1            ``mean (|grad d_k| - 1)^2`` (our EikonalLoss)
smooth              MonoSDFLoss.get_smooth_loss     0.005          ``mean_p |n(x_p) - n(x_p + e_p)|``, n = g/(|g|+1e-5)
depth               ScaleAndShiftInvariantLoss      0.1            ``sum m (s z + t - g')^2 / 2 sum m + 0.5 grad``
normal_l1           MonoSDFLoss.get_normal_loss     0.05           ``mean_r |n^_r - n^gt_r|_1`` (camera frame)
normal_cos          MonoSDFLoss.get_normal_loss     0.05           ``mean_r (1 - n^_r . n^gt_r)``
semantic            DPReconLoss.object_opacity_loss 1              ``BCE(clamp(o_rk, 1e-4), onehot(seg_r)_k)``
object_violation    object_distinct_loss            0.5 from 10k   ``mean_p sum_{k != k*} relu(-d_k - sg(d_k*))``
bg_reg              DPReconLoss.get_bg_render_loss  0.1 every 10   4-scale masked-gradient L1 of bg depth + normals
==================  ==============================  =============  ==============================================

Batch keys (a ray batch as :class:`~layerforge.models.view_sampling.RayBatches` gives, plus
DP-Recon's priors, which a DP-Recon sampler adds):

- ``origins`` / ``directions`` [R, 3] world metres / unit; ``rgb`` [R, 3] linear in [0, 1];
  ``seed`` int (every term).
- ``w2c_rotation`` [R, 3, 3]: the world-to-camera rotation (OpenCV) of each ray's view
  (depth: camera z = distance x (R d)_z; normals: rendered world normals -> camera frame, as
  the authors' ``rot = pose[:3, :3]^T``).
- ``depth`` [R] or [R, 1]: the monocular (Omnidata) depth, relative, unitless.
- ``normal`` [R, 3]: the monocular normal in the view's camera frame (the dataset's
  ``2 n - 1`` of Omnidata's output), any length (normalised here).
- ``mask`` [R] or [R, 1], optional (default all ones): where the monocular priors hold
  (``*_mask.npy``; the authors' Replica data has none, i.e. ones).
- ``segs`` [R] long: instance id per ray, 0 = background (object 0) .. K - 1.
- ``bg_origins`` / ``bg_directions`` [P^2, 3] and ``bg_w2c_rotation`` [3, 3]: a P x P patch
  (row-major) of a virtual camera, for ``bg_reg`` (only read on its steps).

Authors' quirks, kept or not (each term's docstring says which):

- ``grad_theta`` / ``grad_theta_nei`` are the two halves of ``ObjectImplicitNetworkGrid.gradient``,
  which stacks the K per-object gradients *and* the scene-SDF gradient, so with K >= 1 the
  halves pair different objects' gradients rather than x with its neighbour; :class:`SmoothnessLoss`
  uses MonoSDF's intended pairing (scene-SDF normal at x and at x + e).
- depth and normal terms are masked by ``mask`` and by "the ray's samples have SDF values of
  both signs" (``network.py``); the normal term still averages over all R rays, a masked-out
  ray giving the constants ``|n^gt|_1`` and 1 (zero gradient). We keep that.
- ``bg_reg`` rotates the virtual view's normals with the *training* view's rotation; we use
  ``bg_w2c_rotation`` for both depth and normals.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from layerforge.models.fields.base import Field, FieldOutput
from layerforge.models.fields.losses import EikonalLoss
from layerforge.models.fields.render import SamplerConfig, render_rays
from layerforge.models.optimisation import PaperTerm, batch_generator, log_value
from layerforge.models.schedules import ScheduleValue
from layerforge.renderers.volume import midpoints

__all__ = [
    "BG_GRADIENT_SCALES",
    "BG_PATCH_SIZE",
    "BG_RENDER_EVERY",
    "DEPTH_GRADIENT_ALPHA",
    "DEPTH_GRADIENT_SCALES",
    "DEPTH_ROW_WIDTH",
    "DEPTH_TARGET_SCALE",
    "DEPTH_TARGET_SHIFT",
    "OBJECT_VIOLATION_START",
    "OPACITY_CLAMP",
    "PAPER_WEIGHTS",
    "SCANNETPP_WEIGHTS",
    "SMOOTH_NORMAL_EPS",
    "SMOOTH_OFFSET",
    "BackgroundRegLoss",
    "DPEikonalLoss",
    "DepthLoss",
    "NormalCosineLoss",
    "NormalL1Loss",
    "ObjectAlone",
    "ObjectViolationLoss",
    "RGBL1Loss",
    "SemanticLoss",
    "SmoothnessLoss",
    "dp_render",
    "foreground_mask",
    "multiscale_gradient_error",
    "normal_l1_cos",
    "object_violation",
    "paper_terms",
    "scale_shift_invariant_depth",
    "smoothness_residuals",
]

# train.add_objectvio_iter = 10000 (confs/replica_grid.conf): the violation term is called with
# call_reg=True from this iteration on (training/DPRecon_train.py).
OBJECT_VIOLATION_START = 10_000

# confs/replica_grid.conf, loss section.
PAPER_WEIGHTS: dict[str, ScheduleValue] = {
    "rgb": 1.0,  # rgb_weight (rgb_loss = torch.nn.L1Loss)
    "eikonal": 0.1,  # eikonal_weight
    "smooth": 0.005,  # smooth_weight
    "depth": 0.1,  # depth_weight
    "normal_l1": 0.05,  # normal_l1_weight
    "normal_cos": 0.05,  # normal_cos_weight
    "semantic": 1.0,  # semantic_weight (use_obj_opacity = True: the object-opacity BCE)
    "object_violation": [OBJECT_VIOLATION_START, 0.0, 0.5, OBJECT_VIOLATION_START],  # reg_vio_weight from 10k
    "bg_reg": 0.1,  # bg_reg_weight
}
# confs/scannetpp_grid.conf (and youtube_grid.conf): eikonal_weight 0.05, bg_reg_weight 0.01.
SCANNETPP_WEIGHTS: dict[str, ScheduleValue] = {**PAPER_WEIGHTS, "eikonal": 0.05, "bg_reg": 0.01}

# MonoSDFLoss.get_depth_loss: target = depth_gt * 4.0 + 0.5 ("TODO remove hard-coded scaling").
DEPTH_TARGET_SCALE = 4.0
DEPTH_TARGET_SHIFT = 0.5
# MonoSDFLoss: ScaleAndShiftInvariantLoss(alpha=0.5, scales=1), batch-based reduction.
DEPTH_GRADIENT_ALPHA = 0.5
DEPTH_GRADIENT_SCALES = 1
# get_depth_loss lays the ray batch out as reshape(1, -1, 32) before the gradient term.
DEPTH_ROW_WIDTH = 32
# network.py: neighbour_points = eikonal_points + (rand - 0.5) * 0.01, i.e. +-0.005 m per axis.
SMOOTH_OFFSET = 0.01
# get_smooth_loss: normals = g / (|g| + 1e-5).
SMOOTH_NORMAL_EPS = 1e-5
# object_opacity_loss: predict_opacity.clamp(1e-4, 1 - 1e-4).
OPACITY_CLAMP = 1e-4
# network.py: patch_size = 32 (one patch), model.render_bg_iter = 10 (replica_grid.conf);
# get_bg_render_loss -> compute_grad_error: scales = 4.
BG_PATCH_SIZE = 32
BG_GRADIENT_SCALES = 4
BG_RENDER_EVERY = 10

POINTS_SALT = 2  # batch_generator salt of the eikonal-style point set (EikonalLoss uses 1)


# --------------------------------------------------------------------------- shared pieces


def dp_render(field: Field, batch: dict[str, Any], info: dict[str, Any], sampler: SamplerConfig) -> dict[str, Tensor]:
    """The batch's rays rendered once per step *with normals*, cached as ``info["render"]``.

    Same jitter as :func:`layerforge.models.fields.losses.rendered` (batch generator salt 0),
    which then reuses it; a cached render without normals is replaced (a second render).
    """
    cached = info.get("render")
    if cached is None or "normals" not in cached:
        info["render"] = render_rays(field, batch["origins"], batch["directions"], sampler,
                                     generator=batch_generator(batch, 0), compute_normals=True)
    return info["render"]


def _column(x: Tensor) -> Tensor:
    return x.reshape(-1)


def foreground_mask(field: Field, batch: dict[str, Any], info: dict[str, Any], sampler: SamplerConfig) -> Tensor:
    """[R] bool: ``mask > 0.5`` and the ray's samples see SDF values of both signs (network.py).

    The scene SDF is evaluated (no gradient) at the render's interval midpoints; cached as
    ``info["dp_recon_fg"]``.
    """
    if "dp_recon_fg" not in info:
        r = dp_render(field, batch, info, sampler)
        with torch.no_grad():
            t, _ = midpoints(r["edges"])
            pts = batch["origins"][:, None] + batch["directions"][:, None] * t[..., None]
            sdf = field(pts).sdf[..., 0]  # [R, S]
            crosses = (sdf > 0).any(-1) & (sdf < 0).any(-1)
        prior = batch.get("mask")
        ok = crosses if prior is None else crosses & (_column(prior) > 0.5)
        info["dp_recon_fg"] = ok
    return info["dp_recon_fg"]


def _camera_z(render: dict[str, Tensor], batch: dict[str, Any]) -> Tensor:
    """[R] expected camera-space z (m): distance along the unit ray x its cosine to the view's +z."""
    cos = (batch["w2c_rotation"][:, 2, :] * batch["directions"]).sum(-1)
    return render["distance"][:, 0] * cos


# --------------------------------------------------------------------------- the math


def scale_shift_invariant_depth(pred: Tensor, target: Tensor, mask: Tensor, *,
                                alpha: float = DEPTH_GRADIENT_ALPHA, row_width: int = DEPTH_ROW_WIDTH) -> Tensor:
    """MiDaS' scale-and-shift-invariant loss as MonoSDF calls it (``scales=1``, batch-based).

    Args:
        pred: [R] rendered depth; target: [R] the (already transformed) prior; mask: [R] 0/1.
        alpha: weight of the gradient term; row_width: rays per row of the layout the gradient
            term differentiates (R must be a multiple).

    ``(s, t) = argmin sum m (s p + t - g)^2`` in closed form (0, 0 where the 2x2 system is
    singular); with ``r = m (s p + t - g)`` laid out as rows of ``row_width``:
    ``sum m r^2 / (2 sum m) + alpha (sum m_i m_j |r_i - r_j| over horizontal and vertical
    neighbours) / sum m``; 0 when the mask is empty.
    """
    if pred.numel() % row_width:
        raise ValueError(f"the depth loss lays {pred.numel()} rays out in rows of {row_width}: give a multiple")
    p, g, m = pred.reshape(-1), target.reshape(-1).to(pred), mask.reshape(-1).to(pred)
    a00, a01, a11 = (m * p * p).sum(), (m * p).sum(), m.sum()
    b0, b1 = (m * p * g).sum(), (m * g).sum()
    if float(a11.detach()) == 0.0:
        return (p * 0.0).sum()
    det = a00 * a11 - a01 * a01
    if float(det.detach()) == 0.0:
        scale, shift = torch.zeros_like(det), torch.zeros_like(det)
    else:
        scale, shift = (a11 * b0 - a01 * b1) / det, (-a01 * b0 + a00 * b1) / det
    res = scale * p + shift - g
    data = (m * res * res).sum() / (2.0 * a11)
    if alpha <= 0:
        return data
    d, mm = (m * res).reshape(-1, row_width), m.reshape(-1, row_width)
    gx = ((d[:, 1:] - d[:, :-1]).abs() * mm[:, 1:] * mm[:, :-1]).sum()
    gy = ((d[1:, :] - d[:-1, :]).abs() * mm[1:, :] * mm[:-1, :]).sum()
    return data + alpha * (gx + gy) / a11


def normal_l1_cos(pred: Tensor, gt: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """MonoSDF's ``get_normal_loss(normal_pred * mask, normal_gt)``: both normalised, then
    ``mean_r |n_r - n^gt_r|_1`` and ``mean_r (1 - n_r . n^gt_r)`` over all R rays.

    pred, gt: [R, 3] in one frame; mask: [R] 0/1 (a masked ray's prediction is the zero vector).
    """
    n = F.normalize(pred * mask.reshape(-1, 1).to(pred), dim=-1)
    n_gt = F.normalize(gt.to(pred), dim=-1)
    return (n - n_gt).abs().sum(-1).mean(), (1.0 - (n * n_gt).sum(-1)).mean()


def _scene_sdf_gradient(field: Field, points: Tensor) -> Tensor:
    p = points.detach().requires_grad_(True)
    sdf = field(p).sdf
    (g,) = torch.autograd.grad(sdf.sum(), p, create_graph=True)
    return g


def smoothness_residuals(field: Field, points: Tensor, neighbours: Tensor) -> Tensor:
    """[P] ``|n(x) - n(x')|`` of the scene SDF's normals ``n = g / (|g| + 1e-5)`` (UNISURF / MonoSDF)."""
    g1, g2 = _scene_sdf_gradient(field, points), _scene_sdf_gradient(field, neighbours)
    n1 = g1 / (g1.norm(dim=-1, keepdim=True) + SMOOTH_NORMAL_EPS)
    n2 = g2 / (g2.norm(dim=-1, keepdim=True) + SMOOTH_NORMAL_EPS)
    return (n1 - n2).norm(dim=-1)


def object_violation(object_sdf: Tensor) -> Tensor:
    """ObjectSDF++'s ``object_distinct_loss``: object_sdf [P, K] -> scalar.

    ``mean_p sum_{k != k*} relu(-d_pk - sg(d_pk*))`` with ``k*`` the argmin: inside object k*
    at depth ``-d_k*``, every other object must be at least that far outside (0 where all
    d > 0 and for disjoint objects).
    """
    d_min, k_star = object_sdf.min(-1, keepdim=True)
    x = -object_sdf - d_min.detach()
    return (F.relu(x).sum(-1) - F.relu(x.gather(-1, k_star))[..., 0]).mean()


def multiscale_gradient_error(x: Tensor, mask: Tensor, scales: int = BG_GRADIENT_SCALES) -> Tensor:
    """``compute_grad_error``: x [C, H, W], mask [C, H, W] 0/1 -> scalar.

    ``sum_{s < scales} (sum_c sum |dx| m m' + |dy| m m') / M_s`` on ``x[:, ::2^s, ::2^s]`` of
    the masked image, ``M_s`` = the first channel's mask count at that scale (0 if empty).
    """
    total = x.new_zeros(())
    for i in range(scales):
        step = 2 ** i
        m, xs = mask[:, ::step, ::step].to(x), x[:, ::step, ::step]
        count = m[:1].sum()
        if float(count) == 0.0:
            continue
        d = m * xs
        gx = ((d[:, :, 1:] - d[:, :, :-1]).abs() * m[:, :, 1:] * m[:, :, :-1]).sum()
        gy = ((d[:, 1:, :] - d[:, :-1, :]).abs() * m[:, 1:, :] * m[:, :-1, :]).sum()
        total = total + (gx + gy) / count
    return total


def _eikonal_points(field: Field, batch: dict[str, Any], info: dict[str, Any], count: int) -> tuple[Tensor, Tensor]:
    """network.py's point set: ``count`` uniform points in the field's box, plus (when the step
    has rendered) one random sample midpoint per ray, and each point's neighbour
    ``x + (u - 0.5) 0.01``. Cached as ``info["dp_recon_points"]`` (points [P, 3], neighbours [P, 3])."""
    if "dp_recon_points" not in info:
        gen = batch_generator(batch, POINTS_SALT)
        lo, hi = field.aabb[0], field.aabb[1]
        pts = lo + (hi - lo) * torch.rand(count, 3, generator=gen).to(lo)
        r = info.get("render")
        if r is not None:
            t, _ = midpoints(r["edges"].detach())
            pick = torch.randint(0, t.shape[1], (t.shape[0], 1), generator=gen).to(t.device)
            near = batch["origins"] + batch["directions"] * t.gather(1, pick)
            pts = torch.cat([pts, near.detach().to(pts)])
        nei = pts + (torch.rand(pts.shape, generator=gen).to(pts) - 0.5) * SMOOTH_OFFSET
        info["dp_recon_points"] = (pts, nei)
    return info["dp_recon_points"]


# --------------------------------------------------------------------------- the terms


class _Term(PaperTerm):
    """A DP-Recon term (weights: :data:`PAPER_WEIGHTS`)."""

    paper_weights = PAPER_WEIGHTS


class _RenderTerm(_Term):
    def __init__(self, sampler: SamplerConfig, weight: ScheduleValue | None = None, name: str | None = None) -> None:
        super().__init__(weight, name)
        self.sampler = sampler


class _PointTerm(_Term):
    def __init__(self, points: int, weight: ScheduleValue | None = None, name: str | None = None) -> None:
        super().__init__(weight, name)
        self.points = points


class RGBL1Loss(_RenderTerm):
    """``mean |rgb - gt|`` over R x 3 (``rgb_loss = torch.nn.L1Loss``). Reads ``rgb``."""

    key = "rgb"

    def loss(self, field: Field, batch: dict[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        return F.l1_loss(dp_render(field, batch, info, self.sampler)["rgb"], batch["rgb"])


class DPEikonalLoss(EikonalLoss):
    """:class:`~layerforge.models.fields.losses.EikonalLoss` at DP-Recon's weight, logging its value.

    The authors' ``mean (|g| - 1)^2`` runs over every object's gradient and the scene SDF's at
    the uniform + near-surface points and their neighbours; ours over every object's at
    ``points`` uniform points of the box.
    """

    def __init__(self, points: int, weight: ScheduleValue | None = None, name: str = "eikonal") -> None:
        super().__init__(points, PAPER_WEIGHTS["eikonal"] if weight is None else weight, name)

    def __call__(self, field: Any, batch: dict[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        value = super().__call__(field, batch, step, info)
        log_value(info, self.name, value)
        return value


class SmoothnessLoss(_PointTerm):
    """``mean_p |n(x_p) - n(x_p + e_p)|``, ``e`` uniform in [-0.005, 0.005]^3 m, n the scene
    SDF's normalised gradient (:func:`smoothness_residuals`), at ``points`` uniform points of
    the box plus one near-surface sample per rendered ray (MonoSDF's pairing; see the module
    docstring for the authors' index quirk)."""

    key = "smooth"

    def loss(self, field: Field, batch: dict[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        pts, nei = _eikonal_points(field, batch, info, self.points)
        return smoothness_residuals(field, pts, nei).mean()


class DepthLoss(_RenderTerm):
    """Scale-and-shift-invariant depth (:func:`scale_shift_invariant_depth`) of the rendered
    camera z against ``4 depth + 0.5`` on :func:`foreground_mask`. Reads ``depth``,
    ``w2c_rotation``, ``mask``; R must be a multiple of :data:`DEPTH_ROW_WIDTH`."""

    key = "depth"

    def loss(self, field: Field, batch: dict[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        r = dp_render(field, batch, info, self.sampler)
        target = DEPTH_TARGET_SCALE * _column(batch["depth"]) + DEPTH_TARGET_SHIFT
        return scale_shift_invariant_depth(_camera_z(r, batch), target, foreground_mask(field, batch, info, self.sampler))


def _normal_terms(field: Field, batch: dict[str, Any], info: dict[str, Any], sampler: SamplerConfig) -> tuple[Tensor, Tensor]:
    if "dp_recon_normal" not in info:
        r = dp_render(field, batch, info, sampler)
        n_cam = torch.einsum("rij,rj->ri", batch["w2c_rotation"].to(r["normals"]), r["normals"])
        info["dp_recon_normal"] = normal_l1_cos(n_cam, batch["normal"], foreground_mask(field, batch, info, sampler))
    return info["dp_recon_normal"]


class NormalL1Loss(_RenderTerm):
    """``mean_r |n^_r - n^gt_r|_1`` in each view's camera frame (:func:`normal_l1_cos`).
    Reads ``normal``, ``w2c_rotation``, ``mask``."""

    key = "normal_l1"

    def loss(self, field: Field, batch: dict[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        return _normal_terms(field, batch, info, self.sampler)[0]


class NormalCosineLoss(_RenderTerm):
    """``mean_r (1 - n^_r . n^gt_r)`` (:func:`normal_l1_cos`). Reads ``normal``, ``w2c_rotation``, ``mask``."""

    key = "normal_cos"

    def loss(self, field: Field, batch: dict[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        return _normal_terms(field, batch, info, self.sampler)[1]


class SemanticLoss(_RenderTerm):
    """ObjectSDF++'s occlusion-aware object opacity against the one-hot instance ids:
    ``mean_{r,k} BCE(clamp(o_rk, 1e-4, 1 - 1e-4), [seg_r == k])`` over all K objects, the
    background (object 0) included. ``o`` is the render's ``object_alpha`` [R, K]. Reads ``segs``.

    (With ``use_obj_opacity = False`` the authors would use ObjectSDF's cross-entropy of the
    rendered semantics instead; the shipped configs set True.)
    """

    key = "semantic"

    def loss(self, field: Field, batch: dict[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        o = dp_render(field, batch, info, self.sampler)["object_alpha"].clamp(OPACITY_CLAMP, 1.0 - OPACITY_CLAMP)
        target = F.one_hot(batch["segs"].reshape(-1).long(), o.shape[-1]).to(o)
        return F.binary_cross_entropy(o, target)


class ObjectViolationLoss(_PointTerm):
    """:func:`object_violation` of the K object SDFs at the eikonal point set (uniform + one
    near-surface sample per rendered ray, and their neighbours). Weight 0.5 from step 10k."""

    key = "object_violation"

    def loss(self, field: Field, batch: dict[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        pts, nei = _eikonal_points(field, batch, info, self.points)
        return object_violation(field(torch.cat([pts, nei])).object_sdf)


class ObjectAlone(Field):
    """One object of a composed SDF field rendered alone, with the composed field's VolSDF beta."""

    kind = "sdf"

    def __init__(self, composed: Field, index: int) -> None:
        obj = composed.objects[index]
        super().__init__(obj.aabb.detach().cpu())
        self.aabb = obj.aabb
        self._parts = (obj, composed.laplace)  # a tuple: not registered as submodules

    def forward(self, points: Tensor, directions: Tensor | None = None) -> FieldOutput:
        obj, laplace = self._parts
        out = obj(points, directions)
        return FieldOutput(density=laplace(out.sdf), rgb=out.rgb, sdf=out.sdf)


class BackgroundRegLoss(_RenderTerm):
    """RICO-style background smoothness (``get_bg_render_loss``), every :data:`BG_RENDER_EVERY` steps.

    The background object (0) alone renders the P x P patch ``bg_origins`` / ``bg_directions``;
    loss = :func:`multiscale_gradient_error` of its camera-z depth [1, P, P] + that of its
    composited normals (alpha x the unit composite, for the authors' unnormalised ``sum w n``)
    in the camera frame of ``bg_w2c_rotation`` [3, P, P],
    with an all-ones mask (the authors' ``bg_mask = ones_like``). Other steps return 0.
    """

    key = "bg_reg"

    def __init__(self, sampler: SamplerConfig, weight: ScheduleValue | None = None, name: str | None = None,
                 every: int = BG_RENDER_EVERY, scales: int = BG_GRADIENT_SCALES) -> None:
        super().__init__(sampler, weight, name)
        self.every, self.scales = every, scales

    def __call__(self, field: Field, batch: dict[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        if step % self.every != 0 or "bg_origins" not in batch:
            return field.aabb.new_zeros(())
        return super().__call__(field, batch, step, info)

    def loss(self, field: Field, batch: dict[str, Any], step: int, info: dict[str, Any]) -> Tensor:
        o, d = batch["bg_origins"], batch["bg_directions"]
        size = int(round(o.shape[0] ** 0.5))
        if size * size != o.shape[0]:
            raise ValueError(f"bg_origins holds {o.shape[0]} rays, not a square patch")
        r = render_rays(ObjectAlone(field, 0), o, d, self.sampler, generator=batch_generator(batch, 3),
                        compute_normals=True)
        rot = batch["bg_w2c_rotation"].to(d)
        # authors' bg normal map: sum_i w_i n_i, not renormalised; render_rays returns it
        # renormalised, so alpha x that (equal where the normals along a ray agree)
        normals = r["normals"] * r["alpha"]
        depth = r["distance"][:, 0] * (d @ rot[2])
        n_cam = normals @ rot.T
        ones = torch.ones(1, size, size, dtype=d.dtype, device=d.device)
        return (multiscale_gradient_error(depth.reshape(1, size, size), ones, self.scales)
                + multiscale_gradient_error(n_cam.reshape(size, size, 3).permute(2, 0, 1), ones.expand(3, -1, -1),
                                            self.scales))


def paper_terms(sampler: SamplerConfig, points: int, weights: dict[str, ScheduleValue] | None = None) -> list[Any]:
    """All nine terms at the Replica weights (``weights`` overrides by name, e.g. :data:`SCANNETPP_WEIGHTS`).

    ``points``: uniform points per step for the eikonal, smoothness and violation terms
    (the authors draw one per ray: 1024).
    """
    w = dict(weights or {})
    return [
        RGBL1Loss(sampler, w.get("rgb")),
        DPEikonalLoss(points, w.get("eikonal")),
        SmoothnessLoss(points, w.get("smooth")),
        DepthLoss(sampler, w.get("depth")),
        NormalL1Loss(sampler, w.get("normal_l1")),
        NormalCosineLoss(sampler, w.get("normal_cos")),
        SemanticLoss(sampler, w.get("semantic")),
        ObjectViolationLoss(points, w.get("object_violation")),
        BackgroundRegLoss(sampler, w.get("bg_reg")),
    ]
