"""Monocular depth, normals and segmentation behind small interfaces, backed by transformers pipelines.

Colour contract: all take our images, float [H, W, 3] *linear* RGB in [0, 1], and sRGB-encode
them to 8 bits (what the models were trained on, and what the pipelines' image loaders take)
right before the pipeline call (:func:`_to_pil`).

Weights come from a local folder (or a cached hub id); a missing folder is a one-line
:class:`ModelNotFoundError` naming the config key.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch

from layerforge.assets.types import linear_to_srgb
from layerforge.errors import ModelNotFoundError
from layerforge.models.guidance.loading import is_offline, resolve_device, resolve_dtype
from layerforge.renderers.depth_normals import MAX_INCIDENCE_DEG, normals_from_depth

HF_LAYOUT = "config.json, model weights (*.safetensors) and preprocessor_config.json"


def _load_hf_pipeline(task: str, name_or_path: str | os.PathLike | None, key: str, device: str,
                      dtype: str, offline: bool | None):
    if not name_or_path:
        raise ModelNotFoundError(f"{key}=None: no model configured", f"set {key} to a local folder with {HF_LAYOUT}")
    name = str(name_or_path)
    local = name.startswith(("/", ".", "~")) or Path(name).expanduser().exists() or name.count("/") > 1
    if local:
        folder = Path(name).expanduser()
        missing = [f for f in ("config.json", "preprocessor_config.json") if not (folder / f).is_file()] \
            if folder.is_dir() else ["the folder"]
        if folder.is_dir() and not any(p.suffix in (".safetensors", ".bin") for p in folder.iterdir()):
            missing.append("weights")
        if missing:
            raise ModelNotFoundError(f"{key}={name!r}: {', '.join(missing)} not found",
                                     f"set {key} to a local folder with {HF_LAYOUT}")
    from transformers import pipeline

    dev = resolve_device(device)
    try:
        return pipeline(task, model=str(Path(name).expanduser()) if local else name, device=dev,
                        dtype=resolve_dtype(dtype, dev, key=key.rsplit(".", 1)[0] + ".dtype"),
                        local_files_only=local or is_offline(offline))
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ModelNotFoundError(f"{key}={name!r}: cannot be loaded ({reason})",
                                 f"set {key} to a local folder with {HF_LAYOUT}") from err


def _to_pil(image: torch.Tensor | np.ndarray):
    """Linear float [H, W, 3] in [0, 1] -> 8-bit sRGB PIL image (the model boundary)."""
    from PIL import Image

    arr = np.asarray(image.detach().float().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"need an image [H, W, 3], got shape {arr.shape}")
    return Image.fromarray(np.round(linear_to_srgb(arr) * 255).astype(np.uint8))


class DepthEstimator:
    """Monocular depth ("depth-estimation" pipeline, e.g. DPT, Depth Anything); takes linear RGB."""

    def __init__(self, pretrained_model_name_or_path: str | None, *, key: str = "depth.pretrained_model_name_or_path",
                 device: str = "auto", dtype: str = "float32", offline: bool | None = None) -> None:
        self.pipe = _load_hf_pipeline("depth-estimation", pretrained_model_name_or_path, key, device, dtype, offline)

    def __call__(self, image: torch.Tensor | np.ndarray) -> torch.Tensor:
        """image: [H, W, 3] float linear RGB in [0, 1] (sRGB-encoded here for the model).

        Returns [H, W] float32 relative depth as the model defines it (units and direction are
        model-specific).
        """
        h, w = image.shape[:2]
        pred = self.pipe(_to_pil(image))["predicted_depth"].float()
        pred = pred.reshape(1, 1, *pred.shape[-2:])
        return torch.nn.functional.interpolate(pred, (h, w), mode="bilinear", align_corners=False)[0, 0].cpu()


class NormalEstimator:
    """Camera-frame normals from monocular depth: a :class:`DepthEstimator` (same loading path and
    models), its prediction turned into camera z, then
    :func:`~layerforge.renderers.depth_normals.normals_from_depth` with the view's intrinsics.

    Monocular depth is relative, so these normals are only as good as the assumption that turns
    the prediction into camera z (up to one scale, which normals do not see):

    - ``prediction="inverse_depth"`` (default; DPT / MiDaS and relative Depth Anything, whose
      ``predicted_depth`` grows towards the camera): the output is taken as ``scale / z``, i.e.
      its affine shift is assumed 0, and inverted; ``z = 1 / prediction``, unknown where the
      prediction is <= 0. These models are trained affine-invariant in inverse depth, so a
      non-zero true shift bends planes and tilts the normals; no shift can be recovered from
      one image.
    - ``prediction="depth"`` (metric models, e.g. ZoeDepth, metric Depth Anything): the output
      is camera z as is (any scale), unknown where <= 0.

    The intrinsics must be the image's (pixels, at its size): a wrong focal length tilts every
    normal off the optical axis.
    """

    PREDICTIONS = ("inverse_depth", "depth")

    def __init__(self, pretrained_model_name_or_path: str | None, *, key: str = "normal.pretrained_model_name_or_path",
                 prediction: str = "inverse_depth", max_incidence_deg: float = MAX_INCIDENCE_DEG, device: str = "auto",
                 dtype: str = "float32", offline: bool | None = None) -> None:
        if prediction not in self.PREDICTIONS:
            raise ValueError(f"prediction must be one of {self.PREDICTIONS}, got {prediction!r}")
        self.prediction = prediction
        self.max_incidence_deg = float(max_incidence_deg)
        self.depth = DepthEstimator(pretrained_model_name_or_path, key=key, device=device, dtype=dtype,
                                    offline=offline)

    def camera_z(self, prediction: torch.Tensor) -> torch.Tensor:
        """[H, W] model output -> [H, W] float32 camera z up to one scale (0 unknown), as the class says."""
        pred = prediction.float()
        known = torch.isfinite(pred) & (pred > 0)
        safe = torch.where(known, pred, torch.ones_like(pred))
        z = 1.0 / safe if self.prediction == "inverse_depth" else safe
        return torch.where(known & torch.isfinite(z), z, torch.zeros_like(z))

    def __call__(self, image: torch.Tensor | np.ndarray, K: torch.Tensor | np.ndarray) -> torch.Tensor:
        """image: [H, W, 3] float linear RGB in [0, 1]; K: [3, 3] its intrinsics in pixels.

        Returns [H, W, 3] float32 unit normals in the view's OpenCV camera frame (+x right, +y
        down, +z forward), facing the camera, 0 where unknown (see :func:`normals_from_depth`:
        1-pixel border, depth discontinuities, prediction <= 0).
        """
        k = torch.as_tensor(K, dtype=torch.float32).cpu()
        if k.shape != (3, 3):
            raise ValueError(f"need intrinsics K [3, 3], got shape {tuple(k.shape)}")
        z = self.camera_z(self.depth(image))
        return normals_from_depth(z[None, ..., None], k, max_incidence_deg=self.max_incidence_deg)[0]


@dataclasses.dataclass
class Segment:
    """One segment: ``label`` (str), ``score`` (float or None), ``mask`` [H, W] bool."""

    label: str
    score: float | None
    mask: torch.Tensor


class Segmenter:
    """Semantic / instance / panoptic segmentation ("image-segmentation" pipeline); takes linear RGB."""

    def __init__(self, pretrained_model_name_or_path: str | None, *, key: str = "segmenter.pretrained_model_name_or_path",
                 device: str = "auto", dtype: str = "float32", offline: bool | None = None) -> None:
        self.pipe = _load_hf_pipeline("image-segmentation", pretrained_model_name_or_path, key, device, dtype, offline)

    def __call__(self, image: torch.Tensor | np.ndarray) -> list[Segment]:
        """image: [H, W, 3] float linear RGB in [0, 1] (sRGB-encoded here for the model).

        Returns the segments the model finds, masks at image size.
        """
        out = []
        for seg in self.pipe(_to_pil(image)):
            mask = torch.from_numpy(np.asarray(seg["mask"]) > 127)
            out.append(Segment(label=str(seg["label"]), score=seg.get("score"), mask=mask))
        return out
