"""``layerforge batch`` on every executor: failures stay with their item, a killed batch resumes
to the uninterrupted result, per-item overrides, run references, one-line errors.

The good items are meshes none of us made (pymeshlab's samples); the bad ones are a corrupt
OBJ and a NaN in one item's config.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import signal
import time
from pathlib import Path

import psutil
import pytest
import trimesh

from layerforge.errors import ConfigError, InputError
from layerforge.pipelines.batch_config import load_batch_config, split_overrides
from layerforge.pipelines.batch_items import collect_items, folder_items
from cli_runs import run_cli

# tiny bsp sizes: the real ones live in configs/pipeline/bsp.yaml
TINY_BSP = [
    "prepare.point_counts={16: 1024, 32: 2048, 64: 2048}", "model.c=8", "model.z_dim=32", "model.ef_dim=4",
    "model.dec_dims=[32,32,32]", "extract.grid_resolution=32", "evaluate.samples=1024", "evaluate.edge_samples=2048",
    "export.preview_size=48", "export.formats=[glb]", "device=cpu",
    "fit.schedule=[{phase: 0, resolution: 64, steps: 40}, {phase: 1, resolution: 64, steps: 40}]",
    "fit.checkpoint_every=20",
]
GOOD = ["airplane.obj", "bone.ply", "cow.obj", "cube.obj"]


def _sample(name: str) -> Path:
    spec = importlib.util.find_spec("pymeshlab")  # located, not imported (its Embree keeps bpy out)
    assert spec is not None and spec.origin
    found = sorted(Path(spec.origin).parent.rglob(name))
    assert found, f"{name} is not in the pymeshlab wheel"
    return found[0]


@pytest.fixture(scope="module")
def items_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six items: four real meshes, a corrupt OBJ, and the bundled chair with fit.lr=nan."""
    folder = tmp_path_factory.mktemp("batch_inputs")
    (folder / "broken.obj").write_text("v 0 0 0\nv 1 0 0\nf 1 2 7\n")
    from layerforge.pipelines.registry import DATA_DIR

    rows = [{"input": str(_sample(n)), "item": "", "fit.lr": ""} for n in GOOD]
    rows.insert(2, {"input": "broken.obj", "item": "", "fit.lr": ""})
    rows.append({"input": str(DATA_DIR / "chair.obj"), "item": "nan_chair", "fit.lr": "nan"})
    path = folder / "items.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["input", "item", "fit.lr"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _batch(out: Path, items: Path, name: str, *extra: str, wait: bool = True):
    return run_cli("batch", "bsp", f"inputs={items}", f"out={out}", f"batch={name}", *TINY_BSP, *extra, "--quiet",
                   wait=wait)


def _state(out: Path, name: str) -> dict:
    return json.loads((out / "bsp" / name / "batch.json").read_text())


def _check_outcome(out: Path, name: str, proc) -> dict:
    """4 exported, the corrupt mesh and the NaN config recorded with their one-line errors, exit 1."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: 2 of 6 items failed" in proc.stderr, proc.stderr
    state = _state(out, name)
    items = state["items"]
    assert sorted(items) == ["airplane", "bone", "broken", "cow", "cube", "nan_chair"]
    assert state["summary"]["done"] == 4 and state["summary"]["failed"] == 2, state["summary"]
    assert "broken.obj" in items["broken"]["error"] and "\n" not in items["broken"]["error"]
    assert items["nan_chair"]["error"].startswith("fit.lr=nan is invalid"), items["nan_chair"]["error"]
    for good in ("airplane", "bone", "cow", "cube"):
        entry = items[good]
        assert entry["status"] == "done" and entry["error"] is None
        assert (out / "bsp" / name / good / "export" / f"{good}.glb").stat().st_size > 0
        assert 0 < entry["metrics"]["cd"] < 0.05 and entry["metrics"]["convexes"] >= 1, entry["metrics"]
        assert entry["wall_s"] > 0 and entry["peak_rss_mb"] > 50
    rows = list(csv.DictReader(open(out / "bsp" / name / "batch.csv")))
    assert [r["item"] for r in rows] == list(items)
    assert {r["item"]: r["status"] for r in rows} == {k: v["status"] for k, v in items.items()}
    assert float(next(r for r in rows if r["item"] == "cow")["cd"]) == pytest.approx(items["cow"]["metrics"]["cd"], rel=1e-5)
    # the summary table names every item with its status
    for item_name, entry in items.items():
        assert any(line.startswith(item_name) and entry["status"] in line for line in proc.stderr.splitlines())
    return items


def _metrics(out: Path, name: str, item: str) -> dict:
    return json.loads((out / "bsp" / name / item / "export" / "metrics.json").read_text())


def _kill_after(proc, out: Path, name: str, done: int, sig: int, watch=None, timeout: float = 300) -> None:
    """Send ``sig`` to the batch once ``done`` items finished; ``watch(pid)`` is called while it runs."""
    deadline = time.time() + timeout
    path = out / "bsp" / name / "batch.json"
    while time.time() < deadline:
        assert proc.poll() is None, "the batch ended before it could be killed"
        if watch is not None:
            watch(proc.pid)
        if path.exists():
            try:
                if _state(out, name)["summary"]["done"] >= done:
                    break
            except (ValueError, KeyError):
                pass
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=120)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, items_csv: Path) -> Path:
    """The six items through the local executor, uninterrupted: the reference every executor's
    killed-and-resumed batch must equal."""
    out = tmp_path_factory.mktemp("uninterrupted")
    items = _check_outcome(out, "full", _batch(out, items_csv, "full", "executor=local", "max_parallel=2"))
    assert len({items[k]["pid"] for k in ("airplane", "bone", "cow", "cube")}) == 4  # a process per item
    return out


def _killed_then_resumed(out: Path, items_csv: Path, name: str, reference: Path, sig: int, *extra: str,
                         watch=None) -> None:
    """Kill the batch after its first finished item and re-run it: the outcome is the acceptance
    one (4 exported, 2 one-line errors, exit 1), finished items are skipped, and every deliverable's
    figures equal the uninterrupted local batch's."""
    proc = _batch(out, items_csv, name, *extra, wait=False)
    _kill_after(proc, out, name, done=1, sig=sig, watch=watch)
    killed = _state(out, name)
    finished_before = {k for k, v in killed["items"].items() if v["status"] == "done"}
    assert finished_before and len(finished_before) < 4, killed["summary"]
    shown = run_cli("inspect", str(out / "bsp" / name))
    assert shown.returncode == 0 and "interrupted" in shown.stdout and "resume with: layerforge batch bsp" in shown.stdout, \
        shown.stdout + shown.stderr
    again = _batch(out, items_csv, name, *extra)
    items = _check_outcome(out, name, again)
    assert {k for k, v in items.items() if v.get("skipped")} == finished_before
    assert f"{len(finished_before)} of 6 items finished before: skipped" in again.stderr
    for good in ("airplane", "bone", "cow", "cube"):
        assert _metrics(out, name, good) == _metrics(reference, "full", good), good


def test_local_batch_isolates_failures_and_resumes_after_sigkill(tmp_path, items_csv, uninterrupted):
    # a batch killed with SIGKILL (its items die with it) and re-run gives the same deliverables
    _killed_then_resumed(tmp_path, items_csv, "kill", uninterrupted, signal.SIGKILL, "executor=local", "max_parallel=2")
    # re-running a finished batch runs nothing but the two failed items
    again = _batch(uninterrupted, items_csv, "full", "executor=local")
    assert "4 of 6 items finished before: skipped" in again.stderr and again.returncode == 1


def _listening(pid: int) -> list[tuple[str, str, int]]:
    """(process name, local address, port) of every listening socket of ``pid`` and its descendants."""
    found = []
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for p in procs:
        try:
            found += [(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def test_ray_batch_binds_loopback_only_isolates_failures_and_resumes(tmp_path, items_csv, uninterrupted):
    seen: set[tuple[str, str, int]] = set()
    # SIGTERM (a scheduler's stop) mid-batch, then the same command again; while Ray is up, which
    # addresses do its servers listen on?
    _killed_then_resumed(tmp_path, items_csv, "ray", uninterrupted, signal.SIGTERM, "executor=ray", "max_parallel=2",
                         watch=lambda pid: seen.update(_listening(pid)))
    ray_servers = {(n, ip) for n, ip, _ in seen if "raylet" in n or "gcs" in n or n.startswith("ray")}
    assert ray_servers, f"no Ray server seen listening: {seen}"
    assert {ip for _, ip, _ in seen} <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, seen
    assert 8265 not in {port for _, _, port in seen}, "Ray's dashboard is serving"  # its head runs --minimal


def test_slurm_batch_through_submitit_isolates_failures_and_resumes(tmp_path, items_csv, uninterrupted):
    _killed_then_resumed(tmp_path, items_csv, "slurm", uninterrupted, signal.SIGTERM, "executor=slurm",
                         "slurm.cluster=local", "max_parallel=2")
    state = _state(tmp_path, "slurm")
    assert all(state["items"][k].get("job_id") for k in ("airplane", "bone", "cow", "cube"))  # submitit's jobs
    assert list((tmp_path / "bsp" / "slurm" / "slurm").glob("*_submitted.pkl")), "submitit's job folder"


def test_item_over_its_timeout_is_stopped_and_recorded_and_the_rest_go_on(tmp_path):
    from layerforge.pipelines.registry import DATA_DIR

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "chair.obj").write_bytes((DATA_DIR / "chair.obj").read_bytes())
    trimesh.creation.box(extents=(1.0, 0.5, 0.3)).export(folder / "box.obj")
    (folder / "items.csv").write_text("input,fit.schedule\nbox.obj,\n"
                                      "chair.obj,\"[{phase: 0, resolution: 64, steps: 100000}]\"\n")
    out = tmp_path / "out"
    t0 = time.time()
    proc = _batch(out, folder / "items.csv", "t", "timeout_s=10", "max_parallel=2")
    assert time.time() - t0 < 90
    state = _state(out, "t")
    assert proc.returncode == 1 and state["items"]["box"]["status"] == "done", proc.stderr
    error = state["items"]["chair"]["error"]
    assert error.startswith("timed out after 10 s (timeout_s=10)"), error
    manifest = json.loads((out / "bsp" / "t" / "chair" / "manifest.json").read_text())
    assert manifest["stages"]["fit"]["status"] == "interrupted"  # stopped like Ctrl-C: recorded, checkpoint kept
    assert list((out / "bsp" / "t" / "chair" / "stages" / "fit").glob("*checkpoint*")) or \
        list((out / "bsp" / "t" / "chair" / "stages" / "fit").rglob("*.pt"))


def test_items_killed_from_outside_or_out_of_memory_are_recorded_and_the_batch_goes_on(tmp_path):
    from layerforge.pipelines.registry import DATA_DIR

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "chair.obj").write_bytes((DATA_DIR / "chair.obj").read_bytes())
    trimesh.creation.box(extents=(1.0, 0.5, 0.3)).export(folder / "box.obj")
    (folder / "items.csv").write_text("input,item,fit.schedule,model.dec_dims\n"
                                      "chair.obj,,\"[{phase: 0, resolution: 64, steps: 100000}]\",\n"
                                      "box.obj,,,\n"
                                      "box.obj,huge,,\"[512, 1024, 600000]\"\n")  # a 2.4 GB decoder
    out = tmp_path / "out"
    proc = _batch(out, folder / "items.csv", "k", "max_parallel=1", "mem_gb_per_item=2", wait=False)
    lock = out / "bsp" / "k" / "chair" / ".lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.05)
    psutil.Process(json.loads(lock.read_text())["pid"]).kill()  # what the kernel's OOM killer does
    proc.wait(timeout=300)
    state = _state(out, "k")
    assert proc.returncode == 1 and state["items"]["box"]["status"] == "done"
    assert state["items"]["chair"]["error"].startswith("its process was killed by SIGKILL (out of memory"), state["items"]
    # an item over its memory cap fails alone, with a line saying so
    assert state["items"]["huge"]["error"].startswith("ran out of memory (over mem_gb_per_item=2"), state["items"]["huge"]


def test_batch_over_a_run_with_several_objects_makes_one_proxy_set_per_object(tmp_path):
    """``inputs=run:<pipeline>/<run>``: each object mesh of that run's deliverables is an item;
    the scene file, the other formats of the same object (obj next to glb) and non-mesh files are not."""
    out = tmp_path / "out"
    upstream = out / "dp_recon" / "kitchen"
    export = upstream / "export"
    export.mkdir(parents=True)
    shapes = {"table": trimesh.creation.box(extents=(1.2, 0.8, 0.05)),
              "mug": trimesh.creation.cylinder(0.05, 0.1), "lamp": trimesh.creation.cone(0.2, 0.4)}
    # dp_recon's export layout: the whole scene, and one mesh per object in several formats
    trimesh.Scene(list(shapes.values())).export(export / "scene.glb")
    (export / "objects").mkdir()
    for name, mesh in shapes.items():
        mesh.export(export / "objects" / f"{name}.glb")
        mesh.export(export / "objects" / f"{name}.obj")
    (export / "metrics.json").write_text("{}")
    (upstream / "manifest.json").write_text(json.dumps({"pipeline": "dp_recon", "stages": {},
                                                        "exports": {f"export/objects/{n}.glb": "x" for n in shapes}}))
    proc = run_cli("batch", "bsp", "inputs=run:dp_recon/kitchen", f"out={out}", "batch=proxies", *TINY_BSP, "--quiet")
    assert proc.returncode == 0, proc.stderr
    state = _state(out, "proxies")
    assert sorted(state["items"]) == ["lamp", "mug", "table"]
    for name in shapes:
        assert state["items"][name]["input"].endswith(f"objects/{name}.glb")
        parts = trimesh.load(out / "bsp" / "proxies" / name / "export" / f"{name}.glb")
        assert len(parts.geometry) >= 1
    # a finished batch is itself an input: its items' deliverables, and one item by run:<pipeline>/<batch>/<item>
    again = collect_items("run:bsp/proxies", out, folder_items("layerforge.pipelines.bsp"))
    assert [i.name for i in again] == ["lamp", "mug", "table"]
    one = collect_items("run:bsp/proxies/mug", out, folder_items("layerforge.pipelines.bsp"))
    assert [i.name for i in one] == ["mug"]


# ---- items and options, without running anything --------------------------------------------------
def test_items_from_folder_glob_list_and_csv(tmp_path):
    split = folder_items("layerforge.pipelines.bsp")
    folder = tmp_path / "meshes"
    (folder / "sub").mkdir(parents=True)
    box = trimesh.creation.box()
    box.export(folder / "chair.glb")
    box.export(folder / "chair.obj")  # the same object in another format: one item
    box.export(folder / "sub" / "chair.obj")  # another object of the same name: its own item
    (folder / "notes.txt").write_text("not a mesh")
    items = collect_items(str(folder), tmp_path, split)
    assert [(i.name, Path(i.input).name) for i in items] == [("chair", "chair.glb"), ("sub-chair", "chair.obj")]
    assert [i.name for i in collect_items(str(folder / "**" / "*.obj"), tmp_path, split)] == ["chair", "chair-2"]
    listing = tmp_path / "list.txt"
    listing.write_text("# two objects\nmeshes/chair.glb\n\nmeshes/sub/chair.obj\n")
    assert [i.name for i in collect_items(str(listing), tmp_path, split)] == ["chair", "chair-2"]
    table = tmp_path / "items.csv"
    table.write_text("input,item,model.c,seed\nmeshes/chair.glb,big chair,32,\nmeshes/sub/chair.obj,,,3\n")
    rows = collect_items(str(table), tmp_path, split)
    assert [(i.name, i.overrides) for i in rows] == [("big_chair", ("model.c=32",)), ("chair", ("seed=3",))]


@pytest.mark.parametrize("write, inputs, expected", [
    (None, "missing_folder", "inputs=missing_folder does not exist"),
    (None, "nothing*.obj", "matches no file"),
    ("items.csv", "items.csv", "has no 'input' column"),
    ("list.txt", "list.txt", "listed input gone.obj does not exist"),
    ("empty", "empty", "holds no items for this pipeline"),
])
def test_bad_inputs_are_one_line(tmp_path, monkeypatch, write, inputs, expected):
    monkeypatch.chdir(tmp_path)
    if write == "items.csv":
        (tmp_path / write).write_text("path,seed\na.obj,1\n")
    elif write == "list.txt":
        (tmp_path / write).write_text("gone.obj\n")
    elif write == "empty":
        (tmp_path / write).mkdir()
    with pytest.raises(InputError) as err:
        collect_items(inputs, tmp_path, lambda folder: [])
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_batch_options_and_pipeline_overrides_are_told_apart():
    batch, pipeline = split_overrides(["inputs=a", "executor=ray", "slurm.partition=gpu", "model.c=8", "seed=2"])
    assert batch == ["inputs=a", "executor=ray", "slurm.partition=gpu"] and pipeline == ["model.c=8", "seed=2"]
    cfg = load_batch_config(batch)
    assert cfg.executor == "ray" and cfg.slurm.partition == "gpu" and cfg.retries == 0
    for bad, message in ((["input=x"], "a batch takes inputs="), (["run=x"], "drop run=")):
        with pytest.raises(ConfigError, match=message):
            split_overrides(bad)
    with pytest.raises(ConfigError, match="executor=pool is invalid"):
        load_batch_config(["inputs=a", "executor=pool"])
    with pytest.raises(ConfigError, match="timeout_s"):
        load_batch_config(["inputs=a", "timeout_s=-1"])


def test_cli_errors_are_one_line_and_make_no_folder(tmp_path):
    out = tmp_path / "out"
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.box().export(meshes / "box.obj")
    for args, expected in (
        (["inputs=" + str(tmp_path / "nope")], "does not exist"),
        (["inputs=" + str(meshes), "model.c=zero"], "model.c"),
        (["inputs=" + str(meshes), "executor=slurm"], "executor=slurm needs SLURM's sbatch"),
        (["inputs=" + str(meshes), "executor=ray", "ray_address=127.0.0.1:1"], "cannot connect to the Ray cluster"),
    ):
        proc = run_cli("batch", "bsp", f"out={out}", "batch=b", *args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], proc.stderr
    assert not (out / "bsp" / "b" / "batch.json").exists()
