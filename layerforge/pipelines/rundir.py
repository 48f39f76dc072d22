"""Run directories and their manifest.

A run lives in ``<out>/<pipeline>/<run>/``::

    manifest.json      what ran, with which config and inputs, when, on what; written atomically
    config.yaml        the resolved config of the latest invocation
    log.txt            the run's log (appended across invocations)
    stages/<stage>/    each stage's artifacts and checkpoints
    export/            deliverables (GLB, OBJ, USD, .blend, PNG, metrics)
    previews/          preview images written during long stages

The manifest is the single source of truth: a stage counts as done only when its entry,
written last, says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerforge.assets.atomic import atomic_write_json
from layerforge.errors import InputError, OutputError

MANIFEST = "manifest.json"
_HASH_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_path(path: Path) -> str:
    """Hex SHA-256 of a file, or of a folder's relative file names and contents (sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(p.relative_to(path).as_posix().encode())
            h.update(sha256_file(p).encode())
        return h.hexdigest()
    raise InputError(f"{path} does not exist", "check the path")


def sha256_json(obj: Any) -> str:
    """Hex SHA-256 of a JSON-serialisable object, independent of key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour decides our outputs."""
    from importlib import metadata

    import layerforge

    versions = {"layerforge": layerforge.__version__, "python": platform.python_version()}
    for name in ("torch", "numpy", "trimesh", "diffusers", "transformers", "gsplat", "usd-core", "bpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def now_iso() -> str:
    """Local time with offset, second resolution."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class RunDir:
    """Paths and manifest of one run. Create with :meth:`open`."""

    root: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, root: str | os.PathLike[str], pipeline: str) -> RunDir:
        """Open (creating if needed) the run folder ``root``; fail clearly if it is unwritable.

        Raises:
            OutputError: the folder cannot be created or written.
            InputError: the folder holds a run of another pipeline or a corrupt manifest.
        """
        root = Path(root)
        try:
            for sub in ("stages", "export", "previews"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            probe = root / f".write-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise OutputError(
                f"cannot write the run folder {root} ({err.strerror or err})",
                "choose a writable folder with out=DIR",
            ) from None
        run = cls(root=root)
        if (root / MANIFEST).exists():
            try:
                run.manifest = json.loads((root / MANIFEST).read_text())
            except json.JSONDecodeError as err:
                raise InputError(
                    f"{root / MANIFEST} is corrupt ({err.msg} at line {err.lineno})",
                    "move the run folder away or pick another run=NAME",
                ) from None
            other = run.manifest.get("pipeline")
            if other not in (None, pipeline):
                raise InputError(
                    f"{root} holds a run of pipeline '{other}', not '{pipeline}'", "pick another run=NAME"
                )
        run.manifest.setdefault("pipeline", pipeline)
        run.manifest.setdefault("run", root.name)
        run.manifest.setdefault("created", now_iso())
        run.manifest.setdefault("stages", {})
        run.manifest.setdefault("exports", {})
        return run

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        return self.manifest["stages"]

    @property
    def exports(self) -> dict[str, str]:
        """Deliverables this tool wrote: path relative to the run folder -> SHA-256."""
        return self.manifest["exports"]

    def stage_dir(self, stage: str) -> Path:
        return self.root / "stages" / stage

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def preview_dir(self) -> Path:
        return self.root / "previews"

    @property
    def log_path(self) -> Path:
        return self.root / "log.txt"

    def rel(self, path: Path) -> str:
        """``path`` relative to the run folder, POSIX style, as stored in the manifest."""
        return Path(path).resolve().relative_to(self.root.resolve()).as_posix()

    def save(self) -> None:
        """Write the manifest atomically."""
        self.manifest["updated"] = now_iso()
        atomic_write_json(self.root / MANIFEST, self.manifest)


def load_manifest(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a run's manifest for inspection.

    Raises:
        InputError: the folder or its manifest is missing or unreadable.
    """
    path = Path(run_dir) / MANIFEST
    if not Path(run_dir).is_dir():
        raise InputError(f"run folder {run_dir} does not exist", "pass a folder like outputs/<pipeline>/<run>")
    if not path.exists():
        raise InputError(f"{run_dir} has no {MANIFEST}", "pass a run folder made by `layerforge run`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is corrupt ({err.msg})", "re-run the pipeline into a new run=NAME") from None
