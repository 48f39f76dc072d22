"""The `layerforge` command: one-line errors with exit code 2, list, dry-run, inspect."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from layerforge.cli import main

REPO = Path(__file__).resolve().parent.parent


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "layerforge.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr  # one line, no traceback
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    return lines[0]


def test_unknown_pipeline():
    line = _one_line_error(_cli("run", "nosuchpipe"))
    assert "unknown pipeline 'nosuchpipe'" in line and "bsp" in line


@pytest.mark.parametrize(
    "override, expected",
    [("nosuchkey=3", "unknown option"), ("seed", "not key=value"), ("seed=[1,", "bad override")],
)
def test_bad_override(override, expected):
    line = _one_line_error(_cli("run", "bsp", override))
    assert expected in line


def test_missing_input_file(tmp_path):
    line = _one_line_error(_cli("run", "bsp", f"input={tmp_path / 'nope.obj'}", f"out={tmp_path}"))
    assert "nope.obj does not exist" in line and "input=PATH" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder_nonroot(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    line = _one_line_error(_cli("run", "bsp", f"out={ro}"))
    assert "cannot write" in line and "out=DIR" in line


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")  # a file where the output folder should be: unwritable even for root
    line = _one_line_error(_cli("run", "bsp", f"out={blocker}", "run=x"))
    assert "cannot write the run folder" in line and "out=DIR" in line


def test_bad_device_is_config_error(tmp_path):
    line = _one_line_error(_cli("run", "bsp", "device=tpu", f"out={tmp_path}", "run=x"))
    assert "device=tpu is invalid" in line


def test_list_shows_pipelines_stages_and_options(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "bsp:" in out and "prepare -> fit -> extract -> evaluate -> export" in out
    assert "mode=fit" in out and "seed=0" in out and "device=auto" in out


def test_list_imports_no_pipeline_and_no_torch():
    """`layerforge list` reads configs only (it took over 5 s when the registry imported the engine and torch)."""
    code = ("import sys; from layerforge.cli import main; main(['list']); "
            "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith('layerforge.pipelines.') "
            "and m.split('.')[-1] not in ('registry', 'stage')); print('HEAVY', heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:]
    assert "mesh_report:" in proc.stdout and "bsp:" in proc.stdout


def test_dry_run_says_what_would_run_and_writes_nothing(tmp_path, capsys):
    assert main(["run", "bsp", f"out={tmp_path}", "run=dry", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "run   prepare      never ran" in out and "run   export" in out
    assert not (tmp_path / "bsp" / "dry").exists()


def test_inspect_missing_run_folder(tmp_path):
    line = _one_line_error(_cli("inspect", str(tmp_path / "nope")))
    assert "does not exist" in line
