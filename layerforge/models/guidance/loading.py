"""Load diffusers / transformers models from a local folder or a hub id.

Every loader takes the config key the path came from (``key``), so that a missing or
incomplete model is a one-line :class:`ModelNotFoundError` telling the user which key to set
and what layout the folder must have. diffusers is imported lazily (importing it costs
several seconds), so ``import layerforge.models.guidance`` stays cheap.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from layerforge.errors import ConfigError, ModelNotFoundError

log = logging.getLogger("layerforge.guidance")

SD_LAYOUT = "model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


@dataclasses.dataclass
class LoadOptions:
    """How a model is loaded: precision, device, offline mode and memory savers.

    ``dtype``: auto (fp16 on CUDA, fp32 on CPU) | float32 | float16 | bfloat16.
    ``device``: auto (cuda if present) | cpu | cuda | cuda:N.
    ``offline``: None follows the HF_HUB_OFFLINE environment variable; True never touches
    the network (hub ids must already be in the local cache).
    """

    dtype: str = "auto"
    device: str = "auto"
    offline: bool | None = None
    variant: str | None = None
    attention_slicing: bool = False
    cpu_offload: bool = False
    vae_tiling: bool = False

    def load_options(self) -> "LoadOptions":
        """Just the loading fields (guidance configs subclass this class to carry them)."""
        return LoadOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LoadOptions)})

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None, prefix: str = "guidance") -> "LoadOptions":
        """Pick this dataclass's fields out of ``cfg`` (other keys are ignored)."""
        cfg = dict(cfg or {})
        names = {f.name for f in dataclasses.fields(cls)}
        opts = cls(**{k: v for k, v in cfg.items() if k in names})
        resolve_dtype(opts.dtype, resolve_device(opts.device), key=f"{prefix}.dtype")
        return opts


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"device={device!r} is not a torch device", "use auto, cpu, cuda or cuda:N") from err


def resolve_dtype(dtype: str | torch.dtype, device: torch.device, key: str = "guidance.dtype") -> torch.dtype:
    """``auto`` -> float16 on CUDA, float32 on CPU; names like ``fp16`` are accepted."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ConfigError(f"{key}={dtype!r} is not a dtype", "use auto, float32, float16 or bfloat16")
    return _DTYPES[dtype]


def is_offline(offline: bool | None) -> bool:
    """Offline when asked, or when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set truthy."""
    if offline is not None:
        return bool(offline)
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def _looks_like_path(name: str) -> bool:
    # A hub id is "owner/name" (or a bare legacy "name"); anything else is a folder.
    return name.startswith(("/", ".", "~")) or Path(name).expanduser().exists() or name.count("/") > 1


def _missing(key: str, value: Any, problem: str, layout: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"{key}={value!r}: {problem}",
        f"set {key} to a local folder laid out as {layout}, or to a hub id already in the local cache",
    )


def _has_weights(folder: Path) -> bool:
    return any(p.name.endswith(WEIGHT_SUFFIXES) for p in folder.iterdir())


def check_pipeline_folder(path: Path, key: str, required: Sequence[str] = ()) -> dict[str, Any]:
    """Check a diffusers pipeline folder and return its ``model_index.json``.

    Every component listed in the index (and every name in ``required``) must be a
    subfolder; model components (those with a ``config.json``) must hold a weights file.
    """
    index_file = path / "model_index.json"
    if not path.is_dir():
        raise _missing(key, str(path), "folder not found", SD_LAYOUT)
    if not index_file.is_file():
        raise _missing(key, str(path), "no model_index.json in the folder", SD_LAYOUT)
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as err:
        raise _missing(key, str(path), f"model_index.json is not valid JSON ({err.msg})", SD_LAYOUT) from err
    listed = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None]
    for name in required:
        if name not in listed:
            raise _missing(key, str(path), f"model_index.json lists no {name!r}", SD_LAYOUT)
    for name in listed:
        sub = path / name
        if not sub.is_dir() or not any(sub.iterdir()):
            raise _missing(key, str(path), f"component folder {name}/ is missing or empty", SD_LAYOUT)
        if (sub / "config.json").is_file() and not _has_weights(sub):
            raise _missing(key, str(path), f"{name}/ has no weights (*.safetensors or *.bin)", SD_LAYOUT)
    return index


def check_model_folder(path: Path, key: str, layout: str = "config.json + diffusion_pytorch_model.safetensors") -> None:
    """Check a single-model folder (e.g. a ControlNet): ``config.json`` and a weights file."""
    if not path.is_dir():
        raise _missing(key, str(path), "folder not found", layout)
    if not (path / "config.json").is_file():
        raise _missing(key, str(path), "no config.json in the folder", layout)
    if not _has_weights(path):
        raise _missing(key, str(path), "no weights file (*.safetensors or *.bin)", layout)


def _resolve_source(name_or_path: str | os.PathLike | None, key: str, layout: str) -> tuple[str, bool]:
    """(source for from_pretrained, is_local)."""
    if name_or_path is None or str(name_or_path).strip() == "":
        raise _missing(key, None, "no model configured", layout)
    name = str(name_or_path)
    if _looks_like_path(name):
        return str(Path(name).expanduser()), True
    return name, False


def load_pipeline(
    name_or_path: str | os.PathLike | None,
    *,
    key: str = "guidance.pretrained_model_name_or_path",
    options: LoadOptions | None = None,
    pipeline_class: str | None = None,
    required: Sequence[str] = ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    **components: Any,
) -> Any:
    """Load a diffusers pipeline from a folder or hub id, placed and configured per ``options``.

    ``pipeline_class`` names a diffusers class (e.g. ``StableDiffusionInpaintPipeline``);
    None uses the class written in ``model_index.json``. ``components`` are passed through
    (e.g. ``controlnet=...``). Safety checkers are never loaded (they are not part of
    layerforge's outputs and their absence must not fail a load).
    """
    options = options or LoadOptions()
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    source, local = _resolve_source(name_or_path, key, SD_LAYOUT)
    if local:
        check_pipeline_folder(Path(source), key, required)
    import diffusers

    cls = getattr(diffusers, pipeline_class) if pipeline_class else diffusers.DiffusionPipeline
    kwargs: dict[str, Any] = dict(dtype=dtype, local_files_only=local or is_offline(options.offline))
    if options.variant:
        kwargs["variant"] = options.variant
    extra = {"safety_checker": None, "requires_safety_checker": False} if _takes_safety_checker(cls, source, local) else {}
    try:
        pipe = cls.from_pretrained(source, **kwargs, **extra, **components)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise _missing(key, source, f"cannot be loaded ({reason})", SD_LAYOUT) from err
    apply_memory_options(pipe, options, device)
    log.info("loaded %s from %s (%s, %s)", type(pipe).__name__, source, dtype, device)
    return pipe


def _takes_safety_checker(cls: Any, source: str, local: bool) -> bool:
    if local:
        index = json.loads((Path(source) / "model_index.json").read_text())
        return "safety_checker" in index
    return cls.__name__.startswith("StableDiffusion") or cls.__name__ == "DiffusionPipeline"


def load_model(
    class_name: str,
    name_or_path: str | os.PathLike | None,
    *,
    key: str,
    options: LoadOptions | None = None,
    subfolder: str | None = None,
) -> torch.nn.Module:
    """Load one diffusers model class (e.g. ``ControlNetModel``) and move it to the device."""
    options = options or LoadOptions()
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    layout = "config.json + diffusion_pytorch_model.safetensors"
    source, local = _resolve_source(name_or_path, key, layout)
    if local:
        check_model_folder(Path(source) / subfolder if subfolder else Path(source), key, layout)
    import diffusers

    kwargs: dict[str, Any] = dict(dtype=dtype, local_files_only=local or is_offline(options.offline))
    if subfolder:
        kwargs["subfolder"] = subfolder
    try:
        model = getattr(diffusers, class_name).from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise _missing(key, source, f"cannot be loaded ({reason})", layout) from err
    return model.to(device).eval().requires_grad_(False)


def apply_memory_options(pipe: Any, options: LoadOptions, device: torch.device) -> None:
    """Move ``pipe`` to ``device`` and switch on the requested memory savers.

    CPU offload needs CUDA and the ``accelerate`` package; without them it is skipped with
    a warning (the pipeline then simply stays on ``device``).
    """
    offloaded = False
    if options.cpu_offload:
        if device.type != "cuda":
            log.warning("guidance.cpu_offload ignored: it needs a CUDA device (running on %s)", device)
        else:
            try:
                pipe.enable_model_cpu_offload(device=device)
                offloaded = True
            except (ImportError, RuntimeError) as err:
                log.warning("guidance.cpu_offload ignored: %s", str(err).splitlines()[0])
    if not offloaded:
        pipe.to(device)
    if options.attention_slicing:
        pipe.enable_attention_slicing()
    if options.vae_tiling and getattr(pipe, "vae", None) is not None:
        pipe.vae.enable_tiling()
    for name in ("unet", "vae", "text_encoder", "controlnet", "transformer"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)


def config_from_mapping(cls: type, cfg: Mapping[str, Any] | Any | None, prefix: str = "guidance") -> Any:
    """Build dataclass ``cls`` from a dict / OmegaConf node; unknown keys are a ConfigError.

    Keys starting with ``_`` (Hydra's ``_target_`` and friends) are ignored.
    """
    if cfg is None:
        return cls()
    if isinstance(cfg, cls):
        return cfg
    if not isinstance(cfg, Mapping):
        try:
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_container(cfg, resolve=True)
        except Exception as err:  # noqa: BLE001 - anything unconvertible is a config error
            raise ConfigError(f"{prefix} is not a mapping ({type(cfg).__name__})", "give a dict of options") from err
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in cfg if k not in names and not str(k).startswith("_"))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}.{unknown[0]}",
            f"valid keys for {cls.__name__}: {', '.join(sorted(names))}",
        )
    return cls(**{k: v for k, v in cfg.items() if k in names})
