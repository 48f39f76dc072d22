"""One writer per run folder, deliverables that resume and rebuild, artifacts scoped to the
pipeline, hashes that see named files and the package version, finite checkpoints, per-item
work that isolates failures, and `inspect` after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import layerforge
from layerforge.errors import NonFiniteError, PartialRunError, RunBusyError
from layerforge.pipelines.checkpoint import TrainingLoop
from layerforge.pipelines.rundir import RunLock

sys.path.insert(0, str(Path(__file__).parent))
from engine_toy import CONSTANT, ITEMS, NullBar, make_engine  # noqa: E402

TOY = Path(__file__).parent / "engine_toy.py"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def numbers(tmp_path: Path) -> Path:
    path = tmp_path / "numbers.txt"
    path.write_text("0.1 0.5 -0.3 0.8 1.2 -0.7 0.25\n")
    return path


def _toy(run: Path, numbers: Path, *overrides: str, pipeline: str = "") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOY_PIPELINE": pipeline}
    return subprocess.Popen([sys.executable, str(TOY), str(run), str(numbers), *overrides], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return
        except (OSError, ValueError, KeyError):  # a file being renamed into place
            pass
        time.sleep(0.02)
    raise AssertionError("timed out")


def _status(run: Path, stage: str) -> str:
    return json.loads((run / "manifest.json").read_text())["stages"][stage]["status"]


def _ran(decisions) -> list[str]:
    return [d.stage for d in decisions if d.run]


# ---------------------------------------------------------------- one writer per run


def test_second_writer_is_refused_and_changes_nothing(tmp_path, numbers):
    run = tmp_path / "run"
    first = _toy(run, numbers, "train.sleep=0.05", "train.steps=80")
    _wait_for(lambda: _status(run, "train") == "running")
    manifest_before = (run / "manifest.json").read_bytes()
    with pytest.raises(RunBusyError) as err:
        make_engine(run, numbers, ["train.sleep=0.05", "train.steps=80"]).run()
    msg = str(err.value)
    assert "\n" not in msg and f"pid {first.pid}" in msg and "another run=NAME" in msg
    assert first.wait(timeout=120) == 0, first.stderr.read()
    log = [json.loads(x) for x in (run / "stages" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 81))  # no step ran twice
    assert not list((run / "export").glob("*.bak-*"))  # and nothing of ours was renamed away
    assert manifest_before != (run / "manifest.json").read_bytes()  # the first writer finished its own manifest


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, numbers, caplog):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "since": "earlier"}))
    with caplog.at_level("WARNING", logger="layerforge"):
        make_engine(run, numbers).run()
    assert any(f"lock left by pid {dead.pid}" in r.message and "gone" in r.message for r in caplog.records)
    assert RunLock(run).holder() is None and (run / "export" / "weights.txt").exists()


# ---------------------------------------------------------------- deliverables


def test_kill_while_landing_deliverables_resumes_without_backups(tmp_path, numbers, monkeypatch):
    run = tmp_path / "run"
    make_engine(run, numbers).run()
    real = Path.replace
    calls = {"n": 0}

    def dies_on_second_landing(self, target):
        if "export" in Path(target).parts and ".export" not in Path(target).parts:
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt  # killed between two renames into export/
        return real(self, target)

    monkeypatch.setattr(Path, "replace", dies_on_second_landing)
    with pytest.raises(KeyboardInterrupt):
        make_engine(run, numbers, ["train.lr=0.02"]).run()
    monkeypatch.setattr(Path, "replace", real)
    assert _status(run, "export") == "interrupted"
    make_engine(run, numbers, ["train.lr=0.02"]).run()
    assert not list((run / "export").rglob("*.bak-*")), list((run / "export").rglob("*"))
    fresh = tmp_path / "fresh"
    make_engine(fresh, numbers, ["train.lr=0.02"]).run()
    assert (run / "export" / "weights.txt").read_text() == (fresh / "export" / "weights.txt").read_text()


def test_deleted_deliverable_is_rebuilt(tmp_path, numbers):
    run = tmp_path / "run"
    make_engine(run, numbers).run()
    wanted = (run / "export" / "extra" / "info.txt").read_text()
    (run / "export" / "extra" / "info.txt").unlink()
    decisions = make_engine(run, numbers).run()
    assert _ran(decisions) == ["export"]
    assert decisions[2].reason == "its deliverable export/extra/info.txt is missing"
    assert (run / "export" / "extra" / "info.txt").read_text() == wanted


def test_edited_deliverable_is_rebuilt_and_the_edit_kept(tmp_path, numbers):
    run = tmp_path / "run"
    make_engine(run, numbers).run()
    ours = (run / "export" / "weights.txt").read_text()
    (run / "export" / "weights.txt").write_text("edited by hand\n")
    decisions = make_engine(run, numbers).run()
    assert decisions[2].reason == "its deliverable export/weights.txt changed"
    assert (run / "export" / "weights.txt").read_text() == ours
    (backup,) = (run / "export").glob("weights.txt.bak-*")
    assert backup.read_text() == "edited by hand\n"


def test_changed_stage_output_reruns(tmp_path, numbers):
    run = tmp_path / "run"
    make_engine(run, numbers).run()
    (run / "stages" / "load" / "numbers.npy").write_bytes(b"corrupt")
    decisions = make_engine(run, numbers).run()
    assert _ran(decisions) == ["load", "train", "export"] and decisions[0].reason == "its output 'numbers' changed"


# ---------------------------------------------------------------- artifacts and hashes


def test_stage_reads_artifacts_of_its_own_pipeline_only(tmp_path, numbers):
    run = tmp_path / "run"
    make_engine(run, numbers).run()  # 'train' makes weights
    make_engine(run, numbers, pipeline=CONSTANT).run()  # the other mode: 'constant' makes weights
    values = [float(v) for v in (run / "export" / "weights.txt").read_text().split()]
    assert values == [0.0, 0.0], "export read the weights of a stage that is not in this pipeline"
    again = make_engine(run, numbers, pipeline=CONSTANT).run()
    assert _ran(again) == []


def test_changed_file_named_in_config_reruns(tmp_path, numbers):
    run = tmp_path / "run"
    init = tmp_path / "init.pt"
    init.write_bytes(b"checkpoint v1")
    make_engine(run, numbers, [f"train.init_file={init}"]).run()
    assert _ran(make_engine(run, numbers, [f"train.init_file={init}"]).run()) == []
    init.write_bytes(b"checkpoint v2")
    decisions = make_engine(run, numbers, [f"train.init_file={init}"]).run()
    assert _ran(decisions) == ["train", "export"] and decisions[1].reason == "its config changed"


def test_new_package_version_reruns(tmp_path, numbers, monkeypatch):
    run = tmp_path / "run"
    make_engine(run, numbers).run()
    monkeypatch.setattr(layerforge, "__version__", layerforge.__version__ + ".post1")
    decisions = make_engine(run, numbers).run()
    assert _ran(decisions) == ["load", "train", "export"] and decisions[0].reason == "its config changed"


# ---------------------------------------------------------------- finite checkpoints


def _fit(folder: Path, poison_at: int | None) -> tuple[TrainingLoop, torch.nn.Linear]:
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    loop = TrainingLoop(folder, total=20, state={"model": model, "optim": optim}, every=5, desc="fit", progress=NullBar)
    for step in loop:
        loss = ((model(torch.ones(4, 1)) - 2.0) ** 2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        if step == poison_at:  # a finite loss, then an update that leaves NaN in the weights
            with torch.no_grad():
                model.weight.fill_(float("nan"))
        loop.log(loss=loss)
    return loop, model


def test_non_finite_parameters_are_never_checkpointed_and_resume_works(tmp_path):
    with pytest.raises(NonFiniteError) as err:
        _fit(tmp_path / "a", poison_at=14)  # the 15th step logs a finite loss, then the save after it sees NaN weights
    msg = str(err.value)
    assert "\n" not in msg and "model.weight holds NaN/Inf" in msg and "last good checkpoint: step 10" in msg
    ckpt = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 10 and all(torch.isfinite(t).all() for t in ckpt["objects"]["model"].values())
    loop, model = _fit(tmp_path / "a", poison_at=None)  # resumed from step 10
    assert loop.resumed_from == 10 and torch.isfinite(model.weight).all()
    _, clean = _fit(tmp_path / "b", poison_at=None)
    assert torch.equal(model.weight, clean.weight)  # the resumed fit ends where an uninterrupted one does


# ---------------------------------------------------------------- per-item work


def test_bad_item_is_reported_and_the_others_done(tmp_path, numbers):
    run = tmp_path / "run"
    with pytest.raises(PartialRunError) as err:
        make_engine(run, numbers, ["items.bad=[0.5]"], pipeline=ITEMS).run()
    assert "1 item(s) failed (0.5: item 0.5 is bad" in str(err.value) and "\n" not in str(err.value)
    made = sorted(p.stem for p in (run / "stages" / "items" / "items").iterdir())
    assert made == sorted(v for v in numbers.read_text().split() if v != "0.5")
    m = json.loads((run / "manifest.json").read_text())
    assert m["stages"]["items"]["status"] == "done" and list(m["stages"]["items"]["failed_items"]) == ["0.5"]


def test_kill_in_item_k_resumes_at_item_k(tmp_path, numbers):
    run = tmp_path / "run"
    calls = run / "stages" / "items" / "calls.txt"
    proc = _toy(run, numbers, "items.sleep=0.3", pipeline="items")
    _wait_for(lambda: len(calls.read_text().split()) >= 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = calls.read_text().split()
    assert 3 <= len(before) < 7
    assert _toy(run, numbers, "items.sleep=0.3", pipeline="items").wait(timeout=60) == 0
    after = calls.read_text().split()
    values = numbers.read_text().split()
    resumed = after[len(before):]
    assert after[: len(before)] == before and resumed == values[len(values) - len(resumed):]
    # it resumed at the first unfinished item: only the one the kill may have caught before its marker runs twice
    assert len(values) - len(before) <= len(resumed) <= len(values) - len(before) + 1


# ---------------------------------------------------------------- inspect after a kill


def test_inspect_after_kill_says_interrupted_in_pipeline_order_with_resume_command(tmp_path, numbers):
    run = tmp_path / "run"
    proc = _toy(run, numbers, "train.sleep=0.05", "train.steps=200")
    _wait_for(lambda: _status(run, "train") == "running")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "layerforge.cli", "inspect", str(run)], capture_output=True, text=True,
                         env=env, timeout=120).stdout
    rows = [ln.split()[:2] for ln in out.splitlines() if ln.split() and ln.split()[0] in ("load", "train", "export")]
    assert rows == [["load", "done"], ["train", "interrupted"]], out
    assert f"resume with: python tests/engine_toy.py {run} {numbers} train.sleep=0.05 train.steps=200" in out
