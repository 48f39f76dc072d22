"""DP-Recon (DP-Recon/DP-Recon) visibility: a dense grid of the maximum transmittance seen
from the input views, its compositing along novel-view rays, and the visibility-guided SDS
weights of the geometry and texture stages.

Read from the authors' code (our own implementation; paths are inside their repo's ``code/``):

- Grid (``model/VisField.py::VisGrid``): one dense ``nn.Parameter`` of 256^3 floats, filled
  with 0. A world point ``x`` is divided by ``divide_factor`` 1.1 and looked up with
  ``F.grid_sample(..., align_corners=True)`` (trilinear, zero padding outside), with x and z
  swapped so that the grid's first axis is world x. So the grid *vertices* sit on the box
  [-1.1, 1.1]^3 (the scene is normalised into the unit sphere; 1.1 keeps it inside), vertex
  ``i`` at ``lo + i (hi - lo) / (R - 1)``. We store ``values[ix, iy, iz]`` the same way.
- Update: the grid is **learned, not filled directly**. ``training/DPRecon_train.py``
  (``init_visgrid`` block, from ``add_prior_iter`` = 35k, ``confs/replica_grid.conf``) runs
  ``visgrid_optim_iter`` = 20 passes over all input images; per image it renders every pixel
  with the (eval-mode) SDF model, sums over ray chunks the hinge loss
  ``VisGrid.get_loss = mean(max(T.detach() - grid(x), 0))`` over all samples ``x`` with their
  transmittance ``T`` (``network.py::volume_rendering``: T before the sample, ``exp(-cumsum``
  of the shifted free energy)), and takes one step of the shared Adam (grid group lr
  5e-4 x ``lr_factor_for_grid`` 20 = 1e-2, betas (0.9, 0.99), eps 1e-15). The hinge's
  gradient with respect to the grid is never positive, so Adam only raises the grid: it
  climbs until it covers the largest T seen at each place, an approximate (smeared by the
  trilinear lookup, possibly overshooting through momentum) running maximum.
  :meth:`VisibilityGrid.loss` / :meth:`VisibilityGrid.fit_step` are that procedure;
  :meth:`VisibilityGrid.update_max` is our exact, deterministic alternative (scatter
  ``amax`` into the nearest vertex), not the authors'.
- Smoothing (``VisGrid.update_visgrid``): ``F.conv3d`` with a normalised 5^3 Gaussian
  (sigma 0.5 voxels) and ``padding=2``, i.e. **zero** padding, in place. Note: the released
  training code defines it but never calls it (only the file's ``__main__`` self-test does);
  :meth:`VisibilityGrid.smooth` is there for pipelines that follow the paper's text.
- Compositing (``threestudio/models/renderers/neus_volume_renderer.py``, ``vis_map``):
  ``v = sum_i w_i grid(x_i)`` with the volume-rendering weights (nerfacc
  ``accumulate_along_rays``), **not** normalised by ``sum_i w_i``, then clamped to at most 1.
  The grid is queried under ``no_grad`` (``network.py::get_vis``). The texture stage
  instead interpolates the grid's values at mesh vertices with the rasterizer
  (``nvdiff_rasterizer.py``), also clamped to 1: :meth:`VisibilityGrid.query` on the
  vertices serves that.
- Per-pixel SDS weight (``threestudio/models/guidance/stable_diffusion_guidance.py``,
  ``compute_grad_sds``; ``geometry.yaml`` sets ``vis_region_max`` 0.1 and
  ``none_vis_region_max`` 20): ``v >= 0.5: 0.1 (1 - (v - 0.5) / 0.5)``,
  ``v < 0.5: 20 - 2 (20 - 1) v = 20 - 38 v``; it multiplies the SDS gradient after ``v`` is
  resized bilinearly (``align_corners=False``) to the 64x64 latent. Texture stage
  (``texture.yaml`` ``color_vis_thresh`` 0.3): weight 1 where ``v < 0.3``, 0 elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layerforge.models.fields.base import Field
from layerforge.models.fields.render import SamplerConfig, render_rays
from layerforge.renderers.cameras import Camera, generate_rays
from layerforge.renderers.volume import midpoints

# Grid resolution per axis: VisGrid(resolution=256), code/model/VisField.py; METHODS.md "dense 256^3".
VISGRID_RESOLUTION = 256
# Half-size of the grid's box: points are divided by divide_factor=1.1 before the
# align_corners=True lookup (code/model/VisField.py), so the vertices span [-1.1, 1.1]^3.
VISGRID_HALF_EXTENT = 1.1
# Initial value of every voxel: VisGrid(fill_data=0.0), code/training/DPRecon_train.py.
VISGRID_FILL = 0.0
# Most bytes of input-view samples (points + transmittance) kept across the fit's passes (ours).
VISGRID_CACHE_BYTES = 2**30
# Iteration at which the grid is fitted: add_prior_iter = 35000, code/confs/replica_grid.conf.
VISGRID_INIT_ITER = 35_000
# Passes over all input views when fitting: visgrid_optim_iter = 20, code/confs/replica_grid.conf.
VISGRID_OPTIM_PASSES = 20
# Adam learning rate of the grid: learning_rate 5e-4 x lr_factor_for_grid 20
# (code/confs/replica_grid.conf; 'visgrid' param group in code/training/DPRecon_train.py).
VISGRID_LR = 5.0e-4 * 20.0
# Adam betas and eps of that optimiser: code/training/DPRecon_train.py (betas=(0.9, 0.99), eps=1e-15).
VISGRID_ADAM_BETAS = (0.9, 0.99)
VISGRID_ADAM_EPS = 1e-15
# Gaussian smoothing kernel: kernel_size = 5, sigma = 0.5 (voxels), code/model/VisField.py.
SMOOTH_KERNEL_SIZE = 5
SMOOTH_SIGMA = 0.5
# Rendered visibility is clamped to at most this: vis_map[vis_map > 1.0] = 1.0,
# code/threestudio/models/renderers/neus_volume_renderer.py.
RENDER_MAX = 1.0
# The geometry-stage per-pixel SDS weight is layerforge.models.guidance.visibility_weight_map.
# Texture-stage RGB SDS: zero where visibility >= 0.3, code/texture.yaml color_vis_thresh.
TEXTURE_VIS_THRESHOLD = 0.3


def gaussian_kernel_3d(size: int = SMOOTH_KERNEL_SIZE, sigma: float = SMOOTH_SIGMA) -> Tensor:
    """Normalised isotropic 3-D Gaussian kernel.

    Args:
        size: side length in voxels (odd).
        sigma: standard deviation in voxels.

    Returns:
        [size, size, size] float32, ``exp(-|d|^2 / (2 sigma^2))`` over integer offsets ``d``
        from the centre, divided by its sum.
    """
    if size % 2 != 1:
        raise ValueError(f"kernel size must be odd, got {size}")
    offsets = torch.arange(size, dtype=torch.float32) - size // 2
    dx, dy, dz = torch.meshgrid(offsets, offsets, offsets, indexing="ij")
    kernel = torch.exp(-(dx**2 + dy**2 + dz**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


class VisibilityGrid(nn.Module):
    """Dense grid of the maximum transmittance seen from the input views.

    ``values[ix, iy, iz]`` is the value at the vertex
    ``lo + (ix, iy, iz) * (hi - lo) / (R - 1)`` (world units of the normalised scene, the
    authors' ``align_corners=True`` layout); in between, values are trilinear, and outside
    the box the lookup blends towards 0 (zero padding), as ``F.grid_sample`` there.

    Args:
        resolution: vertices per axis R (>= 2); the paper's is :data:`VISGRID_RESOLUTION`.
        lo, hi: the box's corners, scalars (a cube) or 3-sequences; default
            ``[-1.1, 1.1]^3`` (:data:`VISGRID_HALF_EXTENT`).
        fill: initial value of every vertex.
    """

    def __init__(
        self,
        resolution: int = VISGRID_RESOLUTION,
        lo: float | tuple[float, float, float] = -VISGRID_HALF_EXTENT,
        hi: float | tuple[float, float, float] = VISGRID_HALF_EXTENT,
        fill: float = VISGRID_FILL,
    ) -> None:
        super().__init__()
        if resolution < 2:
            raise ValueError(f"resolution must be >= 2, got {resolution}")
        lo_t = torch.as_tensor(lo, dtype=torch.float32).expand(3).clone()
        hi_t = torch.as_tensor(hi, dtype=torch.float32).expand(3).clone()
        if not bool((hi_t > lo_t).all()):
            raise ValueError(f"box must have hi > lo, got lo={lo_t.tolist()} hi={hi_t.tolist()}")
        self.resolution = int(resolution)
        self.register_buffer("lo", lo_t)
        self.register_buffer("hi", hi_t)
        self.values = nn.Parameter(torch.full((resolution,) * 3, float(fill), dtype=torch.float32))

    # -- coordinates -------------------------------------------------------------------------

    def vertex_positions(self) -> Tensor:
        """[R, 3] world coordinate of vertex index i along each axis (column a: axis a)."""
        i = torch.arange(self.resolution, dtype=self.lo.dtype, device=self.lo.device)[:, None]
        return self.lo + i * (self.hi - self.lo) / (self.resolution - 1)

    def _continuous_index(self, points: Tensor) -> Tensor:
        """[..., 3] world points -> [..., 3] fractional vertex indices in [0, R-1] inside the box."""
        return (points - self.lo) / (self.hi - self.lo) * (self.resolution - 1)

    # -- lookup ------------------------------------------------------------------------------

    def query(self, points: Tensor) -> Tensor:
        """Trilinear lookup.

        Args:
            points: [P, 3] world points (any leading shape [..., 3] is accepted).

        Returns:
            [P] (or [...]) grid values; differentiable with respect to the grid.
        """
        shape = points.shape[:-1]
        flat = points.reshape(-1, 3).to(self.values.dtype)
        normalised = 2.0 * (flat - self.lo) / (self.hi - self.lo) - 1.0  # [-1, 1] on the box
        # grid_sample's last coordinate indexes the input's first spatial axis (D = our x).
        grid = normalised[:, [2, 1, 0]].reshape(1, 1, 1, -1, 3)
        out = F.grid_sample(
            self.values[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )
        return out.reshape(shape)

    def render(self, weights: Tensor, points: Tensor, clamp: bool = True) -> Tensor:
        """Composited visibility of rays, ``v = sum_i w_i grid(x_i)`` (not normalised).

        Args:
            weights: [R, S] volume-rendering weights ``w_i = T_i alpha_i`` of the rays' samples.
            points: [R, S, 3] the samples' world positions.
            clamp: clamp ``v`` to at most :data:`RENDER_MAX` = 1, as the authors do.

        Returns:
            [R] visibility in [0, 1] (when the grid is). The grid is read without gradient
            (the authors query it under ``no_grad``); gradients still flow into ``weights``.
        """
        if points.shape[:-1] != weights.shape or points.shape[-1] != 3:
            raise ValueError(f"points {tuple(points.shape)} must be weights {tuple(weights.shape)} + (3,)")
        with torch.no_grad():
            grid_values = self.query(points)  # [R, S]
        v = (weights * grid_values).sum(dim=-1)
        if clamp:
            v = v.clamp(max=RENDER_MAX)
        return v

    # -- the authors' learned update ----------------------------------------------------------

    def loss(self, points: Tensor, transmittance: Tensor) -> Tensor:
        """The authors' hinge, ``mean(max(T - grid(x), 0))`` over samples; T is detached.

        Args:
            points: [R_rays, S, 3] (or [N, 3]) sample positions from input-view rays.
            transmittance: [R_rays, S] (or [N]) transmittance *before* each sample, in [0, 1].

        Returns:
            Scalar loss; its gradient with respect to ``values`` is never positive.
        """
        if points.shape[:-1] != transmittance.shape:
            raise ValueError(
                f"points {tuple(points.shape)} must be transmittance {tuple(transmittance.shape)} + (3,)"
            )
        return torch.relu(transmittance.detach().to(self.values.dtype) - self.query(points)).mean()

    def make_optimizer(self, lr: float = VISGRID_LR) -> torch.optim.Adam:
        """Adam over ``values`` with the authors' settings (lr 1e-2, betas (0.9, 0.99), eps 1e-15)."""
        return torch.optim.Adam([self.values], lr=lr, betas=VISGRID_ADAM_BETAS, eps=VISGRID_ADAM_EPS)

    def fit_step(self, optimizer: torch.optim.Optimizer, points: Tensor, transmittance: Tensor) -> float:
        """One of the authors' steps (one input image's rays): zero grad, hinge, backward, step.

        Args:
            optimizer: e.g. :meth:`make_optimizer`.
            points, transmittance: as :meth:`loss`.

        Returns:
            The loss before the step.
        """
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss(points, transmittance)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    # -- our exact alternative ---------------------------------------------------------------

    @torch.no_grad()
    def update_max(self, points: Tensor, transmittance: Tensor) -> None:
        """Exact running maximum (ours, not the authors'): each sample writes its T into its
        nearest vertex with ``scatter_reduce(amax)``; a vertex never decreases. Samples
        outside the box are ignored.

        Args:
            points: [R_rays, S, 3] (or [N, 3]) sample positions.
            transmittance: [R_rays, S] (or [N]) transmittance before each sample.
        """
        if points.shape[:-1] != transmittance.shape:
            raise ValueError(
                f"points {tuple(points.shape)} must be transmittance {tuple(transmittance.shape)} + (3,)"
            )
        r = self.resolution
        idx = torch.round(self._continuous_index(points.reshape(-1, 3).to(self.lo.dtype))).long()
        t = transmittance.reshape(-1).to(self.values.dtype)
        inside = ((idx >= 0) & (idx < r)).all(dim=-1)
        idx, t = idx[inside], t[inside]
        flat_index = (idx[:, 0] * r + idx[:, 1]) * r + idx[:, 2]
        flat = self.values.data.view(-1)
        flat.scatter_reduce_(0, flat_index, t, reduce="amax", include_self=True)

    # -- smoothing ---------------------------------------------------------------------------

    @torch.no_grad()
    def smooth(self, size: int = SMOOTH_KERNEL_SIZE, sigma: float = SMOOTH_SIGMA) -> None:
        """In-place convolution with the normalised Gaussian of :func:`gaussian_kernel_3d`,
        zero padding (the authors' ``conv3d(padding=size // 2)``): mass is kept away from
        the borders and leaks out at them."""
        kernel = gaussian_kernel_3d(size, sigma).to(self.values)
        out = F.conv3d(self.values.data[None, None], kernel[None, None], padding=size // 2)
        self.values.data.copy_(out[0, 0])


def ray_transmittance(field: Field, origins: Tensor, directions: Tensor, sampler: SamplerConfig,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Samples of R rays through ``field`` and the transmittance before each.

    Args:
        field: any field (the composed scene SDF for the grid's fit).
        origins, directions: [R, 3] world rays (unit directions).
        sampler: the recon stage's sampling.

    Returns:
        points [R, S, 3] (interval midpoints), transmittance [R, S] ``T_i = 1 - sum_{j<i} w_j``
        (exactly ``exp(-sum_{j<i} sigma_j delta_j)`` of the render's weights), weights [R, S].
    """
    r = render_rays(field, origins, directions, sampler, generator=generator)
    w = r["weights"]
    t, _ = midpoints(r["edges"])
    points = origins[:, None] + directions[:, None] * t[..., None]
    before = torch.cumsum(w, dim=-1) - w
    return points, (1.0 - before).clamp(0.0, 1.0), w


def fit_visibility_grid(grid: VisibilityGrid, field: Field, cameras: Camera, sampler: SamplerConfig, *,
                        method: str = "learned", passes: int = VISGRID_OPTIM_PASSES, chunk_rays: int = 8192,
                        lr: float = VISGRID_LR, progress: Callable[[int, int], None] | None = None) -> None:
    """Fill ``grid`` from every pixel of the input ``cameras`` (no gradient into ``field``).

    ``method="learned"``: the authors' procedure, ``passes`` passes over the images, one Adam
    step of :meth:`VisibilityGrid.fit_step` per image on the hinge summed over its ray chunks.
    ``method="max"``: one pass of the exact :meth:`VisibilityGrid.update_max` (ours).
    ``progress(done, total)`` is called after each image.
    """
    if method not in ("learned", "max"):
        raise ValueError(f"visibility method must be 'learned' or 'max', got {method!r}")
    origins, dirs = generate_rays(cameras)
    n = len(cameras)
    rounds = passes if method == "learned" else 1
    opt = grid.make_optimizer(lr) if method == "learned" else None
    # the field is frozen and the sampler deterministic, so every pass sees the same samples:
    # keep them when they fit the cache budget instead of rendering every image `passes` times
    per_image = origins[0].numel() // 3 * (sampler.num_samples + sampler.num_importance) * 4 * 4
    cache: dict[int, list[tuple[Tensor, Tensor]]] | None = {} if per_image * n <= VISGRID_CACHE_BYTES else None
    was_training = field.training
    field.eval()

    def samples(i: int) -> list[tuple[Tensor, Tensor]]:
        if cache is not None and i in cache:
            return cache[i]
        o, d = origins[i].reshape(-1, 3), dirs[i].reshape(-1, 3)
        with torch.no_grad():
            out = [ray_transmittance(field, o[s:s + chunk_rays], d[s:s + chunk_rays], sampler)[:2]
                   for s in range(0, o.shape[0], chunk_rays)]
        if cache is not None:
            cache[i] = out
        return out

    try:
        for p in range(rounds):
            for i in range(n):
                if opt is not None:
                    opt.zero_grad(set_to_none=True)
                for pts, trans in samples(i):
                    if opt is None:
                        grid.update_max(pts, trans)
                    else:
                        # the authors sum the per-chunk means over an image before the step
                        grid.loss(pts, trans).backward()
                if opt is not None:
                    opt.step()
                if progress is not None:
                    progress(p * n + i + 1, rounds * n)
    finally:
        field.train(was_training)


def texture_sds_mask(v: Tensor, threshold: float = TEXTURE_VIS_THRESHOLD) -> Tensor:
    """Texture-stage RGB SDS weight: 1 where ``v < threshold``, 0 where ``v >= threshold``.

    Args:
        v: [...] rendered visibility.
        threshold: the authors' ``color_vis_thresh`` 0.3.

    Returns:
        [...] float mask, dtype of ``v`` (float32 for integer input).
    """
    dtype = v.dtype if v.is_floating_point() else torch.float32
    return (v < threshold).to(dtype)


__all__ = [
    "RENDER_MAX",
    "SMOOTH_KERNEL_SIZE",
    "SMOOTH_SIGMA",
    "TEXTURE_VIS_THRESHOLD",
    "VISGRID_ADAM_BETAS",
    "VISGRID_ADAM_EPS",
    "VISGRID_FILL",
    "VISGRID_HALF_EXTENT",
    "VISGRID_INIT_ITER",
    "VISGRID_LR",
    "VISGRID_OPTIM_PASSES",
    "VISGRID_RESOLUTION",
    "VisibilityGrid",
    "fit_visibility_grid",
    "gaussian_kernel_3d",
    "ray_transmittance",
    "texture_sds_mask",
]
