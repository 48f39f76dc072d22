"""Monocular depth and segmentation behind small interfaces, backed by transformers pipelines.

Colour contract: both take our images, float [H, W, 3] *linear* RGB in [0, 1], and sRGB-encode
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
