"""Parametric bodies with linear blend skinning (SMPL-X layout) for the GALA pipeline."""

from layerforge.models.body.fit import BodyFit, posed_body, read_fit
from layerforge.models.body.model import (
    BodyModel,
    BodyOutput,
    batch_rodrigues,
    blend_transforms,
    rigid_transforms,
    skin_points,
    unskin_points,
)
from layerforge.models.body.smplx import (
    SMPLX_JOINT_NAMES,
    hand_pose_from_pca,
    load_smplx,
)
from layerforge.models.body.synthetic import (
    designed_joints,
    synthetic_smplx_arrays,
    write_synthetic_smplx,
)

__all__ = [
    "SMPLX_JOINT_NAMES", "BodyFit", "BodyModel", "BodyOutput", "batch_rodrigues", "blend_transforms", "designed_joints",
    "hand_pose_from_pca", "load_smplx", "posed_body", "read_fit", "rigid_transforms", "skin_points",
    "synthetic_smplx_arrays", "unskin_points", "write_synthetic_smplx",
]
