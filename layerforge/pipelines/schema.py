"""Typed configs: every option is checked (type and range) before any stage runs.

Each stage declares a dataclass per config section it reads (:attr:`Stage.schemas`); the
options every run takes (``seed``, ``device``, ...) are :class:`RunOptions`. A dataclass's
``__post_init__`` checks ranges with :func:`require`. A wrong value is one line naming the
key, the value and what would be valid (:class:`~layerforge.errors.ConfigError`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from layerforge.errors import ConfigError
from layerforge.pipelines.stage import Pipeline


def require(ok: bool, key: str, value: Any, expected: str) -> None:
    """Raise ``ConfigError("<key>=<value> is invalid: expected <expected>")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={value} is invalid: expected {expected}", f"set {key} to {expected}")


def positive(key: str, value: float) -> None:
    """A finite number > 0 (learning rates, scales)."""
    require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, key, value, "a finite number > 0")


def at_least(key: str, value: int, low: int) -> None:
    """A whole number >= low (counts, sizes)."""
    require(isinstance(value, int) and value >= low, key, value, f"a whole number >= {low}")


def one_of(key: str, value: Any, choices: tuple[Any, ...]) -> None:
    require(value in choices, key, value, "one of " + ", ".join(map(str, choices)))


@dataclasses.dataclass
class RunOptions:
    """Options of every run (configs/run.yaml)."""

    input: Any = None  # a path, a run reference, or named inputs {views: path, ...}
    input_up_axis: str = "auto"  # auto | Y | Z (layerforge.assets.mesh_io)
    run: str | None = None
    out: str = "outputs"
    seed: int = 0
    device: str = "auto"
    quiet: bool = False

    def __post_init__(self) -> None:
        one_of("input_up_axis", self.input_up_axis, ("auto", "Y", "Z", "y", "z"))
        at_least("seed", self.seed, 0)
        require(self.device in ("auto", "cpu") or self.device.startswith("cuda"), "device", self.device, "auto, cpu or cuda")
        parts = [] if self.run is None else str(self.run).split("/")  # <batch>/<item> is a batch item's run
        require(self.run is None or (len(parts) <= 2 and all(p not in ("", ".", "..") for p in parts)), "run", self.run,
                "a plain name (no '/'), or <batch>/<item>")


def _typed(schema: type, node: Any, where: str) -> Any:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or where
        key = key if key.startswith(where) or where == "" else f"{where}.{key}"
        text = str(getattr(err, "msg", None) or err).strip().splitlines()[0]
        raise ConfigError(f"{key}: {text}", "check the value with `layerforge list`") from None


def validate_config(pipeline: Pipeline, cfg: DictConfig) -> dict[str, Any]:
    """Check the run options and every stage's config sections; return {section: typed config}.

    Raises:
        ConfigError: one line naming the first bad key (wrong type, out of range, unknown key).
    """
    run_fields = {f.name for f in dataclasses.fields(RunOptions)}
    present = {k: cfg[k] for k in run_fields if k in cfg}
    _typed(RunOptions, OmegaConf.create(present), "")
    typed: dict[str, Any] = {}
    for section, schema in pipeline.schemas().items():
        node = cfg.get(section)
        if node is None:
            node = OmegaConf.create({})
        if OmegaConf.is_config(node):
            typed[section] = _typed(schema, node, section)
        else:
            typed[section] = _typed(schema, OmegaConf.create({"value": node}), section)
    return typed


@dataclasses.dataclass
class ExportConfig:
    """The export section of the mesh pipelines (decomp_nerf, dp_recon): deliverable formats and preview height."""

    formats: list[str] = dataclasses.field(default_factory=lambda: ["glb", "obj", "usd", "blend"])
    preview_size: int = 256

    def __post_init__(self) -> None:
        for f in self.formats:
            one_of("export.formats entry", f, ("glb", "obj", "usd", "blend"))
        at_least("export.preview_size", self.preview_size, 16)
