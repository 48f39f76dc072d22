"""Checkpointed, resumable optimisation loops for long stages.

A stage wraps its loop in :class:`TrainingLoop`::

    loop = ctx.loop(total=cfg.steps, state={"model": model, "optim": optim}, every=cfg.checkpoint_every)
    for step in loop:
        loss = ...; loss.backward(); optim.step()
        loop.log(loss=loss)

Life cycle: on entry it restores the newest checkpoint in the stage folder (model and
optimiser state dicts, generators, and the global torch / numpy / Python RNG states) and
starts after it; after each step body it saves a checkpoint every ``every`` steps and at
the end, atomically. Because the RNG states are part of the checkpoint, a run killed at
any point and resumed ends with the same result as an uninterrupted one (on CPU).

``log`` checks every value for NaN/Inf *before* the next checkpoint can be written, so a
diverged loop stops with a clear message and leaves the last good checkpoint in place.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from layerforge.assets.atomic import atomic_path, atomic_write_text
from layerforge.errors import NonFiniteError

log = logging.getLogger("layerforge")

CHECKPOINT = "checkpoint.pt"


def _capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _state_of(obj: Any) -> Any:
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    raise TypeError(f"cannot checkpoint {type(obj).__name__}: it has no state_dict() and is not a torch.Generator")


def _load_state(obj: Any, state: Any) -> None:
    if isinstance(obj, torch.Generator):
        obj.set_state(state)
    else:
        obj.load_state_dict(state)


def _first_non_finite(tree: Any, prefix: str = "") -> str | None:
    """Dotted name of the first floating-point tensor in a nested state holding NaN/Inf, or None."""
    if isinstance(tree, torch.Tensor):
        return prefix if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else None
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for key, value in items:
        found = _first_non_finite(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


class TrainingLoop:
    """An iterator over optimisation steps that checkpoints, resumes and watches for NaN.

    Args:
        folder: where ``checkpoint.pt`` and ``metrics.jsonl`` live (the stage folder).
        total: number of steps.
        state: objects to checkpoint by name: modules, optimisers, schedulers (anything
            with ``state_dict``/``load_state_dict``) and ``torch.Generator``s.
        every: save every this many steps (and always after the last step).
        desc: progress-bar label.
        progress: factory ``(total, initial, desc) -> bar`` with ``update(n)``,
            ``set_postfix(dict)`` and ``close()`` (tqdm's interface).
        on_checkpoint: called with the step after each save (e.g. to write a preview).
    """

    def __init__(
        self,
        folder: Path,
        total: int,
        state: dict[str, Any],
        every: int,
        desc: str,
        progress: Callable[..., Any],
        on_checkpoint: Callable[[int], None] | None = None,
    ) -> None:
        if every < 1:
            raise ValueError("checkpoint interval must be >= 1")
        self.folder = Path(folder)
        self.total = int(total)
        self.state = state
        self.every = int(every)
        self.desc = desc
        self._progress = progress
        self._on_checkpoint = on_checkpoint
        self.step = 0
        self.resumed_from = 0
        self.last_scalars: dict[str, float] = {}
        self._metrics_path = self.folder / "metrics.jsonl"

    @property
    def path(self) -> Path:
        return self.folder / CHECKPOINT

    def restore(self) -> int:
        """Load the newest checkpoint, if any; return the step to continue from."""
        if not self.path.exists():
            return 0
        ckpt = torch.load(self.path, map_location="cpu", weights_only=False)
        missing = set(self.state) - set(ckpt["objects"])
        if missing:
            raise RuntimeError(f"checkpoint {self.path} lacks {sorted(missing)}; delete it to start over")
        for name, obj in self.state.items():
            _load_state(obj, ckpt["objects"][name])
        _restore_rng(ckpt["rng"])
        self._truncate_metrics(ckpt["step"])
        return int(ckpt["step"])

    def save(self, step: int) -> None:
        """Write a checkpoint for ``step`` completed steps, atomically.

        Raises:
            NonFiniteError: a parameter or optimiser state holds NaN/Inf (the loss was still
                finite, the update was not); the last good checkpoint is left in place.
        """
        objects = {name: _state_of(obj) for name, obj in self.state.items()}
        bad = _first_non_finite(objects)
        if bad is not None:
            where = f"last good checkpoint: step {self._saved_step()} in {self.path}" if self.path.exists() else "no checkpoint yet"
            raise NonFiniteError(
                f"{self.desc}: {bad} holds NaN/Inf after step {step} ({where})",
                "lower the learning rate or check the input for degenerate geometry, then re-run to resume",
            )
        payload = {"step": step, "objects": objects, "rng": _capture_rng()}
        with atomic_path(self.path) as tmp:
            torch.save(payload, tmp)
        if self._on_checkpoint is not None:
            self._on_checkpoint(step)

    def log(self, **scalars: float | torch.Tensor) -> None:
        """Record this step's scalars; raise :class:`NonFiniteError` on NaN/Inf."""
        values = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in scalars.items()}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            where = f"last good checkpoint: step {self._saved_step()} in {self.path}" if self.path.exists() else "no checkpoint yet"
            raise NonFiniteError(
                f"{self.desc}: {', '.join(bad)} became {values[bad[0]]} at step {self.step + 1} ({where})",
                "lower the learning rate or check the input for degenerate geometry, then re-run to resume",
            )
        self.last_scalars = values
        with open(self._metrics_path, "a") as f:
            f.write(json.dumps({"step": self.step + 1, **values}) + "\n")

    def _saved_step(self) -> int:
        return int(torch.load(self.path, map_location="cpu", weights_only=False)["step"])

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines written after the checkpoint we resume from."""
        if not self._metrics_path.exists():
            return
        kept = [ln for ln in self._metrics_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        atomic_write_text(self._metrics_path, "".join(ln + "\n" for ln in kept))

    def __iter__(self) -> Iterator[int]:
        self.folder.mkdir(parents=True, exist_ok=True)
        start = self.restore()
        if start == 0:
            self._metrics_path.unlink(missing_ok=True)
        self.resumed_from = start
        if start:
            log.info("%s: resumed at step %d of %d from %s", self.desc or "loop", start, self.total, self.path)
        bar = self._progress(total=self.total, initial=start, desc=self.desc)
        try:
            for step in range(start, self.total):
                self.step = step
                yield step
                done = step + 1
                if done % self.every == 0 or done == self.total:
                    self.save(done)
                bar.set_postfix({k: f"{v:.4g}" for k, v in self.last_scalars.items()}, refresh=False)
                bar.update(1)
        finally:
            bar.close()
