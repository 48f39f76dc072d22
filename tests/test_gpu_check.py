"""scripts/gpu_check.py (`make gpu-check`) on CPU: the RESULTS.md section writer, the no-GPU
answer, the carried-wheel import path and the step runner. Nothing here builds or benchmarks."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("gpu_check", None)


RESULTS = """# Benchmark results

Intro text.

## Renderers (`benchmarks/renderers.py`)

| benchmark | device | ms |
|---|---|---|
| mesh rasterize 256x256, 10k faces, torch | cpu | 47.5 |

## How GPU rows are written

Explanation.
"""


def _results(gc, rows: list[str], status: str = "ok") -> list:
    table = ["| benchmark | device | ms | note |", "|---|---|---:|---|"] + rows
    return [
        gc.StepResult("build-rasterizer", "build: layerforge CUDA rasterizer", "ok", 41.0),
        gc.StepResult("build-gsplat", "build: gsplat CUDA kernels", "FAILED", 88.0,
                      detail="exit 1: RuntimeError: Error building extension 'gsplat_cuda'"),
        gc.StepResult("bench-renderers", "benchmark: renderers", status, 30.0, command="python benchmarks/renderers.py",
                      table=table),
    ]


def _section(gc, device: str, date: str, rows: list[str]) -> str:
    tables = [("bench-renderers", "Renderers"), ("bench-guidance", "Guidance")]
    return gc.build_section(device, date, ["Python 3.12."], _results(gc, rows), tables)


def test_section_replaces_not_appends(gc, tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(RESULTS)
    first = _section(gc, "NVIDIA H200", "2026-12-01", ["| mesh a | cuda | 1.000 |  |"])
    gc.write_results(path, first)
    once = path.read_text()
    assert once.startswith(RESULTS.rstrip("\n"))  # everything else kept, section appended
    gc.write_results(path, first)
    assert path.read_text() == once  # same section again: the file does not change

    second = _section(gc, "NVIDIA H200", "2026-12-02", ["| mesh a | cuda | 2.000 |  |"])
    other = _section(gc, "NVIDIA H100 80GB HBM3", "2026-12-02", ["| mesh a | cuda | 3.000 |  |"])
    gc.write_results(path, other)
    gc.write_results(path, second)
    text = path.read_text()
    assert text.count("## GPU rows (NVIDIA H200, ") == 1
    assert "## GPU rows (NVIDIA H200, 2026-12-02)" in text and "2026-12-01" not in text
    assert "| mesh a | cuda | 2.000 |  |" in text and "| mesh a | cuda | 1.000 |  |" not in text
    assert text.count("## GPU rows (NVIDIA H100 80GB HBM3, 2026-12-02)") == 1  # other device kept
    assert text.index("NVIDIA H200, 2026-12-02") < text.index("NVIDIA H100")  # replaced in place
    assert text.startswith(RESULTS.rstrip("\n"))
    # duplicates left by hand collapse into one
    doubled = text + "\n" + first
    assert gc.replace_section(doubled, second) == text


def test_section_records_failures_and_missing_tables(gc):
    sec = _section(gc, "NVIDIA H200", "2026-12-01", ["| mesh a | cuda | 1.000 |  |"])
    assert sec.splitlines()[0] == "## GPU rows (NVIDIA H200, 2026-12-01)"
    assert "| build: gsplat CUDA kernels | FAILED | 88 | exit 1: RuntimeError: Error building extension" in sec
    assert "| mesh a | cuda | 1.000 |  |" in sec
    assert "### Guidance" in sec and "No rows (not run yet)." in sec
    assert gc.section_device(sec) == "NVIDIA H200"
    cut = gc.build_section("X", "2026-12-01", [], _results(gc, ["| r | cuda | 1.0 |  |"], status="timed out"),
                           [("bench-renderers", "Renderers")])
    assert "| r | cuda | 1.0 |  |" in cut and "(incomplete: the step timed out" in cut


def test_apply_section_writes_a_returned_section(gc, tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(RESULTS)
    sec_file = tmp_path / "gpu_rows.md"
    sec_file.write_text(_section(gc, "NVIDIA H200", "2026-12-01", ["| m | cuda | 1.000 |  |"]))
    assert gc.main(["--apply-section", str(sec_file), "--results", str(path)]) == 0
    assert gc.main(["--apply-section", str(sec_file), "--results", str(path)]) == 0
    assert path.read_text().count("## GPU rows (NVIDIA H200, 2026-12-01)") == 1


def test_no_gpu_exits_2_with_one_line(gc, monkeypatch, capsys, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    results = tmp_path / "RESULTS.md"
    assert gc.main(["--results", str(results), "--out", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("gpu-check: no CUDA device visible")
    assert not results.exists() and not (tmp_path / "out").exists()


def test_no_gpu_command_line(tmp_path):
    """The real command with no device visible: exit 2, one line on stderr, nothing else."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OUT=str(tmp_path / "out"))
    res = subprocess.run([sys.executable, str(SCRIPT), "--results", str(tmp_path / "R.md")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stdout == "" and len(res.stderr.strip().splitlines()) == 1
    assert "no CUDA device visible" in res.stderr


def _fake_wheel(folder: Path, name: str, version: str) -> Path:
    whl = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr(f"{name}/__init__.py", f"__version__ = '{version}'\n")
        zf.writestr(f"{name}/csrc/kernel.cu", "// shipped source\n")
        zf.writestr(f"{name}-{version}.data/purelib/{name}_extra.py", "X = 1\n")
        zf.writestr(f"{name}-{version}.data/scripts/{name}-cli", "#!/bin/sh\n")
        zf.writestr(f"{name}-{version}.dist-info/METADATA", f"Name: {name}\nVersion: {version}\n")
    return whl


def test_carried_wheels_are_unpacked_and_found(gc, tmp_path):
    wheels, site = tmp_path / "gpu_wheels", tmp_path / "gpu_site"
    wheels.mkdir()
    _fake_wheel(wheels, "lf_fakepkg", "1.2.3")
    got = gc.extract_wheels(wheels, site)
    assert [w.name for w in got] == ["lf_fakepkg-1.2.3-py3-none-any.whl"]
    assert (site / "lf_fakepkg" / "csrc" / "kernel.cu").is_file()  # real files: kernels compile from them
    assert (site / "lf_fakepkg_extra.py").is_file() and not list(site.rglob("*-cli"))
    stamp_mtime = (site / ".wheels.json").stat().st_mtime_ns
    gc.extract_wheels(wheels, site)  # same set: untouched
    assert (site / ".wheels.json").stat().st_mtime_ns == stamp_mtime
    _fake_wheel(wheels, "lf_otherpkg", "0.1")
    assert len(gc.extract_wheels(wheels, site)) == 2 and (site / "lf_otherpkg" / "__init__.py").is_file()

    pp = gc.python_path(site, "/some/where")
    assert pp.split(os.pathsep) == [str(site), str(REPO), "/some/where"]
    env = dict(os.environ, PYTHONPATH=pp)
    found = gc.probe_imports(["lf_fakepkg", "lf_not_there_pkg", "json", "os:path,sep", "shutil:no_such_name"],
                             env, site, timeout=60)
    assert found["os"]["ok"] and not found["shutil"]["ok"] and "AttributeError" in found["shutil"]["error"]
    assert found["lf_fakepkg"]["ok"] and found["lf_fakepkg"]["version"] == "1.2.3"
    assert found["lf_fakepkg"]["source"] == "carried"
    assert not found["lf_not_there_pkg"]["ok"] and "ModuleNotFoundError" in found["lf_not_there_pkg"]["error"]
    assert found["json"]["source"] == "base"
    assert gc.extract_wheels(tmp_path / "absent", tmp_path / "site2") == []


def test_steps_keep_going_past_failures(gc, tmp_path):
    py = sys.executable
    steps = [
        gc.Step("a", "fails", [py, "-c", "import sys; print('RuntimeError: boom'); sys.exit(3)"], 30),
        gc.Step("b", "table", [py, "-c", "print('| h | ms |'); print('|---|---:|'); print('| r | 1.5 |')"], 30),
        gc.Step("c", "hangs", [py, "-c", "import time; print('| h |'); time.sleep(60)"], 1.0),
        gc.Step("d", "skipped", [py, "-c", "pass"], 30, skip="skipped (--skip)"),
    ]
    t0 = time.monotonic()
    res = gc.run_steps(steps, dict(os.environ), tmp_path / "logs", deadline=time.monotonic() + 60, min_s=0)
    assert time.monotonic() - t0 < 20
    assert [r.status for r in res] == ["FAILED", "ok", "timed out", "skipped"]
    assert res[0].detail == "exit 3: RuntimeError: boom"
    assert res[1].table == ["| h | ms |", "|---|---:|", "| r | 1.5 |"] and res[1].detail == "1 rows, 1 measured"
    assert res[2].table == ["| h |"]
    late = gc.run_steps([gc.Step("e", "late", [py, "-c", "pass"], 30)], dict(os.environ), tmp_path / "logs",
                        deadline=time.monotonic() + 1)
    assert late[0].status == "skipped" and "no time left" in late[0].detail


def test_a_timed_out_step_takes_its_compilers_with_it(gc, tmp_path):
    """A step is killed with its whole process group (nvcc/ninja children of a JIT build)."""
    code = ("import subprocess, time; p = subprocess.Popen(['sleep', '30']); "
            "print('child', p.pid, flush=True); time.sleep(30)")
    (res,) = gc.run_steps([gc.Step("k", "kill", [sys.executable, "-c", code], 1.0)], dict(os.environ),
                          tmp_path / "logs", deadline=time.monotonic() + 60, min_s=0)
    assert res.status == "timed out"
    pid = int(res.log.split()[1])
    for _ in range(50):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            break  # gone
        if state == "Z":
            break  # killed, waiting to be reaped by init
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        pytest.fail("the step's child process outlived the step")


def test_failed_build_detail_names_the_compiler_error(gc, tmp_path):
    out = tmp_path / "build_output.txt"
    out.write_text("[1/3] nvcc -Werror=x -c a.cu\n"
                   'a.cu(12): error: identifier "cub::Sum" is undefined\n'
                   "1 error detected in the compilation of a.cu.\n"
                   "RuntimeError: Error building extension 'gsplat_cuda'\n")
    code = f"import sys; sys.stdout.write(open({str(out)!r}).read()); sys.exit(1)"
    (res,) = gc.run_steps([gc.Step("build-x", "build", [sys.executable, "-c", code], 30)], dict(os.environ),
                          tmp_path / "logs", deadline=time.monotonic() + 60, min_s=0)
    assert res.status == "FAILED"
    assert res.detail.startswith("exit 1: RuntimeError: Error building extension 'gsplat_cuda'")
    assert res.detail.endswith('first error: a.cu(12): error: identifier "cub::Sum" is undefined')


def test_main_records_a_broken_build_and_keeps_going(gc, monkeypatch, tmp_path):
    """The whole run with the device and the steps faked: a failed gsplat build is recorded, the
    later steps still run without the parts that need it, and the rows land in RESULTS.md and $OUT."""
    monkeypatch.setattr(gc, "cuda_device", lambda: {"name": "NVIDIA H200", "capability": "9.0", "memory_gib": 139.8,
                                                    "count": 1, "torch": "2.11.0+cu130", "torch_cuda": "13.0"})
    monkeypatch.setattr(gc, "probe_imports", lambda mods, env, site, timeout=120: {
        m.partition(":")[0]: {"ok": True, "version": "1.0", "source": "base", "file": ""} for m in mods})
    seen = {}

    def fake_run_steps(steps, env, log_dir, deadline, min_s=15.0):
        out = []
        for st in steps:
            seen[st.name] = (st.argv, env)
            if st.name == "build-gsplat":
                out.append(gc.StepResult(st.name, st.title, "FAILED", 50, "exit 1: RuntimeError: Error building"))
            elif st.name == "bench-renderers":
                out.append(gc.StepResult(st.name, st.title, "ok", 9, table=[
                    "| benchmark | device | ms | note |", "|---|---|---:|---|", "| mesh x | cuda | 0.123 |  |"]))
            else:
                out.append(gc.StepResult(st.name, st.title, "ok", 1))
        return out

    monkeypatch.setattr(gc, "run_steps", fake_run_steps)
    results, out = tmp_path / "RESULTS.md", tmp_path / "out"
    results.write_text(RESULTS)
    argv = ["--results", str(results), "--out", str(out), "--wheels", str(tmp_path / "none"),
            "--log-dir", str(tmp_path / "logs")]
    assert gc.main(argv) == 1
    tests_argv, env = seen["tests"]
    assert tests_argv[tests_argv.index("-k") + 1] == "not gsplat" and "gpu" in tests_argv
    assert seen["bench-renderers"][0][-2:] == ["--only", "mesh"]
    assert "--no-cpu" in seen["bench-guidance"][0] and "--markdown" in seen["bench-guidance"][0]
    assert env["TORCH_CUDA_ARCH_LIST"] == "9.0" and env["TORCH_EXTENSIONS_DIR"].endswith("torch2.11.0+cu130")
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
    text = results.read_text()
    assert text.count("## GPU rows (NVIDIA H200, ") == 1
    assert "| build: gsplat CUDA kernels | FAILED | 50 | exit 1: RuntimeError: Error building |" in text
    assert "| mesh x | cuda | 0.123 |  |" in text
    assert sorted(p.name for p in out.iterdir()) == ["RESULTS.md", "gpu_check.log", "gpu_rows.md"]
    assert (out / "RESULTS.md").read_text() == text
    assert gc.main(argv) == 1 and results.read_text() == text  # a re-run replaces, does not append


def test_pytest_summary_and_gpu_test_files(gc):
    assert gc.pytest_summary("...\n2 passed, 1 deselected in 3.10s\n") == "2 passed, 1 deselected"
    assert gc.pytest_summary("= 1 failed, 1 passed, 3 warnings in 9.0s =") == "1 failed, 1 passed"
    files = {p.name for p in gc.gpu_test_files(REPO / "tests")}
    assert {"test_mesh_renderer.py", "test_gaussian_renderer.py"} <= files
    assert "test_gpu_check.py" not in files


def test_make_gpu_check_needs_no_venv():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    res = subprocess.run(["make", "-n", "-s", "gpu-check", "GPU_PYTHON=python3"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "python3 scripts/gpu_check.py --wheels build/gpu_wheels"


def test_wheel_list_is_pinned_in_the_lock():
    """Every wheel `make gpu-wheels` fetches is pinned in requirements/lock.txt (one version each)."""
    make = (REPO / "Makefile").read_text()
    pkgs = next(ln for ln in make.splitlines() if ln.startswith("GPU_WHEEL_PKGS"))
    lock = {ln.split("==")[0].lower() for ln in (REPO / "requirements" / "lock.txt").read_text().splitlines()
            if "==" in ln}
    for p in pkgs.split(":=")[1].split() + ["antlr4-python3-runtime"]:
        assert p.lower() in lock, p
    assert "gsplat" in pkgs and "diffusers" in pkgs
