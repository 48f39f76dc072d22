"""One set of 3D Gaussians per panorama layer, trained far to near with the earlier sets frozen.

LayerPano3D (3DTopia/LayerPano3D, ``LayerPano.py``, ``scene/layer_gaussian_model.py``):

- layer 0 is the completed background panorama; each nearer layer adds Gaussians only where it
  reveals new content (its own mask), initialised from its completed RGB-D: one point per pixel
  (thinned here by ``stride``, and along each row by ``1 / cos(latitude)`` so the points are about
  evenly spread on the sphere), scale the root mean squared distance to the 3 nearest points
  (3DGS's ``distCUDA2``), opacity 0.1, SH DC from the colour;
- a layer trains on 24 perspective views of its own completed panorama (yaw every 45 degrees x
  pitch -45 / 0 / 45, FoV 90), one random view a step, rendered together with the frozen earlier
  layers on a white background, loss ``(1 - lambda_dssim) L1 + lambda_dssim (1 - SSIM)``,
  lambda_dssim 0.2; the SH degree grows by one every 1000 iterations up to 3;
- densification is 3DGS's (gsplat's ``DefaultStrategy`` runs it here, on CUDA and CPU alike);
  it sees only the trainable layer's Gaussians.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from layerforge.models.gaussians import PARAM_NAMES, GaussianModel
from layerforge.models.image_metrics import ssim_tensor
from layerforge.models.optimisation import PaperTerm
from layerforge.renderers.camera_set import CameraSet
from layerforge.renderers.cameras import Camera
from layerforge.renderers.gaussians import render_gaussians
from layerforge.renderers.output import RenderOutput
from layerforge.renderers.panorama import (
    equirect_directions,
    equirect_to_perspective,
    pano_cameras,
)

# LayerPano3D's training views (gen_traindata.py): yaw every 45 deg x pitch -45 / 0 / 45, FoV 90.
TRAIN_YAW_STEP_DEG = 45.0
TRAIN_PITCHES_DEG = (-45.0, 0.0, 45.0)
TRAIN_FOV_DEG = 90.0
INIT_OPACITY = 0.1  # 3DGS create_from_pcd
KNN = 3  # 3DGS distCUDA2: mean squared distance to the 3 nearest neighbours
WHITE = (1.0, 1.0, 1.0)  # LayerPano3D trains with white_background = True


def training_cameras(size: int, *, yaw_step_deg: float = TRAIN_YAW_STEP_DEG,
                     pitches_deg: Sequence[float] = TRAIN_PITCHES_DEG, fov_deg: float = TRAIN_FOV_DEG,
                     center: Sequence[float] = (0.0, 0.0, 0.0)) -> Camera:
    """The training cameras at ``center``: every yaw step (from 0) x every pitch, square ``size`` px.

    24 cameras with the paper's defaults, ordered pitch-major.
    """
    yaws = np.arange(0.0, 360.0, yaw_step_deg)
    yaw, pitch = np.meshgrid(yaws, np.asarray(pitches_deg, dtype=np.float64), indexing="xy")
    return pano_cameras(torch.from_numpy(yaw.reshape(-1)), torch.from_numpy(pitch.reshape(-1)), fov_deg, size, size,
                        center=center)


def training_views(rgb: Tensor, cameras: Camera) -> CameraSet:
    """The panorama ``rgb`` [H, W, 3] (linear) resampled into ``cameras`` (bilinear, seam wrapped)."""
    return CameraSet(cameras, equirect_to_perspective(rgb, cameras).clamp(0.0, 1.0).contiguous())


def sphere_thinning(height: int, width: int, stride: int) -> Tensor:
    """[H, W] bool: every ``stride``-th row, and in it every ``stride / cos(lat)``-th column.

    Equirectangular rows shrink towards the poles as ``cos(latitude)``; thinning them by the same
    factor keeps about one kept pixel per ``stride`` x ``stride`` pixels' worth of solid angle.
    """
    keep = torch.zeros(height, width, dtype=torch.bool)
    lat = (0.5 - (torch.arange(height, dtype=torch.float64) + 0.5) / height) * math.pi
    for i in range(0, height, stride):
        step = max(1, round(stride / max(math.cos(float(lat[i])), 1e-6)))
        keep[i, ::min(step, width)] = True
    return keep


def init_layer_gaussians(rgb: Tensor, depth: Tensor, mask: Tensor, *, stride: int = 1, sh_degree: int = 3,
                         opacity: float = INIT_OPACITY, center: Sequence[float] = (0.0, 0.0, 0.0)) -> GaussianModel:
    """Gaussians lifted from a completed RGB-D panorama where ``mask`` is set.

    Args:
        rgb: [H, W, 3] linear colours in [0, 1].
        depth: [H, W] radial distance, metres (non-finite or <= 0 pixels are skipped).
        mask: [H, W] bool, the pixels this layer reveals.
        stride: keep one pixel per ``stride`` x ``stride`` block of solid angle (:func:`sphere_thinning`).
        sh_degree: SH degree of the model (its higher bands start at zero).
        opacity: initial opacity (3DGS: 0.1).
        center: [3] panorama centre, metres.
    """
    from scipy.spatial import cKDTree

    H, W = depth.shape
    keep = mask.bool() & sphere_thinning(H, W, stride) & torch.isfinite(depth) & (depth > 0)
    if not bool(keep.any()):
        raise ValueError("the layer reveals no pixel with a valid depth")
    dirs = equirect_directions(H, W, dtype=torch.float64)
    c = torch.as_tensor(center, dtype=torch.float64).reshape(1, 3)
    points = (dirs[keep] * depth.double()[keep][:, None] + c)
    colours = rgb.double()[keep].clamp(0.0, 1.0)
    pts = points.numpy()
    k = min(KNN + 1, len(pts))
    if k > 1:
        dist, _ = cKDTree(pts).query(pts, k=k)
        mean_sq = (dist[:, 1:] ** 2).mean(axis=1)
    else:  # a single point: one pixel's footprint
        mean_sq = np.array([(float(depth[keep][0]) * math.pi / H * stride) ** 2])
    scale = torch.from_numpy(np.sqrt(np.clip(mean_sq, 1e-14, None)))[:, None].expand(-1, 3)
    n = len(pts)
    return GaussianModel(points.float(), scale.float().contiguous(), colours.float(),
                         torch.full((n,), opacity), sh_degree=sh_degree)


class FrozenGaussians:
    """Activated parameters of the layers already trained (no gradients), padded to one SH size.

    Args:
        layers: the earlier layers' :class:`GaussianModel` s, far to near.
    """

    def __init__(self, layers: Sequence[GaussianModel], sh_bases: int) -> None:
        self.sh_bases = sh_bases
        parts = [_activated_detached(m, sh_bases) for m in layers]
        if parts:
            self.tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        else:
            self.tensors = {}

    def __len__(self) -> int:
        return int(self.tensors["means"].shape[0]) if self.tensors else 0

    def to(self, device: torch.device | str) -> FrozenGaussians:
        self.tensors = {k: v.to(device) for k, v in self.tensors.items()}
        return self


def _pad_sh(sh: Tensor, bases: int) -> Tensor:
    """SH coefficients [N, K, 3] zero-padded (or cut) to ``bases`` bands [N, bases, 3]."""
    if sh.shape[1] < bases:
        sh = torch.cat([sh, sh.new_zeros(sh.shape[0], bases - sh.shape[1], 3)], dim=1)
    return sh[:, :bases]


def _activated_detached(model: GaussianModel, sh_bases: int) -> dict[str, Tensor]:
    g = {k: v.detach() for k, v in model.activated().items()}
    g["sh_coeffs"] = _pad_sh(g["sh_coeffs"], sh_bases)
    return g


def render_gaussian_layers(model: GaussianModel | None, frozen: FrozenGaussians, cameras: Camera, *, sh_degree: int,
                  background: Sequence[float] = WHITE, backend: str = "auto") -> RenderOutput:
    """Render the frozen layers and the trainable one together (frozen first in the arrays).

    ``meta["n_frozen"]`` is the number of frozen Gaussians; ``meta["means2d"]`` [B, N_all, 2].
    """
    parts = [frozen.tensors] if len(frozen) else []
    if model is not None:
        g = model.activated()
        parts.append(g)
    if not parts:
        raise ValueError("nothing to render: no trainable and no frozen Gaussians")
    k = max(p["sh_coeffs"].shape[1] for p in parts)
    sh = [_pad_sh(p["sh_coeffs"], k) for p in parts]
    cat = {name: torch.cat([p[name] for p in parts]) for name in ("means", "quats", "scales", "opacities")}
    dev = cat["means"].device
    out = render_gaussians(cat["means"], cat["quats"], cat["scales"], cat["opacities"], None, cameras.to(device=dev),
                           sh_coeffs=torch.cat(sh), sh_degree=sh_degree,
                           background=torch.tensor(background, dtype=cat["means"].dtype, device=dev),
                           backend=backend)  # type: ignore[arg-type]
    out.meta["n_frozen"] = len(frozen)
    return out


class _TrainableSlice:
    """The trainable layer's rows of the rendered screen-space means, as gsplat's strategy reads them.

    The strategy calls ``retain_grad()`` before the backward pass and reads ``.grad`` after it;
    both act on the full ``means2d`` [B, N_all, 2], and ``.grad`` returns its rows from ``start``.
    """

    def __init__(self, means2d: Tensor, start: int) -> None:
        self.full, self.start = means2d, start

    def retain_grad(self) -> None:
        self.full.retain_grad()

    @property
    def grad(self) -> Tensor:
        g = self.full.grad
        if g is None:
            return torch.zeros_like(self.full[:, self.start:])
        return g[:, self.start:]


def sh_degree_at(step: int, max_degree: int, every: int) -> int:
    """3DGS's ``oneupSHdegree``: one more SH band every ``every`` iterations (1-based), up to ``max_degree``."""
    return min(max_degree, (step + 1) // every) if every > 0 else max_degree


class PhotometricLoss(PaperTerm):
    """LayerPano3D's image loss: ``(1 - lambda_dssim) L1 + lambda_dssim (1 - SSIM)`` on one view.

    The batch is a :class:`CameraSet` of the layer's completed panorama. Fills ``info["gsplat"]``
    for the densification policy with the trainable layer's screen-space means and radii only.
    """

    key = "rgb"
    paper_weights: ClassVar[dict[str, float]] = {"rgb": 1.0}

    def __init__(self, frozen: FrozenGaussians, *, lambda_dssim: float, max_sh_degree: int, sh_every: int,
                 background: Sequence[float] = WHITE, backend: str = "auto", weight: float | None = None) -> None:
        super().__init__(weight)
        self.frozen = frozen
        self.lambda_dssim = lambda_dssim
        self.max_sh_degree, self.sh_every = max_sh_degree, sh_every
        self.background, self.backend = tuple(background), backend

    def loss(self, model: torch.nn.Module, batch: Any, step: int, info: dict[str, Any]) -> Tensor:
        assert isinstance(model, GaussianModel)
        views: CameraSet = batch
        out = render_gaussian_layers(model, self.frozen, views.cameras, sh_degree=sh_degree_at(step, self.max_sh_degree, self.sh_every),
                            background=self.background, backend=self.backend)
        n_frozen = out.meta["n_frozen"]
        info["gsplat"] = {"means2d": _TrainableSlice(out.meta["means2d"], n_frozen),
                          "radii": out.meta["radii"][:, n_frozen:], "width": views.cameras.width,
                          "height": views.cameras.height, "n_cameras": len(views), "gaussian_ids": None}
        target = views.images.to(out.rgb.device)
        l1 = (out.rgb - target).abs().mean()
        dssim = 1.0 - ssim_tensor(out.rgb, target, padding="same")
        info.setdefault("log", {}).update(l1=float(l1.detach()), n_gaussians=float(len(model)))
        return (1.0 - self.lambda_dssim) * l1 + self.lambda_dssim * dssim


def layer_state(model: GaussianModel) -> dict[str, Tensor]:
    """The model's raw parameters by name (what the per-layer artifact stores)."""
    return {name: model.params[name].detach().clone() for name in PARAM_NAMES}


def model_from_state(state: dict[str, Tensor], sh_degree: int) -> GaussianModel:
    """A :class:`GaussianModel` of any size from :func:`layer_state` output."""
    n = state["means"].shape[0]
    model = GaussianModel(torch.zeros(n, 3), torch.ones(n, 3), torch.full((n, 3), 0.5), torch.full((n,), 0.5),
                          sh_degree=sh_degree)
    model.load_state_dict(state)
    return model
