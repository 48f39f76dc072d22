"""Typed field configs from YAML (``configs/field/*.yaml``), validated before anything is built.

A field config names the field kind, the composition, the world box, the network sizes
(keys of :class:`DensityFieldConfig` / :class:`SDFFieldConfig`) and the ray sampler
(:class:`SamplerConfig`). :func:`load_field_spec` turns a mapping into a :class:`FieldSpec`
and rejects unknown keys or bad values with one-line errors naming the key;
:meth:`FieldSpec.build` makes the (composed) field.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from .base import Field
from .compose import ComposedDensityField, ComposedSDFField
from .mlp_fields import VOLSDF_BETA_INIT, DensityField, DensityFieldConfig, SDFField, SDFFieldConfig
from .render import SamplerConfig

__all__ = ["FieldSpec", "load_field_spec", "load_field_yaml", "packaged_field_config"]

_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "field"


@dataclass
class FieldSpec:
    """A field to build and how to sample it.

    Attributes:
        kind: ``"density"`` or ``"sdf"``.
        composition: ``None`` (one field), ``"sum"`` (density sum, UDC-NeRF) or ``"min"``
            (SDF minimum, ObjectSDF++/DP-Recon).
        num_objects: K object fields for a composition (1 without).
        aabb: world box ((min x, y, z), (max x, y, z)), metres.
        network: the per-object field's sizes.
        beta_init: composed SDF fields' shared VolSDF beta at the start, metres.
        sampler: ray sampling for :func:`~layerforge.models.fields.render.render_field`.
    """

    kind: Literal["density", "sdf"]
    composition: Literal["sum", "min"] | None
    num_objects: int
    aabb: tuple[tuple[float, float, float], tuple[float, float, float]]
    network: DensityFieldConfig | SDFFieldConfig
    beta_init: float = VOLSDF_BETA_INIT
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def build(self) -> Field:
        """The field: one object field, or K of them composed."""
        cls = DensityField if self.kind == "density" else SDFField
        if self.composition is None:
            return cls(self.aabb, self.network)
        objects = [cls(self.aabb, self.network) for _ in range(self.num_objects)]
        if self.composition == "sum":
            return ComposedDensityField(objects)
        return ComposedSDFField(objects, beta_init=self.beta_init)


def _build_dataclass(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """``cls(**data)`` with nested dataclasses, tuples and one-line errors for unknown keys."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            value = _build_dataclass(hint, value, f"{where}.{key}")
        elif typing.get_origin(hint) is tuple and isinstance(value, (list, tuple)):
            value = tuple(value)
        elif typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
            raise ValueError(f"{where}.{key} must be one of {list(typing.get_args(hint))}, got {value!r}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def load_field_spec(cfg: Mapping[str, Any], *, num_objects: int | None = None) -> FieldSpec:
    """Validate a field config mapping (as in ``configs/field/*.yaml``) into a :class:`FieldSpec`.

    Args:
        cfg: keys ``kind``, ``composition``, ``num_objects``, ``aabb``, ``beta_init``,
            ``network`` (field sizes, with a nested ``encoding``) and ``sampler``.
        num_objects: overrides ``cfg["num_objects"]`` (pipelines know K from the masks).
    """
    known = {"kind", "composition", "num_objects", "aabb", "beta_init", "network", "sampler"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"field config: unknown key(s) {unknown}; known: {sorted(known)}")
    kind = cfg.get("kind", "sdf")
    if kind not in ("density", "sdf"):
        raise ValueError(f"field.kind must be 'density' or 'sdf', got {kind!r}")
    comp = cfg.get("composition")
    if comp not in (None, "sum", "min"):
        raise ValueError(f"field.composition must be null, 'sum' or 'min', got {comp!r}")
    if (comp, kind) in (("sum", "sdf"), ("min", "density")):
        raise ValueError(f"field.composition {comp!r} does not apply to kind {kind!r} (sum: density, min: sdf)")
    k = int(num_objects if num_objects is not None else cfg.get("num_objects", 1))
    if k < 1 or (comp is None and k != 1):
        raise ValueError(f"field.num_objects must be >= 1 (1 without a composition), got {k}")
    box = cfg.get("aabb", ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0)))
    try:
        aabb = tuple(tuple(float(v) for v in corner) for corner in box)
        ok = len(aabb) == 2 and all(len(c) == 3 for c in aabb) and all(a < b for a, b in zip(*aabb))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"field.aabb must be [[xmin, ymin, zmin], [xmax, ymax, zmax]] with min < max, got {box!r}")
    net_cls = DensityFieldConfig if kind == "density" else SDFFieldConfig
    network = _build_dataclass(net_cls, cfg.get("network", {}), "field.network")
    sampler = _build_dataclass(SamplerConfig, cfg.get("sampler", {}), "field.sampler")
    beta = float(cfg.get("beta_init", VOLSDF_BETA_INIT))
    if not beta > 0:
        raise ValueError(f"field.beta_init must be > 0, got {beta}")
    return FieldSpec(kind, comp, k, aabb, network, beta, sampler)  # type: ignore[arg-type]


def load_field_yaml(path: str | Path, *, num_objects: int | None = None) -> FieldSpec:
    """:func:`load_field_spec` of a YAML file."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        return load_field_spec(yaml.safe_load(fh) or {}, num_objects=num_objects)


def packaged_field_config(name: str) -> Path:
    """Path of ``layerforge/configs/field/<name>.yaml``."""
    p = _CONFIG_DIR / f"{name}.yaml"
    if not p.is_file():
        have = sorted(q.stem for q in _CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no field config {name!r} in {_CONFIG_DIR}; have {have}")
    return p

