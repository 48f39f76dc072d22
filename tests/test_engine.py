"""Stage engine: skip / re-run downstream / --force, resume after SIGKILL, NaN, failures, atomicity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from layerforge.assets.atomic import atomic_path, atomic_write_bytes
from layerforge.errors import NonFiniteError
from layerforge.pipelines.engine import stage_seed

sys.path.insert(0, str(Path(__file__).parent))
from engine_toy import NullBar, make_engine  # noqa: E402

TOY = Path(__file__).parent / "engine_toy.py"


@pytest.fixture()
def numbers(tmp_path: Path) -> Path:
    path = tmp_path / "numbers.txt"
    path.write_text("0.1 0.5 -0.3 0.8 1.2 -0.7 0.25\n")
    return path


def _ran(decisions) -> list[str]:
    return [d.stage for d in decisions if d.run]


def test_second_run_skips_everything(tmp_path, numbers):
    run = tmp_path / "run"
    assert _ran(make_engine(run, numbers).run()) == ["load", "train", "export"]
    first = (run / "export" / "weights.txt").read_bytes()
    decisions = make_engine(run, numbers).run()
    assert _ran(decisions) == []
    assert all(d.reason == "up to date" for d in decisions)
    assert (run / "export" / "weights.txt").read_bytes() == first


def test_config_change_reruns_that_stage_and_downstream_only(tmp_path, numbers):
    run = tmp_path / "run"
    make_engine(run, numbers).run()
    decisions = make_engine(run, numbers, ["train.lr=0.01"]).run()
    assert _ran(decisions) == ["train", "export"]
    assert decisions[1].reason == "its config changed"
    assert decisions[2].reason == "an earlier stage runs"


def test_input_change_reruns_everything(tmp_path, numbers):
    run = tmp_path / "run"
    make_engine(run, numbers).run()
    numbers.write_text("0.3 0.1\n")
    decisions = make_engine(run, numbers).run()
    assert _ran(decisions) == ["load", "train", "export"]
    assert decisions[0].reason == "its inputs changed"


def test_force_reruns_from_stage(tmp_path, numbers):
    run = tmp_path / "run"
    make_engine(run, numbers).run()
    assert _ran(make_engine(run, numbers).run(force="train")) == ["train", "export"]


def test_missing_output_reruns(tmp_path, numbers):
    run = tmp_path / "run"
    make_engine(run, numbers).run()
    (run / "stages" / "train" / "weights.pt").unlink()
    decisions = make_engine(run, numbers).run()
    assert _ran(decisions) == ["train", "export"]
    assert decisions[1].reason == "its output 'weights' is missing"


def test_manifest_contents(tmp_path, numbers):
    run = tmp_path / "run"
    make_engine(run, numbers).run()
    m = json.loads((run / "manifest.json").read_text())
    assert m["pipeline"] == "toy" and m["seed"] == 0 and m["device"] == "cpu"
    assert m["inputs"]["input"]["sha256"] and "torch" in m["versions"]
    for name in ("load", "train", "export"):
        e = m["stages"][name]
        assert e["status"] == "done"
        assert len(e["config_hash"]) == 64
        assert e["wall_s"] >= 0 and e["peak_rss_mb"] > 0
        assert e["started"] <= e["ended"]
        assert e["seed"] == stage_seed(0, name)
    assert m["stages"]["train"]["input_hashes"]["numbers"] == m["stages"]["load"]["outputs"]["numbers"]["sha256"]
    assert m["stages"]["export"]["metrics"] == {"n_values": 2}
    assert sorted(m["exports"]) == ["export/extra/info.txt", "export/weights.txt"]
    assert (run / "export" / "extra" / "info.txt").read_text() == "2 values\n"
    assert not (run / "stages" / "export" / "staged" / "extra" / "info.txt").exists()  # moved, not copied


def test_same_seed_same_output_different_seed_different(tmp_path, numbers):
    outs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        make_engine(tmp_path / name, numbers, [f"seed={seed}"]).run()
        outs.append((tmp_path / name / "export" / "weights.txt").read_text())
    assert outs[0] == outs[1] != outs[2]


def test_failing_stage_is_recorded_and_earlier_outputs_kept(tmp_path, numbers):
    run = tmp_path / "run"
    make_engine(run, numbers).run()
    before = (run / "stages" / "load" / "numbers.npy").read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        make_engine(run, numbers, ["train.fail_at=5", "train.lr=0.02"]).run()
    m = json.loads((run / "manifest.json").read_text())
    assert m["stages"]["train"]["status"] == "failed"
    assert "boom" in m["stages"]["train"]["error"]
    assert m["stages"]["load"]["status"] == "done"
    assert (run / "stages" / "load" / "numbers.npy").read_bytes() == before
    assert (run / "export" / "weights.txt").exists()  # the earlier deliverable survives


def test_nan_loss_stops_with_clear_error_and_keeps_last_checkpoint(tmp_path, numbers):
    run = tmp_path / "run"
    # a huge learning rate and loss scale make the toy regression diverge to inf/NaN
    with pytest.raises(NonFiniteError) as err:
        make_engine(run, numbers, ["train.lr=1e30", "train.loss_scale=1e30"]).run()
    msg = str(err.value)
    assert "\n" not in msg and "loss became" in msg and "lower the learning rate" in msg
    m = json.loads((run / "manifest.json").read_text())
    assert m["stages"]["train"]["status"] == "failed"
    assert "NonFiniteError" in m["stages"]["train"]["error"]


def test_nan_after_checkpoint_keeps_that_checkpoint(tmp_path, numbers):
    import torch

    from layerforge.pipelines.checkpoint import TrainingLoop

    model = torch.nn.Linear(1, 1)
    loop = TrainingLoop(tmp_path, total=20, state={"m": model}, every=5, desc="t", progress=NullBar)
    with pytest.raises(NonFiniteError, match="last good checkpoint: step 10"):
        for step in loop:
            loop.log(loss=float("nan") if step == 12 else 1.0)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 10


def _run_toy(run: Path, numbers: Path, *overrides: str, wait: bool = True) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.Popen([sys.executable, str(TOY), str(run), str(numbers), *overrides], env=env)
    if wait:
        assert proc.wait(timeout=120) == 0
    return proc


def test_sigkill_mid_stage_then_resume_matches_uninterrupted_run(tmp_path, numbers):
    slow = ("train.sleep=0.05", "train.steps=80", "train.every=10")
    _run_toy(tmp_path / "clean", numbers, *slow)

    run = tmp_path / "killed"
    proc = _run_toy(run, numbers, *slow, wait=False)
    ckpt = run / "stages" / "train" / "checkpoint.pt"
    deadline = time.time() + 60
    while time.time() < deadline:
        if ckpt.exists():
            import torch

            try:
                if torch.load(ckpt, weights_only=False)["step"] >= 30:
                    break
            except Exception:  # the file is being renamed into place
                pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    m = json.loads((run / "manifest.json").read_text())
    assert m["stages"]["train"]["status"] == "running"  # killed mid-stage
    assert not (run / "export" / "weights.txt").exists()

    _run_toy(run, numbers, *slow)
    log = [json.loads(x) for x in (run / "stages" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 81))  # resumed, no step lost or repeated
    assert (run / "export" / "weights.txt").read_bytes() == (tmp_path / "clean" / "export" / "weights.txt").read_bytes()
    assert (run / "stages" / "train" / "weights.pt").read_bytes() != b""


def test_export_written_by_someone_else_is_kept_as_backup(tmp_path, numbers):
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "export" / "weights.txt").write_text("my precious edit\n")
    make_engine(run, numbers).run()
    backups = list((run / "export").glob("weights.txt.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == "my precious edit\n"
    # a re-run that replaces our own earlier deliverable makes no backup
    make_engine(run, numbers, ["train.lr=0.01"]).run()
    assert len(list((run / "export").glob("weights.txt.bak-*"))) == 1


def test_atomic_write_never_leaves_half_file(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt  # interrupted mid-write
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temp file left behind


def test_atomic_write_survives_sigkill(tmp_path):
    """A writer killed while streaming a big file leaves the old file intact."""
    target = tmp_path / "big.bin"
    atomic_write_bytes(target, b"old")
    code = (
        "import sys, time; from layerforge.assets.atomic import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    f = open(tmp, 'wb'); f.write(b'x' * 1000); f.flush(); print('writing', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert proc.stdout.readline().strip() == b"writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == b"old"


def test_atomic_write_gives_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "x.bin", b"1")
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644


def test_json_files_are_strict_json(tmp_path):
    """NaN/Infinity (an undefined metric) are written as null, which every JSON reader accepts."""
    import json

    from layerforge.assets.atomic import atomic_write_json

    path = atomic_write_json(tmp_path / "m.json", {"cd": float("inf"), "ecd": float("nan"), "nc": 0.5, "runs": [1.0, float("-inf")]})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"cd": None, "ecd": None, "nc": 0.5, "runs": [1.0, None]}
