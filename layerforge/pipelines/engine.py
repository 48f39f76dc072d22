"""The stage engine: ordered stages, named artifacts, skip / re-run / resume, nothing lost.

A pipeline (:mod:`layerforge.pipelines.stage`) is an ordered list of stages. The engine
validates the typed config of every stage before anything runs, takes the run folder's
exclusive lock (one writer per run), plans (:mod:`layerforge.pipelines.plan`: what runs and
why), and runs each stage that must run through a
:class:`~layerforge.pipelines.context.StageContext`.

Re-running the same command skips every stage whose config and inputs are unchanged and
whose outputs and deliverables are still there, unchanged; the first stage that must run,
runs, and so does everything after it. A stage that was interrupted resumes from its
checkpoint when its config and inputs are unchanged.

Deliverables are staged inside the stage folder and land in ``export/`` only when the
stage succeeded, each by an atomic rename whose hash is recorded before the rename (so a
kill in the middle leaves only files the run recognises as its own). They never replace
silently: a file we wrote before is replaced with a log line; a file we did not write (or
one the user edited since) is kept as ``<name>.bak-<time>`` and the log says so.
"""

from __future__ import annotations

import hashlib
import logging
import random
import resource
import shutil
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from layerforge.errors import ConfigError, InputError, LayerforgeError, PartialRunError
from layerforge.pipelines.context import StageContext
from layerforge.pipelines.plan import ArtifactStore, Decision, config_hash, plan
from layerforge.pipelines.rundir import RunDir, now_iso, package_versions, sha256_file, sha256_json, sha256_path, stamp
from layerforge.pipelines.schema import validate_config
from layerforge.pipelines.stage import INPUT, Pipeline, Stage, is_input

__all__ = ["INPUT", "Decision", "Engine", "Pipeline", "Stage", "StageContext", "format_plan", "iter_exports",
           "resolve_device", "seed_everything", "stage_seed"]

log = logging.getLogger("layerforge")


UNSET_INPUT = "unset"  # the hash of an optional input the user did not set


def stage_seed(seed: int, stage: str) -> int:
    """Seed of a stage: a hash of the run seed and the stage name (31 bits)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stage}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device=cuda was requested but no CUDA GPU is visible", "use device=cpu or device=auto")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ConfigError(f"unknown device '{name}'", "use device=auto, device=cpu or device=cuda")
    return torch.device(name)


def _peak_memory_mb(device: torch.device) -> dict[str, float]:
    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        peak["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


class Engine:
    """Runs a pipeline into a run folder.

    Args:
        pipeline: the stages.
        cfg: the resolved config (top-level keys ``seed``, ``device``, ``quiet`` and one
            section per stage or shared component); validated here against the stages' schemas.
        run_dir: the run folder.
        input_path: the user's input file or folder (``None`` when the pipeline needs none), or
            named inputs ``{"views": path, "masks": path}`` (read by stages as ``input.views``...).
        command: the command line that resumes this run (stored in the manifest, shown by
            ``layerforge inspect`` after a kill).

    Raises:
        ConfigError: a config value has the wrong type or is out of range (one line).
    """

    def __init__(self, pipeline: Pipeline, cfg: DictConfig, run_dir: RunDir,
                 input_path: Path | Mapping[str, Path | None] | None, command: str | None = None) -> None:
        self.pipeline = pipeline
        self.cfg = cfg
        self.typed = validate_config(pipeline, cfg)
        self.run_dir = run_dir
        if isinstance(input_path, Mapping):
            self.inputs = {f"{INPUT}.{k}": None if v is None else Path(v) for k, v in input_path.items()}
        else:
            self.inputs = {INPUT: None if input_path is None else Path(input_path)}
        self.command = command
        self.seed = int(cfg.get("seed", 0))
        self.quiet = bool(cfg.get("quiet", False))
        self.store = ArtifactStore(pipeline, run_dir)
        self._input_hashes: dict[str, str] = {}
        self._optional_inputs = {n for s in pipeline.stages for n in s.optional_inputs}

    # ---- hashing -------------------------------------------------------------------
    def config_hash(self, stage: Stage) -> str:
        return config_hash(self.cfg, stage, self.seed)

    def input_hash(self, name: str = INPUT) -> str:
        """SHA-256 of the user's input ``name`` (``input`` or ``input.<name>``); ``"unset"`` for an
        unset optional input (:attr:`Stage.optional_inputs`).

        Raises:
            InputError: a stage needs that input and it is not set.
        """
        if name not in self._input_hashes:
            path = self.inputs.get(name)
            if path is None and name in self._optional_inputs:
                return UNSET_INPUT
            if path is None:
                raise InputError(f"this pipeline needs {name}, which is not set", f"pass {name}=PATH")
            self._input_hashes[name] = sha256_path(path)
        return self._input_hashes[name]

    def input_hashes(self, stage: Stage) -> dict[str, str]:
        return self.store.input_hashes(stage, self.input_hash)

    # ---- planning ------------------------------------------------------------------
    def plan(self, force: str | None = None) -> list[Decision]:
        """Decide, without running anything, which stages run and why (see :mod:`~layerforge.pipelines.plan`)."""
        return plan(self.pipeline, self.cfg, self.store, self.seed, self.input_hash, force)

    # ---- running -------------------------------------------------------------------
    def run(self, force: str | None = None) -> list[Decision]:
        """Take the run folder's lock, run the stages that need it; return the decisions taken.

        Raises:
            RunBusyError: another process is writing this run folder.
            PartialRunError: every stage finished but some items failed (listed; the rest delivered).
            LayerforgeError: a stage met a problem the user can fix (recorded in the manifest).
            Exception: a stage failed otherwise (recorded in the manifest, with traceback in the log).
        """
        device = resolve_device(str(self.cfg.get("device", "auto")))
        with self.run_dir.locked():
            decisions = self.plan(force)
            self.run_dir.manifest.update(
                seed=self.seed,
                device=str(device),
                versions=package_versions(),
                config_hash=sha256_json(OmegaConf.to_container(self.cfg, resolve=True)),
                stage_order=[s.name for s in self.pipeline.stages],
            )
            if self.command:
                self.run_dir.manifest["command"] = self.command
            needed = {n for s in self.pipeline.stages for n in s.needs if is_input(n)}
            self.run_dir.manifest["inputs"] = {n: {"path": str(self.inputs.get(n)), "sha256": self.input_hash(n)}
                                               for n in sorted(needed)}
            for decision in decisions:
                stage = self.pipeline.stage(decision.stage)
                if not decision.run:
                    log.info("stage %-10s skipped: %s", stage.name, decision.reason)
                    continue
                log.info("stage %-10s runs: %s", stage.name, decision.reason)
                self._run_stage(stage, device, resume=decision.resume)
            self.run_dir.save()
            self._raise_failed_items()
        return decisions

    def _raise_failed_items(self) -> None:
        failed = {name: msg for s in self.pipeline.stages
                  for name, msg in ((self.run_dir.stages.get(s.name) or {}).get("failed_items") or {}).items()}
        if failed:
            first, message = next(iter(failed.items()))
            raise PartialRunError(
                f"{len(failed)} item(s) failed ({first}: {message}{'; ...' if len(failed) > 1 else ''});"
                f" the others are delivered in {self.run_dir.export_dir}",
                "see log.txt for each, fix or remove the bad items and re-run",
            )

    def _run_stage(self, stage: Stage, device: torch.device, resume: bool) -> None:
        folder = self.run_dir.stage_dir(stage.name)
        if not resume and folder.exists():
            shutil.rmtree(folder)  # intermediate files of an outdated attempt; deliverables live in export/
        folder.mkdir(parents=True, exist_ok=True)
        seed = stage_seed(self.seed, stage.name)
        seed_everything(seed)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        previous = self.run_dir.stages.get(stage.name) or {}
        entry: dict[str, Any] = {
            "status": "running",
            "config_hash": self.config_hash(stage),
            "input_hashes": self.input_hashes(stage),
            "started": now_iso(),
            "seed": seed,
            "device": str(device),
            "versions": package_versions(),
            "outputs": {},
            "exports": previous.get("exports", []) if resume else [],
        }
        self.run_dir.stages[stage.name] = entry
        self.run_dir.save()
        typed = {k: v for k, v in self.typed.items() if k in stage.schemas}
        ctx = StageContext(self.cfg, stage, self.run_dir, device, seed, self.quiet, self.inputs, self.store, typed)
        t0 = time.perf_counter()
        try:
            stage.run(ctx)
            missing = [m for m in stage.makes if m not in ctx._made or not ctx._made[m].exists()]
            if missing:
                raise RuntimeError(f"stage {stage.name} finished without writing {missing}")
            entry["outputs"] = {
                name: {"path": self.run_dir.rel(path), "sha256": sha256_path(path), "stamp": stamp(path),
                       **({"codec": ctx._codecs[name]} if name in ctx._codecs else {})}
                for name, path in ctx._made.items()
            }
            self._land_exports(ctx, entry)
        except BaseException as err:
            entry.update(
                status="interrupted" if isinstance(err, KeyboardInterrupt) else "failed",
                ended=now_iso(),
                wall_s=round(time.perf_counter() - t0, 3),
                error=f"{type(err).__name__}: {err}",
                **_peak_memory_mb(device),
            )
            if not isinstance(err, LayerforgeError):
                log.debug("stage %s traceback:\n%s", stage.name, traceback.format_exc())
            self.run_dir.save()
            raise
        entry.update(
            ended=now_iso(),
            wall_s=round(time.perf_counter() - t0, 3),
            metrics=ctx._metrics,
            **_peak_memory_mb(device),
        )
        if ctx.failed_items:
            entry["failed_items"] = dict(ctx.failed_items)
        entry["status"] = "done"  # set last: only a fully recorded stage counts as done
        self.run_dir.manifest.pop("pending_exports", None)
        self.run_dir.save()
        log.info("stage %-10s done in %.1f s", stage.name, entry["wall_s"])

    def _land_exports(self, ctx: StageContext, entry: dict[str, Any]) -> None:
        """Move the stage's staged deliverables into ``export/``, recording each hash before its rename."""
        staged = ctx.staged_exports
        files = sorted(p for p in staged.rglob("*") if p.is_file()) if staged.exists() else []
        if not files:
            return
        exports = self.run_dir.exports
        pending = self.run_dir.manifest.setdefault("pending_exports", {})
        stamps = self.run_dir.manifest.setdefault("stamps", {})
        moves = []
        for src in files:
            rel = f"{self.run_dir.export_dir.name}/{src.relative_to(staged).as_posix()}"
            dst = self.run_dir.root / rel
            _protect_existing(self.run_dir, dst, rel)
            if rel in exports:
                pending.setdefault(rel, exports[rel])  # the previous version stays ours until the rename lands
            exports[rel] = sha256_file(src)
            moves.append((src, dst, rel))
        entry["exports"] = sorted(set(entry.get("exports", [])) | {rel for _, _, rel in moves})
        self.run_dir.save()  # hashes first: a kill during the renames leaves only recognised files
        for src, dst, rel in moves:
            dst.parent.mkdir(parents=True, exist_ok=True)
            src.replace(dst)  # same run folder, same file system: an atomic rename
            stamps[rel] = stamp(dst)
        shutil.rmtree(staged, ignore_errors=True)


def _protect_existing(run_dir: RunDir, path: Path, rel: str) -> None:
    """Keep a deliverable we did not write (or that was edited) as ``.bak``; log replacements."""
    if not path.exists():
        return
    known = {run_dir.exports.get(rel), run_dir.manifest.get("pending_exports", {}).get(rel)} - {None}
    if path.is_file() and sha256_file(path) in known:
        log.info("replacing %s from the previous invocation of this run", rel)
        return
    backup = path.with_name(f"{path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(backup)
    log.warning("%s was not written by this run (or was edited since); kept it as %s", rel, backup.name)


def iter_exports(manifest: dict[str, Any]) -> Iterator[str]:
    """Relative paths of a run's deliverables, sorted."""
    yield from sorted(manifest.get("exports", {}))


def format_plan(decisions: Sequence[Decision]) -> str:
    """Human-readable ``--dry-run`` output: one line per stage."""
    return "\n".join(
        f"  {'run ' if d.run else 'skip'}  {d.stage:<12} {d.reason}{' (resumes from checkpoint)' if d.resume else ''}"
        for d in decisions
    )
