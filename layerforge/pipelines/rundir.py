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

import fcntl
import hashlib
import json
import logging
import os
import platform
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerforge.assets.atomic import atomic_write_json
from layerforge.errors import InputError, OutputError, RunBusyError

log = logging.getLogger("layerforge")

MANIFEST = "manifest.json"
LOCK = ".lock"
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


def stamp(path: Path) -> list[int]:
    """Cheap fingerprint of a file or folder: [total bytes, newest mtime in ns, file count].

    Equal stamps are taken as unchanged content (what ``make`` trusts); a different stamp
    sends the caller to the SHA-256.
    """
    path = Path(path)
    files = [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file())
    stats = [f.stat() for f in files]
    return [sum(st.st_size for st in stats), max((st.st_mtime_ns for st in stats), default=0), len(stats)]


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder: one writer per run.

    ``<run>/.lock`` holds the holder's pid, host and start time while it is held; the lock
    itself is an ``flock`` on that file, so the kernel frees it when the holder dies (even by
    SIGKILL), and a later run takes it over and says so.
    """

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / LOCK
        self._fd: int | None = None

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now (pid, host, since), or None if nobody does."""
        if not self.path.exists():
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read_holder(fd) or {"pid": "?", "host": "?", "since": "?"}
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunBusyError` naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd) or {}
            os.close(fd)
            raise RunBusyError(
                f"run folder {self.path.parent} is in use by pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
                f" (since {holder.get('since', '?')})",
                "wait for that run to finish, or pick another run=NAME",
            ) from None
        stale = _read_holder(fd)
        if stale:
            gone = stale.get("host") != socket.gethostname() or not _alive(int(stale.get("pid", -1)))
            log.warning("run folder %s: taking over the lock left by pid %s on %s%s", self.path.parent,
                        stale.get("pid"), stale.get("host"), " (that process is gone)" if gone else "")
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, me, 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # an empty lock file is a clean hand-over, not a stale lock
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def _read_holder(fd: int) -> dict[str, Any] | None:
    raw = os.pread(fd, 4096, 0)
    try:
        return json.loads(raw) if raw.strip() else None
    except json.JSONDecodeError:
        return {"pid": "?", "host": "?", "since": "?"}


@dataclass
class RunDir:
    """Paths and manifest of one run. Create with :meth:`open`; write only inside :meth:`locked`."""

    root: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    _lock: RunLock | None = field(default=None, repr=False)
    _lock_depth: int = field(default=0, repr=False)
    _pipeline: str = field(default="", repr=False)

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
        run._pipeline = pipeline
        run.reload()
        return run

    def reload(self) -> None:
        """(Re)read the manifest from disk (after taking the lock, another writer may have finished)."""
        self.manifest = {}
        if (self.root / MANIFEST).exists():
            try:
                self.manifest = json.loads((self.root / MANIFEST).read_text())
            except json.JSONDecodeError as err:
                raise InputError(
                    f"{self.root / MANIFEST} is corrupt ({err.msg} at line {err.lineno})",
                    "move the run folder away or pick another run=NAME",
                ) from None
            other = self.manifest.get("pipeline")
            if other not in (None, self._pipeline):
                raise InputError(
                    f"{self.root} holds a run of pipeline '{other}', not '{self._pipeline}'", "pick another run=NAME"
                )
        self.manifest.setdefault("pipeline", self._pipeline)
        self.manifest.setdefault("run", self.root.name)
        self.manifest.setdefault("created", now_iso())
        self.manifest.setdefault("stages", {})
        self.manifest.setdefault("exports", {})

    @contextmanager
    def locked(self) -> Iterator[RunDir]:
        """Hold the run folder's exclusive lock (re-entrant within this object).

        Raises:
            RunBusyError: another live process holds it.
        """
        if self._lock_depth == 0:
            self._lock = RunLock(self.root)
            self._lock.acquire()
            self.reload()
        self._lock_depth += 1
        try:
            yield self
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0 and self._lock is not None:
                self._lock.release()
                self._lock = None

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
