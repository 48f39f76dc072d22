"""Resolving ``input=``: a file or folder, or another run's artifact (``run:<pipeline>/<run>[#artifact]``).

``builtin:<name>`` is a generated input (the toy scene). A run reference lets pipelines
chain: ``layerforge run bsp input=run:dp_recon/kitchen`` reads the deliverables of that run (its ``export/`` folder: one convex proxy set per object
mesh); ``#<artifact>`` reads one named artifact a stage of it made (``#shapes``), or one
deliverable (``#export/chair.glb``). The reference resolves to a path, which is hashed like
any other input, so a re-run of the upstream run re-runs what reads it.
"""

from __future__ import annotations

import os
from pathlib import Path

from layerforge.errors import InputError
from layerforge.pipelines.rundir import load_manifest

RUN_REFERENCE = "run:"
BUILTIN = "builtin:"
"""``input=builtin:toy_scene``: a generated scene (Blender Cycles), made on first use under
``<out>/.cache/scenes/`` and reused (:func:`layerforge.assets.synthetic_scene.cached_toy_scene`)."""
BUILTIN_SCENES = {"toy_scene": {"objects": 3, "width": 64, "height": 48, "n_train": 30, "n_test": 6},
                  # gala: a synthetic body in a jacket, posed, with its fit and answers
                  # (layerforge.models.gala.synthetic_scan)
                  "clothed_scan": {"resolution": 48, "voxel": 0.015},
                  # layerpano3d: an analytic room with objects at two depths, its depth and ids
                  # (layerforge.models.layerpano3d.synthetic)
                  "layered_room": {"height": 128, "width": 256, "supersample": 2}}


def resolve_inputs(raw: object, out: str | os.PathLike[str]) -> Path | dict[str, Path | None] | None:
    """``input=`` as the engine takes it: one path, or named inputs ``{name: path}`` when the
    pipeline's config declares ``input`` as a section (``input.views=``, ``input.masks=``)."""
    from omegaconf import DictConfig

    if isinstance(raw, (DictConfig, dict)):
        return {str(k): resolve_input(v, out) for k, v in raw.items()}
    return resolve_input(raw, out)


def resolve_input(raw: object, out: str | os.PathLike[str]) -> Path | None:
    """The absolute path ``input=`` names (``None`` when unset).

    Raises:
        InputError: the path does not exist, or the run reference is malformed, names a run
            that does not exist, or an artifact it does not have.
    """
    if raw in (None, ""):
        return None
    text = str(raw)
    if text.startswith(RUN_REFERENCE):
        return resolve_run_reference(text[len(RUN_REFERENCE):], Path(out))
    if text.startswith(BUILTIN):
        return resolve_builtin(text[len(BUILTIN):], Path(out))
    path = Path(text).expanduser()
    if not path.exists():
        raise InputError(f"input {path} does not exist", "pass an existing file or folder with input=PATH")
    return path.resolve()


def resolve_run_reference(ref: str, out: Path) -> Path:
    """``<pipeline>/<run>[#artifact]`` under ``out`` -> the path of that run's deliverables or artifact."""
    target, _, artifact = ref.partition("#")
    parts = [p for p in target.split("/") if p]
    if len(parts) not in (2, 3):  # <pipeline>/<run>, or <pipeline>/<batch>/<item> (an item of layerforge batch)
        raise InputError(f"input=run:{ref} is not run:<pipeline>/<run>[#artifact]", "e.g. input=run:dp_recon/kitchen")
    root = out.joinpath(*parts)
    if len(parts) == 2 and not (root / "manifest.json").exists() and (root / "batch.json").exists():
        raise InputError(f"run:{ref} is a batch, not one run",
                         f"name one item (run:{target}/<item>) or pass it to layerforge batch inputs=run:{target}")
    manifest = load_manifest(root)
    if not artifact:
        if not manifest.get("exports"):
            raise InputError(f"run {target} has no deliverables yet", "finish that run first, or name #<artifact>")
        return (root / "export").resolve()
    if artifact in manifest.get("exports", {}):
        return (root / artifact).resolve()
    stages = manifest.get("stages", {})
    order = [s for s in manifest.get("stage_order", []) if s in stages] or list(stages)
    for name in reversed(order):
        entry = stages[name]
        record = (entry.get("outputs") or {}).get(artifact)
        if record is not None and entry.get("status") == "done":
            return (root / record["path"]).resolve()
    known = sorted({a for s in order for a in (stages[s].get("outputs") or {})} | set(manifest.get("exports", {})))
    raise InputError(f"run {target} has no finished artifact '{artifact}'",
                     f"pick one of: {', '.join(known) or '(none yet)'}")


def resolve_builtin(name: str, out: Path) -> Path:
    """The folder of built-in input ``name``, generated on first use."""
    if name not in BUILTIN_SCENES:
        raise InputError(f"input=builtin:{name} is unknown", f"pick one of: {', '.join('builtin:' + n for n in BUILTIN_SCENES)}")
    if name == "layered_room":
        from layerforge.models.layerpano3d.synthetic import cached_layered_room

        return cached_layered_room(out / ".cache" / "scenes", **BUILTIN_SCENES[name]).resolve()
    if name == "clothed_scan":
        from layerforge.models.gala.synthetic_scan import cached_clothed_scan

        return cached_clothed_scan(out / ".cache" / "scenes", **BUILTIN_SCENES[name]).resolve()
    from layerforge.assets.synthetic_scene import cached_toy_scene

    return cached_toy_scene(out / ".cache" / "scenes", **BUILTIN_SCENES[name]).resolve()
