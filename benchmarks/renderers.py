"""Shared-renderer benchmark: one table, every row measured in the same run.

    python benchmarks/renderers.py            # all rows (CPU; GPU rows when CUDA is present)
    python benchmarks/renderers.py --quick    # skip the slow CPU 1M-face rows, fewer repeats
    python benchmarks/renderers.py --devices cuda --markdown   # GPU rows only, as a markdown table

``--devices`` picks which rows run (what each row measures does not change); ``--markdown``
prints the rows as a markdown table (``| benchmark | device | ms | note |``), one line per row
as it is measured, which is what ``scripts/gpu_check.py`` captures; ``--only`` keeps the
producers whose name starts with a prefix (``--only mesh``). A producer that raises is
reported as an error row and the others still run (exit status 1).

Each row is the median wall time of ``--repeats`` calls after one warm-up call; GPU rows are
timed with CUDA events after a synchronize. Rows come from the functions listed in
``ROW_PRODUCERS``: each takes the parsed options and yields :class:`Row` objects (or raises
nothing and yields skipped rows with a reason). To add rows (Gaussians, volume...), write
another producer and append it to ``ROW_PRODUCERS``.

Mesh rows: ``rasterize`` (visibility + differentiable barycentrics/depth) of a UV sphere
with ~10k or ~1M faces filling most of a square image, one view, torch backend (CPU and
GPU) and the project's CUDA kernel (GPU); the speed-up column is torch-on-the-same-GPU time
divided by cuda time.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layerforge.renderers.cameras import orbit_cameras  # noqa: E402
from layerforge.renderers.mesh import rasterize  # noqa: E402


@dataclass
class Row:
    """One table row. ``ms`` is None for a skipped row (``note`` says why)."""

    group: str
    what: str
    device: str
    ms: float | None
    note: str = ""


def time_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def error_text(exc: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message``, cut to ``limit`` characters, for a row's note."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:limit]


def uv_sphere(n_faces: int, radius: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A UV sphere with about ``n_faces`` triangles (lat x 2*lat quads, two triangles each)."""
    lat = max(2, round(math.sqrt(n_faces / 4)))
    lon = 2 * lat
    theta = torch.linspace(0, math.pi, lat + 1, dtype=torch.float64)
    phi = torch.linspace(0, 2 * math.pi, lon + 1, dtype=torch.float64)[:-1]
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    verts = torch.stack([t.sin() * p.cos(), t.sin() * p.sin(), t.cos()], -1).reshape(-1, 3) * radius
    i, j = torch.meshgrid(torch.arange(lat), torch.arange(lon), indexing="ij")
    a = i * lon + j
    b = i * lon + (j + 1) % lon
    c = (i + 1) * lon + j
    d = (i + 1) * lon + (j + 1) % lon
    faces = torch.cat([torch.stack([a, c, b], -1), torch.stack([b, c, d], -1)]).reshape(-1, 3)
    return verts.float(), faces


def _wanted(opts: argparse.Namespace, device_type: str) -> bool:
    """Whether ``--devices`` asks for rows on ``device_type`` ("cpu" or "cuda")."""
    return getattr(opts, "devices", "all") in ("all", device_type)


def _mesh_devices(opts: argparse.Namespace | None = None) -> list[torch.device]:
    devs = []
    if opts is None or _wanted(opts, "cpu"):
        devs.append(torch.device("cpu"))
    if torch.cuda.is_available() and (opts is None or _wanted(opts, "cuda")):
        devs.append(torch.device("cuda"))
    return devs


def mesh_rows(opts: argparse.Namespace) -> Iterator[Row]:
    """torch-backend and cuda-kernel mesh rasterization at 256^2 / 1024^2, 10k / 1M faces."""
    gpu = torch.cuda.is_available()
    kernel_error = None  # a failed kernel build/launch: later kernel rows are skipped, not retried
    for n_faces in (10_000, 1_000_000):
        verts, faces = uv_sphere(n_faces)
        label_faces = f"{faces.shape[0] / 1e3:.0f}k" if faces.shape[0] < 1e6 else f"{faces.shape[0] / 1e6:.2f}M"
        for res in (256, 1024):
            cams = orbit_cameras(20.0, 30.0, 3.0, 45.0, res, res)
            what = f"mesh rasterize {res}x{res}, {label_faces} faces"
            for dev in _mesh_devices(opts):
                if dev.type == "cpu" and opts.quick and faces.shape[0] >= 1_000_000:
                    yield Row("mesh", what + ", torch", "cpu", None, "skipped (--quick)")
                    continue
                v, f, c = verts.to(dev), faces.to(dev), cams.to(dev)
                torch_ms = time_ms(lambda: rasterize(v, f, c, backend="torch"), opts.repeats, dev)
                yield Row("mesh", what + ", torch", dev.type, torch_ms)
                if dev.type == "cuda":
                    if kernel_error is not None:
                        yield Row("mesh", what + ", cuda kernel", "cuda", None, f"skipped ({kernel_error})")
                        continue
                    try:
                        cuda_ms = time_ms(lambda: rasterize(v, f, c, backend="cuda"), opts.repeats, dev)
                    except Exception as exc:  # build or launch failure: report it, keep the other rows
                        kernel_error = f"cuda kernel failed: {error_text(exc)}"
                        yield Row("mesh", what + ", cuda kernel", "cuda", None, kernel_error)
                        continue
                    yield Row("mesh", what + ", cuda kernel", "cuda", cuda_ms, f"{torch_ms / cuda_ms:.1f}x vs torch on GPU")
            if not gpu and _wanted(opts, "cuda"):
                yield Row("mesh", what + ", torch", "cuda", None, "skipped (no CUDA GPU)")
                yield Row("mesh", what + ", cuda kernel", "cuda", None, "skipped (no CUDA GPU)")


# Producers of table rows; other renderers append theirs here.
ROW_PRODUCERS: list[Callable[[argparse.Namespace], Iterator[Row]]] = [mesh_rows]

from benchmarks.renderers_gaussians import gaussian_rows  # noqa: E402

ROW_PRODUCERS.append(gaussian_rows)


def device_name() -> str:
    cpu = "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpu += f", {torch.get_num_threads()} torch threads"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA GPU"
    return f"CPU: {cpu}; GPU: {gpu}; torch {torch.__version__}"


def markdown_ms(ms: float | None) -> str:
    """Milliseconds for a markdown cell: 3 decimals under 10 ms, else 1; "-" for a skipped row."""
    if ms is None:
        return "-"
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def markdown_row(row: Row) -> str:
    cells = (row.what, row.device, markdown_ms(row.ms), row.note)
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


MARKDOWN_HEADER = ("| benchmark | device | ms | note |", "|---|---|---:|---|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip slow CPU rows, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per row (median)")
    parser.add_argument("--devices", choices=("all", "cpu", "cuda"), default="all",
                        help="which rows to run (default all: CPU rows, and GPU rows when CUDA is present)")
    parser.add_argument("--markdown", action="store_true", help="print the rows as a markdown table")
    parser.add_argument("--only", nargs="+", metavar="PREFIX", default=None,
                        help="run only the producers whose name starts with one of these (mesh, gaussian)")
    opts = parser.parse_args(argv)
    if opts.repeats is None:
        opts.repeats = 3 if opts.quick else 5
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / "build" / "torch_extensions"))
    producers = [p for p in ROW_PRODUCERS if opts.only is None or p.__name__.startswith(tuple(opts.only))]
    print(device_name())
    print(f"median of {opts.repeats} runs after 1 warm-up")
    if opts.markdown:
        print("\n".join(MARKDOWN_HEADER))
    else:
        header = f"{'benchmark':<50} {'device':<6} {'ms':>10}  note"
        print(header)
        print("-" * len(header))
    rc = 0
    for producer in producers:
        rows = producer(opts)
        while True:
            try:
                row = next(rows)
            except StopIteration:
                break
            except Exception as exc:  # one broken producer must not lose the other producers' rows
                rc = 1
                row = Row("error", f"{producer.__name__} raised", "-", None, f"error: {error_text(exc)}")
                rows = iter(())
            if opts.markdown:
                print(markdown_row(row), flush=True)
            else:
                ms = f"{row.ms:10.2f}" if row.ms is not None else f"{'-':>10}"
                print(f"{row.what:<50} {row.device:<6} {ms}  {row.note}", flush=True)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
