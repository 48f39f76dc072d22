"""UDC-NeRF training-step throughput: rays per second, paper config against the fast config.

One step is what the `decomp_nerf` train stage pays per iteration: a balanced ray batch
(0.7 background / 0.3 object rays), the coarse and fine forward of every component, the seven
loss terms of the paper, backward and the Adam step, all through `optimise()`'s pieces. The
model sizes come from the pipeline configs (`decomp_nerf.yaml` fast, `decomp_nerf_paper.yaml`),
so the rows measure what users run. Both configs are measured side by side in one run.

    python benchmarks/decomp_nerf.py                # CPU rows (+ CUDA rows when a GPU is visible)
    python benchmarks/decomp_nerf.py --rays 512 --steps 5

Target (H100, issue 11): the fast config reaches the paper config's held-out PSNR at least 10x
sooner; this script gives the per-step side of that ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from layerforge.models.fields import HashGridConfig
from layerforge.models.udc_nerf import UDCNeRF, UDCNeRFConfig, paper_terms
from layerforge.pipelines import registry


def _model_cfg(pipeline: str, objects: int) -> UDCNeRFConfig:
    m = registry.load_config(pipeline, []).model
    return UDCNeRFConfig(objects=objects, encoding=m.encoding, xyz_frequencies=m.xyz_frequencies,
                         dir_frequencies=m.dir_frequencies, hashgrid=HashGridConfig(**m.hashgrid), width=m.width,
                         depth=m.depth, skips=tuple(m.skips), code_dim=m.code_dim, num_samples=m.num_samples,
                         num_importance=m.num_importance, near=m.near, far=m.far, sigma_bias_init=m.sigma_bias_init)


def _batch(rays: int, objects: int, device: torch.device, g: torch.Generator) -> dict:
    origins = torch.tensor([0.0, -1.5, 0.6]) + 0.05 * torch.randn(rays, 3, generator=g)
    directions = torch.nn.functional.normalize(torch.tensor([0.0, 1.0, -0.4]) + 0.3 * torch.randn(rays, 3, generator=g), dim=-1)
    instance = torch.where(torch.rand(rays, generator=g) < 0.3, torch.randint(1, objects + 1, (rays,), generator=g), 0)
    return {"origins": origins.to(device), "directions": directions.to(device), "rgb": torch.rand(rays, 3, generator=g).to(device),
            "instance": instance.to(device), "pseudo_background": torch.rand(rays, 3, generator=g).to(device), "seed": 0}


def measure(pipeline: str, device: torch.device, rays: int, steps: int, objects: int = 3) -> dict:
    torch.manual_seed(0)
    model = UDCNeRF(_model_cfg(pipeline, objects)).to(device)
    terms = paper_terms()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(steps + 1):  # the first step warms up (allocations, kernels)
        batch = _batch(rays, objects, device, g)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        info = {"log": {}}
        loss = sum(t.weight * t(model, batch, i, info) for t in terms)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    cfg = model.cfg
    return {"config": pipeline, "device": device.type, "encoding": cfg.encoding, "width x depth": f"{cfg.width}x{cfg.depth}",
            "samples": f"{cfg.num_samples}+{cfg.num_importance}", "rays": rays, "s/step": s, "rays/s": rays / s,
            "params": sum(p.numel() for p in model.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rays", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = [measure(p, d, args.rays, args.steps) for d in devices for p in ("decomp_nerf", "decomp_nerf_paper")]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    by = {(r["device"], r["config"]): r["rays/s"] for r in rows}
    for d in devices:
        print(f"{d.type}: fast / paper rays per second = {by[(d.type, 'decomp_nerf')] / by[(d.type, 'decomp_nerf_paper')]:.2f}x")


if __name__ == "__main__":
    main()
