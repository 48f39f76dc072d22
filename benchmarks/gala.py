"""GALA geometry-step throughput: DMTet extraction, posing, rasterization, pose-guided SDS, a whole step.

Data: the built-in synthetic clothed scan (``layerforge.models.gala.synthetic_scan``) and the
initialisation samples of its canonical body, prepared with ``--prepare DIR`` on a machine with
open3d (``make gpu-wheels`` puts them in ``build/gpu_wheels/data/gala`` for the GPU machine) or
made on the fly. Both layers are initialised to the canonical body (GALA's ``init_iter`` term)
before timing, so the meshes have the body's size.

Rows (median of the timed steps after warm-up, CUDA synchronised around each):

- DMTet: both layers' SDF + deformation networks at every grid vertex and marching tets,
  forward + backward.
- posing: both meshes' skinning from the nearest canonical body vertices and canonical -> posed.
- rasterization: the geometry stage's renders of one step (composite, human, object; the scan,
  its object faces and the body fit), B views at R^2, forward + backward.
- pose-guided SDS: canonical render of the composition + OpenPose skeletons + ControlNet + UNet
  CFG call, backward. On CUDA the SD-1.5 UNet and ControlNet architectures with random weights,
  fp16; on CPU (or ``--quick``) a small UNet of the same topology (the table says which).
- geometry step: every term of the stage (segmentation, human/object reconstruction, overlap,
  SDS), backward, Adam; iterations/s and the projected stage time for 2000 iterations (target:
  under 15 min on an H100 at batch 4, 512^2).

Sizes: the CPU config (grid 64, batch 2, 128^2) and the paper's (grid 64 -- our Kuhn grid's
size at 64 matches the quartet "128" grid GALA downloads --, hash table 2^19, batch 4, 512^2),
the paper row only with ``--paper`` or on CUDA.

    python benchmarks/gala.py --quick            # ~2 min on 2 CPU cores
    python benchmarks/gala.py --device cuda      # GPU rows
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from guidance import cpu_model  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
STAGE_TARGET_S = 15 * 60  # the issue: a whole geometry stage (2000 iterations) under 15 min on an H100
PAPER_ITERS = 2000
SD15_UNET: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2, cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SMALL_UNET: dict[str, Any] = {**SD15_UNET, "block_out_channels": (32, 64, 64, 64), "cross_attention_dim": 64,
                              "attention_head_dim": 4, "norm_num_groups": 16, "layers_per_block": 1}


def prepare(folder: Path) -> Path:
    """The scan folder plus ``init_samples.npz`` (points, sdf of the canonical body)."""
    from layerforge.models.body import load_smplx
    from layerforge.models.gala.canonical import CanonicalSpace
    from layerforge.models.gala.losses import init_sdf_samples
    from layerforge.models.gala.synthetic_scan import write_clothed_scan

    write_clothed_scan(folder, resolution=48)
    arrays = dict(np.load(folder / "body_model.npz"))  # float32 halves it for the carry to a GPU machine
    np.savez_compressed(folder / "body_model.npz", **{k: v.astype(np.float32) if v.dtype == np.float64 else v
                                                      for k, v in arrays.items()})
    model = load_smplx(folder / "body_model.npz")
    space = CanonicalSpace(model)
    truth = np.load(folder / "truth.npz")
    bounds = _bounds(space, truth)
    pts, sdf = init_sdf_samples(space.body.vertices, model.faces, bounds, torch.Generator().manual_seed(0))
    np.savez_compressed(folder / "init_samples.npz", points=pts.numpy(), sdf=sdf.numpy())
    return folder


def _bounds(space, truth) -> torch.Tensor:
    allp = torch.cat([space.body.vertices, torch.from_numpy(truth["canonical_scan_vertices"])])
    return torch.stack([allp.min(0).values - 0.1, allp.max(0).values + 0.1])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def guidance(device: torch.device, full: bool):
    from diffusers import ControlNetModel, DDPMScheduler, UNet2DConditionModel

    from layerforge.models.guidance.controlnet import ControlNetSDSGuidance

    torch.manual_seed(0)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    cfg = SD15_UNET if full else SMALL_UNET
    unet = UNet2DConditionModel(**cfg).to(device, dtype).eval().requires_grad_(False)
    controlnet = ControlNetModel.from_unet(unet).to(device, dtype).eval().requires_grad_(False)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipe = SimpleNamespace(unet=unet, vae=None, text_encoder=None, tokenizer=None, scheduler=sched)
    g = ControlNetSDSGuidance({"latent_mode": "direct", "latent_size": 64, "guidance_scale": 7.5,
                               "weighting": "dreamfusion", "prompt": "a person", "view_dependent_prompting": False},
                              pipe=pipe, controlnet=controlnet)
    for p in ("a person", "a person wearing a jacket", ""):  # training caches the prompts' embeddings
        g._embedding_cache[p] = torch.randn(77, cfg["cross_attention_dim"], device=device, dtype=dtype)
    return g, sum(p.numel() for p in unet.parameters()) + sum(p.numel() for p in controlnet.parameters())


def run_rows(data: Path, device: torch.device, label: str, grid: int, log2: int, batch: int, res: int, full_unet: bool,
             steps: int, warmup: int) -> list[list[str]]:
    from layerforge.models.body import load_smplx, read_fit
    from layerforge.models.dmtet import DMTetConfig
    from layerforge.models.gala.batches import GalaBatches
    from layerforge.models.gala.canonical import CanonicalSpace, pose_body
    from layerforge.models.gala.losses import InitSDFLoss, PoseGuidedSDS, gala_terms, step_meshes, step_renders
    from layerforge.models.gala.model import LAYERS, GalaLayers
    from layerforge.models.gala.views import body_foci

    model = load_smplx(data / "body_model.npz").to(device)
    fit = read_fit(data / "smplx_param.json", model)
    truth = np.load(data / "truth.npz")
    space = CanonicalSpace(model)
    target = pose_body(model, torch.as_tensor(np.asarray(fit.betas)), torch.as_tensor(np.asarray(fit.full_pose(model))))
    bounds = _bounds(space, {"canonical_scan_vertices": truth["canonical_scan_vertices"]}).to(device)
    layers = GalaLayers(bounds, DMTetConfig(grid_resolution=grid, hash_log2_size=log2), space, target).to(device)
    init = np.load(data / "init_samples.npz")
    term = InitSDFLoss(torch.from_numpy(init["points"]), torch.from_numpy(init["sdf"]), 4096)
    opt = torch.optim.Adam(layers.parameters(), lr=0.01)
    for s in range(100):  # GALA's initialisation, shortened: the body's shape and size is what matters here
        loss = term(layers, {"seed": s}, s, {"log": {}})
        opt.zero_grad()
        loss.backward()
        opt.step()
    scan_v, scan_f = torch.from_numpy(truth["scan_vertices"]), torch.from_numpy(truth["scan_faces"])
    lab = torch.from_numpy(truth["face_is_object"])
    names = list(model.joint_names)
    canon_scan = torch.from_numpy(truth["canonical_scan_vertices"])
    sampler = GalaBatches(scan_v, scan_f, lab, target.vertices, model.faces, space.body.keypoints[list(model.openpose18)],
                          body_foci(target.vertices, target.keypoints, names, scan_v[scan_f[lab].reshape(-1)]),
                          body_foci(space.body.vertices, space.body.keypoints, names, canon_scan[scan_f[lab].reshape(-1)]),
                          batch, res, res, 0.25, device=device)
    gen = torch.Generator().manual_seed(0)
    batch_ = sampler.sample(0, gen)
    rows = []

    def row(name: str, seconds: float, note: str = "") -> None:
        rows.append([label, name, f"{seconds * 1e3:.1f}", f"{1.0 / seconds:.2f}", note])
        print(f"| {' | '.join(rows[-1])} |", flush=True)

    def dmtet() -> None:
        layers.zero_grad()
        tot = 0.0
        for n in LAYERS:
            s, v = layers.layer(n).sdf_and_deform()
            tot = tot + s.sum() + v.sum()
        tot.backward()

    m = layers.meshes()
    verts = {n: len(m.canonical[n]) for n in LAYERS}
    row("DMTet extraction, 2 layers, fwd+bwd", timed(dmtet, device, steps, warmup),
        f"grid {grid}: {len(layers.human.vertices):,} vertices, {len(layers.human.tets):,} tets; meshes {verts}")
    row("posing, 2 layers", timed(lambda: [space.to_posed(m.canonical[n].detach(), target) for n in LAYERS], device,
                                  steps, warmup))

    def raster() -> None:
        info: dict = {"log": {}}
        r = step_renders(layers, batch_, 0, info)
        sum(x.normals.sum() + x.alpha.sum() + x.segmentation.sum() for x in r.values()).backward()
        sampler.sample(0, torch.Generator().manual_seed(0))

    row(f"rasterization, {batch} x {res}^2 (6 renders + GT)", timed(raster, device, steps, warmup))
    g, n_params = guidance(device, full_unet)
    sds = PoseGuidedSDS(g, {"human": "a person", "object": "a person wearing a jacket"})

    def sds_step() -> None:
        info: dict = {"log": {}}
        step_meshes(layers, 1, info)
        sds(layers, batch_, 1, info).backward()

    unet = f"{'SD-1.5' if full_unet else 'small'} UNet + ControlNet, {n_params / 1e6:.0f}M params"
    row("pose-guided SDS step", timed(sds_step, device, steps, warmup), unet)
    terms = gala_terms({}, g, {"human": "a person", "object": "a person wearing a jacket"})
    opt = torch.optim.Adam(layers.parameters(), lr=3e-3)
    k = [0]

    def step() -> None:
        k[0] += 1
        b = sampler.sample(k[0], gen)
        info: dict = {"log": {}}
        tot = sum(t.weight * t(layers, b, k[0], info) for t in terms)
        opt.zero_grad()
        tot.backward()
        opt.step()

    t = timed(step, device, steps, warmup)
    proj = t * PAPER_ITERS
    verdict = "" if device.type != "cuda" else (" (target met)" if proj < STAGE_TARGET_S else " (target missed)")
    row("whole geometry step", t, f"2000 iterations: {proj / 60:.1f} min{verdict}; {unet}")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data", type=Path, help="a --prepare folder (default: made in a temporary folder)")
    ap.add_argument("--prepare", type=Path, metavar="DIR", help="write the data folder and exit")
    ap.add_argument("--quick", action="store_true", help="few steps, small UNet")
    ap.add_argument("--paper", action="store_true", help="also the paper-size rows on CPU (slow)")
    ap.add_argument("--out-md", type=Path, help="also write the table here")
    args = ap.parse_args()
    if args.prepare:
        print(prepare(args.prepare))
        return 0
    device = torch.device(args.device)
    data = args.data or prepare(Path(tempfile.mkdtemp(prefix="gala_bench_")))
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else cpu_model()
    print(f"GALA geometry step on {name} ({'fp16 prior' if cuda else 'fp32'})\n")
    header = ["config", "row", "ms", "per s", "notes"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    steps, warmup = (3, 1) if args.quick else (10, 2)
    rows = run_rows(data, device, "fast (grid 64, 2 x 128^2)", 64, 14, 2, 128, cuda and not args.quick, steps, warmup)
    if cuda or args.paper:
        rows += run_rows(data, device, "paper (grid 64 ~ quartet 128, 4 x 512^2, T 2^19)", 64, 19, 4, 512,
                         cuda and not args.quick, steps, warmup)
    if args.out_md:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
        args.out_md.write_text(f"GALA geometry step on {name}\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
