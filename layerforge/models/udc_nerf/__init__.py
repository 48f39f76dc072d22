"""UDC-NeRF (Learning Unified Decompositional and Compositional NeRF for Editable Novel View
Synthesis; W-Ted/UDC-NeRF): model, loss terms, balanced ray sampler, rendering and edits.

- :mod:`.model`: :class:`UDCNeRFConfig`, :class:`UDCNeRF` (coarse scene network, fine scene +
  background + shared-foreground network on one trunk with K+1 object codes), the Gumbel
  blocking and the per-point compositing rules.
- :mod:`.losses`: the seven terms at the paper's weights (:func:`paper_terms`).
- :mod:`.sampling`: :class:`BalancedRayBatches` (70% background / 30% object rays) and
  :class:`PolyDecay` (poly lr decay, exponent 2).
- :mod:`.render`: :func:`render_views` -> ``RenderOutput``.
- :mod:`.edits`: :class:`Edit` (remove / move / rotate / duplicate) applied at render time.
"""

from .edits import Edit, Slot, make_slots, object_centre, resolve_centres
from .losses import (
    PAPER_WEIGHTS,
    BackgroundSuppressionLoss,
    ComponentOpacityLoss,
    ComponentRGBLoss,
    InstanceRGBLoss,
    MergedRGBLoss,
    PseudoBackgroundLoss,
    SceneRGBLoss,
    paper_terms,
    udc_forward,
)
from .model import (
    BLOCK_SIGMA,
    DELTA_INF,
    GUMBEL_TAU,
    UDCNeRF,
    UDCNeRFConfig,
    UDCNetwork,
    block_background,
    gumbel_noise,
    hard_gumbel_softmax,
    point_deltas,
    render_points,
)
from .render import render_views
from .sampling import BalancedRayBatches, PolyDecay

__all__ = [
    "UDCNeRFConfig", "UDCNeRF", "UDCNetwork", "hard_gumbel_softmax", "gumbel_noise", "block_background",
    "point_deltas", "render_points", "DELTA_INF", "BLOCK_SIGMA", "GUMBEL_TAU",
    "udc_forward", "SceneRGBLoss", "ComponentRGBLoss", "PseudoBackgroundLoss", "InstanceRGBLoss", "MergedRGBLoss",
    "ComponentOpacityLoss", "BackgroundSuppressionLoss", "paper_terms", "PAPER_WEIGHTS",
    "BalancedRayBatches", "PolyDecay", "render_views",
    "Edit", "Slot", "make_slots", "object_centre", "resolve_centres",
]
