"""The stage engine: ordered stages, named artifacts, skip / re-run / resume, nothing lost.

A pipeline is an ordered list of :class:`Stage` s. A stage names the artifacts it needs
(made by earlier stages, or ``"input"``: the user's input file or folder) and the ones it
makes, and does its work in ``run(ctx)`` through a :class:`StageContext`.

Re-running the same command skips every stage whose config and inputs are unchanged and
whose outputs are still there; the first stage that must run (config changed, input
changed, outputs missing, an earlier attempt failed, or ``force``) runs, and so does
everything after it. A stage that was interrupted resumes from its checkpoint when its
config and inputs are unchanged.

Deliverables under ``export/`` are never replaced silently: a file we wrote before is
replaced with a log line; a file we did not write (or one the user edited since) is kept
as ``<name>.bak-<time>`` and the log says so.
"""

from __future__ import annotations

import hashlib
import logging
import random
import resource
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from layerforge.errors import ConfigError, InputError, LayerforgeError
from layerforge.pipelines.checkpoint import TrainingLoop
from layerforge.pipelines.rundir import RunDir, now_iso, package_versions, sha256_json, sha256_path

log = logging.getLogger("layerforge")
T = TypeVar("T")

INPUT = "input"
"""Artifact name of the user's input (``input=PATH``)."""


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline.

    Attributes:
        name: unique within the pipeline; also its folder ``stages/<name>/``.
        run: does the work; reads ``ctx.input(...)``, writes ``ctx.output(...)``.
        needs: artifact names it reads (``"input"`` for the user's input).
        makes: artifact names it must produce.
        config_keys: top-level config sections whose values decide its result (its
            config hash); defaults to the section named after the stage.
        description: one line for ``layerforge list`` and ``--dry-run``.
    """

    name: str
    run: Callable[[StageContext], None]
    needs: tuple[str, ...] = ()
    makes: tuple[str, ...] = ()
    config_keys: tuple[str, ...] | None = None
    description: str = ""

    def keys(self) -> tuple[str, ...]:
        return self.config_keys if self.config_keys is not None else (self.name,)


@dataclass(frozen=True)
class Pipeline:
    """An ordered list of stages with a name."""

    name: str
    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"pipeline {self.name} lists a stage twice: {names}", "list each stage once")
        for stage in self.stages:
            for need in stage.needs:
                if need != INPUT and need not in seen:
                    raise ConfigError(
                        f"stage '{stage.name}' of pipeline {self.name} needs artifact '{need}' that no earlier stage makes",
                        "fix the stage order in the pipeline config",
                    )
            for made in stage.makes:
                seen[made] = stage.name

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(
            f"pipeline {self.name} has no stage '{name}'", f"pick one of: {', '.join(s.name for s in self.stages)}"
        )


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


@dataclass
class StageContext:
    """What a running stage sees: config, device, seeded RNG, artifact paths, progress, checkpoints."""

    cfg: DictConfig
    stage: Stage
    run_dir: RunDir
    device: torch.device
    seed: int
    quiet: bool
    input_path: Path | None
    _made: dict[str, Path] = field(default_factory=dict)
    _exports: list[Path] = field(default_factory=list)
    _metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        """This stage's own folder ``stages/<name>/``."""
        return self.run_dir.stage_dir(self.stage.name)

    @property
    def stage_cfg(self) -> DictConfig:
        """The config section named after the stage (empty if none)."""
        return self.cfg.get(self.stage.name) or OmegaConf.create({})

    def input(self, name: str) -> Path:
        """Path of an artifact this stage declared in ``needs``."""
        if name not in self.stage.needs:
            raise RuntimeError(f"stage {self.stage.name} reads '{name}' without declaring it in needs")
        if name == INPUT:
            assert self.input_path is not None
            return self.input_path
        for entry in self.run_dir.stages.values():
            if name in entry.get("outputs", {}):
                return self.run_dir.root / entry["outputs"][name]["path"]
        raise RuntimeError(f"artifact '{name}' is not in the manifest")

    def output(self, name: str, suffix: str = "") -> Path:
        """Path where this stage writes artifact ``name`` (a file, or a folder if no suffix)."""
        if name not in self.stage.makes:
            raise RuntimeError(f"stage {self.stage.name} writes '{name}' without declaring it in makes")
        path = self.folder / f"{name}{suffix}"
        self._made[name] = path
        return path

    def export_path(self, filename: str) -> Path:
        """Path of a deliverable under ``export/``; protects what is there already."""
        path = self.run_dir.export_dir / filename
        _protect_existing(self.run_dir, path)
        self._exports.append(path)
        return path

    def publish(self, staged: Path) -> list[Path]:
        """Move every file under the folder ``staged`` into ``export/`` (same relative paths).

        For writers that emit several files at once (OBJ + MTL + textures): write them to a
        staging folder inside the stage folder, then publish; each file gets the same
        protection as :meth:`export_path` and lands by an atomic rename.
        """
        published = []
        for src in sorted(p for p in Path(staged).rglob("*") if p.is_file()):
            dst = self.export_path(src.relative_to(staged).as_posix())
            dst.parent.mkdir(parents=True, exist_ok=True)
            src.replace(dst)  # same run folder, same file system: an atomic rename
            published.append(dst)
        return published

    def preview_path(self, filename: str) -> Path:
        """Path of a preview image under ``previews/``."""
        return self.run_dir.preview_dir / filename

    def record(self, **metrics: Any) -> None:
        """Store figures (metrics, counts) in this stage's manifest entry."""
        self._metrics.update(metrics)

    def progress(self, iterable: Iterable[T] | None = None, total: int | None = None, desc: str = "", initial: int = 0) -> Any:
        """A progress bar (tqdm: step, it/s, ETA; postfix for losses); silent when quiet."""
        return tqdm(
            iterable,
            total=total,
            initial=initial,
            desc=f"{self.stage.name}:{desc}" if desc else self.stage.name,
            disable=self.quiet,
            dynamic_ncols=True,
            leave=False,
            file=sys.stderr,
        )

    def loop(
        self,
        total: int,
        state: dict[str, Any],
        every: int,
        desc: str = "",
        subfolder: str = "",
        on_checkpoint: Callable[[int], None] | None = None,
    ) -> TrainingLoop:
        """A checkpointed, resumable step loop (see :mod:`layerforge.pipelines.checkpoint`).

        ``subfolder`` separates several loops inside one stage (e.g. training phases).
        """
        return TrainingLoop(
            folder=self.folder / subfolder if subfolder else self.folder,
            total=total,
            state=state,
            every=every,
            desc=f"{self.stage.name}:{desc or subfolder}".rstrip(":"),
            progress=lambda total, initial, desc: self.progress(total=total, initial=initial, desc=desc.split(":", 1)[-1]),
            on_checkpoint=on_checkpoint,
        )


def _protect_existing(run_dir: RunDir, path: Path) -> None:
    """Keep a deliverable we did not write (or that was edited) as ``.bak``; log replacements."""
    if not path.exists():
        return
    rel = run_dir.rel(path)
    recorded = run_dir.exports.get(rel)
    if recorded is not None and path.is_file() and sha256_path(path) == recorded:
        log.info("replacing %s from the previous invocation of this run", rel)
        return
    backup = path.with_name(f"{path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(backup)
    log.warning("%s was not written by this run (or was edited since); kept it as %s", rel, backup.name)


def _plain(value: Any) -> Any:
    """A config node as plain Python (sections are containers, top-level options scalars)."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _peak_memory_mb(device: torch.device) -> dict[str, float]:
    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        peak["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


@dataclass
class Decision:
    """Whether a stage runs in this invocation, and why."""

    stage: str
    run: bool
    reason: str
    resume: bool = False


class Engine:
    """Runs a pipeline into a run folder.

    Args:
        pipeline: the stages.
        cfg: the resolved config (top-level keys ``seed``, ``device``, ``quiet`` and one
            section per stage or shared component).
        run_dir: the run folder.
        input_path: the user's input file or folder (``None`` when the pipeline needs none).
    """

    def __init__(self, pipeline: Pipeline, cfg: DictConfig, run_dir: RunDir, input_path: Path | None) -> None:
        self.pipeline = pipeline
        self.cfg = cfg
        self.run_dir = run_dir
        self.input_path = input_path
        self.seed = int(cfg.get("seed", 0))
        self.quiet = bool(cfg.get("quiet", False))
        self._input_hash: str | None = None

    # ---- hashing -------------------------------------------------------------------
    def config_hash(self, stage: Stage) -> str:
        """Hash of the config sections that decide a stage's result, plus the seed."""
        sections = {k: _plain(self.cfg[k]) if k in self.cfg else None for k in stage.keys()}
        return sha256_json({"stage": stage.name, "seed": self.seed, "config": sections})

    def input_hash(self) -> str:
        if self._input_hash is None:
            if self.input_path is None:
                raise InputError("this pipeline needs an input", "pass input=PATH")
            self._input_hash = sha256_path(self.input_path)
        return self._input_hash

    def input_hashes(self, stage: Stage) -> dict[str, str]:
        """Hashes of what a stage reads: the user's input, or earlier stages' outputs."""
        hashes = {}
        for need in stage.needs:
            if need == INPUT:
                hashes[need] = self.input_hash()
                continue
            for entry in self.run_dir.stages.values():
                if need in entry.get("outputs", {}):
                    hashes[need] = entry["outputs"][need]["sha256"]
        return hashes

    # ---- planning ------------------------------------------------------------------
    def plan(self, force: str | None = None) -> list[Decision]:
        """Decide, without running anything, which stages run and why.

        Downstream input hashes are predicted from the manifest, so the plan assumes a
        re-run stage may change its outputs: everything after it runs too.
        """
        if force is not None:
            self.pipeline.stage(force)
        decisions: list[Decision] = []
        dirty = False
        for stage in self.pipeline.stages:
            entry = self.run_dir.stages.get(stage.name)
            chash = self.config_hash(stage)
            reason, resume = None, False
            if force == stage.name:
                reason, dirty = "forced with --force", True
            elif dirty:
                reason = "an earlier stage runs"
            elif entry is None:
                reason = "never ran"
            elif entry.get("config_hash") != chash:
                reason = "its config changed"
            elif entry.get("input_hashes") != self.input_hashes(stage):
                reason = "its inputs changed"
            elif entry.get("status") != "done":
                reason, resume = f"the previous attempt ended '{entry.get('status')}'", True
            elif any(not (self.run_dir.root / o["path"]).exists() for o in entry.get("outputs", {}).values()):
                reason = "its outputs are missing"
            if reason is None:
                decisions.append(Decision(stage.name, False, "up to date"))
            else:
                dirty = True
                decisions.append(Decision(stage.name, True, reason, resume))
        return decisions

    # ---- running -------------------------------------------------------------------
    def run(self, force: str | None = None) -> list[Decision]:
        """Run the stages that need it; return the decisions taken.

        Raises:
            LayerforgeError: a stage met a problem the user can fix (recorded in the manifest).
            Exception: a stage failed otherwise (recorded in the manifest, with traceback in the log).
        """
        device = resolve_device(str(self.cfg.get("device", "auto")))
        decisions = self.plan(force)
        self.run_dir.manifest.update(
            seed=self.seed,
            device=str(device),
            versions=package_versions(),
            config_hash=sha256_json(OmegaConf.to_container(self.cfg, resolve=True)),
        )
        if self.input_path is not None:
            self.run_dir.manifest["inputs"] = {INPUT: {"path": str(self.input_path), "sha256": self.input_hash()}}
        for decision in decisions:
            stage = self.pipeline.stage(decision.stage)
            if not decision.run:
                log.info("stage %-10s skipped: %s", stage.name, decision.reason)
                continue
            log.info("stage %-10s runs: %s", stage.name, decision.reason)
            self._run_stage(stage, device, resume=decision.resume)
        self.run_dir.save()
        return decisions

    def _run_stage(self, stage: Stage, device: torch.device, resume: bool) -> None:
        folder = self.run_dir.stage_dir(stage.name)
        if not resume and folder.exists():
            shutil.rmtree(folder)  # intermediate files of an outdated attempt; deliverables live in export/
        folder.mkdir(parents=True, exist_ok=True)
        seed = stage_seed(self.seed, stage.name)
        seed_everything(seed)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        entry: dict[str, Any] = {
            "status": "running",
            "config_hash": self.config_hash(stage),
            "input_hashes": self.input_hashes(stage),
            "started": now_iso(),
            "seed": seed,
            "device": str(device),
            "versions": package_versions(),
            "outputs": {},
        }
        self.run_dir.stages[stage.name] = entry
        self.run_dir.save()
        ctx = StageContext(self.cfg, stage, self.run_dir, device, seed, self.quiet, self.input_path)
        t0 = time.perf_counter()
        try:
            stage.run(ctx)
            missing = [m for m in stage.makes if m not in ctx._made or not ctx._made[m].exists()]
            if missing:
                raise RuntimeError(f"stage {stage.name} finished without writing {missing}")
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
        entry["outputs"] = {
            name: {"path": self.run_dir.rel(path), "sha256": sha256_path(path)} for name, path in ctx._made.items()
        }
        for path in ctx._exports:
            if path.is_file():
                self.run_dir.exports[self.run_dir.rel(path)] = sha256_path(path)
        entry.update(
            ended=now_iso(),
            wall_s=round(time.perf_counter() - t0, 3),
            metrics=ctx._metrics,
            **_peak_memory_mb(device),
        )
        entry["status"] = "done"  # set last: only a fully recorded stage counts as done
        self.run_dir.save()
        log.info("stage %-10s done in %.1f s", stage.name, entry["wall_s"])


def iter_exports(manifest: dict[str, Any]) -> Iterator[str]:
    """Relative paths of a run's deliverables, sorted."""
    yield from sorted(manifest.get("exports", {}))


def format_plan(decisions: Sequence[Decision]) -> str:
    """Human-readable ``--dry-run`` output: one line per stage."""
    return "\n".join(
        f"  {'run ' if d.run else 'skip'}  {d.stage:<12} {d.reason}{' (resumes from checkpoint)' if d.resume else ''}"
        for d in decisions
    )
