"""Gaussian rows of the renderer benchmark (``benchmarks/renderers.py`` lists ``gaussian_rows``).

GPU rows: ``render_gaussians(backend="gsplat")`` against gsplat's ``rasterization`` called
directly with the same arguments (pinhole, packed=False, RGB+ED, background), forward and
forward+backward, 100k and 1M Gaussians at 1920x1080; the note gives our wrapper's overhead.
CPU rows: the torch reference at a small size (it is the reference, not the fast path).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layerforge.renderers.cameras import orbit_cameras  # noqa: E402
from layerforge.renderers.gaussians import render_gaussians  # noqa: E402


def _scene(n: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """n random Gaussians in a 2 m cube around the origin, sizes shrinking with n."""
    g = torch.Generator().manual_seed(seed)
    s = 0.02 * (1e4 / n) ** (1 / 3)
    t = {
        "means": (torch.rand(n, 3, generator=g) - 0.5) * 2.0,
        "quats": torch.randn(n, 4, generator=g),
        "scales": s * (0.5 + torch.rand(n, 3, generator=g)),
        "opacities": 0.2 + 0.7 * torch.rand(n, generator=g),
        "colors": torch.rand(n, 3, generator=g),
    }
    return {k: v.to(device) for k, v in t.items()}


def gaussian_rows(opts: argparse.Namespace) -> Iterator:
    """Rows for :data:`benchmarks.renderers.ROW_PRODUCERS`."""
    from benchmarks.renderers import Row, _wanted, error_text, time_ms  # type: ignore

    # CPU: torch reference
    cpu = torch.device("cpu")
    for n, res in ((1_000, 128), (10_000, 128)) if _wanted(opts, "cpu") else ():
        if opts.quick and n > 1_000:
            yield Row("gaussians", f"gaussians torch ref fwd {res}x{res}, {n // 1000}k", "cpu", None, "skipped (--quick)")
            continue
        sc = _scene(n, cpu)
        cam = orbit_cameras(20.0, 30.0, 3.5, 50.0, res, res)
        yield Row("gaussians", f"gaussians torch ref fwd {res}x{res}, {n // 1000}k", "cpu",
                  time_ms(lambda: render_gaussians(**sc, cameras=cam, backend="torch"), opts.repeats, cpu))
        params = {k: v.clone().requires_grad_(True) for k, v in sc.items()}

        def fwd_bwd() -> None:
            out = render_gaussians(**params, cameras=cam, backend="torch")
            (out.rgb.sum() + out.depth.sum()).backward()

        yield Row("gaussians", f"gaussians torch ref fwd+bwd {res}x{res}, {n // 1000}k", "cpu",
                  time_ms(fwd_bwd, opts.repeats, cpu))

    # GPU: our wrapper vs gsplat directly
    labels = [(100_000, "100k"), (1_000_000, "1M")]
    reason = None
    if not _wanted(opts, "cuda"):
        return
    if not torch.cuda.is_available():
        reason = "skipped (no CUDA GPU)"
    else:
        try:
            from gsplat import rasterization
        except Exception as exc:  # pragma: no cover - environment dependent
            reason = f"skipped (gsplat unavailable: {type(exc).__name__})"
    if reason is not None:
        for _, lab in labels:
            for mode in ("fwd", "fwd+bwd"):
                for who in ("gsplat direct", "render_gaussians"):
                    yield Row("gaussians", f"gaussians {who} {mode} 1920x1080, {lab}", "cuda", None, reason)
        return
    dev = torch.device("cuda")
    cam = orbit_cameras(20.0, 30.0, 3.5, 50.0, 1920, 1080).to(dev)
    bg = torch.zeros(1, 3, device=dev)
    failed = None  # a gsplat build/launch failure: the remaining rows are skipped, not retried
    for n, lab in labels:
        if failed is not None:
            for mode in ("fwd", "fwd+bwd"):
                for who in ("gsplat direct", "render_gaussians"):
                    yield Row("gaussians", f"gaussians {who} {mode} 1920x1080, {lab}", "cuda", None, f"skipped ({failed})")
            continue
        sc = _scene(n, dev)

        def direct(p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            out, alpha, _ = rasterization(
                p["means"], p["quats"], p["scales"], p["opacities"], p["colors"],
                viewmats=cam.world_to_camera, Ks=cam.K, width=cam.width, height=cam.height,
                near_plane=cam.near, far_plane=cam.far, packed=False, backgrounds=bg, render_mode="RGB+ED",
            )
            return out, alpha

        def ours(p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            out = render_gaussians(**p, cameras=cam, background=bg, backend="gsplat")
            return torch.cat([out.rgb, out.depth], -1), out.alpha

        for mode in ("fwd", "fwd+bwd"):
            params = {k: v.clone().requires_grad_(mode == "fwd+bwd") for k, v in sc.items()}
            times = {}
            for who, fn in (("gsplat direct", direct), ("render_gaussians", ours)):
                if mode == "fwd":
                    def call(fn=fn) -> None:
                        with torch.no_grad():
                            fn(params)
                else:
                    def call(fn=fn) -> None:
                        out, alpha = fn(params)
                        (out.sum() + alpha.sum()).backward()
                what = f"gaussians {who} {mode} 1920x1080, {lab}"
                if failed is not None:
                    yield Row("gaussians", what, "cuda", None, f"skipped ({failed})")
                    continue
                try:
                    times[who] = time_ms(call, opts.repeats, dev)
                except Exception as exc:  # e.g. gsplat's JIT build failed: report it, keep going
                    failed = f"gsplat failed: {error_text(exc)}"
                    yield Row("gaussians", what, "cuda", None, failed)
            if "gsplat direct" in times:
                yield Row("gaussians", f"gaussians gsplat direct {mode} 1920x1080, {lab}", "cuda", times["gsplat direct"])
            if len(times) < 2:
                continue
            over = times["render_gaussians"] / times["gsplat direct"]
            yield Row("gaussians", f"gaussians render_gaussians {mode} 1920x1080, {lab}", "cuda",
                      times["render_gaussians"], f"{over:.2f}x of gsplat direct")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import renderers  # type: ignore

    renderers.ROW_PRODUCERS[:] = [gaussian_rows]
    raise SystemExit(renderers.main())
