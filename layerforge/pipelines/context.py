"""What a running stage sees: :class:`StageContext`.

Config (raw and typed), device, seed, its own folder, the artifacts of earlier stages,
deliverables (staged inside the stage folder and landed in ``export/`` by the engine when
the stage succeeds), previews, figures for the manifest, progress bars, checkpointed loops
and per-item work that isolates failures.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from layerforge.assets.atomic import atomic_write_text
from layerforge.errors import LayerforgeError
from layerforge.pipelines.checkpoint import TrainingLoop
from layerforge.pipelines.plan import ArtifactStore
from layerforge.pipelines.rundir import RunDir
from layerforge.pipelines.stage import Stage, is_input

log = logging.getLogger("layerforge")
T = TypeVar("T")

STAGED_EXPORTS = ".export"
"""Folder inside a stage's folder where its deliverables wait until the stage succeeds."""
ITEMS = ".items"
"""Folder inside a stage's folder with one done marker per finished item (:meth:`StageContext.each`)."""


@dataclass
class StageContext:
    """What a running stage sees: config, device, seeded RNG, artifact paths, progress, checkpoints."""

    cfg: DictConfig
    stage: Stage
    run_dir: RunDir
    device: torch.device
    seed: int
    quiet: bool
    inputs: dict[str, Path | None]
    store: ArtifactStore
    typed_cfg: dict[str, Any] = field(default_factory=dict)
    _made: dict[str, Path] = field(default_factory=dict)
    _metrics: dict[str, Any] = field(default_factory=dict)
    _codecs: dict[str, str] = field(default_factory=dict)
    failed_items: dict[str, str] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        """This stage's own folder ``stages/<name>/``."""
        return self.run_dir.stage_dir(self.stage.name)

    @property
    def stage_cfg(self) -> DictConfig:
        """The config section named after the stage (empty if none)."""
        return self.cfg.get(self.stage.name) or OmegaConf.create({})

    def typed(self, section: str) -> Any:
        """The validated, typed config of ``section`` (a dataclass the stage declared in ``schemas``)."""
        if section not in self.typed_cfg:
            raise RuntimeError(f"stage {self.stage.name} reads typed config '{section}' without declaring it in schemas")
        return self.typed_cfg[section]

    def input(self, name: str) -> Path:
        """Path of an artifact this stage declared in ``needs`` (made by an earlier stage of this pipeline)."""
        if name not in self.stage.needs:
            raise RuntimeError(f"stage {self.stage.name} reads '{name}' without declaring it in needs")
        if is_input(name):
            path = self.inputs.get(name)
            assert path is not None, f"{name} is checked by the engine before the stage runs"
            return path
        return self.store.path(name, self.stage.name)

    def optional_input(self, name: str) -> Path | None:
        """Path of a user input this stage declared in ``needs`` and ``optional_inputs``, or None when unset."""
        if name not in self.stage.optional_inputs:
            raise RuntimeError(f"stage {self.stage.name} reads '{name}' as optional without declaring it in optional_inputs")
        return self.inputs.get(name)

    def output(self, name: str, suffix: str = "") -> Path:
        """Path where this stage writes artifact ``name`` (a file, or a folder if no suffix)."""
        if name not in self.stage.makes:
            raise RuntimeError(f"stage {self.stage.name} writes '{name}' without declaring it in makes")
        path = self.folder / f"{name}{suffix}"
        self._made[name] = path
        return path

    def save(self, name: str, obj: Any) -> Path:
        """Write artifact ``name`` (declared in ``makes``) with its type's codec (:mod:`~layerforge.pipelines.artifacts`)."""
        from layerforge.pipelines.artifacts import save_artifact

        path, codec = save_artifact(obj, self.output(name))
        self._made[name] = path
        self._codecs[name] = codec
        return path

    def load(self, name: str, like: Any = None) -> Any:
        """Read artifact ``name`` (declared in ``needs``) as the type it was saved as.

        ``like``: for a module's state_dict, the module to load it into; ``Mesh`` to get a
        mesh artifact merged into one Mesh.
        """
        from layerforge.pipelines.artifacts import load_artifact

        path = self.input(name)
        record = self.store.record(name, self.stage.name) or {}
        if "codec" not in record:
            raise RuntimeError(f"artifact '{name}' was not written with ctx.save; read it with ctx.input")
        return load_artifact(path, record["codec"], like)

    @property
    def staged_exports(self) -> Path:
        return self.folder / STAGED_EXPORTS

    def export_path(self, filename: str) -> Path:
        """Where to write deliverable ``filename``; it lands in ``export/`` when the stage succeeds.

        Landing protects what is there: a file this run wrote before is replaced with a log
        line, anything else (a user's file, an edited deliverable) is kept as ``.bak-<time>``.
        """
        path = self.staged_exports / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def publish(self, staged: Path) -> list[Path]:
        """Queue every file under the folder ``staged`` as a deliverable (same relative paths).

        For writers that emit several files at once (OBJ + MTL + textures). Returns the
        paths the files will have under ``export/``.
        """
        queued = []
        for src in sorted(p for p in Path(staged).rglob("*") if p.is_file()):
            rel = src.relative_to(staged).as_posix()
            src.replace(self.export_path(rel))  # same stage folder: an atomic rename
            queued.append(self.run_dir.export_dir / rel)
        return queued

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

    def each(self, items: Sequence[T], work: Callable[[T], None], key: Callable[[T], str] = str, desc: str = "") -> list[T]:
        """Run ``work(item)`` for every item, one failure never costing the others.

        An item whose work finished has a done marker, so a stage resumed after a kill
        starts at the first unfinished item. An item that fails is logged in one line and
        listed in the manifest (``failed_items``); the run goes on with the rest and the
        command exits non-zero at the end with a summary. With a single item, or when every
        item fails, the stage fails with the (first) item's own error.

        Returns:
            The items that are done (now or in an earlier attempt), in order.
        """
        markers = self.folder / ITEMS
        markers.mkdir(parents=True, exist_ok=True)
        done: list[T] = []
        errors: list[BaseException] = []
        for item in self.progress(items, total=len(items), desc=desc):
            name = key(item)
            marker = markers / f"{_marker_name(name)}.done"
            if marker.exists():
                done.append(item)
                continue
            try:
                work(item)
            except Exception as err:  # noqa: BLE001 - one bad item must not cost the others
                if len(items) == 1:
                    raise
                message = str(err) if isinstance(err, LayerforgeError) else f"{type(err).__name__}: {err}"
                if not isinstance(err, LayerforgeError):
                    log.debug("item %s traceback:\n%s", name, traceback.format_exc())
                log.warning("error: %s: %s", name, message)
                self.failed_items[name] = message
                errors.append(err)
                continue
            atomic_write_text(marker, name + "\n")
            done.append(item)
        if not done and errors:
            raise errors[0]
        return done


def _marker_name(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:24]
