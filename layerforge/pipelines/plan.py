"""What runs and why: config and input hashes, the artifact store, recorded deliverables.

A stage runs when it never ran, its config or inputs changed, its previous attempt did not
end ``done``, an output or deliverable it recorded is missing or changed, or an earlier
stage runs. Config hashes cover the stage's config sections, the content of every file or
folder those sections name (a checkpoint, a model folder), the seed and the layerforge
version, so a changed checkpoint or a fixed bug re-runs what it affects.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import layerforge
from layerforge.pipelines.rundir import RunDir, sha256_file, sha256_json, sha256_path, stamp
from layerforge.pipelines.stage import Pipeline, Stage, is_input

LARGE_FILE = 64 << 20
"""Files above this size (model weights) are fingerprinted by size, mtime and their first and
last MiB instead of being read whole at every invocation."""
_EDGE = 1 << 20
_content_cache: dict[tuple[str, int, int], str] = {}


@dataclass
class Decision:
    """Whether a stage runs in this invocation, and why."""

    stage: str
    run: bool
    reason: str
    resume: bool = False


def plain(value: Any) -> Any:
    """A config node as plain Python (sections are containers, top-level options scalars)."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def file_fingerprint(path: Path) -> str:
    """Content hash of a file (large files: size, mtime and both ends), cached per (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _content_cache:
        if st.st_size <= LARGE_FILE:
            _content_cache[key] = sha256_file(path)
        else:
            h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode())
            with open(path, "rb") as f:
                h.update(f.read(_EDGE))
                f.seek(-_EDGE, 2)
                h.update(f.read(_EDGE))
            _content_cache[key] = h.hexdigest()
    return _content_cache[key]


def named_files(value: Any) -> dict[str, str]:
    """Fingerprints of every existing file or folder a config value names by path.

    A string counts as a path when it contains a path separator (``a/b``, ``/abs``,
    ``~/x``); bare words such as ``kdop`` never do.
    """
    found: dict[str, str] = {}

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif isinstance(v, str) and "/" in v and len(v) < 4096:
            path = Path(v).expanduser()
            if path.is_file():
                found[v] = file_fingerprint(path)
            elif path.is_dir():
                files = sorted(q for q in path.rglob("*") if q.is_file())
                found[v] = sha256_json({q.relative_to(path).as_posix(): file_fingerprint(q) for q in files})

    walk(value)
    return found


def config_hash(cfg: DictConfig, stage: Stage, seed: int) -> str:
    """Hash of what decides a stage's result apart from its inputs (see module docstring)."""
    sections = {k: plain(cfg[k]) if k in cfg else None for k in stage.keys()}
    return sha256_json({"stage": stage.name, "seed": seed, "config": sections, "files": named_files(sections),
                        "layerforge": layerforge.__version__})


class ArtifactStore:
    """Where a stage's artifacts are, for the planner and for ``ctx.input`` alike.

    A stage reads an artifact only from the latest earlier stage of the current pipeline
    that makes it, never from a stage of another mode left in the same run folder.
    """

    def __init__(self, pipeline: Pipeline, run_dir: RunDir) -> None:
        self.pipeline = pipeline
        self.run_dir = run_dir

    def record(self, name: str, reader: str) -> dict[str, Any] | None:
        """The manifest record (path, sha256, stamp) of artifact ``name`` as ``reader`` sees it."""
        producer = self.pipeline.producer(name, reader)
        entry = self.run_dir.stages.get(producer) or {}
        return (entry.get("outputs") or {}).get(name)

    def path(self, name: str, reader: str) -> Path:
        rec = self.record(name, reader)
        if rec is None:
            raise RuntimeError(f"artifact '{name}' of stage {self.pipeline.producer(name, reader)} is not in the manifest")
        return self.run_dir.root / rec["path"]

    def input_hashes(self, stage: Stage, input_hash: Any) -> dict[str, str]:
        """Hashes of what a stage reads: the user's inputs (``input_hash(name)``), or earlier stages' outputs."""
        hashes = {}
        for need in stage.needs:
            if is_input(need):
                hashes[need] = input_hash(need)
            elif (rec := self.record(need, stage.name)) is not None:
                hashes[need] = rec["sha256"]
        return hashes

    def damaged(self, stage: str) -> str | None:
        """Why a done stage's recorded outputs or deliverables no longer stand, or None."""
        entry = self.run_dir.stages.get(stage) or {}
        for name, rec in (entry.get("outputs") or {}).items():
            path = self.run_dir.root / rec["path"]
            if not path.exists():
                return f"its output '{name}' is missing"
            if not _unchanged(path, rec.get("stamp"), rec["sha256"]):
                return f"its output '{name}' changed"
        stamps = self.run_dir.manifest.get("stamps", {})
        for rel in entry.get("exports") or []:
            path = self.run_dir.root / rel
            if not path.is_file():
                return f"its deliverable {rel} is missing"
            if not _unchanged(path, stamps.get(rel), self.run_dir.exports.get(rel)):
                return f"its deliverable {rel} changed"
        return None


def _unchanged(path: Path, recorded_stamp: list[int] | None, sha: str | None) -> bool:
    if recorded_stamp is not None and stamp(path) == list(recorded_stamp):
        return True
    return sha is not None and sha256_path(path) == sha


def plan(pipeline: Pipeline, cfg: DictConfig, store: ArtifactStore, seed: int, input_hash: Any,
         force: str | None = None) -> list[Decision]:
    """Decide, without running anything, which stages run and why.

    Downstream input hashes are predicted from the manifest, so the plan assumes a re-run
    stage may change its outputs: everything after it runs too.
    """
    if force is not None:
        pipeline.stage(force)
    decisions: list[Decision] = []
    dirty = False
    for stage in pipeline.stages:
        entry = store.run_dir.stages.get(stage.name)
        reason, resume = None, False
        if force == stage.name:
            reason = "forced with --force"
        elif dirty:
            reason = "an earlier stage runs"
        elif entry is None:
            reason = "never ran"
        elif entry.get("config_hash") != config_hash(cfg, stage, seed):
            reason = "its config changed"
        elif entry.get("input_hashes") != store.input_hashes(stage, input_hash):
            reason = "its inputs changed"
        elif entry.get("status") != "done":
            reason, resume = f"the previous attempt ended '{entry.get('status')}'", True
        else:
            reason = store.damaged(stage.name)
        if reason is None:
            decisions.append(Decision(stage.name, False, "up to date"))
        else:
            dirty = True
            decisions.append(Decision(stage.name, True, reason, resume))
    return decisions
