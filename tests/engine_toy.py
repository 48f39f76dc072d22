"""A small real pipeline for engine tests, runnable as a script (for the SIGKILL test).

    python tests/engine_toy.py RUN_DIR INPUT [key=value ...]

Stages: ``load`` (input -> numbers.npy), ``train`` (checkpointed SGD on a tiny linear
model with random mini-batches, so resuming must restore RNG and optimiser state to
match), ``export`` (writes export/weights.txt).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from layerforge.pipelines.engine import INPUT, Engine, Pipeline, Stage, StageContext
from layerforge.pipelines.rundir import RunDir


def load(ctx: StageContext) -> None:
    values = np.array([float(x) for x in ctx.input(INPUT).read_text().split()], dtype=np.float32)
    np.save(ctx.output("numbers", ".npy"), values * float(ctx.stage_cfg.scale))


def train(ctx: StageContext) -> None:
    x = torch.from_numpy(np.load(ctx.input("numbers"))).float()
    model = torch.nn.Linear(1, 1)
    optim = torch.optim.Adam(model.parameters(), lr=float(ctx.stage_cfg.lr))
    loop = ctx.loop(total=int(ctx.stage_cfg.steps), state={"model": model, "optim": optim}, every=int(ctx.stage_cfg.every))
    for step in loop:
        idx = torch.randint(0, len(x), (4,))
        xb = x[idx, None] + 0.01 * torch.randn(4, 1)
        loss = ((model(xb) - 3.0 * xb + 1.0) ** 2).mean() * float(ctx.stage_cfg.loss_scale)
        optim.zero_grad()
        loss.backward()
        optim.step()
        loop.log(loss=loss)
        if ctx.stage_cfg.sleep:
            time.sleep(float(ctx.stage_cfg.sleep))
        if ctx.stage_cfg.fail_at == step:
            raise RuntimeError("boom")
    torch.save(model.state_dict(), ctx.output("weights", ".pt"))


def export(ctx: StageContext) -> None:
    state = torch.load(ctx.input("weights"))
    text = " ".join(f"{v:.9e}" for v in torch.cat([t.flatten() for t in state.values()]).tolist())
    from layerforge.assets.atomic import atomic_write_text

    atomic_write_text(ctx.export_path("weights.txt"), text + "\n")
    staged = ctx.folder / "staged"
    atomic_write_text(staged / "extra" / "info.txt", "2 values\n")
    ctx.publish(staged)
    ctx.record(n_values=len(text.split()))


def constant(ctx: StageContext) -> None:
    """Another mode's stage that also makes ``weights``: all zeros."""
    torch.save({"w": torch.zeros(1, 1), "b": torch.zeros(1)}, ctx.output("weights", ".pt"))


def per_item(ctx: StageContext) -> None:
    """One file per input number; a number listed in ``items.bad`` fails, ``items.sleep`` slows each."""
    out = ctx.output("items")
    out.mkdir(parents=True, exist_ok=True)
    values = ctx.input(INPUT).read_text().split()

    def work(value: str) -> None:
        if value in [str(b) for b in ctx.stage_cfg.bad]:
            from layerforge.errors import InputError

            raise InputError(f"item {value} is bad", "remove it")
        time.sleep(float(ctx.stage_cfg.sleep))
        with open(ctx.folder / "calls.txt", "a") as f:
            f.write(value + "\n")
        (out / f"{value}.txt").write_text(value)

    ctx.each(values, work)


PIPELINE = Pipeline(
    "toy",
    (
        Stage("load", load, needs=(INPUT,), makes=("numbers",)),
        Stage("train", train, needs=("numbers",), makes=("weights",)),
        Stage("export", export, needs=("weights",), config_keys=()),
    ),
)
CONSTANT = Pipeline("toy", (PIPELINE.stages[0], Stage("constant", constant, needs=("numbers",), makes=("weights",)),
                            PIPELINE.stages[2]))
ITEMS = Pipeline("toy", (Stage("items", per_item, needs=(INPUT,), makes=("items",)),))

DEFAULTS = {
    "seed": 0,
    "device": "cpu",
    "quiet": True,
    "load": {"scale": 1.0},
    "train": {"steps": 60, "every": 10, "lr": 0.05, "sleep": 0.0, "fail_at": -1, "loss_scale": 1.0, "init_file": None},
    "items": {"bad": [], "sleep": 0.0},
}


class NullBar:
    """A progress bar that shows nothing (tqdm's interface, for TrainingLoop in tests)."""

    def __init__(self, **_):
        pass

    def update(self, n):
        pass

    def set_postfix(self, *a, **k):
        pass

    def close(self):
        pass


def run_one_stage(work, run_dir: Path, name: str = "t", seed: int = 0) -> None:
    """Run ``work(ctx)`` as the one stage of pipeline ``name`` in ``run_dir`` (CPU, quiet, ``seed``)."""
    cfg = OmegaConf.create({"seed": seed, "device": "cpu", "quiet": True})
    Engine(Pipeline(name, (Stage("fit", work, makes=()),)), cfg, RunDir.open(run_dir, name), None).run()


def make_engine(run_dir: Path, input_path: Path, overrides: list[str] = (), pipeline: Pipeline = PIPELINE) -> Engine:
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(list(overrides)))
    command = " ".join(["python", "tests/engine_toy.py", str(run_dir), str(input_path), *overrides])
    return Engine(pipeline, cfg, RunDir.open(run_dir, "toy"), input_path, command=command)


if __name__ == "__main__":
    torch.set_num_threads(1)
    chosen = {"items": ITEMS, "constant": CONSTANT}.get(os.environ.get("TOY_PIPELINE", ""), PIPELINE)
    engine = make_engine(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:], pipeline=chosen)
    engine.run(force=os.environ.get("TOY_FORCE"))
