"""Pipelines are declared in configs: ``configs/pipeline/<name>.yaml`` names its module and
the ordered list of stages; the module holds a ``STAGES`` dict of :class:`Stage` by name.

Configs are composed with Hydra's compose API (not ``@hydra.main``) so that every config
mistake becomes one clear line instead of a Hydra traceback.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from layerforge.errors import ConfigError
from layerforge.pipelines.stage import Pipeline  # not engine: `layerforge list` must not import torch

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("lf_data"):
        # ${lf_data:chair.obj} -> absolute path of a sample shipped with the package
        OmegaConf.register_new_resolver("lf_data", lambda name: str(DATA_DIR / name))


def available() -> list[str]:
    """Names of the pipelines that have a config."""
    return sorted(p.stem for p in (CONFIG_DIR / "pipeline").glob("*.yaml"))


def _explain(err: Exception, name: str) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "Could not override" in str(err) or "Key '" in str(err) and "is not in struct" in str(err):
        return f"unknown option in the overrides ({text})"
    return text


def quote_value(override: str) -> str:
    """``key=value`` as Hydra's override grammar reads it, quoting a plain value it cannot lex.

    Hydra's unquoted values take only ASCII letters, digits and a few symbols, so a path with
    a space or a letter such as ``ü`` (``input=/data/ünï/stühl.obj``) fails its lexer; such a
    value is passed quoted, as the user meant it. Lists, dicts and quoted values pass as given.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    key, _, value = override.partition("=")
    if not value or value[0] in "[{'\"":
        return override
    try:
        OverridesParser.create().parse_overrides([override])
        return override
    except HydraException:
        pass
    quote = "'" if "'" not in value else '"'
    return f"{key}={quote}{value.replace(quote, chr(92) + quote)}{quote}"


def load_config(name: str, overrides: list[str]) -> DictConfig:
    """Compose the config of pipeline ``name`` with Hydra ``overrides`` (``key=value``).

    Raises:
        ConfigError: unknown pipeline, malformed override or unknown key.
    """
    if name not in available():
        raise ConfigError(f"unknown pipeline '{name}'", f"pick one of: {', '.join(available())} (see `layerforge list`)")
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override '{bad[0]}' is not key=value", "write it as key=value, e.g. seed=1")
    overrides = [quote_value(o) for o in overrides]
    _register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="run", overrides=[f"pipeline={name}", *overrides])
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise ConfigError(
            f"bad override for pipeline {name}: {_explain(err, name)}",
            "check the key names with `layerforge list` and the value syntax key=value",
        ) from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


def build(cfg: DictConfig) -> Pipeline:
    """The pipeline a composed config declares: its module's stages, in the config's order."""
    spec = cfg.pipeline
    module = importlib.import_module(spec.module)
    stages = []
    for stage_name in spec.stages:
        if stage_name not in module.STAGES:
            raise ConfigError(
                f"pipeline {spec.name} has no stage '{stage_name}'",
                f"choose from {', '.join(module.STAGES)} (check mode=)",
            )
        stages.append(module.STAGES[stage_name])
    return Pipeline(spec.name, tuple(stages))


def guidance_options(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``configs/guidance/<name>.yaml`` merged with ``overrides`` (a config section's dict), resolved."""
    base = OmegaConf.load(CONFIG_DIR / "guidance" / f"{name}.yaml")
    return OmegaConf.to_container(OmegaConf.merge(base, OmegaConf.create(dict(overrides or {}))), resolve=True)
