"""Neural fields: the Field contract, encodings, K-object composition and volume rendering.

- :mod:`.base`: :class:`Field` (density or SDF, colour, optional semantics at points) and
  :class:`FieldOutput`.
- :mod:`.encodings`: NeRF frequencies, dense grid; :mod:`.hashgrid`: Instant-NGP hash grid
  (plain torch, CPU and GPU).
- :mod:`.mlp_fields`: :class:`DensityField`, :class:`SDFField` (VolSDF density, learnable beta).
- :mod:`.compose`: :class:`ComposedDensityField` (density sum, UDC-NeRF) and
  :class:`ComposedSDFField` (SDF minimum, ObjectSDF++/DP-Recon).
- :mod:`.render`: :func:`render_field` (cameras -> ``RenderOutput``, chunked) and
  :func:`render_rays` (any ray bundle).
- :mod:`.config`: typed, validated field configs (``configs/field/*.yaml``: ``dp_recon``,
  ``udc_nerf``).
"""

from .base import Field, FieldOutput, normalize_aabb, ray_aabb
from .compose import ComposedDensityField, ComposedSDFField
from .config import FieldSpec, load_field_spec, load_field_yaml, packaged_field_config
from .encodings import DenseGrid, Encoding, PositionalEncoding
from .hashgrid import DP_RECON_HASHGRID, HashGrid, HashGridConfig
from .mlp_fields import (
    MLP,
    DensityField,
    DensityFieldConfig,
    EncodingConfig,
    LaplaceDensity,
    SDFField,
    SDFFieldConfig,
    make_encoding,
)
from .render import SamplerConfig, render_field, render_rays

__all__ = [
    "Field",
    "FieldOutput",
    "normalize_aabb",
    "ray_aabb",
    "Encoding",
    "PositionalEncoding",
    "DenseGrid",
    "HashGrid",
    "HashGridConfig",
    "DP_RECON_HASHGRID",
    "MLP",
    "EncodingConfig",
    "make_encoding",
    "DensityField",
    "DensityFieldConfig",
    "SDFField",
    "SDFFieldConfig",
    "LaplaceDensity",
    "ComposedDensityField",
    "ComposedSDFField",
    "SamplerConfig",
    "render_field",
    "render_rays",
    "FieldSpec",
    "load_field_spec",
    "load_field_yaml",
    "packaged_field_config",
]
