"""UDC-NeRF (W-Ted/UDC-NeRF): one shared trunk with learnable object codes, a scene
(composition) branch and a decomposition into a background and K foreground components.

Read from the authors' ``models/nerf_model.py`` and ``models/rendering.py`` (our own code):

- Two networks, as the paper's ``nerf_coarse`` / ``nerf_fine`` (each its own trunk, codes,
  heads): the coarse one evaluates only the scene branch at 64 stratified samples; the fine
  one evaluates scene branch and decomposition at those + 64 importance samples drawn from
  the coarse scene weights (``use_which_weight_for_fine: global``).
- Trunk: encoding -> 4 Linear+LeakyReLU layers of 256, the encoding concatenated again at
  layer 2 (``inst_skips: [2]``). Codes: ``nn.Embedding(K+1, 64)`` (``obj_code_type: embed``,
  N(0, 1) init); *K+1*: the background has a code too (``inst_K`` = 6 for ToyDesk2 = 1 + 5).
  Fusion: one ``Linear(256 + 64 -> 256)`` shared by all codes, no activation.
- A head (scene, background, shared foreground): sigma = Linear-LeakyReLU-Linear(1) on the
  feature; colour = Linear(256) -> [., encoded dir] -> 256-256-128 LeakyReLU -> Linear(3) +
  sigmoid. The scene head sees the mean of the K+1 fused features.
- Rendering works on sample *points* t_i with ``delta_i = t_{i+1} - t_i`` and a last delta
  of 1e10 (the paper's infinity) for scene / instance / merged / background, 0 for the
  foreground components; alpha = 1 - exp(-delta relu(sigma + noise)), noise N(0, 1) on scene,
  instance and merged densities while training (``noise_std: 1``), none on components.
- Blocking (``block_type: sigma``): a hard Gumbel-softmax over the raw component sigmas
  (logits) picks one component per point; where a foreground wins, the background sigma is
  set to -5e6 (its alpha is 0) and the raw background sigma there is returned for the
  suppression loss. A *second*, independent hard Gumbel-softmax (tau 0.1) over the blocked
  sigmas gives the one-hot mask of the instance composition: ``sigma_inst = sum_k m_k
  sigma_k``, ``c_inst = sum_k m_k c_k``. Merged: ``(sigma_scene + sigma_inst)/2``, colours
  likewise. Per-component renders use the blocked sigmas. (The paper draws the blocking mask
  with tau 1 and the composition mask with tau 0.1; in the hard forward tau does not matter,
  and the blocking mask carries no gradient.)
- Segmentation for mIoU: ``sum_i w_i^merged m_ik`` (the paper's ``merged_masks``).

Ambiguities resolved here (ours):
- Points are mapped into the scene box: [-1, 1] for the frequency encoding (our
  :class:`PositionalEncoding` multiplies by pi; the paper's Embedding does not and feeds
  coordinates scaled by ``scale_factor``), [0, 1] for the hash grid (fast variant).
- Stratified samples: S points, the first at ``near`` and the last at ``far``, interior
  points jittered within half a bin (the paper also jitters the end points).
- Importance samples: :func:`~layerforge.renderers.volume.sample_pdf` on the coarse
  midpoints with weights ``w[1:-1]``, as the paper, but at stratified CDF levels.
- ``generator=None`` (rendering): no Gumbel noise (plain argmax), no density noise, no
  jitter, deterministic importance levels.
- Object boxes (``object_boxes``, off in the paper config): a foreground component's density
  is confined to its object's box (from the masks' depths); see :class:`UDCNeRFConfig`.
- Edits (:mod:`.edits`): each component slot evaluates the trunk at its inverse-transformed
  points and directions; the scene branch cannot be edited, so its outputs stay those of
  the unedited scene, and the coarse density that places the fine samples is the sum over
  the edited slots' transforms of the coarse scene density.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layerforge.models.fields.base import normalize_aabb
from layerforge.models.fields.encodings import NERF_DIRECTION_FREQUENCIES, NERF_POSITION_FREQUENCIES, PositionalEncoding
from layerforge.models.fields.hashgrid import HashGrid, HashGridConfig
from layerforge.renderers.volume import sample_pdf, sample_stratified

if TYPE_CHECKING:
    from .edits import Slot

__all__ = [
    "UDCNeRFConfig",
    "UDCNeRF",
    "UDCNetwork",
    "hard_gumbel_softmax",
    "gumbel_noise",
    "block_background",
    "point_deltas",
    "render_points",
    "DELTA_INF",
    "BLOCK_SIGMA",
    "GUMBEL_TAU",
]

# rendering.py: ``delta_inf = 1e10 * ones`` (NeRF's stand-in for an infinite last interval).
DELTA_INF = 1e10
# rendering.py (block_type 'sigma'): ``unmasked_sigmas_modi[ind_block, 0, :] = -5e6``.
BLOCK_SIGMA = -5e6
# config/toydesk2.yml ``gumbel_tau: 0.1`` (composition mask).
GUMBEL_TAU = 0.1
# rendering.py: ``alphas_shifted = [1, 1 - alpha + 1e-10]`` keeps the cumulative product > 0.
_TRANS_EPS = 1e-10
# default_conf.yml ``noise_std: 1`` (raw density noise while training).
NOISE_STD = 1.0
# nn.LeakyReLU default negative slope (nerf_model.py ``nn.LeakyReLU(inplace=True)``).
LEAKY_SLOPE = 0.01


@dataclass
class UDCNeRFConfig:
    """Sizes and rendering settings of :class:`UDCNeRF`; defaults are the paper's (ToyDesk2).

    Attributes:
        objects: K foreground objects (ids 1..K); the network has K+1 codes (0 = background).
            ToyDesk2 ``inst_K: 6`` = background + 5.
        encoding: ``"frequency"`` (paper: NeRF PE) or ``"hashgrid"`` (fast variant, ours:
            :class:`HashGrid` on the box-normalised point instead of the PE).
        xyz_frequencies: PE frequencies for points (``N_freq_xyz: 10``).
        dir_frequencies: PE frequencies for directions (``N_freq_dir: 4``).
        hashgrid: hash-grid sizes for ``encoding="hashgrid"``.
        width: trunk width (``inst_W: 256``). depth: trunk layers (``inst_D: 4``).
        skips: layers that see the encoding again (``inst_skips: [2]``).
        code_dim: object-code size (``inst_W_code: 64``).
        num_samples: coarse stratified samples per ray (``N_samples: 64``).
        num_importance: extra fine samples from the coarse weights (``N_importance: 64``).
        near, far: ray distances sampled between, in units of the direction length (metres
            for unit rays); ToyDesk 0.8 / 24 before ``scale_factor`` 16 (0.05 / 1.5).
        aabb: [[min xyz], [max xyz]] scene box in metres, maps points into the encoding.
        gumbel_tau: temperature of the composition Gumbel-softmax (``gumbel_tau: 0.1``).
        noise_std: raw-density noise while training (``noise_std: 1``).
        perturb: jitter samples while training (``perturb: 1``).
        sigma_bias_init: initial bias of every sigma head's last layer (raw density, 1/m);
            0 keeps PyTorch's default init (paper). A positive value (ours, fast variant)
            keeps the ReLU density alive at the start: a hash grid starts near 0 everywhere,
            so without noise the whole field can start (and stay) at a negative, dead density.
        object_boxes: optional K boxes ``((lo xyz), (hi xyz))`` (m), one per object; a
            foreground component has no density outside its box (raw sigma
            :data:`BLOCK_SIGMA`). ``None`` (paper): every component everywhere. Ours, after
            Object-NeRF's object boxes: with the paper's weak outside-mask opacity weight
            (0.05) and a shared foreground head, a short fit leaves every object's density at
            every other object's surface, so the composition argmax mislabels them.
    """

    objects: int = 5
    encoding: Literal["frequency", "hashgrid"] = "frequency"
    xyz_frequencies: int = NERF_POSITION_FREQUENCIES
    dir_frequencies: int = NERF_DIRECTION_FREQUENCIES
    hashgrid: HashGridConfig = field(default_factory=lambda: HashGridConfig(16, 2, 19, 16, 2048))
    width: int = 256
    depth: int = 4
    skips: tuple[int, ...] = (2,)
    code_dim: int = 64
    num_samples: int = 64
    num_importance: int = 64
    near: float = 0.05
    far: float = 1.5
    aabb: tuple[tuple[float, float, float], tuple[float, float, float]] = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
    gumbel_tau: float = GUMBEL_TAU
    noise_std: float = NOISE_STD
    perturb: bool = True
    sigma_bias_init: float = 0.0
    object_boxes: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] | None = None

    def __post_init__(self) -> None:
        if self.objects < 1:
            raise ValueError(f"UDCNeRFConfig.objects must be >= 1, got {self.objects}")
        if self.encoding not in ("frequency", "hashgrid"):
            raise ValueError(f"UDCNeRFConfig.encoding must be 'frequency' or 'hashgrid', got {self.encoding!r}")
        if self.num_samples < 3 or self.num_importance < 0:
            raise ValueError("UDCNeRFConfig needs num_samples >= 3 and num_importance >= 0")
        if not 0 <= self.near < self.far:
            raise ValueError(f"UDCNeRFConfig needs 0 <= near < far, got {self.near}, {self.far}")
        if self.gumbel_tau <= 0 or self.width < 2 or self.depth < 1:
            raise ValueError("UDCNeRFConfig needs gumbel_tau > 0, width >= 2, depth >= 1")
        if isinstance(self.hashgrid, dict):
            self.hashgrid = HashGridConfig(**self.hashgrid)
        self.skips = tuple(self.skips)
        self.aabb = tuple(tuple(float(v) for v in c) for c in self.aabb)  # type: ignore[assignment]
        if self.object_boxes is not None:
            boxes = tuple(tuple(tuple(float(v) for v in c) for c in box) for box in self.object_boxes)
            if len(boxes) != self.objects or any(len(b) != 2 or any(len(c) != 3 for c in b) for b in boxes):
                raise ValueError(f"UDCNeRFConfig.object_boxes needs {self.objects} ((lo xyz), (hi xyz)) boxes")
            if any(lo > hi for b in boxes for lo, hi in zip(*b)):
                raise ValueError("UDCNeRFConfig.object_boxes: every lo must be <= its hi")
            self.object_boxes = boxes  # type: ignore[assignment]

    @property
    def components(self) -> int:
        """K + 1 (background and the K objects)."""
        return self.objects + 1


# ----------------------------------------------------------------------------- primitives


def gumbel_noise(shape: Sequence[int], generator: torch.Generator | None, device: torch.device | str,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard Gumbel noise ``-log(-log U)``, U ~ U(0, 1) drawn on the CPU from ``generator``.

    ``generator=None`` gives zeros (deterministic argmax at render time).
    """
    if generator is None:
        return torch.zeros(tuple(shape), device=device, dtype=dtype)
    u = torch.rand(tuple(shape), generator=generator, dtype=torch.float64).clamp(1e-20, 1.0 - 1e-12)
    return (-torch.log(-torch.log(u))).to(device=device, dtype=dtype)


def hard_gumbel_softmax(logits: Tensor, tau: float, noise: Tensor) -> Tensor:
    """Straight-through hard Gumbel-softmax over the last axis (``F.gumbel_softmax(hard=True)``).

    Forward: the one-hot of ``argmax(logits + noise)``; backward: the gradient of
    ``softmax((logits + noise) / tau)``.

    Args:
        logits: [..., C]. tau: temperature (> 0). noise: [..., C] Gumbel noise (see :func:`gumbel_noise`).
    """
    soft = torch.softmax((logits + noise) / tau, dim=-1)
    hard = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft)
    return hard - soft.detach() + soft


def block_background(sigmas: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """Block the background where a foreground component wins the hard Gumbel draw.

    Args:
        sigmas: [..., C] raw (pre-ReLU) component densities, component 0 the background.
        noise: [..., C] Gumbel noise of the blocking draw.

    Returns:
        blocked sigmas [..., C] (component 0 set to :data:`BLOCK_SIGMA` where blocked, every
        other entry unchanged, gradients kept) and the blocked mask [...] bool.
    """
    winner = (sigmas.detach() + noise).argmax(-1)  # tau does not change the hard argmax
    blocked = winner != 0
    bg = torch.where(blocked, torch.full_like(sigmas[..., 0], BLOCK_SIGMA), sigmas[..., 0])
    return torch.cat([bg[..., None], sigmas[..., 1:]], -1), blocked


def point_deltas(t: Tensor, last: float) -> Tensor:
    """Distances between consecutive sample points [R, S] (``t`` [R, S] sorted), last = ``last``."""
    return torch.cat([t[:, 1:] - t[:, :-1], torch.full_like(t[:, :1], last)], -1)


def render_points(sigma: Tensor, rgb: Tensor, t: Tensor, last_delta: float, noise: Tensor | None = None
                  ) -> dict[str, Tensor]:
    """Composite sample points as the paper does (``alpha_i = 1 - exp(-delta_i relu(sigma_i))``).

    Args:
        sigma: [R, S] raw densities (1/m). rgb: [R, S, 3]. t: [R, S] sample distances (m).
        last_delta: delta of the last sample: :data:`DELTA_INF` or 0.
        noise: optional [R, S] added to ``sigma`` before the ReLU.

    Returns:
        ``rgb`` [R, 3] (black background), ``alpha`` [R, 1] (sum of weights), ``depth`` [R, 1]
        expected ray distance ``sum w t / max(sum w, 1e-10)``, ``weights`` [R, S].
    """
    dens = torch.relu(sigma if noise is None else sigma + noise)
    alpha = 1.0 - torch.exp(-point_deltas(t, last_delta) * dens)
    keep = torch.cumprod(1.0 - alpha + _TRANS_EPS, -1)
    w = alpha * torch.cat([torch.ones_like(keep[:, :1]), keep[:, :-1]], -1)
    acc = w.sum(-1, keepdim=True)
    return {
        "rgb": (w[..., None] * rgb).sum(-2),
        "alpha": acc,
        "depth": (w * t).sum(-1, keepdim=True) / acc.clamp_min(1e-10),
        "weights": w,
    }


# ----------------------------------------------------------------------------- network


def _act() -> nn.Module:
    return nn.LeakyReLU(LEAKY_SLOPE)


class _Head(nn.Module):
    """sigma (W-W-1) and colour (W -> [., dir] -> W, W, W/2 -> 3, sigmoid) from a feature [.., W]."""

    def __init__(self, width: int, dir_dim: int, sigma_bias: float = 0.0) -> None:
        super().__init__()
        self.sigma = nn.Sequential(nn.Linear(width, width), _act(), nn.Linear(width, 1))
        if sigma_bias:
            with torch.no_grad():
                self.sigma[-1].bias.fill_(sigma_bias)
        self.final = nn.Linear(width, width)
        self.dir = nn.Sequential(nn.Linear(width + dir_dim, width), _act(), nn.Linear(width, width), _act(),
                                 nn.Linear(width, width // 2), _act())
        self.rgb = nn.Sequential(nn.Linear(width // 2, 3), nn.Sigmoid())

    def forward(self, feat: Tensor, dir_enc: Tensor) -> tuple[Tensor, Tensor]:
        """feat [..., W], dir_enc [..., D] -> raw sigma [...], rgb [..., 3]."""
        h = self.dir(torch.cat([self.final(feat), dir_enc], -1))
        return self.sigma(feat)[..., 0], self.rgb(h)


class UDCNetwork(nn.Module):
    """One UDC-NeRF network (the paper's coarse or fine ``UDCNeRF``).

    Args:
        cfg: sizes. decompose: build the background and foreground heads (fine network).
    """

    def __init__(self, cfg: UDCNeRFConfig, decompose: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("aabb", torch.tensor(cfg.aabb, dtype=torch.float32), persistent=False)
        # [K + 1, 2, 3]; row 0 (the background) spans everything
        boxes = torch.tensor([[[-torch.inf] * 3, [torch.inf] * 3]] * cfg.components, dtype=torch.float32)
        if cfg.object_boxes is not None:
            boxes[1:] = torch.tensor(cfg.object_boxes, dtype=torch.float32)
        self.register_buffer("boxes", boxes, persistent=False)
        if cfg.encoding == "frequency":
            self.encoding: nn.Module = PositionalEncoding(3, cfg.xyz_frequencies, include_input=True)
        else:
            self.encoding = HashGrid(cfg.hashgrid)
        enc_dim = self.encoding.out_dim
        self.dir_encoding = PositionalEncoding(3, cfg.dir_frequencies, include_input=True)
        w = cfg.width
        self.trunk = nn.ModuleList(
            nn.Sequential(nn.Linear(enc_dim if i == 0 else w + (enc_dim if i in cfg.skips else 0), w), _act())
            for i in range(cfg.depth)
        )
        self.codes = nn.Embedding(cfg.components, cfg.code_dim)
        self.fusion = nn.Linear(w + cfg.code_dim, w)
        self.scene = _Head(w, self.dir_encoding.out_dim, cfg.sigma_bias_init)
        self.decompose = decompose
        if decompose:
            self.background = _Head(w, self.dir_encoding.out_dim, cfg.sigma_bias_init)
            self.foreground = _Head(w, self.dir_encoding.out_dim, cfg.sigma_bias_init)

    def encode(self, points: Tensor) -> Tensor:
        """points [P, 3] world metres -> encoding [P, E]."""
        u = normalize_aabb(points, self.aabb)
        return self.encoding(2.0 * u - 1.0) if self.cfg.encoding == "frequency" else self.encoding(u)

    def trunk_features(self, points: Tensor) -> Tensor:
        """points [P, 3] -> trunk feature [P, W]."""
        e = self.encode(points)
        x = e
        for i, layer in enumerate(self.trunk):
            if i in self.cfg.skips and i > 0:
                x = torch.cat([e, x], -1)
            x = layer(x)
        return x

    def fuse(self, trunk: Tensor, codes: Tensor) -> Tensor:
        """trunk [P, W], code indices [C] -> fused features [P, C, W]."""
        code = self.codes(codes.to(trunk.device))  # [C, D]
        p, c = trunk.shape[0], code.shape[0]
        x = torch.cat([trunk[:, None].expand(p, c, -1), code[None].expand(p, c, -1)], -1)
        return self.fusion(x)

    def confine(self, sigma: Tensor, points: Tensor, objects: Tensor | int) -> Tensor:
        """Raw sigma [P, C] (or [P]) set to :data:`BLOCK_SIGMA` where points [P, 3] lie outside
        the boxes of ``objects`` (code indices [C], or one int); unchanged without boxes."""
        if self.cfg.object_boxes is None:
            return sigma
        box = self.boxes[objects]  # [C, 2, 3] or [2, 3]
        p = points[:, None] if box.dim() == 3 else points
        inside = ((p >= box[..., 0, :]) & (p <= box[..., 1, :])).all(-1)
        return torch.where(inside, sigma, torch.full_like(sigma, BLOCK_SIGMA))

    def all_codes(self) -> Tensor:
        return torch.arange(self.cfg.components, device=self.codes.weight.device)

    def scene_at(self, points: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
        """Scene branch at points [P, 3] / unit directions [P, 3] -> raw sigma [P], rgb [P, 3]."""
        fused = self.fuse(self.trunk_features(points), self.all_codes())
        return self.scene(fused.mean(1), self.dir_encoding(directions))

    def components_at(self, points: Tensor, directions: Tensor, slots: Sequence[Slot] | None = None
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Scene branch and every component slot at points [P, 3] with directions [P, 3].

        Args:
            slots: component slots (:func:`.edits.make_slots`); ``None`` = the K+1 unedited
                components. A slot evaluates object ``slot.object``'s code at
                ``slot.to_original(points)`` with rotated directions; a removed slot returns
                sigma :data:`BLOCK_SIGMA` (never wins, alpha 0).

        Returns:
            scene raw sigma [P], scene rgb [P, 3] (unedited points), component raw sigmas
            [P, C] and rgbs [P, C, 3], C = len(slots) (K + 1 unedited).
        """
        if not self.decompose:
            raise RuntimeError("the coarse UDC-NeRF network has no decomposition heads")
        trunk = self.trunk_features(points)
        fused = self.fuse(trunk, self.all_codes())  # [P, K+1, W]
        denc = self.dir_encoding(directions)
        s_sigma, s_rgb = self.scene(fused.mean(1), denc)
        if slots is None:
            bg_s, bg_c = self.background(fused[:, 0], denc)
            fg_s, fg_c = self.foreground(fused[:, 1:], denc[:, None].expand(-1, fused.shape[1] - 1, -1))
            fg_s = self.confine(fg_s, points, self.all_codes()[1:])
            return s_sigma, s_rgb, torch.cat([bg_s[:, None], fg_s], 1), torch.cat([bg_c[:, None], fg_c], 1)
        sig, col = [], []
        for slot in slots:
            if slot.removed:
                sig.append(torch.full_like(s_sigma, BLOCK_SIGMA))
                col.append(torch.zeros_like(s_rgb))
                continue
            if slot.is_identity:
                p, f, d = points, fused[:, slot.object], denc
            else:
                p, dd = slot.to_original(points, directions)
                f = self.fuse(self.trunk_features(p), torch.tensor([slot.object]))[:, 0]
                d = self.dir_encoding(dd)
            s, c = (self.background if slot.object == 0 else self.foreground)(f, d)
            s = self.confine(s, p, slot.object)  # in the object's original frame: boxes move with it
            sig.append(s)
            col.append(c)
        return s_sigma, s_rgb, torch.stack(sig, 1), torch.stack(col, 1)


class UDCNeRF(nn.Module):
    """UDC-NeRF: coarse (scene only) and fine (scene + decomposition) networks.

    Args:
        cfg: :class:`UDCNeRFConfig`.
    """

    def __init__(self, cfg: UDCNeRFConfig = UDCNeRFConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.coarse = UDCNetwork(cfg, decompose=False)
        self.fine = UDCNetwork(cfg, decompose=True)

    @property
    def objects(self) -> int:
        return self.cfg.objects

    def _coarse_samples(self, origins: Tensor, directions: Tensor, generator: torch.Generator | None) -> Tensor:
        r = origins.shape[0]
        near = torch.full((r,), self.cfg.near, device=origins.device, dtype=origins.dtype)
        far = torch.full_like(near, self.cfg.far)
        jitter = generator is not None and self.training and self.cfg.perturb
        if jitter:  # draw on the CPU from the generator, then move (device-independent stream)
            return sample_stratified(near.cpu(), far.cpu(), self.cfg.num_samples - 1, perturb=True,
                                     generator=generator).to(origins)
        return sample_stratified(near, far, self.cfg.num_samples - 1)

    def forward(
        self,
        origins: Tensor,
        directions: Tensor,
        generator: torch.Generator | None = None,
        edits: Sequence[Any] | None = None,
        samples: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Render rays through the coarse and fine networks.

        Args:
            origins: [R, 3] ray origins, metres. directions: [R, 3] unit directions.
            generator: CPU generator for the sample jitter, density noise and Gumbel draws;
                ``None`` renders deterministically (argmax, no noise, no jitter).
            edits: :class:`.edits.Edit` s applied to the components (see module docstring).
            samples: optional [R, S] sorted fine sample distances; skips the coarse pass's
                importance sampling (tests and exact edit checks).

        Returns (R rays, S fine samples, C = K + 1 components, more with duplicates):
            ``coarse_rgb`` [R, 3], ``coarse_alpha`` [R, 1], ``coarse_weights`` [R, S_c];
            ``rgb`` / ``alpha`` / ``depth`` [R, 3 | 1 | 1]: fine scene branch (depth = expected
            ray distance, m); ``components_rgb`` [R, C, 3], ``component_alpha`` [R, C, 1],
            ``component_depth`` [R, C, 1]; ``instance_rgb`` [R, 3], ``instance_alpha`` [R, 1];
            ``merged_rgb`` [R, 3], ``merged_alpha`` [R, 1], ``merged_depth`` [R, 1];
            ``segmentation`` [R, C] (merged weights times the composition mask);
            ``t`` [R, S]; ``component_sigma`` [R, S, C] (raw, blocked); ``composition_mask``
            [R, S, C]; ``bg_sigma`` [R, S] raw background sigma before blocking;
            ``blocked`` [R, S] bool (a foreground won the blocking draw).
        """
        from .edits import make_slots

        cfg = self.cfg
        out: dict[str, Tensor] = {}
        r = origins.shape[0]
        slots = make_slots(edits, cfg.objects) if edits else None
        train_noise = generator is not None and self.training and cfg.noise_std > 0

        def noise(shape: tuple[int, ...]) -> Tensor | None:
            if not train_noise:
                return None
            return (torch.randn(shape, generator=generator) * cfg.noise_std).to(origins)

        # coarse: scene branch at stratified points
        t_c = self._coarse_samples(origins, directions, generator)  # [R, S_c]
        s_c = t_c.shape[1]
        pts = origins[:, None] + t_c[..., None] * directions[:, None]
        dirs = directions[:, None].expand(-1, s_c, -1)
        sig_c, rgb_c = self.coarse.scene_at(pts.reshape(-1, 3), dirs.reshape(-1, 3))
        coarse = render_points(sig_c.reshape(r, s_c), rgb_c.reshape(r, s_c, 3), t_c, DELTA_INF, noise((r, s_c)))
        out["coarse_rgb"], out["coarse_alpha"], out["coarse_weights"] = coarse["rgb"], coarse["alpha"], coarse["weights"]

        # fine samples
        if samples is not None:
            t = samples
        else:
            w_place = coarse["weights"]
            if slots is not None and any(not s.is_identity and not s.removed for s in slots):
                w_place = self._edited_placement(origins, directions, t_c, slots, sig_c.reshape(r, s_c))
            if cfg.num_importance > 0:
                mids = 0.5 * (t_c[:, 1:] + t_c[:, :-1])
                jitter = generator is not None and self.training and cfg.perturb
                if jitter:
                    new = sample_pdf(mids.cpu(), w_place[:, 1:-1].cpu(), cfg.num_importance - 1, perturb=True,
                                     merge=False, generator=generator).to(origins)
                else:
                    new = sample_pdf(mids, w_place[:, 1:-1], cfg.num_importance - 1, merge=False)
                t = torch.sort(torch.cat([t_c, new.detach()], -1), -1).values
            else:
                t = t_c
        s = t.shape[1]
        pts = origins[:, None] + t[..., None] * directions[:, None]
        dirs = directions[:, None].expand(-1, s, -1)
        s_sig, s_rgb, c_sig, c_rgb = self.fine.components_at(pts.reshape(-1, 3), dirs.reshape(-1, 3), slots)
        c = c_sig.shape[-1]
        s_sig, s_rgb = s_sig.reshape(r, s), s_rgb.reshape(r, s, 3)
        c_sig, c_rgb = c_sig.reshape(r, s, c), c_rgb.reshape(r, s, c, 3)

        scene = render_points(s_sig, s_rgb, t, DELTA_INF, noise((r, s)))
        out.update(rgb=scene["rgb"], alpha=scene["alpha"], depth=scene["depth"], weights=scene["weights"])

        # blocking (first hard Gumbel draw) and the composition mask (second draw, tau)
        blocked_sig, blocked = block_background(c_sig, gumbel_noise((r, s, c), generator, origins.device, origins.dtype))
        mask = hard_gumbel_softmax(blocked_sig, cfg.gumbel_tau,
                                   gumbel_noise((r, s, c), generator, origins.device, origins.dtype))
        out["bg_sigma"], out["blocked"] = c_sig[..., 0], blocked
        out["component_sigma"], out["composition_mask"], out["t"] = blocked_sig, mask, t

        inst_sig = (blocked_sig * mask).sum(-1)
        inst_rgb = (c_rgb * mask[..., None]).sum(-2)
        inst = render_points(inst_sig, inst_rgb, t, DELTA_INF, noise((r, s)))
        out["instance_rgb"], out["instance_alpha"] = inst["rgb"], inst["alpha"]

        merged = render_points(0.5 * (s_sig + inst_sig), 0.5 * (s_rgb + inst_rgb), t, DELTA_INF, noise((r, s)))
        out["merged_rgb"], out["merged_alpha"], out["merged_depth"] = merged["rgb"], merged["alpha"], merged["depth"]
        out["segmentation"] = (merged["weights"][..., None] * mask).sum(1)

        # per component: background last delta inf, foreground 0 (rendering.py deltas_unmasked_)
        last = torch.zeros(c, device=t.device, dtype=t.dtype)
        is_bg = torch.tensor([sl.object == 0 for sl in slots] if slots is not None else [k == 0 for k in range(c)],
                             device=t.device)
        cs = blocked_sig.movedim(-1, 0).reshape(c * r, s)
        tt = t[None].expand(c, -1, -1).reshape(c * r, s)
        dens = torch.relu(cs)
        gaps = tt[:, 1:] - tt[:, :-1]
        last = torch.where(is_bg, torch.full_like(last, DELTA_INF), last)[:, None].expand(c, r).reshape(c * r, 1)
        alpha = 1.0 - torch.exp(-torch.cat([gaps, last], -1) * dens)
        keep = torch.cumprod(1.0 - alpha + _TRANS_EPS, -1)
        wk = (alpha * torch.cat([torch.ones_like(keep[:, :1]), keep[:, :-1]], -1)).reshape(c, r, s)
        acc = wk.sum(-1)  # [C, R]
        out["component_alpha"] = acc.T[..., None]
        out["components_rgb"] = (wk[..., None] * c_rgb.movedim(2, 0)).sum(-2).movedim(0, 1)
        out["component_depth"] = ((wk * t[None]).sum(-1) / acc.clamp_min(1e-10)).T[..., None]
        return out

    def _edited_placement(self, origins: Tensor, directions: Tensor, t_c: Tensor, slots: Sequence[Slot],
                          sig_c: Tensor) -> Tensor:
        """Coarse weights [R, S_c] of the summed coarse density over the edited slots' transforms."""
        r, s_c = t_c.shape
        pts = (origins[:, None] + t_c[..., None] * directions[:, None]).reshape(-1, 3)
        dirs = directions[:, None].expand(-1, s_c, -1).reshape(-1, 3)
        dens = torch.relu(sig_c)
        for slot in slots:
            if slot.removed or slot.is_identity:
                continue
            p, d = slot.to_original(pts, dirs)
            dens = dens + torch.relu(self.coarse.scene_at(p, d)[0].reshape(r, s_c))
        return render_points(dens, torch.zeros(r, s_c, 3, device=t_c.device, dtype=t_c.dtype), t_c, DELTA_INF)["weights"]
