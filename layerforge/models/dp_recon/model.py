"""DP-Recon's scene: one SDF field per object and one for the background, composed by the
SDF minimum (ObjectSDF++), with VolSDF density.

The authors (``model/network.py`` ``ObjectImplicitNetworkGrid``) run *one* hash grid and MLP
with K SDF outputs over the whole scene, every object initialised as the same sphere
(MonoSDF's geometric init). Ours gives every object its own small field on its box from
prepare (``confine_to_aabb``: the SDF is intersected with the box, so an object cannot grow
floaters elsewhere) starting as a sphere inside that box, and the background an inside-out
sphere round the cameras (a room seen from inside): the composition, losses and density are
the authors'; the parametrisation lets a CPU-sized run separate the objects in a few hundred
steps. ``shared_grid: true`` is not offered: with per-object boxes there is nothing to share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from layerforge.models.fields.compose import ComposedSDFField
from layerforge.models.fields.hashgrid import HashGridConfig
from layerforge.models.fields.mlp_fields import (
    VOLSDF_BETA_INIT,
    EncodingConfig,
    SDFField,
    SDFFieldConfig,
)

__all__ = ["DP_RECON_HASHGRID", "DP_RECON_HIDDEN", "SceneFieldConfig", "build_scene_field"]

# shared METHODS.md / confs/replica_grid.conf: hash grid 16 levels x 2 features, resolution
# 16 -> 2048, table 2^19; SDF MLP [256, 256].
DP_RECON_HASHGRID = {"num_levels": 16, "features_per_level": 2, "log2_hashmap_size": 19,
                     "base_resolution": 16, "max_resolution": 2048}
DP_RECON_HIDDEN = (256, 256)


@dataclass
class SceneFieldConfig:
    """Sizes of the per-object and background SDF fields.

    Attributes:
        hashgrid: :class:`HashGridConfig` keys of every field's encoding.
        hidden: SDF MLP hidden widths. geo_features: feature width into the colour MLP.
        color_hidden: colour MLP hidden widths. view_dependent: directions into the colour MLP.
        beta_init: VolSDF beta at the start (DP-Recon 0.1), optimisation-frame units.
        background_radius: the background starts as the inside of a sphere of this radius
            round the scene centre (it must enclose the cameras).
        object_sphere_fraction: an object starts as a sphere of this fraction of its box's
            smallest half-extent, at the box centre.
        confine_objects: intersect each object's SDF with its box.
    """

    hashgrid: dict[str, int] = field(default_factory=lambda: dict(DP_RECON_HASHGRID))
    hidden: tuple[int, ...] = DP_RECON_HIDDEN
    geo_features: int = 15
    color_hidden: tuple[int, ...] = (64, 64)
    view_dependent: bool = True
    beta_init: float = VOLSDF_BETA_INIT
    background_radius: float = 0.9
    object_sphere_fraction: float = 0.6
    confine_objects: bool = True


def _sdf_config(cfg: SceneFieldConfig, sphere_radius: float, confine: bool) -> SDFFieldConfig:
    return SDFFieldConfig(encoding=EncodingConfig("hashgrid", HashGridConfig(**cfg.hashgrid)), hidden=tuple(cfg.hidden),
                          geo_features=cfg.geo_features, color_hidden=tuple(cfg.color_hidden),
                          view_dependent=cfg.view_dependent, sphere_radius=sphere_radius, beta_init=cfg.beta_init,
                          confine_to_aabb=confine)


def build_scene_field(boxes: Sequence[tuple[Sequence[float], Sequence[float]]], cfg: SceneFieldConfig,
                      scene_box: tuple[Sequence[float], Sequence[float]] = ((-1.0,) * 3, (1.0,) * 3)) -> ComposedSDFField:
    """The composed scene: object 0 the background on ``scene_box``, objects 1..K on ``boxes``.

    Args:
        boxes: K (lo [3], hi [3]) object boxes, optimisation frame.
        cfg: field sizes and initialisation.
        scene_box: the background field's box (the scene cube).
    """
    fields = [SDFField(scene_box, _sdf_config(cfg, -cfg.background_radius, False))]
    for lo, hi in boxes:
        half = 0.5 * (np.asarray(hi, np.float64) - np.asarray(lo, np.float64))
        r = cfg.object_sphere_fraction * float(half.min())
        fields.append(SDFField((tuple(map(float, lo)), tuple(map(float, hi))), _sdf_config(cfg, r, cfg.confine_objects)))
    for f in fields:
        # start as the exact sphere (as MonoSDF's geometric init does): the MLP's SDF output row
        # is zeroed, so a small object's sphere is not drowned by the random output offset
        last = f.geo.net[-1]
        with torch.no_grad():
            last.weight[0].zero_()
            last.bias[0].zero_()
    return ComposedSDFField(fields, beta_init=cfg.beta_init)
