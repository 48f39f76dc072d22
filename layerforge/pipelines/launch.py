"""One run from a command line's overrides: config, run folder, lock, log, engine.

``layerforge run`` and every item of ``layerforge batch`` go through :func:`prepare_run` and
:func:`execute_run`, so a batch item is an ordinary run (its own manifest, resume, skip,
protection), not a second code path.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from layerforge.errors import LayerforgeError
from layerforge.pipelines.engine import Engine, Pipeline, resolve_device
from layerforge.pipelines.rundir import RunDir

log = logging.getLogger("layerforge")


@dataclass
class PreparedRun:
    """A validated run, before anything is written: its config, stages, input and folder."""

    cfg: DictConfig
    pipeline: Pipeline
    input_path: Path | dict[str, Path | None] | None
    run_name: str
    root: Path
    command: str


def resume_command(pipeline: str, overrides: list[str], run_name: str) -> str:
    """The command that continues this run: the same overrides, with ``run=`` pinned."""
    kept = [o for o in overrides if not o.startswith("run=")]
    return shlex.join(["layerforge", "run", pipeline, *kept, f"run={run_name}"])


def prepare_run(pipeline_name: str, overrides: list[str], command_overrides: list[str] | None = None) -> PreparedRun:
    """Compose and validate the config of one run, resolve its input and name its folder.

    Args:
        pipeline_name: a pipeline of ``layerforge list``.
        overrides: Hydra ``key=value`` overrides (``run=NAME`` names the folder; default a timestamp).
        command_overrides: the overrides as the user typed them, for the resume command
            (default ``overrides``).

    Raises:
        LayerforgeError: unknown pipeline or key, a bad value, a missing input (one line each);
            nothing is written before every check passed.
    """
    from layerforge.pipelines import registry
    from layerforge.pipelines.inputs import resolve_inputs
    from layerforge.pipelines.schema import validate_config

    cfg = registry.load_config(pipeline_name, overrides)
    pipeline = registry.build(cfg)
    validate_config(pipeline, cfg)
    input_path = resolve_inputs(cfg.get("input"), str(cfg.out))
    resolve_device(str(cfg.device))
    run_name = str(cfg.run) if cfg.get("run") else time.strftime("%Y%m%d-%H%M%S")
    root = Path(str(cfg.out)) / pipeline.name / run_name
    command = resume_command(pipeline_name, list(command_overrides if command_overrides is not None else overrides),
                             run_name)
    return PreparedRun(cfg, pipeline, input_path, run_name, root, command)


def setup_logging(log_file: Path | None, quiet: bool, console: bool = True) -> None:
    """The ``layerforge`` logger: INFO (WARNING when quiet) on stderr, DEBUG into ``log_file``.

    ``console=False`` (a batch item) logs into the run's file only: the batch prints one line per item.
    """
    log.setLevel(logging.DEBUG)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    if console:
        stream = logging.StreamHandler(sys.stderr)
        stream.setLevel(logging.WARNING if quiet else logging.INFO)
        stream.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(stream)
    if log_file is not None:
        fh = logging.FileHandler(log_file)
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(fh)


def execute_run(prepared: PreparedRun, force: str | None = None, console: bool = True) -> RunDir:
    """Take the run folder's lock, write ``config.yaml``, run the engine; return the run folder.

    Raises:
        RunBusyError: another live process writes this run.
        LayerforgeError: a stage met a problem the user can fix (recorded in the manifest).
        KeyboardInterrupt: Ctrl-C or SIGTERM (recorded; the checkpoint is kept).
        Exception: a stage failed otherwise (its traceback is in the run's log.txt).
    """
    from omegaconf import OmegaConf

    from layerforge.assets.atomic import atomic_write_text

    run_dir = RunDir.open(prepared.root, prepared.pipeline.name)
    engine = Engine(prepared.pipeline, prepared.cfg, run_dir, prepared.input_path, command=prepared.command)
    with run_dir.locked():  # before anything is written: a second command changes nothing
        setup_logging(run_dir.log_path, bool(prepared.cfg.quiet), console=console)
        atomic_write_text(prepared.root / "config.yaml", OmegaConf.to_yaml(prepared.cfg))
        log.info("%s run '%s' -> %s", prepared.pipeline.name, prepared.run_name, prepared.root)
        try:
            engine.run(force=force)
        except LayerforgeError:
            raise
        except Exception:  # a bug or an environment problem: keep the traceback in the log
            log.debug("stage failed", exc_info=True)
            raise
    return run_dir
