"""`make gpu-check`: build the CUDA kernels, run the GPU tests and benchmarks, record the rows.

Run on a machine with an NVIDIA GPU, with any Python that has a CUDA build of torch: the
project's .venv, or a GPU machine's own Python plus the pure-Python wheels that
``make gpu-wheels`` puts in build/gpu_wheels (gsplat, diffusers, ...), carried along with
the tree. Steps, each a subprocess with its own time limit; a failing step is recorded and
the next one still runs:

1. imports      which of our dependencies import, their versions, and from where
                (the base Python, the carried wheels, or missing)
2. builds       the project's CUDA rasterizer (layerforge/renderers/mesh_cuda.py) and
                gsplat's kernels, JIT-compiled side by side into build/torch_extensions/<key>/
3. GPU tests    pytest -m gpu on the test files that carry the ``gpu`` marker
4. benchmarks   benchmarks/renderers.py --devices cuda --markdown, then
                benchmarks/guidance.py --no-cpu --markdown

The rows go into benchmarks/RESULTS.md as a section ``## GPU rows (<device>, <date>)``,
rewritten after every step (so a run that is cut short keeps what it measured) and replaced,
not appended, when the same device runs again. With $OUT set (the device tool returns what is
written there) the section, the updated RESULTS.md and the full log are copied to $OUT;
``--apply-section $FILES/gpu_rows.md`` later writes a returned section into this checkout's
RESULTS.md. Exit status: 0 all steps ok, 1 some step failed, 2 no CUDA device (one line).

    python scripts/gpu_check.py                       # what `make gpu-check` runs
    python scripts/gpu_check.py --budget-s 300        # tighter time limit for the whole run
    python scripts/gpu_check.py --apply-section gpu_rows.md

Only the standard library (and torch, for the device check) is imported here.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTION_RE = re.compile(r"^## GPU rows \((?P<device>.+), (?P<date>\d{4}-\d{2}-\d{2})\)[ \t]*$")
STEP_NAMES = ("build-rasterizer", "build-gsplat", "tests", "bench-renderers", "bench-guidance", "bench-decomp-nerf",
              "bench-dp-recon", "bench-gala", "bench-layerpano3d")
WHEEL_BUDGET_MIB = 48  # the tree carried to a GPU machine is capped at 64 MiB in all

# (module[:names it must provide], what needs it, the GPU steps that cannot run without it)
DEPENDENCIES: list[tuple[str, str, tuple[str, ...]]] = [
    ("torch", "everything", ("build-rasterizer", "build-gsplat", "tests", "bench-renderers", "bench-guidance",
                             "bench-decomp-nerf", "bench-dp-recon", "bench-gala", "bench-layerpano3d")),
    ("numpy", "diffusers, gsplat, tests", ()),
    ("pytest", "the GPU tests", ("tests",)),
    ("pytest_timeout", "pyproject's --timeout option (dropped when missing)", ()),
    ("ninja", "JIT builds of both kernels", ("build-rasterizer", "build-gsplat")),
    ("gsplat:rasterization", "Gaussian renderer backend='gsplat', its GPU test and benchmark rows", ("build-gsplat",)),
    ("jaxtyping", "gsplat", ()),
    ("rich", "gsplat", ()),
    ("diffusers:UNet2DConditionModel,DDPMScheduler", "benchmarks/guidance.py (SD-2.1 UNet, scheduler)",
     ("bench-guidance", "bench-dp-recon", "bench-gala")),
    ("huggingface_hub", "diffusers", ()),
    ("safetensors", "diffusers", ()),
    ("PIL", "diffusers", ()),
    ("omegaconf", "layerforge.models.guidance.loading (single-file models), configs", ()),
    ("hydra", "layerforge configs and CLI (not needed by these steps)", ()),
    ("trimesh", "layerforge.assets (not needed by these steps)", ()),
    ("plyfile", "3DGS PLY export (not needed by these steps)", ()),
]

_IMPORT_PROBE = r"""
import importlib, importlib.metadata as md, json, sys
out = {}
for spec in json.loads(sys.argv[1]):
    name, _, attrs = spec.partition(":")
    try:
        mod = importlib.import_module(name)
        for attr in filter(None, attrs.split(",")):
            getattr(mod, attr)
    except BaseException as exc:
        lines = [l for l in str(exc).splitlines() if l.strip()]
        out[name] = {"ok": False, "error": f"{type(exc).__name__}: {lines[0] if lines else ''}"[:200]}
        continue
    ver = getattr(mod, "__version__", None)
    if not isinstance(ver, str):
        try:
            ver = md.version({"PIL": "pillow", "hydra": "hydra-core"}.get(name, name))
        except Exception:
            ver = "?"
    out[name] = {"ok": True, "version": ver, "file": getattr(mod, "__file__", None) or ""}
print("GPU_CHECK_IMPORTS " + json.dumps(out))
"""


# --------------------------------------------------------------------------------------------
# device
# --------------------------------------------------------------------------------------------


def cuda_device() -> dict | None:
    """The first visible CUDA device as a dict (name, capability, memory, versions), or None."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": torch.cuda.get_device_name(0),
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": props.total_memory / 2**30,
        "count": torch.cuda.device_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
    }


def no_device_message() -> str:
    """The one line printed (exit 2) when torch sees no CUDA device."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure means the same to the user
        return (f"gpu-check: torch is not importable by {sys.executable} ({type(exc).__name__}: {exc}); "
                "set GPU_PYTHON to a Python with a CUDA build of torch")
    why = "a CPU-only build" if torch.version.cuda is None else "torch.cuda.is_available() is False"
    return (f"gpu-check: no CUDA device visible to {sys.executable} (torch {torch.__version__}, {why}); "
            "run it on a machine with an NVIDIA GPU and its driver")


def _command_line(argv: list[str], timeout: float = 20) -> str:
    """First line of a command's output, or '' if it is missing or fails."""
    if shutil.which(argv[0]) is None:
        return ""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = [ln.strip() for ln in (res.stdout or "").splitlines() if ln.strip()]
    return lines[0] if lines and res.returncode == 0 else ""


def toolkit_info() -> dict:
    """nvcc's release line and the driver version (read-only queries)."""
    nvcc = os.environ.get("CUDA_HOME", "")
    nvcc = str(Path(nvcc) / "bin" / "nvcc") if nvcc and (Path(nvcc) / "bin" / "nvcc").exists() else "nvcc"
    release = ""
    if shutil.which(nvcc):
        try:
            out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=20).stdout
            m = re.search(r"release ([\d.]+)", out)
            release = m.group(1) if m else ""
        except (OSError, subprocess.SubprocessError):
            pass
    driver = _command_line(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return {"nvcc": release or "not found", "nvcc_path": shutil.which(nvcc) or "", "driver": driver or "?"}


# --------------------------------------------------------------------------------------------
# carried wheels
# --------------------------------------------------------------------------------------------


def wheel_files(wheel_dir: Path) -> list[Path]:
    return sorted(wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []


def wheel_name(path: Path) -> str:
    """``name version`` of a wheel file (``gsplat-1.4.0-py3-none-any.whl`` -> ``gsplat 1.4.0``)."""
    parts = path.name.split("-")
    return f"{parts[0]} {parts[1]}" if len(parts) >= 2 else path.name


def extract_wheels(wheel_dir: Path, site_dir: Path) -> list[Path]:
    """Unpack every wheel of ``wheel_dir`` into ``site_dir`` (an importable folder); return them.

    A wheel is a zip of its importable files plus ``*.dist-info``; ``*.data/purelib`` and
    ``*.data/platlib`` go to the top, other ``*.data`` parts (scripts, headers) are left out.
    Real files, not a zip on sys.path, because gsplat compiles the CUDA sources it ships.
    ``site_dir/.wheels.json`` records what was unpacked; the same set again is a no-op, a
    changed set is unpacked afresh.
    """
    wheels = wheel_files(wheel_dir)
    if not wheels:
        return []
    stamp = site_dir / ".wheels.json"
    want = {w.name: w.stat().st_size for w in wheels}
    try:
        if json.loads(stamp.read_text()) == want:
            return wheels
    except (OSError, ValueError):
        pass
    if site_dir.exists():
        shutil.rmtree(site_dir)
    site_dir.mkdir(parents=True)
    root = site_dir.resolve()
    for whl in wheels:
        with zipfile.ZipFile(whl) as zf:
            for info in zf.infolist():
                name = info.filename
                first, _, rest = name.partition("/")
                if first.endswith(".data"):
                    kind, _, rest = rest.partition("/")
                    if kind not in ("purelib", "platlib") or not rest:
                        continue
                    name = rest
                target = (site_dir / name).resolve()
                if root not in target.parents:  # no paths outside site_dir
                    continue
                if name.endswith("/"):
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    stamp.write_text(json.dumps(want))
    return wheels


def python_path(site_dir: Path | None, existing: str | None) -> str:
    """PYTHONPATH for the steps: the carried wheels first, then the repository, then what was set."""
    parts = [str(site_dir)] if site_dir is not None else []
    parts.append(str(REPO))
    parts += [p for p in (existing or "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(parts))


def probe_imports(modules: list[str], env: dict[str, str], site_dir: Path | None, timeout: float = 120) -> dict:
    """Import each module in a child with ``env``; {module: {ok, version, source | error}}.

    ``module:a,b`` also checks that the module provides ``a`` and ``b`` (lazy packages such as
    diffusers import their parts only when asked).
    """
    try:
        res = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, json.dumps(modules)], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=timeout)
        line = next((ln for ln in res.stdout.splitlines() if ln.startswith("GPU_CHECK_IMPORTS ")), None)
        found = json.loads(line.split(" ", 1)[1]) if line else {}
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        found = {m: {"ok": False, "error": f"probe failed: {type(exc).__name__}"} for m in modules}
    site = str(site_dir.resolve()) if site_dir is not None else None
    found = {m.partition(":")[0]: v for m, v in found.items()}
    for name in (m.partition(":")[0] for m in modules):
        info = found.setdefault(name, {"ok": False, "error": "probe printed nothing"})
        if info.get("ok"):
            f = str(Path(info.get("file") or ".").resolve())
            info["source"] = "carried" if site and f.startswith(site + os.sep) else "base"
    return found


# --------------------------------------------------------------------------------------------
# steps
# --------------------------------------------------------------------------------------------


@dataclass
class Step:
    name: str  # short id: imports, build-rasterizer, build-gsplat, tests, bench-renderers, bench-guidance
    title: str  # what the results table says
    argv: list[str]
    timeout_s: float
    skip: str | None = None  # a reason not to run it


@dataclass
class StepResult:
    name: str
    title: str
    status: str  # ok | FAILED | timed out | skipped
    seconds: float = 0.0
    detail: str = ""
    command: str = ""
    table: list[str] = field(default_factory=list)
    log: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def table_lines(text: str) -> list[str]:
    """The markdown table lines (``| ... |``) of a step's output, in order."""
    return [ln.rstrip() for ln in text.splitlines() if ln.startswith("|") and ln.rstrip().endswith("|")]


_PYTEST_COUNTS = re.compile(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)")


def pytest_summary(text: str) -> str:
    """``2 passed, 1 skipped`` from pytest's last summary line ('' if none)."""
    for ln in reversed(text.splitlines()):
        found = _PYTEST_COUNTS.findall(ln)
        if found and ("=" in ln or " in " in ln):
            return ", ".join(f"{n} {w}" for n, w in found)
    return ""


def first_compiler_error(text: str) -> str:
    """The first ``error:`` line a compiler printed ('' if none): the cause of a failed build."""
    for ln in text.splitlines():
        if re.search(r"\berror\b", ln) and not re.search(r"#error|-Werror|errors? generated", ln):
            return ln.strip()[:200]
    return ""


def error_line(text: str) -> str:
    """The most telling line of a failed step's output: the last error-looking one, else the last."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.search(r"(Error|error:|FAILED|Exception|Traceback|Killed)", ln) and not ln.startswith("|"):
            return ln[:200]
    return lines[-1][:200] if lines else ""


def _kill(proc: subprocess.Popen) -> None:
    """End a step and the compilers it started (its own process group)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired, PermissionError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def shown(argv: list[str]) -> str:
    """A step's command as the section shows it (this interpreter written as ``python``)."""
    return " ".join("python" if a == sys.executable else a for a in argv)


def run_steps(steps: list[Step], env: dict[str, str], log_dir: Path, deadline: float,
              min_s: float = 15.0) -> list[StepResult]:
    """Run ``steps`` side by side (each in its own process group, output to its own log).

    A step's limit is its ``timeout_s`` or what is left before ``deadline``, whichever is
    less; with under ``min_s`` seconds left it is skipped. Never raises for a failing step.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    running = []
    results: dict[str, StepResult] = {}
    for st in steps:
        cmd = shown(st.argv)
        left = deadline - time.monotonic()
        if st.skip is None and left < min_s:
            st.skip = f"no time left ({left:.0f} s before the run's budget)"
        if st.skip is not None:
            results[st.name] = StepResult(st.name, st.title, "skipped", detail=st.skip, command=cmd)
            print(f"[gpu-check] {st.title}: skipped: {st.skip}", flush=True)
            continue
        limit = min(st.timeout_s, left)
        log_path = log_dir / f"{st.name}.log"
        fh = open(log_path, "w")
        proc = subprocess.Popen(st.argv, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)
        running.append((st, proc, fh, log_path, time.monotonic(), limit))
    while running:
        time.sleep(0.2)
        for item in list(running):
            st, proc, fh, log_path, t0, limit = item
            rc = proc.poll()
            timed_out = False
            if rc is None:
                if time.monotonic() - t0 <= limit:
                    continue
                _kill(proc)
                timed_out = True
            running.remove(item)
            fh.close()
            secs = time.monotonic() - t0
            text = log_path.read_text(errors="replace")
            res = StepResult(st.name, st.title, "ok", secs, command=shown(st.argv), table=table_lines(text),
                             log=text)
            if timed_out:
                res.status, res.detail = "timed out", f"killed after {limit:.0f} s; last line: {error_line(text)}"
            elif proc.returncode != 0:
                res.status, res.detail = "FAILED", f"exit {proc.returncode}: {error_line(text)}"
                first = first_compiler_error(text) if st.name.startswith("build") else ""
                if first and first not in res.detail:
                    res.detail += f"; first error: {first}"
            if res.ok and res.table:
                rows = [ln for ln in res.table[2:] if not re.match(r"^\|-", ln)]
                measured = [ln for ln in rows if re.search(r"\| \d[\d.]* \|", ln)]
                res.detail = f"{len(rows)} rows, {len(measured)} measured"
            if st.name == "tests":
                summary = pytest_summary(text)
                res.detail = summary + ("; " + res.detail if res.detail else "") if summary else res.detail
            results[st.name] = res
            print(f"[gpu-check] {st.title}: {res.status} ({secs:.0f} s) {res.detail}".rstrip(), flush=True)
    return [results[st.name] for st in steps]


def gpu_test_files(tests_dir: Path) -> list[Path]:
    """Test files that carry the ``gpu`` marker (``@pytest.mark.gpu`` or a module ``pytestmark``)."""
    pat = re.compile(r"pytest\.mark\.gpu\b|^pytestmark\s*=.*\bgpu\b", re.M)
    return sorted(p for p in tests_dir.rglob("test_*.py") if pat.search(p.read_text(errors="replace")))


# --------------------------------------------------------------------------------------------
# RESULTS.md section
# --------------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def build_section(device: str, date: str, context: list[str], results: list[StepResult],
                  tables: list[tuple[str, str]]) -> str:
    """The markdown section for one run.

    ``context``: sentences about the machine and software; ``results``: one row each in the
    step table; ``tables``: (step name, heading) pairs, each followed by that step's captured
    table (or a line saying why there is none).
    """
    by_name = {r.name: r for r in results}
    lines = [f"## GPU rows ({device}, {date})", ""]
    lines.append("Written by `make gpu-check` (`scripts/gpu_check.py`); running it again on this device "
                 "replaces this section. " + " ".join(context))
    lines += ["", "| step | result | s | detail |", "|---|---|---:|---|"]
    for r in results:
        lines.append(f"| {_cell(r.title)} | {r.status} | {r.seconds:.0f} | {_cell(r.detail)} |")
    for name, heading in tables:
        r = by_name.get(name)
        lines += ["", f"### {heading}", ""]
        if r is not None and r.command:
            lines += [f"`{r.command}`", ""]
        body = [ln for ln in (r.table if r else []) if ln.strip()]
        if len(body) > 2:
            lines += body
            if r is not None and not r.ok:
                lines += ["", f"(incomplete: the step {r.status.lower()}: {r.detail})"]
        else:
            why = "not run yet" if r is None else f"{r.status}: {r.detail}" if r.detail else r.status
            lines.append(f"No rows ({why}).")
    return "\n".join(lines).rstrip() + "\n"


def section_device(section: str) -> str:
    """The device named in a section's heading (first line)."""
    m = SECTION_RE.match(section.splitlines()[0] if section else "")
    if not m:
        raise ValueError("not a GPU rows section: its first line must read '## GPU rows (<device>, <date>)'")
    return m.group("device")


def replace_section(text: str, section: str) -> str:
    """``text`` with ``section`` in place of the section(s) for the same device, else appended.

    A section runs from its ``## GPU rows (<device>, <date>)`` heading to the next ``## ``
    heading or the end. The first old section for the device is replaced where it stands and
    any later duplicates dropped; sections for other devices and all other text are kept.
    """
    device = section_device(section)
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    placed = False
    i = 0
    while i < len(lines):
        m = SECTION_RE.match(lines[i].rstrip("\n"))
        if m and m.group("device") == device:
            j = i + 1
            while j < len(lines) and not lines[j].startswith("## "):
                j += 1
            if not placed:
                out.append(section if j == len(lines) else section + "\n")
                placed = True
            i = j
            continue
        out.append(lines[i])
        i += 1
    new = "".join(out)
    if not placed:
        new = new.rstrip("\n") + "\n\n" + section
    return new.rstrip("\n") + "\n"


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_results(results_md: Path, section: str) -> None:
    old = results_md.read_text() if results_md.exists() else "# Benchmark results\n"
    atomic_write(results_md, replace_section(old, section))


def copy_out(out_dir: Path | None, files: dict[str, str]) -> None:
    """Write ``files`` ({name: text}) under ``out_dir`` (what the device tool brings back)."""
    if out_dir is None:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        atomic_write(out_dir / name, text)


def combined_log(header: list[str], results: list[StepResult], tail_chars: int = 400_000) -> str:
    parts = ["\n".join(header), ""]
    for r in results:
        parts.append(f"===== {r.title} [{r.status}, {r.seconds:.0f} s] $ {r.command}")
        log = r.log if len(r.log) <= tail_chars else "[... cut ...]\n" + r.log[-tail_chars:]
        parts.append(log.rstrip() or r.detail)
        parts.append("")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheels", type=Path, default=REPO / "build" / "gpu_wheels",
                    help="folder of carried wheels (make gpu-wheels); default build/gpu_wheels")
    ap.add_argument("--site", type=Path, default=REPO / "build" / "gpu_site",
                    help="where the carried wheels are unpacked; default build/gpu_site")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    ap.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                    help="also copy the rows and the log here (default $OUT)")
    ap.add_argument("--log-dir", type=Path, default=REPO / "build" / "gpu_check",
                    help="each step's log, the combined log and the section (default build/gpu_check)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="time limit of the whole run (default 480)")
    ap.add_argument("--repeats", type=int, default=20, help="renderer benchmark: timed calls per row")
    ap.add_argument("--gpu-steps", type=int, default=20, help="guidance benchmark: timed SDS steps per row")
    ap.add_argument("--decomp-budget-s", type=int, default=90, help="UDC-NeRF benchmark: paper-config training seconds")
    ap.add_argument("--arch-list", default="auto",
                    help="TORCH_CUDA_ARCH_LIST for the builds; auto = the visible device's capability")
    ap.add_argument("--skip", nargs="+", default=[], metavar="STEP", choices=STEP_NAMES,
                    help="steps to leave out: " + " ".join(STEP_NAMES))
    ap.add_argument("--apply-section", type=Path, metavar="FILE",
                    help="write a section returned from a GPU machine into --results, then stop")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.apply_section is not None:
        section = args.apply_section.read_text()
        write_results(args.results, section)
        print(f"gpu-check: wrote the section for {section_device(section)} into {args.results}")
        return 0

    t_start = time.monotonic()
    deadline = t_start + args.budget_s
    try:
        dev = cuda_device()
    except Exception:  # noqa: BLE001 - torch missing or broken: the same one-line answer
        dev = None
    if dev is None:
        print(no_device_message(), file=sys.stderr)
        return 2
    date = _dt.date.today().isoformat()
    print(f"[gpu-check] device: {dev['name']} (compute capability {dev['capability']}, "
          f"{dev['memory_gib']:.1f} GiB, {dev['count']} visible); torch {dev['torch']} (CUDA {dev['torch_cuda']}); "
          f"python {sys.version.split()[0]} at {sys.executable}", flush=True)

    # environment of every step
    env = dict(os.environ)
    ext_root = Path(env.get("TORCH_EXTENSIONS_DIR") or REPO / "build" / "torch_extensions")
    key = f"{sys.implementation.cache_tag}-torch{dev['torch']}"
    env["TORCH_EXTENSIONS_DIR"] = str(ext_root / key)  # never mix builds of two torch versions
    if not env.get("CUDA_HOME") and Path("/usr/local/cuda/bin/nvcc").exists():
        env["CUDA_HOME"] = "/usr/local/cuda"
    env["TORCH_CUDA_ARCH_LIST"] = dev["capability"] if args.arch_list == "auto" else args.arch_list
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 8))
    # the interpreter's own bin folder (a venv's ninja) even when it is not activated, and the
    # toolkit's nvcc, which gsplat looks for on PATH
    path = [str(Path(sys.executable).parent)]
    if env.get("CUDA_HOME") and (Path(env["CUDA_HOME"]) / "bin" / "nvcc").exists() and not shutil.which("nvcc"):
        path.append(str(Path(env["CUDA_HOME"]) / "bin"))
    env["PATH"] = os.pathsep.join(path + [env.get("PATH", "")])
    env.update(PYTHONUNBUFFERED="1", PYTHONHASHSEED="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    os.environ.update({k: env[k] for k in ("CUDA_HOME",) if k in env})
    tk = toolkit_info()

    wheels = extract_wheels(args.wheels, args.site)
    size_mib = sum(w.stat().st_size for w in wheels) / 2**20
    if size_mib > WHEEL_BUDGET_MIB:
        print(f"[gpu-check] warning: carried wheels are {size_mib:.0f} MiB (the carried tree's limit is 64 MiB)")
    site = args.site if wheels else None
    env["PYTHONPATH"] = python_path(site, os.environ.get("PYTHONPATH"))
    print(f"[gpu-check] carried wheels ({size_mib:.1f} MiB from {args.wheels}): "
          f"{', '.join(wheel_name(w) for w in wheels) or 'none'}", flush=True)

    # 1. imports
    t0 = time.monotonic()
    found = probe_imports([m for m, _, _ in DEPENDENCIES], env, site)
    blocked: dict[str, str] = {}
    missing = []
    for spec, why, steps in DEPENDENCIES:
        mod = spec.partition(":")[0]
        info = found[mod]
        state = f"{info['version']} ({info['source']})" if info["ok"] else f"MISSING: {info['error']}"
        print(f"[gpu-check]   {mod:<16} {state:<44} {why}")
        if not info["ok"]:
            if steps:
                missing.append(mod)
            for s in steps:
                blocked.setdefault(s, f"{mod} not importable ({info['error']})")
    detail = [f"missing: {', '.join(missing)} (make gpu-wheels, then carry {args.wheels})"] if missing else []
    detail += [f"{m} {found[m]['version']} ({found[m]['source']})" for m in ("gsplat", "diffusers") if found[m]["ok"]]
    imports = StepResult("imports", "imports", "FAILED" if missing else "ok", time.monotonic() - t0,
                         command="import probe", detail="; ".join(detail), log=json.dumps(found, indent=1))

    context = [
        f"Python {sys.version.split()[0]} (`{sys.executable}`), torch {dev['torch']} (CUDA {dev['torch_cuda']}),",
        f"nvcc {tk['nvcc']}, driver {tk['driver']}, compute capability {dev['capability']},",
        f"{dev['memory_gib']:.0f} GiB; kernels built with TORCH_CUDA_ARCH_LIST={env['TORCH_CUDA_ARCH_LIST']}.",
        "Carried wheels: " + (", ".join(wheel_name(w) for w in wheels) if wheels else "none") + ".",
    ]
    header = [f"gpu-check {date}: {dev['name']}"] + context + [f"nvcc: {tk['nvcc_path']}",
                                                               f"TORCH_EXTENSIONS_DIR={env['TORCH_EXTENSIONS_DIR']}"]
    results: list[StepResult] = [imports]
    tables = [("bench-renderers", "Renderers (`benchmarks/renderers.py`)"),
              ("bench-guidance", "Guidance (`benchmarks/guidance.py`)"),
              ("bench-decomp-nerf", "UDC-NeRF training step and time to PSNR (`benchmarks/decomp_nerf.py`)"),
              ("bench-dp-recon", "DP-Recon recon / SDS / texture steps (`benchmarks/dp_recon.py`)"),
              ("bench-gala", "GALA geometry step (`benchmarks/gala.py`)"),
              ("bench-layerpano3d", "LayerPano3D per-layer Gaussian optimisation (`benchmarks/layerpano3d.py`)")]
    log_dir = args.log_dir

    def record() -> None:
        section = build_section(dev["name"], date, context, results, tables)
        write_results(args.results, section)
        files = {"gpu_rows.md": section, "RESULTS.md": args.results.read_text(),
                 "gpu_check.log": combined_log(header, results)}
        copy_out(log_dir, {"gpu_rows.md": section, "gpu_check.log": files["gpu_check.log"]})
        copy_out(args.out, files)

    def skip_reason(name: str) -> str | None:
        if name in args.skip:
            return "left out (--skip)"
        return blocked.get(name)

    py = sys.executable
    # 2. builds, side by side
    builds = [
        Step("build-rasterizer", "build: layerforge CUDA rasterizer",
             [py, "-c", "import time; t = time.perf_counter(); from layerforge.renderers import mesh_cuda; "
                        "ext = mesh_cuda.load_extension(verbose=True); "
                        "print(f'built {ext.__file__} in {time.perf_counter() - t:.0f} s')"], 360,
             skip_reason("build-rasterizer")),
        Step("build-gsplat", "build: gsplat CUDA kernels",
             [py, "-c", "import time; t = time.perf_counter(); import gsplat; from gsplat.cuda._backend import _C; "
                        "assert _C is not None, 'gsplat found no CUDA toolkit (nvcc) and disabled itself'; "
                        "print(f'gsplat {gsplat.__version__}: built {_C.__file__} in {time.perf_counter() - t:.0f} s')"],
             360, skip_reason("build-gsplat")),
    ]
    results += run_steps(builds, env, log_dir, deadline)
    record()
    # a build that failed or ran out of time is not retried by the later steps
    broken = {r.name for r in results if r.status in ("FAILED", "timed out")}

    # 3. GPU tests (without the parts whose build failed: they would only rebuild and fail again)
    files = [str(p.relative_to(REPO)) for p in gpu_test_files(REPO / "tests")]
    targv = [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
    if not found["pytest_timeout"]["ok"]:
        targv += ["-o", "addopts=-ra"]
    drop = [kw for name, kw in (("build-rasterizer", "cuda"), ("build-gsplat", "gsplat")) if name in broken]
    if drop:
        targv += ["-k", " and ".join(f"not {kw}" for kw in drop)]
    tests = Step("tests", "GPU tests (pytest -m gpu)", targv + files, 240,
                 skip_reason("tests") or (None if files else "no test file carries the gpu marker"))
    results += run_steps([tests], env, log_dir, deadline)
    record()

    # 4. benchmarks
    rargv = [py, "benchmarks/renderers.py", "--devices", "cuda", "--markdown", "--repeats", str(args.repeats)]
    if "build-gsplat" in broken:
        rargv += ["--only", "mesh"]  # the Gaussian GPU rows need gsplat's kernels
    bench_r = Step("bench-renderers", "benchmark: renderers", rargv, 240, skip_reason("bench-renderers"))
    results += run_steps([bench_r], env, log_dir, deadline)
    record()
    gargv = [py, "benchmarks/guidance.py", "--no-cpu", "--markdown", "--gpu-steps", str(args.gpu_steps)]
    bench_g = Step("bench-guidance", "benchmark: guidance", gargv, 300, skip_reason("bench-guidance"))
    results += run_steps([bench_g], env, log_dir, deadline)
    record()
    data = args.wheels / "data" / "decomp_nerf.pt"  # the built-in scene, prepared by make gpu-wheels
    dargv = [py, "benchmarks/decomp_nerf.py", "--no-cpu", "--steps", "10", "--time-to-psnr", "--data", str(data),
             "--budget-s", str(args.decomp_budget_s), "--eval-every-s", "5", "--fast-eval-every-s", "0.5"]
    bench_d = Step("bench-decomp-nerf", "benchmark: UDC-NeRF", dargv, 2 * args.decomp_budget_s + 120,
                   skip_reason("bench-decomp-nerf") or (None if data.is_file() else f"{data} missing (make gpu-wheels)"))
    results += run_steps([bench_d], env, log_dir, deadline)
    record()
    pargv = [py, "benchmarks/dp_recon.py", "--device", "cuda"]  # SD-2.1-base fp16: the <= 25 % SDS overhead target
    bench_p = Step("bench-dp-recon", "benchmark: DP-Recon", pargv, 420, skip_reason("bench-dp-recon"))
    results += run_steps([bench_p], env, log_dir, deadline)
    record()
    gala = args.wheels / "data" / "gala"  # the synthetic scan and init samples, prepared by make gpu-wheels
    lgargv = [py, "benchmarks/gala.py", "--device", "cuda", "--data", str(gala)]  # the 15-min geometry-stage target
    bench_l = Step("bench-gala", "benchmark: GALA", lgargv, 420, skip_reason("bench-gala")
                   or (None if (gala / "init_samples.npz").is_file() else f"{gala} missing (make gpu-wheels)"))
    results += run_steps([bench_l], env, log_dir, deadline)
    record()
    # the 5-min gaussians-stage target; the synthetic room is ray cast on the fly (no data folder)
    l3argv = [py, "benchmarks/layerpano3d.py", "--device", "cuda"]
    if "build-gsplat" in broken:
        l3argv += ["--no-gsplat"]  # the torch-reference rows only: the gsplat rows would rebuild and fail again
    bench_3 = Step("bench-layerpano3d", "benchmark: LayerPano3D", l3argv, 300, skip_reason("bench-layerpano3d"))
    results += run_steps([bench_3], env, log_dir, deadline)
    record()

    section = build_section(dev["name"], date, context, results, tables)
    print(f"[gpu-check] {time.monotonic() - t_start:.0f} s; wrote the section to {args.results}"
          + (f" and {args.out}/gpu_rows.md" if args.out else ""))
    print()
    print(section)
    return 0 if all(r.ok or r.detail == "left out (--skip)" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
