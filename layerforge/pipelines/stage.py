"""What a pipeline is made of: :class:`Stage` s in order, and the artifacts they pass on.

A stage names the artifacts it needs (made by earlier stages of the same pipeline, or
``"input"``: the user's input file or folder) and the ones it makes, the config sections
that decide its result, and the typed config each section is validated against before
anything runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from layerforge.errors import ConfigError

if TYPE_CHECKING:
    from layerforge.pipelines.context import StageContext

INPUT = "input"
"""Artifact name of the user's input (``input=PATH``); named inputs are ``input.<name>``
(``input.views=PATH``, ``input.masks=PATH``), each hashed on its own."""


def is_input(name: str) -> bool:
    """Whether an artifact name is one of the user's inputs (``input`` or ``input.<name>``)."""
    return name == INPUT or name.startswith(INPUT + ".")


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline.

    Attributes:
        name: unique within the pipeline; also its folder ``stages/<name>/``.
        run: does the work; reads ``ctx.input(...)``, writes ``ctx.output(...)``.
        needs: artifact names it reads (``"input"`` for the user's input).
        optional_inputs: user inputs among ``needs`` that may be unset (read them with
            ``ctx.optional_input``; an unset one hashes as ``"unset"``), e.g. layerpano3d's
            ``input`` when a ``prompt`` generates the panorama instead.
        makes: artifact names it must produce.
        config_keys: config sections (or top-level options) whose values decide its result
            (its config hash); defaults to the section named after the stage.
        schemas: typed config per section (a dataclass; ``__post_init__`` checks ranges),
            validated before any stage of the run starts; ``ctx.typed(section)`` returns it.
        description: one line for ``layerforge list`` and ``--dry-run``.
    """

    name: str
    run: Callable[[StageContext], None]
    needs: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()
    makes: tuple[str, ...] = ()
    config_keys: tuple[str, ...] | None = None
    schemas: Mapping[str, type] = field(default_factory=dict)
    description: str = ""

    def keys(self) -> tuple[str, ...]:
        return self.config_keys if self.config_keys is not None else (self.name,)


@dataclass(frozen=True)
class Pipeline:
    """An ordered list of stages with a name; each stage reads only what earlier ones make."""

    name: str
    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"pipeline {self.name} lists a stage twice: {names}", "list each stage once")
        for stage in self.stages:
            for need in stage.needs:
                if not is_input(need) and need not in seen:
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

    def producer(self, artifact: str, reader: str) -> str:
        """Name of the latest stage before ``reader`` that makes ``artifact``."""
        names = [s.name for s in self.stages]
        for stage in reversed(self.stages[: names.index(reader)]):
            if artifact in stage.makes:
                return stage.name
        raise ConfigError(f"no stage before '{reader}' makes '{artifact}'", "fix the stage order in the pipeline config")

    def schemas(self) -> dict[str, type]:
        """Typed config of every section any stage declares (one type per section)."""
        out: dict[str, Any] = {}
        for stage in self.stages:
            for section, schema in stage.schemas.items():
                if out.setdefault(section, schema) is not schema:
                    raise ConfigError(f"config section '{section}' has two schemas in {self.name}", "declare it once")
        return out
