"""User-facing errors.

Every problem a user can fix (bad input, bad config, missing model folder, a loss that
went NaN) is raised as a :class:`LayerforgeError` whose message is one line naming the
problem and the fix. The CLI prints that line and exits with code 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class LayerforgeError(Exception):
    """A problem the user can fix; ``str(err)`` is one line: the problem, then the fix."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}; {fix}")


class InputError(LayerforgeError):
    """An input file or folder is missing, unreadable, empty or malformed."""


class ConfigError(LayerforgeError):
    """A config value or command-line override is unknown or invalid."""


class ModelNotFoundError(LayerforgeError):
    """A pretrained model folder or hub id cannot be loaded."""


class NonFiniteError(LayerforgeError):
    """A loss or gradient became NaN/Inf during optimisation."""


class OutputError(LayerforgeError):
    """An output folder cannot be written."""


class RunBusyError(LayerforgeError):
    """Another live process is writing the same run folder."""


class PartialRunError(LayerforgeError):
    """Some items of a run (meshes of a folder, objects of a scene) failed; the others were delivered."""
