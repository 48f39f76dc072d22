"""What ``inputs=`` of ``layerforge batch`` names: one :class:`BatchItem` per run.

    inputs=meshes/              each item the pipeline finds in the folder (bsp: every mesh,
                                one per object when it is exported several ways; others: every
                                entry of the folder)
    inputs='scans/*.ply'        every path the glob matches (``**`` recurses)
    inputs=list.txt             one path or run reference per line (``#`` comments; relative
                                paths are relative to the list)
    inputs=items.csv            a column ``input`` (paths as in a list), optionally ``item`` (the
                                item's name), and one column per override key (``model.c``,
                                ``seed``); an empty cell keeps the batch's value
    inputs=run:dp_recon/kitchen[#artifact]
                                the items of another run's deliverables (a scene run's
                                export/objects/: one per object), or of one artifact;
    inputs=run:bsp/<batch>      or the finished items of another batch

Item names are the file or folder names (a folder's items: their path inside it, ``/`` as
``-``), made unique in input order (``chair``, ``chair-2``), so a re-run maps each input to
the same item folder.
"""

from __future__ import annotations

import csv
import glob
import importlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from layerforge.errors import InputError
from layerforge.pipelines.inputs import RUN_REFERENCE, resolve_input

BATCH_FILE = "batch.json"
OBJECTS = "objects"
"""The folder of one mesh per object in a scene run's export/ (dp_recon, decomp_nerf)."""
LIST_SUFFIXES = (".txt", ".lst")
_GLOB_CHARS = re.compile(r"[*?\[]")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class BatchItem:
    """One run of a batch: its folder name, its input (a resolved path) and its own overrides."""

    name: str
    input: str
    overrides: tuple[str, ...] = field(default=())


def folder_items(pipeline_module: str) -> Callable[[Path], list[Path]]:
    """How a pipeline splits a folder into items: its module's ``batch_items(folder)``, else every
    entry of the folder that is not hidden."""
    module = importlib.import_module(pipeline_module)
    split = getattr(module, "batch_items", None)
    if split is not None:
        return split
    return lambda folder: sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def collect_items(inputs: str, out: Path, split: Callable[[Path], list[Path]]) -> list[BatchItem]:
    """The items ``inputs=`` names, in a stable order (see the module docstring).

    Raises:
        InputError: nothing matches, a listed path is missing, the CSV has no ``input`` column,
            or a run reference does not resolve (one line each).
    """
    text = str(inputs).strip()
    if not text:
        raise InputError("inputs= is empty", "pass a folder, a glob, a list.txt, an items.csv or run:<pipeline>/<run>")
    if text.startswith(RUN_REFERENCE):
        return _name(_reference_items(text, out, split))
    if _GLOB_CHARS.search(text) and not Path(text).exists():
        matches = sorted(glob.glob(str(Path(text).expanduser()), recursive=True))
        if not matches:
            raise InputError(f"inputs={text} matches no file", "check the pattern (quote it so the shell leaves it alone)")
        return _name([(Path(m).stem, str(Path(m).resolve()), ()) for m in matches])
    path = Path(text).expanduser()
    if not path.exists():
        raise InputError(f"inputs={text} does not exist", "pass an existing folder, glob, list.txt or items.csv")
    if path.is_file() and path.suffix.lower() == ".csv":
        return _name(_csv_items(path, out))
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        entries = [ln for ln in lines if ln and not ln.startswith("#")]
        if not entries:
            raise InputError(f"{path} lists no inputs", "write one path or run:<pipeline>/<run> per line")
        return _name([_listed(e, path.parent, out) for e in entries])
    if path.is_dir():
        found = split(path.resolve())
        if not found:
            raise InputError(f"{path} holds no items for this pipeline", "put its inputs in the folder, or pass a list")
        return _name([(_relative_name(p, path.resolve()), str(p), ()) for p in found])
    return _name([(path.stem, str(path.resolve()), ())])


def _listed(entry: str, base: Path, out: Path) -> tuple[str, str, tuple[str, ...]]:
    """One line of a list (or one ``input`` cell): a run reference or a path relative to the list."""
    if entry.startswith(RUN_REFERENCE):
        resolved = resolve_input(entry, out)
        assert resolved is not None
        return _reference_name(entry), str(resolved), ()
    path = Path(entry).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise InputError(f"listed input {entry} does not exist ({path})", "fix the line or remove it from the list")
    return path.stem, str(path.resolve()), ()


def _csv_items(path: Path, out: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if "input" not in columns:
            raise InputError(f"{path} has no 'input' column (columns: {', '.join(columns) or 'none'})",
                             "the first row names the columns: input[,item][,override keys such as model.c]")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    if not rows:
        raise InputError(f"{path} has no rows", "add one row per item below the header")
    items = []
    for i, row in enumerate(rows, start=2):
        if not row.get("input"):
            raise InputError(f"{path} line {i} has an empty input", "fill the input cell or remove the row")
        name, resolved, _ = _listed(row["input"], path.parent, out)
        overrides = tuple(f"{k}={v}" for k, v in row.items() if k not in ("input", "item") and k and v != "")
        items.append((row.get("item") or name, resolved, overrides))
    return items


def _reference_items(ref: str, out: Path, split: Callable[[Path], list[Path]]) -> list[tuple[str, str, tuple[str, ...]]]:
    """``run:<pipeline>/<batch>``: the finished items of a batch; otherwise a run's deliverables split into items."""
    target = ref[len(RUN_REFERENCE):].partition("#")[0].strip("/")
    batch_root = out / target
    if "#" not in ref and (batch_root / BATCH_FILE).exists():
        state = json.loads((batch_root / BATCH_FILE).read_text())
        done = [(name, entry) for name, entry in state.get("items", {}).items() if entry.get("status") == "done"]
        if not done:
            raise InputError(f"batch {target} has no finished items", "finish that batch first")
        return [(name, str((batch_root / name / "export").resolve()), ()) for name, _ in done]
    resolved = resolve_input(ref, out)
    assert resolved is not None
    if "#" not in ref and (resolved / OBJECTS).is_dir():  # a scene run's deliverables: one item per object,
        resolved = resolved / OBJECTS                     # not the whole scene file beside them
    if resolved.is_file():
        return [(resolved.stem, str(resolved), ())]
    found = split(resolved)
    if not found:
        raise InputError(f"{ref} holds no items for this pipeline", "name one artifact with #<artifact>")
    return [(_relative_name(p, resolved), str(p), ()) for p in found]


def _reference_name(ref: str) -> str:
    target, _, artifact = ref[len(RUN_REFERENCE):].partition("#")
    return Path(artifact).stem if artifact else target.strip("/").split("/")[-1]


def _relative_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root)
    return "-".join([*rel.parent.parts, rel.stem if path.is_file() else rel.name])


def _name(entries: list[tuple[str, str, tuple[str, ...]]]) -> list[BatchItem]:
    """Safe, unique folder names in input order."""
    used: set[str] = set()
    items = []
    for raw, input_path, overrides in entries:
        base = _UNSAFE.sub("_", raw).strip("._") or "item"
        name, k = base, 1
        while name in used:
            k += 1
            name = f"{base}-{k}"
        used.add(name)
        items.append(BatchItem(name, input_path, overrides))
    return items
