"""DP-Recon step throughput: recon iterations/s, the geometry-SDS step and its overhead beyond the
UNet, texture iterations/s and UV-bake texels/s, on a synthetic 3-box room built here.

The scene (no Blender, no download): a room (inward box, the background, instance 0) and three
boxes on its floor (instances 1..3), rendered with ``layerforge.renderers.mesh.render_mesh`` from
10 orbit views into a CameraSet with instance masks, camera-z depth and camera-frame normals,
which is what the recon stage's ray sampler reads.

Rows (one markdown table; each row printed as it is measured, median of the timed steps after
warm-up, CUDA synchronised around each step):

- recon step: ``DPReconRays.sample`` + every ``paper_terms`` term (all nine on: depth and
  normal priors present, steps counted from past ``object_violation_start``), backward, the
  pipeline's two Adam groups (hash grids x grid_lr_factor, the rest). ``bg_reg`` runs one step
  in ten (``BG_RENDER_EVERY``), so steps with and without it are timed apart and combined into
  the 10-step cycle's iterations/s. Sizes: the pipeline's fast config
  (``configs/pipeline/dp_recon.yaml``) and the paper's (METHODS.md / ``model.py``: hash grid
  16 levels x 2, 16 -> 2048, T = 2^19, SDF MLP [256, 256], 1024 rays, 1024 eikonal points; the
  sampler stays the config's stratified + importance, MonoSDF's error-bounded sampler is not
  implemented), the paper row only with ``--paper`` or on CUDA.
- recon + geometry SDS: the same step plus ``GeometrySDSLoss`` with an ``SDSGuidance`` on a
  Stable-Diffusion-2.1-base-architecture pipeline with random weights (UNet, VAE and CLIP text
  encoder built from the configs written below; nothing is downloaded; a hand-written
  character-level tokenizer, as SD's vocabulary files are not shipped). fp16 on CUDA, fp32 on
  CPU; latent-direct mode. On CUDA (without ``--quick``) the full SD-2.1-base UNet and the
  paper's 8 views at 128^2 per object; on CPU or with ``--quick`` a much smaller UNet of the
  same topology and the fast config's views (the table says which). The visibility grid holds
  random values (its fit is not part of a step; the step's cost does not depend on them).
  Prompts (all view-dependent variants) are encoded once before timing, as training caches them.
- UNet CFG call alone: ``guidance.predict_noise`` on a batch of the same shape
  (objects_per_step calls, as the SDS step makes), and "SDS overhead beyond the UNet" =
  (t_sds_step - t_recon_step - t_unet) / t_unet; target <= 25 % on an H100 (CUDA only).
- texture step: the three boxes and the room unwrapped with ``unwrap_uv`` into a
  ``TexturedScene`` (per-vertex visibility random), ``TextureField``, ``TextureRGBLoss`` +
  ``PanoramaLoss`` on ``TextureBatches`` (a synthetic equirectangular panorama), backward, Adam.
  No RGB SDS in this row.
- UV bake: ``bake_texture`` of all four meshes; texels/s counts the map's texels
  (meshes x resolution^2). 256^2 for the fast config, 2048^2 (the paper's) for the paper row.

    python benchmarks/dp_recon.py --quick                 # ~2-3 min on 2 CPU cores
    python benchmarks/dp_recon.py --device cuda           # GPU rows: fast + paper, SD-2.1 UNet fp16
    python benchmarks/dp_recon.py --device cuda --out-md $OUT/dp_recon.md   # also write the table there
    python benchmarks/dp_recon.py --paper                 # + paper-size rows on CPU (slow)

A row that fails (say, out of memory) is printed as an error row and the others still run
(exit status 1).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import statistics
import string
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

# the SD-2.1-base UNet architecture and the CPU name, as benchmarks/guidance.py measures them
sys.path.insert(0, str(Path(__file__).resolve().parent))
from guidance import SD21_BASE_UNET, cpu_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SDS_OVERHEAD_TARGET = 0.25  # (t_sds - t_recon - t_unet) / t_unet on an H100
N_VIEWS = 10  # input views of the synthetic scene (the paper's sparse setting)

SD21_BASE_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
    "act_fn": "silu", "latent_channels": 4, "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215,
}
# text_encoder/config.json (OpenCLIP ViT-H/14 text tower; 77 tokens, width 1024, 23 layers)
SD21_BASE_TEXT: dict[str, Any] = {
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16,
    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "gelu", "layer_norm_eps": 1e-5, "projection_dim": 512,
}
# The small stand-ins (CPU, --quick): SD's topology (4 levels, cross-attention in the first
# three, linear projections) at a fraction of the width; not SD-2.1's cost.
SMALL_UNET: dict[str, Any] = {**SD21_BASE_UNET, "sample_size": 32, "block_out_channels": (32, 64, 64, 64),
                              "layers_per_block": 1, "cross_attention_dim": 64, "attention_head_dim": (2, 4, 4, 4),
                              "norm_num_groups": 16}
SMALL_VAE: dict[str, Any] = {**SD21_BASE_VAE, "block_out_channels": (8, 8, 16, 16), "layers_per_block": 1,
                             "norm_num_groups": 4, "sample_size": 256}
SMALL_TEXT: dict[str, Any] = {**SD21_BASE_TEXT, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                              "num_attention_heads": 2, "projection_dim": 64}
SD_LATENT, SMALL_LATENT = 64, 32
TEXT_TOKENS = 77

# The synthetic scene (optimisation frame, metres): room, then three boxes on its floor.
ROOM = ((0.0, 0.0, 0.0), (0.85, 0.85, 0.5))
BOXES = (((-0.25, 0.12, -0.38), (0.12, 0.10, 0.12)),
         ((0.22, 0.18, -0.35), (0.10, 0.14, 0.15)),
         ((0.02, -0.25, -0.42), (0.16, 0.08, 0.08)))
BOX_MARGIN = 0.05  # object boxes handed to the field: the box grown by this (prepare's object_bounds pads too)
PROMPTS = ("a wooden crate", "a blue cabinet", "a low bench")


# ------------------------------------------------------------------------------- machine

def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of ``fn()``, synchronised on CUDA before and after."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------- scene

def box_mesh(centre, half, n: int, inward: bool = False):
    """A box of 6 faces x n x n quads (12 n^2 triangles), faces not sharing vertices (flat normals)."""
    from layerforge.assets.types import Mesh

    verts, faces, base = [], [], 0
    s = np.linspace(-1.0, 1.0, n + 1)
    for axis in range(3):
        u, v = [a for a in range(3) if a != axis]
        for sign in (-1.0, 1.0):
            uu, vv = np.meshgrid(s, s, indexing="ij")
            p = np.zeros((n + 1, n + 1, 3))
            p[..., axis], p[..., u], p[..., v] = sign, uu, vv
            idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1) + base
            a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
            tri = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
            e_u, e_v = np.eye(3)[u], np.eye(3)[v]
            outward = np.cross(e_u, e_v)[axis] * sign > 0
            if outward == inward:
                tri = tri[:, ::-1]
            verts.append(p.reshape(-1, 3))
            faces.append(tri)
            base += (n + 1) ** 2
    vertices = np.concatenate(verts) * np.asarray(half) + np.asarray(centre)
    return Mesh(vertices.astype(np.float32), np.concatenate(faces).astype(np.int64))


def scene_meshes(quads: int) -> list:
    """[room, box 1, box 2, box 3] (room inward, ``2 quads`` per side; boxes ``quads``)."""
    return [box_mesh(*ROOM, 2 * quads, inward=True)] + [box_mesh(c, h, quads) for c, h in BOXES]


def object_boxes() -> list[tuple[list[float], list[float]]]:
    return [((np.asarray(c) - np.asarray(h) - BOX_MARGIN).tolist(), (np.asarray(c) + np.asarray(h) + BOX_MARGIN).tolist())
            for c, h in BOXES]


def render_views(meshes: list, size: int, device: torch.device):
    """CameraSet of N_VIEWS orbit views round the boxes from inside the room: linear RGB, instance
    masks (0 room, 1..3 boxes), camera-z depth, camera-frame (OpenCV) normals facing the camera."""
    from layerforge.renderers.camera_set import CameraSet
    from layerforge.renderers.cameras import generate_rays, orbit_cameras
    from layerforge.renderers.mesh import render_mesh

    verts = torch.cat([torch.from_numpy(m.vertices) for m in meshes]).float()
    offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
    faces = torch.cat([torch.from_numpy(m.faces) + int(o) for m, o in zip(meshes, offsets)])
    owner = torch.cat([torch.full((len(m.faces),), k, dtype=torch.long) for k, m in enumerate(meshes)])
    palette = torch.tensor([(0.8, 0.75, 0.7), (0.7, 0.45, 0.2), (0.15, 0.3, 0.8), (0.3, 0.6, 0.3)])
    colour = palette[torch.cat([torch.full((len(m.vertices),), k) for k, m in enumerate(meshes)])]
    colour = colour * (0.75 + 0.25 * torch.sin(12.0 * verts).prod(-1, keepdim=True).abs())  # some texture
    az = torch.linspace(0.0, 360.0, N_VIEWS + 1)[:-1]
    el = torch.tensor([20.0, 35.0] * (N_VIEWS // 2))
    cams = orbit_cameras(el, az, 0.7, 60.0, size, size, target=(0.0, 0.0, -0.4))
    out = render_mesh(verts.to(device), faces.to(device), cams.to(device=device), vertex_colors=colour.to(device),
                      antialias_edges=False)
    fid = out.extras["face_id"].cpu()
    masks = torch.where(fid >= 0, owner[fid.clamp_min(0)], torch.full_like(fid, -1))
    hit = (fid >= 0)[..., None]
    _, dirs = generate_rays(cams)
    n_world = out.normals.cpu().float()
    n_world = torch.where(((n_world * dirs).sum(-1, keepdim=True) > 0), -n_world, n_world)
    n_cam = torch.einsum("bij,bhwj->bhwi", cams.world_to_camera[:, :3, :3].float(), n_world) * hit
    depth = torch.where(hit, out.depth.cpu().float(), torch.zeros_like(out.depth.cpu().float()))
    return CameraSet(cams, out.rgb.cpu().float().clamp(0.0, 1.0), masks, depth, normals=n_cam.float())


def panorama(height: int, width: int) -> torch.Tensor:
    """[H, W, 3] linear RGB: a smooth synthetic equirectangular panorama."""
    y = torch.linspace(0, math.pi, height)[:, None, None]
    x = torch.linspace(0, 2 * math.pi, width)[None, :, None]
    phase = torch.tensor([0.0, 2.0, 4.0])
    return (0.5 + 0.4 * torch.sin(3 * x + phase) * torch.cos(2 * y)).expand(height, width, 3).contiguous()


# ------------------------------------------------------------------------------- configs

def pipeline_sections() -> dict[str, Any]:
    """The ``dp_recon`` pipeline's model / recon / texture sections (its YAML), as the stages type them."""
    from omegaconf import OmegaConf

    from layerforge.pipelines import registry
    from layerforge.pipelines.dp_recon_config import (
        ModelConfig,
        ReconConfig,
        TextureConfig,
    )

    cfg = registry.load_config("dp_recon", [])
    sec = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "recon", "texture")}
    return {"model": ModelConfig(**sec["model"]), "recon": ReconConfig(**sec["recon"]),
            "texture": TextureConfig(**sec["texture"])}


def recon_config(name: str) -> dict[str, Any]:
    """Model / recon sizes of ``name`` (fast: the pipeline's YAML; paper: METHODS.md's stage-1 sizes)."""
    import dataclasses

    from layerforge.models.dp_recon.model import DP_RECON_HASHGRID, DP_RECON_HIDDEN
    from layerforge.models.dp_recon.visibility import VISGRID_RESOLUTION

    sec = pipeline_sections()
    model, recon = sec["model"], sec["recon"]
    if name == "paper":
        model = dataclasses.replace(model, hashgrid=dict(DP_RECON_HASHGRID), hidden=list(DP_RECON_HIDDEN))
        recon = dataclasses.replace(recon, rays_per_step=1024, eikonal_points=1024, lr=5.0e-4, grid_lr_factor=20.0,
                                    object_violation_start=10_000,
                                    visibility=dataclasses.replace(recon.visibility, resolution=VISGRID_RESOLUTION))
    return {"model": model, "recon": recon}


def _hash_desc(h: dict[str, int]) -> str:
    return (f"hash {h['num_levels']}x{h['features_per_level']} {h['base_resolution']}->{h['max_resolution']} "
            f"T=2^{h['log2_hashmap_size']}")


# ------------------------------------------------------------------------------- one step

def optimisation_step(model: torch.nn.Module, terms: list, opts: list, sampler: Any, step: int,
                      gen: torch.Generator) -> None:
    """What ``Optimiser.run`` does per step: sample, weighted terms (weight 0 skipped), NaN guard,
    zero grads, backward, every Adam steps."""
    from layerforge.models.schedules import schedule_value

    batch = sampler.sample(step, gen)
    info: dict[str, Any] = {"log": {}}
    losses = []
    for term in terms:
        w = schedule_value(term.weight, step)
        if w != 0:
            v = term(model, batch, step, info)
            losses.append(v if w == 1 else w * v)
    total = sum(losses)
    if not torch.isfinite(total):
        raise FloatingPointError(f"loss became {float(total.detach())} at step {step}")
    for o in opts:
        o.zero_grad(set_to_none=True)
    total.backward()
    for o in opts:
        o.step()


def time_steps(run: Callable[[int], None], steps: list[int], warmup: int, device: torch.device) -> list[float]:
    """Seconds of ``run(step)`` for each of ``steps`` after the first ``warmup`` of them."""
    out = []
    for i, s in enumerate(steps):
        dt = timed(lambda s=s: run(s), device)
        if i >= warmup:
            out.append(dt)
    return out


def _plain_steps(start: int, count: int) -> list[int]:
    """``count`` step indices from ``start`` on that are not bg_reg steps (multiples of 10)."""
    from layerforge.models.dp_recon.losses import BG_RENDER_EVERY

    out, s = [], start
    while len(out) < count:
        if s % BG_RENDER_EVERY:
            out.append(s)
        s += 1
    return out


# ------------------------------------------------------------------------------- guidance

def _tokenizer():
    """A character-level CLIP BPE tokenizer (SD's vocabulary files are not shipped; ids only
    change which embedding rows are read, not the cost)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    chars = string.ascii_lowercase + string.digits + ",."
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TEXT_TOKENS)


def build_guidance(device: torch.device, full: bool, cfg: dict[str, Any]):
    """SDSGuidance on a random-weight SD-2.1-base-architecture pipeline (``full``) or its small
    stand-in; fp16 on CUDA, fp32 on CPU. Returns (guidance, UNet parameter count, dtype)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextConfig, CLIPTextModel

    from layerforge.models.guidance import SDSGuidance

    diffusers_logging.set_verbosity_error()  # the "cast with to()" notice: random weights, nothing to keep
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    tok = _tokenizer()
    with torch.device(device):
        unet = UNet2DConditionModel(**(SD21_BASE_UNET if full else SMALL_UNET))
        vae = AutoencoderKL(**(SD21_BASE_VAE if full else SMALL_VAE))  # unused in latent-direct mode
        text = CLIPTextModel(CLIPTextConfig(**(SD21_BASE_TEXT if full else SMALL_TEXT), bos_token_id=0,
                                            eos_token_id=1, pad_token_id=1))
    for m in (unet, vae, text):
        m.to(device, dtype).eval().requires_grad_(False)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipe = SimpleNamespace(unet=unet, vae=vae, text_encoder=text, tokenizer=tok, scheduler=scheduler)
    g = SDSGuidance({**cfg, "latent_size": SD_LATENT if full else SMALL_LATENT}, pipe=pipe)
    return g, sum(p.numel() for p in unet.parameters()), dtype


def _view_prompts(prompts: list[str]) -> list[str]:
    return [""] + list(prompts) + [f"{p}, {v} view" for p in prompts for v in ("front", "side", "back", "overhead")]


# ------------------------------------------------------------------------------- rows

ROWS_HEADER = ("| stage | config | device | sizes | timed | median ms | throughput | target |",
               "|---|---|---|---|---:|---:|---:|---|")


def _fmt_ms(s: float) -> str:
    ms = 1000.0 * s
    return f"{ms:.1f}" if abs(ms) < 1000 else f"{ms:.0f}"


def _fmt_rate(x: float, unit: str) -> str:
    return (f"{x:.3g} {unit}" if x < 1e4 else f"{x:.3e} {unit}".replace("e+0", "e").replace("e+", "e"))


class Table:
    def __init__(self) -> None:
        self.lines: list[str] = list(ROWS_HEADER)
        self.failed = False
        print("\n".join(ROWS_HEADER), flush=True)

    def row(self, stage: str, config: str, device: str, sizes: str, timed_n: Any, ms: str, rate: str,
            target: str = "") -> None:
        cells = [stage, config, device, sizes, str(timed_n), ms, rate, target]
        line = "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
        self.lines.append(line)
        print(line, flush=True)

    def error(self, stage: str, config: str, device: str, exc: BaseException) -> None:
        self.failed = True
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        msg = f"error: {type(exc).__name__}: {lines[0] if lines else ''}"[:200]
        self.row(stage, config, device, "-", "-", "-", "-", msg)


def measure_recon(table: Table, name: str, views, device: torch.device, args, sds: dict[str, Any] | None) -> None:
    """Recon rows (plain step, bg_reg step, 10-step cycle) of config ``name``; with ``sds`` also
    the SDS-on step, the UNet call alone and the overhead."""
    from layerforge.models.dp_recon import (
        DPReconRays,
        GeometrySDSLoss,
        ObjectViewRange,
        VisibilityGrid,
        build_scene_field,
        object_view_sampler,
        paper_terms,
    )
    from layerforge.models.dp_recon.losses import BG_RENDER_EVERY

    dev = device_name(device)
    cfgs = recon_config(name)
    m, r = cfgs["model"], cfgs["recon"]
    torch.manual_seed(0)
    field = build_scene_field(object_boxes(), m.scene_config()).to(device).train()
    rays = DPReconRays(views, r.rays_per_step, device=device)
    sampler_cfg = m.sampler(perturb=True)
    weights = {"object_violation": [r.object_violation_start, 0.0, 0.5, r.object_violation_start], **r.weights}
    terms = paper_terms(sampler_cfg, r.eikonal_points, weights)
    grids = [p for n, p in field.named_parameters() if "encoding" in n]
    rest = [p for n, p in field.named_parameters() if "encoding" not in n]
    opts = [torch.optim.Adam(grids, lr=r.lr * r.grid_lr_factor), torch.optim.Adam(rest, lr=r.lr)]
    gen = torch.Generator().manual_seed(0)
    start = BG_RENDER_EVERY * math.ceil(max(r.object_violation_start, r.prior.start, r.visibility.start) / BG_RENDER_EVERY)
    sizes = (f"{_hash_desc(m.hashgrid)}, MLP {list(m.hidden)}, {r.rays_per_step} rays, "
             f"{m.num_samples}+{m.num_importance} samples, {r.eikonal_points} eikonal pts, 4 fields, {views.cameras.width}^2 views")
    n_params = sum(p.numel() for p in field.parameters())

    def step(s: int, t=terms) -> None:
        optimisation_step(field, t, opts, rays, s, gen)

    plain = time_steps(step, _plain_steps(start + 1, args.warmup + args.steps), args.warmup, device)
    bg_idx = [start + BG_RENDER_EVERY * (j + 1) for j in range(1 + args.bg_steps)]
    bg = time_steps(step, bg_idx, 1, device)
    t_plain, t_bg = statistics.median(plain), statistics.median(bg)
    cycle = (BG_RENDER_EVERY - 1) * t_plain + t_bg
    table.row("recon step (9 in 10 steps)", name, dev, f"{sizes}; {n_params / 1e6:.2f}M params", len(plain),
              _fmt_ms(t_plain), _fmt_rate(1.0 / t_plain, "it/s"))
    table.row("recon step with bg_reg (1 in 10)", name, dev, f"+ {rays.patch}^2 virtual-camera patch", len(bg),
              _fmt_ms(t_bg), _fmt_rate(1.0 / t_bg, "it/s"))
    table.row("recon, 10-step cycle", name, dev, "9 plain + 1 bg_reg step", "-", _fmt_ms(cycle / BG_RENDER_EVERY),
              _fmt_rate(BG_RENDER_EVERY / cycle, "it/s"))
    if sds is None:
        return

    stage = "recon + geometry SDS step"
    try:
        p = r.prior
        shift = (lambda sch: [p.start + sch[0], sch[1], sch[2], p.start + sch[3]])
        gcfg = {"latent_mode": "direct", "weighting": "fantasia3d", "guidance_scale": p.guidance_scale,
                "min_step_percent": shift(p.min_step_percent), "max_step_percent": shift(p.max_step_percent),
                "view_dependent_prompting": True}
        guidance, unet_params, dtype = build_guidance(device, sds["full"], gcfg)
        prompts = list(PROMPTS)
        guidance.encode_prompts(_view_prompts(prompts))  # cached, as in training
        grid = VisibilityGrid(r.visibility.resolution).to(device)
        with torch.no_grad():
            grid.values.uniform_(0.0, 1.0, generator=torch.Generator(device).manual_seed(0))
        n_views, res, per_step = sds["views"], sds["resolution"], sds["objects_per_step"]
        samplers = []
        for lo, hi in object_boxes():
            lo_a, hi_a = np.asarray(lo), np.asarray(hi)
            obj = ObjectViewRange(tuple(((lo_a + hi_a) / 2).tolist()), float(np.linalg.norm(hi_a - lo_a) / 2))
            samplers.append(object_view_sampler(obj, n_views, res, elevation_deg=p.elevation_deg, fov_deg=p.fov_deg,
                                                device=device))
        prior = GeometrySDSLoss(guidance, grid, samplers, [1, 2, 3], prompts, sampler_cfg, objects_per_step=per_step,
                                weight=[p.start, 0.0, p.weight, p.start])
        sds_terms = [*terms, prior]
        with_sds = time_steps(lambda s: step(s, sds_terms), _plain_steps(start + 1, args.warmup + args.steps),
                              args.warmup, device)
        t_sds = statistics.median(with_sds)
        kind = (f"SD-2.1-base UNet {unet_params / 1e6:.1f}M" if sds["full"]
                else f"small UNet {unet_params / 1e6:.2f}M (not SD-2.1 size)")
        lat = guidance.config.latent_size
        dt = str(dtype).removeprefix("torch.")
        sds_sizes = (f"{kind} {dt}, latent {lat}^2 direct, CFG {p.guidance_scale:g}, {per_step} object(s) x "
                     f"{n_views} views @ {res}^2, visgrid {r.visibility.resolution}^3")
        table.row(stage, name, dev, sds_sizes, len(with_sds), _fmt_ms(t_sds), _fmt_rate(1.0 / t_sds, "it/s"))

        # the UNet CFG call alone, on a batch of the same shape, as many calls as the step makes
        g = torch.Generator().manual_seed(1)
        lat_noisy = torch.randn(n_views, 4, lat, lat, generator=g).to(device)
        t = torch.randint(20, 980, (n_views,), generator=g).to(device)
        cond = guidance.encode_prompts([f"{prompts[0]}, front view"] * n_views)
        uncond = guidance.encode_prompts([""] * n_views)

        def unet_calls() -> None:
            for _ in range(per_step):
                guidance.predict_noise(lat_noisy, t, cond, uncond, float(p.guidance_scale))

        unet = [timed(unet_calls, device) for _ in range(args.warmup + args.steps)][args.warmup:]
        t_unet = statistics.median(unet)
        table.row("UNet CFG call alone (predict_noise)", name, dev,
                  f"{per_step} call(s) on [2 x {n_views}, 4, {lat}, {lat}] {dt}", len(unet), _fmt_ms(t_unet),
                  _fmt_rate(1.0 / t_unet, "calls/s"))
        overhead = (t_sds - t_plain - t_unet) / t_unet
        if device.type == "cuda":
            verdict = "met" if overhead <= SDS_OVERHEAD_TARGET else "missed"
            where = "" if "H100" in dev else f" (measured on {dev}: indicative)"
            target = f"<= {SDS_OVERHEAD_TARGET:.0%} on an H100: {verdict}{where}"
        else:
            target = f"<= {SDS_OVERHEAD_TARGET:.0%} on an H100: n/a on CPU"
        table.row("SDS overhead beyond the UNet", name, dev, "(t_sds_step - t_recon_step - t_unet) / t_unet", "-",
                  _fmt_ms(t_sds - t_plain - t_unet), f"{overhead:+.0%} of t_unet", target)
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory: report it, keep the other rows
        table.error(stage, name, dev, exc)


def texture_config(name: str) -> dict[str, Any]:
    from layerforge.models.dp_recon.texture import (
        TEXTURE_ANCHOR_VIEWS,
        TEXTURE_HASHGRID,
        TEXTURE_LR,
        TEXTURE_MLP_HIDDEN,
        TEXTURE_PANO_SIZE,
        TEXTURE_PANO_VIEWS,
        TEXTURE_SIZE,
    )
    from layerforge.models.fields.hashgrid import HashGridConfig

    if name == "paper":  # 1 input + 5 anchor views a step, 8 crops at 384^2, 2048^2 maps, the authors' field
        return {"hashgrid": TEXTURE_HASHGRID, "hidden": TEXTURE_MLP_HIDDEN, "views": 1 + TEXTURE_ANCHOR_VIEWS,
                "pano_views": TEXTURE_PANO_VIEWS, "pano_size": TEXTURE_PANO_SIZE, "texture_size": TEXTURE_SIZE,
                "pad_px": 2, "lr": TEXTURE_LR, "pano": (1024, 2048)}
    t = pipeline_sections()["texture"]
    bg = (64, 128)  # background.height / width of dp_recon.yaml
    return {"hashgrid": HashGridConfig(**t.hashgrid), "hidden": tuple(t.hidden), "views": t.views_per_step,
            "pano_views": t.pano_views, "pano_size": t.pano_size, "texture_size": t.texture_size, "pad_px": t.pad_px,
            "lr": t.lr, "pano": bg}


def measure_texture(table: Table, name: str, meshes: list, views, device: torch.device, args) -> None:
    from layerforge.models.dp_recon import (
        PanoramaLoss,
        TextureBatches,
        TexturedScene,
        TextureField,
        TextureFieldConfig,
        TextureRGBLoss,
        bake_texture,
        unwrap_uv,
    )

    dev = device_name(device)
    c = texture_config(name)
    stage = "texture step"
    try:
        unwrapped = [unwrap_uv(mesh, resolution=c["texture_size"], padding=c["pad_px"]) for mesh in meshes]
        g = torch.Generator().manual_seed(0)
        vis = [torch.rand(len(mesh.vertices), generator=g) for mesh in unwrapped]
        scene = TexturedScene.from_meshes(unwrapped, vis, device=device)
        pts = np.concatenate([mesh.vertices for mesh in unwrapped])
        pad = 0.02 * float((pts.max(0) - pts.min(0)).max())
        aabb = torch.tensor(np.stack([pts.min(0) - pad, pts.max(0) + pad]), dtype=torch.float32)
        torch.manual_seed(0)
        field = TextureField(aabb, TextureFieldConfig(hashgrid=c["hashgrid"], hidden=tuple(c["hidden"]))).to(device)
        terms = [TextureRGBLoss(scene), PanoramaLoss(scene)]
        batches = TextureBatches(views, c["views"], panorama=panorama(*c["pano"]), pano_center=(0.0, 0.0, 0.0),
                                 pano_views=c["pano_views"], pano_size=c["pano_size"], device=device)
        opts = [torch.optim.Adam(field.encoding.parameters(), lr=c["lr"]),
                torch.optim.Adam(field.mlp.parameters(), lr=c["lr"])]
        gen = torch.Generator().manual_seed(0)
        field.train()
        steps = time_steps(lambda s: optimisation_step(field, terms, opts, batches, s, gen),
                           list(range(args.warmup + args.steps)), args.warmup, device)
        t_step = statistics.median(steps)
        h = c["hashgrid"]
        faces = sum(len(mesh.faces) for mesh in unwrapped)
        sizes = (f"hash {h.num_levels}x{h.features_per_level} {h.base_resolution}->{h.max_resolution} "
                 f"T=2^{h.log2_hashmap_size}, MLP {list(c['hidden'])}, {min(c['views'], len(views))} views @ "
                 f"{views.cameras.width}^2 + {c['pano_views']} pano crops @ {c['pano_size']}^2, 4 meshes / {faces} faces")
        table.row(stage, name, dev, sizes, len(steps), _fmt_ms(t_step), _fmt_rate(1.0 / t_step, "it/s"))
    except Exception as exc:  # noqa: BLE001 - an error row, the others still run
        table.error(stage, name, dev, exc)
        return

    stage = "UV bake (bake_texture)"
    try:
        res = c["texture_size"]
        field.eval()

        def bake_all() -> None:
            for mesh in unwrapped:
                bake_texture(field, mesh, res, pad_px=c["pad_px"])

        bakes = [timed(bake_all, device) for _ in range(1 + args.bake_repeats)][1:]
        t_bake = statistics.median(bakes)
        texels = len(unwrapped) * res * res
        table.row(stage, name, dev, f"{res}^2 x {len(unwrapped)} meshes, pad {c['pad_px']} px", len(bakes),
                  _fmt_ms(t_bake), _fmt_rate(texels / t_bake, "texels/s"))
    except Exception as exc:  # noqa: BLE001 - an error row, the others still run
        table.error(stage, name, dev, exc)


# ------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="auto: cuda when visible, else cpu")
    ap.add_argument("--quick", action="store_true", help="few steps, small UNet, fast config only (CPU: ~2-3 min)")
    ap.add_argument("--paper", action="store_true", help="also the paper-size rows on CPU (always on CUDA)")
    ap.add_argument("--no-fast", action="store_true", help="leave out the fast-config rows")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per row (default 3 quick / 10 CPU / 20 CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1, CUDA 3)")
    ap.add_argument("--bg-steps", type=int, default=None, help="timed bg_reg steps (default 1, CUDA 5)")
    ap.add_argument("--bake-repeats", type=int, default=None, help="timed bakes (default 2, CUDA 5)")
    ap.add_argument("--unet", choices=("auto", "sd21", "small"), default="auto",
                    help="auto: SD-2.1-base size on CUDA without --quick, the small stand-in otherwise")
    ap.add_argument("--sds-views", type=int, default=None, help="SDS views per object (default: paper 8 on CUDA, yaml 2 on CPU)")
    ap.add_argument("--sds-resolution", type=int, default=None, help="SDS render side (default: paper 128 on CUDA, yaml 32 on CPU)")
    ap.add_argument("--objects-per-step", type=int, default=1,
                    help="objects rendered for SDS per step (yaml 1; the paper renders every object, 3 here)")
    ap.add_argument("--size", type=int, default=64, help="input-view side for the fast rows (paper rows: 384)")
    ap.add_argument("--no-sds", action="store_true", help="leave out the SDS rows")
    ap.add_argument("--no-texture", action="store_true", help="leave out the texture and bake rows")
    ap.add_argument("--out-md", type=Path, default=None, help="also write the header and table to this file")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    cuda = device.type == "cuda"
    if args.steps is None:
        args.steps = 3 if args.quick else (20 if cuda else 10)
    if args.warmup is None:
        args.warmup = 3 if cuda else 1
    if args.bg_steps is None:
        args.bg_steps = 5 if cuda and not args.quick else 1
    if args.bake_repeats is None:
        args.bake_repeats = 5 if cuda and not args.quick else 2
    args.steps, args.warmup = max(1, args.steps), max(0, args.warmup)
    args.bg_steps, args.bake_repeats = max(1, args.bg_steps), max(1, args.bake_repeats)
    configs = ([] if args.no_fast else ["fast"]) + (["paper"] if (cuda or args.paper) and not args.quick else [])
    if not configs:
        raise SystemExit("no config to measure (--no-fast, and the paper rows need --paper or CUDA without --quick)")
    full_unet = args.unet == "sd21" or (args.unet == "auto" and cuda and not args.quick)
    prior = pipeline_sections()["recon"].prior
    sds = None if args.no_sds else {
        "full": full_unet,
        "views": args.sds_views or (8 if cuda else prior.views_per_object),
        "resolution": args.sds_resolution or (128 if cuda else prior.resolution),
        "objects_per_step": max(1, min(args.objects_per_step, len(BOXES))),
    }

    dev = device_name(device)
    cmd = " ".join(argv if argv is not None else sys.argv[1:])
    cores = "" if cuda else f", {os.cpu_count()} cores visible"
    head = [(f"DP-Recon step throughput, {_dt.date.today().isoformat()}, {dev}, torch {torch.__version__}{cores}; "
             f"`python benchmarks/dp_recon.py {cmd}`"),
            (f"Synthetic scene: room + 3 boxes, {N_VIEWS} views; timed = steps after {args.warmup} warm-up "
             "step(s), median."), ""]
    print("\n".join(head), flush=True)
    table = Table()
    for name in configs:
        size = args.size if name == "fast" else 384
        t0 = time.perf_counter()
        meshes = scene_meshes(8 if name == "fast" else 24)
        views = render_views(meshes, size, device)
        if args.quick:
            print(f"(scene at {size}^2 rendered in {time.perf_counter() - t0:.1f} s)", flush=True)
        try:
            measure_recon(table, name, views, device, args, sds)
        except Exception as exc:  # noqa: BLE001 - an error row, the others still run
            table.error("recon step", name, dev, exc)
        if not args.no_texture:
            measure_texture(table, name, meshes, views, device, args)
        if cuda:
            torch.cuda.empty_cache()
    if args.out_md is not None:
        args.out_md.parent.mkdir(parents=True, exist_ok=True)
        args.out_md.write_text("\n".join(head + table.lines) + "\n")
        print(f"wrote {args.out_md}")
    return 1 if table.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
