"""Typed options of ``layerforge batch`` (configs/batch.yaml), and which ``key=value`` are the batch's.

Every other ``key=value`` on a batch command line is a pipeline override applied to each item.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from layerforge.errors import ConfigError
from layerforge.pipelines.schema import _typed, at_least, one_of, positive, require

BATCH_YAML = Path(__file__).resolve().parent.parent / "configs" / "batch.yaml"
EXECUTORS = ("local", "ray", "slurm")


@dataclasses.dataclass
class SlurmConfig:
    """``slurm.*``: how each item's job asks SLURM for resources (submitit's parameters)."""

    cluster: str = "slurm"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_min: int | None = None
    array_parallelism: int = 64
    setup: list[str] = dataclasses.field(default_factory=list)
    additional: dict[str, Any] = dataclasses.field(default_factory=dict)
    requeue: bool = True

    def __post_init__(self) -> None:
        one_of("slurm.cluster", self.cluster, ("slurm", "local", "debug"))
        if self.time_min is not None:
            at_least("slurm.time_min", self.time_min, 1)
        at_least("slurm.array_parallelism", self.array_parallelism, 1)


@dataclasses.dataclass
class BatchConfig:
    """The batch's own options (configs/batch.yaml documents each)."""

    inputs: str | None = None
    executor: str = "local"
    batch: str | None = None
    max_parallel: int | None = None
    retries: int = 0
    timeout_s: float | None = None
    cpus_per_item: int = 1
    gpus_per_item: float = 0
    mem_gb_per_item: float | None = None
    ray_address: str | None = None
    slurm: SlurmConfig = dataclasses.field(default_factory=SlurmConfig)

    def __post_init__(self) -> None:
        require(bool(self.inputs), "inputs", self.inputs, "a folder, a glob, a list.txt, an items.csv or run:<pipeline>/<run>")
        one_of("executor", self.executor, EXECUTORS)
        require(self.batch is None or ("/" not in self.batch and self.batch not in ("", ".", "..")), "batch",
                self.batch, "a plain folder name")
        if self.max_parallel is not None:
            at_least("max_parallel", self.max_parallel, 1)
        at_least("retries", self.retries, 0)
        if self.timeout_s is not None:
            positive("timeout_s", self.timeout_s)
        at_least("cpus_per_item", self.cpus_per_item, 1)
        require(self.gpus_per_item >= 0, "gpus_per_item", self.gpus_per_item, "a number >= 0")
        if self.mem_gb_per_item is not None:
            positive("mem_gb_per_item", self.mem_gb_per_item)


BATCH_KEYS = frozenset(f.name for f in dataclasses.fields(BatchConfig))


def split_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """``key=value`` arguments -> (the batch's, the pipeline's), by the key's first component.

    Raises:
        ConfigError: an argument is not key=value, or sets ``input=``/``run=`` (a batch names those per item).
    """
    batch, pipeline = [], []
    for arg in args:
        key, eq, _ = arg.partition("=")
        if not eq:
            raise ConfigError(f"argument '{arg}' is not key=value", "write it as key=value, e.g. inputs=meshes/")
        root = key.lstrip("+~").split(".")[0]
        if root == "input":
            raise ConfigError("a batch takes inputs=, not input=", "pass inputs=<folder|glob|list.txt|items.csv|run:...>")
        if root == "run":
            raise ConfigError("a batch names each item's run itself (<batch>/<item>)", "drop run=, name the batch with batch=NAME")
        (batch if root in BATCH_KEYS else pipeline).append(arg)
    return batch, pipeline


def load_batch_config(overrides: list[str]) -> BatchConfig:
    """configs/batch.yaml with the batch's ``key=value`` overrides, typed and range-checked.

    Raises:
        ConfigError: one line naming the bad key.
    """
    try:
        merged = OmegaConf.merge(OmegaConf.load(BATCH_YAML), OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad batch option: {str(err).splitlines()[0]}", "see configs/batch.yaml") from None
    return _typed(BatchConfig, merged, "")
