"""OpenPose-style skeleton images (the conditioning ControlNet-OpenPose was trained on).

18 joints in the COCO/OpenPose-18 order, drawn like the OpenPose annotator of ControlNet:
limbs as filled ellipses blended at 60 % over black, joints as filled discs on top, each with
its standard colour, so a ControlNet trained on annotator output recognises our drawings.

The drawing is done in the annotator's 8-bit sRGB (colours and 60 % blend included) and returned
as linear RGB, like every image in our code; :class:`~layerforge.models.guidance.controlnet.
ControlNetSDSGuidance` sRGB-encodes it again at the model, so the ControlNet sees the
annotator's exact values.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from layerforge.assets.types import srgb_to_linear

JOINT_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)
# Limbs as (joint, joint) pairs, 0-based, in the annotator's drawing order.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
# 8-bit sRGB, one per joint; limb i uses colour i.
COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
# Index of each OpenPose-18 joint in the `smplx` package's 127-joint SMPL-X output
# (55 skeleton joints, then vertex landmarks: 55 nose, 56/57 right/left eye, 58/59 right/left ear).
SMPLX_TO_OPENPOSE18 = (55, 12, 17, 19, 21, 16, 18, 20, 2, 5, 8, 1, 4, 7, 56, 57, 58, 59)


def _px(v: float) -> int:
    """Index of the pixel containing continuous coordinate ``v`` (pixel i spans [i, i + 1))."""
    return int(math.floor(v))


def project_points(points: torch.Tensor, K: torch.Tensor, world_to_cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pinhole projection of world points.

    points: [N, 3] metres, world frame. K: [3, 3] intrinsics in pixels. world_to_cam: [4, 4]
    OpenCV convention (+z forward). Returns (uv [N, 2] pixels, x right / y down, pixel centres at
    +0.5; in_front [N] bool, z > 0).
    """
    p = points.float() @ world_to_cam[:3, :3].float().T + world_to_cam[:3, 3].float()
    z = p[:, 2]
    uvw = p @ K.float().T
    uv = uvw[:, :2] / z.clamp_min(1e-8).unsqueeze(-1)
    return uv, z > 0


def draw_openpose(
    keypoints: torch.Tensor | np.ndarray,
    height: int,
    width: int,
    visible: torch.Tensor | np.ndarray | None = None,
    stick_width: int | None = None,
    joint_radius: int | None = None,
) -> torch.Tensor:
    """Draw OpenPose-18 skeletons.

    keypoints: [18, 2] or [P, 18, 2] pixel coordinates (x right, y down) of one or P people.
    visible: [18] or [P, 18] bool; invisible joints and limbs touching them are not drawn
        (default: joints inside the image).
    stick_width, joint_radius: pixels; default 4 at 512 px, scaled with image size.
    Returns [height, width, 3] float32 linear RGB in [0, 1] (black background): the annotator's
    8-bit sRGB drawing, decoded to linear (``linear_to_srgb`` of it gives the codes / 255 back).
    """
    import cv2

    kp = np.asarray(keypoints.detach().cpu() if isinstance(keypoints, torch.Tensor) else keypoints, dtype=np.float64)
    if kp.ndim == 2:
        kp = kp[None]
    if kp.shape[1:] != (18, 2):
        raise ValueError(f"keypoints must be [18, 2] or [P, 18, 2], got {kp.shape}")
    if visible is None:
        vis = (kp[..., 0] >= 0) & (kp[..., 0] < width) & (kp[..., 1] >= 0) & (kp[..., 1] < height)
    else:
        vis = np.asarray(visible.detach().cpu() if isinstance(visible, torch.Tensor) else visible, dtype=bool)
        vis = vis.reshape(kp.shape[0], 18) & np.isfinite(kp).all(-1)
    scale = max(height, width) / 512.0
    stick = stick_width if stick_width is not None else max(1, round(4 * scale))
    radius = joint_radius if joint_radius is not None else max(1, round(4 * scale))
    canvas = np.zeros((height, width, 3), np.uint8)
    for person, seen in zip(kp, vis):
        for i, (a, b) in enumerate(LIMBS):
            if not (seen[a] and seen[b]):
                continue
            (xa, ya), (xb, yb) = person[a], person[b]
            length = math.hypot(xb - xa, yb - ya)
            angle = math.degrees(math.atan2(yb - ya, xb - xa))
            poly = cv2.ellipse2Poly((_px((xa + xb) / 2), _px((ya + yb) / 2)),
                                    (int(round(length / 2)), stick), int(round(angle)), 0, 360, 1)
            layer = canvas.copy()
            cv2.fillConvexPoly(layer, poly, COLORS[i])
            canvas = cv2.addWeighted(canvas, 0.4, layer, 0.6, 0)
        for j in range(18):
            if seen[j]:
                cv2.circle(canvas, (_px(person[j, 0]), _px(person[j, 1])), radius, COLORS[j], thickness=-1)
    return torch.from_numpy(srgb_to_linear(canvas.astype(np.float32) / 255.0))
