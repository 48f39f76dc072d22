"""The ``layerforge`` command: run, batch, list, inspect, convert.

    layerforge run <pipeline> [key=value ...] [--force STAGE] [--dry-run] [--quiet]
    layerforge batch <pipeline> inputs=<folder|glob|list.txt|items.csv|run:...> [executor=local|ray|slurm] [key=value ...]
    layerforge list
    layerforge inspect <run-dir>
    layerforge convert object_nerf <src> <dst> [--split DIR] [--instance-tag TAG] [--preset NAME] ...

Problems the user can fix print one line ``error: <problem>; <fix>`` and exit with code 2.
A stage that fails for another reason exits with code 1, its traceback in the run's log.txt.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from layerforge.errors import LayerforgeError


def _interrupt_on_sigterm() -> None:
    """SIGTERM (a scheduler's or `kill`'s) stops a run like Ctrl-C: recorded, checkpoint kept, resumable."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def cmd_run(args: argparse.Namespace) -> int:
    from layerforge.pipelines.engine import Engine, format_plan
    from layerforge.pipelines.launch import execute_run, prepare_run
    from layerforge.pipelines.rundir import RunDir

    overrides = list(args.overrides)
    if args.quiet:
        overrides.append("quiet=true")
    prepared = prepare_run(args.pipeline, overrides, list(args.overrides) + (["--quiet"] if args.quiet else []))
    root = prepared.root
    if args.dry_run:
        run_dir = RunDir.open(root, prepared.pipeline.name) if (root / "manifest.json").exists() \
            else RunDir(root, {"stages": {}, "exports": {}})
        engine = Engine(prepared.pipeline, prepared.cfg, run_dir, prepared.input_path)
        print(f"{prepared.pipeline.name} run '{prepared.run_name}' in {root}:")
        print(format_plan(engine.plan(args.force)))
        return 0
    _interrupt_on_sigterm()
    try:
        run_dir = execute_run(prepared, force=args.force)
    except KeyboardInterrupt:
        print(f"interrupted; resume with: {prepared.command}", file=sys.stderr)
        return 130
    except LayerforgeError:
        raise
    except Exception as err:
        print(
            f"error: a stage failed with {type(err).__name__}: {err}; the traceback is in {root / 'log.txt'}",
            file=sys.stderr,
        )
        return 1
    print(f"done: {root}")
    for rel in sorted(run_dir.exports):
        print(f"  {root / rel}")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from layerforge.pipelines.batch import run_batch

    return run_batch(args.pipeline, list(args.overrides), quiet=args.quiet)


def cmd_list(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from layerforge.pipelines import registry

    for name in registry.available():
        cfg = registry.load_config(name, [])
        spec = cfg.pipeline
        print(f"{name}: {spec.get('description', '')}")
        print(f"  stages: {' -> '.join(spec.stages)}")
        options = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "pipeline" and not isinstance(v, dict)}
        print("  options: " + ", ".join(f"{k}={v}" for k, v in options.items()))
        sections = [k for k, v in cfg.items() if k != "pipeline" and isinstance(v, type(cfg))]
        if sections:
            print("  sections (set with section.key=value): " + ", ".join(sections))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    if (Path(args.run_dir) / "batch.json").exists() and not (Path(args.run_dir) / "manifest.json").exists():
        from layerforge.pipelines.batch import inspect_batch

        print(inspect_batch(Path(args.run_dir)))
        return 0
    from layerforge.pipelines.rundir import load_manifest

    from layerforge.pipelines.rundir import RunLock

    manifest = load_manifest(args.run_dir)
    root = Path(args.run_dir)
    print(f"{manifest.get('pipeline')} run '{manifest.get('run')}' (seed {manifest.get('seed')}, device {manifest.get('device')})")
    print(f"{'stage':<12} {'status':<12} {'wall s':>9} {'peak MB':>9}  figures")
    stages = manifest.get("stages", {})
    order = [n for n in manifest.get("stage_order", []) if n in stages] + [n for n in stages if n not in manifest.get("stage_order", [])]
    live = RunLock(root).holder() is not None
    interrupted = False
    for name in order:
        entry = dict(stages[name])
        if entry.get("status") == "running" and not live:  # nobody holds the run: it was killed
            entry["status"] = "interrupted"
        interrupted |= entry.get("status") in ("interrupted", "failed")
        figures = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in (entry.get("metrics") or {}).items())
        print(
            f"{name:<12} {entry.get('status', '?'):<12} {entry.get('wall_s', float('nan')):>9.2f} "
            f"{entry.get('peak_rss_mb', float('nan')):>9.0f}  {figures}"
        )
        if entry.get("error"):
            print(f"{'':<12} error: {entry['error']}")
        for item, message in (entry.get("failed_items") or {}).items():
            print(f"{'':<12} failed item {item}: {message}")
    if interrupted and manifest.get("command"):
        print(f"resume with: {manifest['command']}")
    exports = sorted(manifest.get("exports", {}))
    if exports:
        try:
            from layerforge.assets.export import describe_file
        except ImportError:  # assets writers not installed in a minimal setup
            describe_file = None
        print("deliverables:")
        for rel in exports:
            path = root / rel
            kind = describe_file(path) if describe_file is not None and path.exists() else path.suffix.lstrip(".")
            state = "" if path.exists() else "  (missing)"
            size = f"{path.stat().st_size / 1024:.1f} KiB" if path.exists() else ""
            print(f"  {rel:<40} {kind:<28} {size}{state}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from layerforge.assets.object_nerf import convert_object_nerf

    out = convert_object_nerf(
        args.src, args.dst, split_dir=args.split, train_list=args.train_list, test_list=args.test_list,
        instance_tag=args.instance_tag, preset=args.preset, border=args.border, units_to_metres=args.units_to_metres,
    )
    print(f"done: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layerforge", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a pipeline")
    run.add_argument("pipeline")
    run.add_argument("overrides", nargs="*", help="Hydra overrides key=value (input=, run=, out=, seed=, device=, ...)")
    run.add_argument("--force", metavar="STAGE", help="re-run from this stage on")
    run.add_argument("--dry-run", action="store_true", help="say what would run and why, run nothing")
    run.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    run.set_defaults(func=cmd_run)
    bat = sub.add_parser("batch", help="one run per item of a folder, glob, list or CSV (local, ray or slurm)")
    bat.add_argument("pipeline")
    bat.add_argument("overrides", nargs="*", help="inputs=..., executor=local|ray|slurm, batch=NAME, max_parallel=N, "
                     "retries=N, timeout_s=S (configs/batch.yaml); any other key=value overrides the pipeline")
    bat.add_argument("--quiet", action="store_true", help="no progress bar")
    bat.set_defaults(func=cmd_batch)
    lst = sub.add_parser("list", help="pipelines, their stages and options")
    lst.set_defaults(func=cmd_list)
    ins = sub.add_parser("inspect", help="a run's stages, timings and deliverables (or a batch's items)")
    ins.add_argument("run_dir")
    ins.set_defaults(func=cmd_inspect)
    conv = sub.add_parser("convert", help="convert a dataset layout into our nerfstudio folder")
    conv.add_argument("format", choices=["object_nerf"],
                      help="object_nerf: Object-NeRF / ToyDesk / ScanNet (transforms_full.json), as UDC-NeRF reads it")
    conv.add_argument("src", help="source folder (holds transforms_full.json)")
    conv.add_argument("dst", help="new or empty output folder")
    conv.add_argument("--split", metavar="DIR", help="folder with train.txt/test.txt (frame idx per line)")
    conv.add_argument("--train-list", default="train.txt", help="train split file name (default train.txt)")
    conv.add_argument("--test-list", default="test.txt", help="test split file name (default test.txt)")
    conv.add_argument("--instance-tag", help="mask suffix <frame>.<tag>.png (instance, instance-filt)")
    conv.add_argument("--preset", choices=["toydesk1", "toydesk2", "scannet"],
                      help="record this scene's UDC-NeRF near/far/scale in object_nerf.json")
    conv.add_argument("--border", type=int, default=20, help="edge pixels marked ignore in the masks (default 20)")
    conv.add_argument("--units-to-metres", type=float, default=1.0, help="metres per source unit (default 1)")
    conv.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``layerforge`` console script; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may follow options (`run bsp --dry-run seed=1`); argparse stops collecting them there
    if args.command in ("run", "batch") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except LayerforgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command (with run=NAME) to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
