"""Atomic file writes: write to a temporary sibling, then rename over the final name.

An interrupted write (crash, SIGKILL, full disk) therefore never leaves a half-written
file under the final name: readers see the old file or the new one, nothing between.
Every writer in layerforge goes through these helpers.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``.

    The temporary name keeps the final suffix (``.usda``, ``.glb``...) so libraries that
    pick a format from the extension write the right one. On error the temporary file
    is removed and ``path`` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; deliverables get the usual mode
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cached_folder(final: str | os.PathLike[str], marker: str, write: Callable[[Path], None]) -> Path:
    """``final`` when ``final/marker`` exists; else ``write(folder)`` into a temporary sibling, renamed into place.

    A generated input's cache entry (the builtin scenes): a crash never leaves a half-written
    folder, and of two concurrent writers the first complete copy wins. ``write`` must create
    ``marker`` (last, so its presence means the folder is whole). The folder gets ordinary
    permissions (``mkdtemp`` makes 0700).
    """
    import shutil

    final = Path(final)
    if (final / marker).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        write(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / marker).is_file():  # someone else's complete copy wins
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _strict(obj: Any) -> Any:
    """``obj`` with every NaN/Infinity float replaced by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted, strict JSON to ``path`` atomically.

    An undefined number (NaN, Infinity) is written as ``null``, so every JSON reader accepts
    the file (Python's json would otherwise write the non-standard tokens ``NaN``/``Infinity``).
    """
    text = json.dumps(_strict(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
    return atomic_write_text(path, text + "\n")
