"""Text-prompted object masks: Grounded-SAM (Grounding DINO boxes -> SAM masks), or CLIPSeg.

GALA cuts the object it decomposes (e.g. "jacket") out of every rendered view of a clothed scan
with Grounded-SAM: Grounding DINO detects boxes for the text prompt (box threshold 0.3, text
threshold 0.25), SAM turns each box into a mask (one mask per box, ``multimask_output=False``),
and the union of those masks is the object mask. :class:`TextSegmenter` does exactly that with
transformers' ``GroundingDinoForObjectDetection`` and ``SamModel``; as a lighter alternative it
runs CLIPSeg (``CLIPSegForImageSegmentation``: sigmoid of the logits, resized to the image,
> 0.5). Exactly one backend is configured.

Thresholds, as in Grounded-SAM (and transformers' ``post_process_grounded_object_detection``):
a box is kept when its score, the largest sigmoid over the prompt's tokens, is above
``box_threshold``; ``text_threshold`` only decides which prompt tokens name the box (its
label, see :meth:`TextSegmenter.detect`) and drops no box.

Colour contract: images are float [H, W, 3] *linear* RGB in [0, 1], sRGB-encoded to 8 bits at
the processor call (:func:`~layerforge.models.guidance.estimators._to_pil`).

Weights come from local folders (or cached hub ids, honouring offline mode); a missing folder
is a one-line :class:`ModelNotFoundError` naming the config key.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layerforge.errors import ConfigError
from layerforge.models.guidance.estimators import _to_pil
from layerforge.models.guidance.loading import (
    _missing,
    _resolve_source,
    check_model_folder,
    config_from_mapping,
    is_offline,
    resolve_device,
    resolve_dtype,
)

LAYOUT = "config.json, model weights (*.safetensors) and the processor's files (preprocessor_config.json or " \
         "processor_config.json, and the tokenizer's)"
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
BACKEND_KEYS = ("detector_name_or_path", "sam_name_or_path", "clipseg_name_or_path")


@dataclasses.dataclass
class TextSegmenterConfig:
    """Which text-prompted segmenter to load and how.

    Grounded-SAM: ``detector_name_or_path`` (a Grounding DINO folder: transformers
    ``GroundingDinoForObjectDetection`` + its processor, e.g. IDEA-Research/grounding-dino-tiny)
    and ``sam_name_or_path`` (a SAM folder: ``SamModel`` + ``SamProcessor``, e.g.
    facebook/sam-vit-base). CLIPSeg: ``clipseg_name_or_path`` alone (e.g.
    CIDAS/clipseg-rd64-refined). ``batch_size``: images per model call in :meth:`TextSegmenter.batch`.
    """

    detector_name_or_path: str | None = None
    sam_name_or_path: str | None = None
    clipseg_name_or_path: str | None = None
    box_threshold: float = 0.3  # GALA (Grounded-SAM)
    text_threshold: float = 0.25  # GALA (Grounded-SAM)
    clipseg_threshold: float = 0.5  # on sigmoid(logits)
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "float32"
    offline: bool | None = None


def _check_source(name_or_path: str | os.PathLike | None, key: str) -> tuple[str, bool]:
    """(source, is_local); a local folder must hold a model and its processor."""
    source, local = _resolve_source(name_or_path, key, LAYOUT)
    if local:
        folder = Path(source)
        check_model_folder(folder, key, LAYOUT)
        if not any((folder / f).is_file() for f in PROCESSOR_FILES):
            raise _missing(key, source, f"no {' or '.join(PROCESSOR_FILES)} in the folder", LAYOUT)
    return source, local


def _load(class_name: str, name_or_path: str | os.PathLike | None, key: str, device: torch.device,
          dtype: torch.dtype, offline: bool | None) -> tuple[torch.nn.Module, Any]:
    """(model on ``device`` in eval mode, its processor) from a folder or a cached hub id."""
    source, local = _check_source(name_or_path, key)
    import transformers

    local_only = local or is_offline(offline)
    try:
        processor = transformers.AutoProcessor.from_pretrained(source, local_files_only=local_only)
        model = getattr(transformers, class_name).from_pretrained(source, dtype=dtype, local_files_only=local_only)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise _missing(key, source, f"cannot be loaded ({reason})", LAYOUT) from err
    return model.to(device).eval().requires_grad_(False), processor


def grounding_caption(prompt: str) -> str:
    """Grounded-SAM's caption: lower case, stripped, ending with '.'."""
    caption = prompt.lower().strip()
    return caption if caption.endswith(".") else caption + "."


class TextSegmenter:
    """The mask of the object a text prompt names, in linear-RGB images (see the module doc)."""

    def __init__(self, config: TextSegmenterConfig | Mapping[str, Any] | None, *, key_prefix: str = "segment") -> None:
        cfg = config_from_mapping(TextSegmenterConfig, config, prefix=key_prefix)
        self.config = cfg
        self.key_prefix = key_prefix
        keys = [f"{key_prefix}.{k}" for k in BACKEND_KEYS]
        grounded = bool(cfg.detector_name_or_path) or bool(cfg.sam_name_or_path)
        clipseg = bool(cfg.clipseg_name_or_path)
        if grounded == clipseg:
            values = (cfg.detector_name_or_path, cfg.sam_name_or_path, cfg.clipseg_name_or_path)
            given = ", ".join(k for k, v in zip(keys, values) if v)
            problem = f"two text segmenters configured ({given})" if grounded else \
                f"no text segmenter configured ({', '.join(keys)} are all unset)"
            raise ConfigError(problem, f"set either {keys[0]} and {keys[1]} (Grounded-SAM) or {keys[2]} (CLIPSeg)")
        for name in ("box_threshold", "text_threshold", "clipseg_threshold"):
            value = getattr(cfg, name)
            if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"{key_prefix}.{name}={value!r} is not in [0, 1]", "give a score threshold in [0, 1]")
        if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
            raise ConfigError(f"{key_prefix}.batch_size={cfg.batch_size!r} is not a positive integer", "use e.g. 8")
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device, key=f"{key_prefix}.dtype")
        self.backend = "grounded_sam" if grounded else "clipseg"
        if grounded:
            _check_source(cfg.detector_name_or_path, keys[0])  # both checked before either loads
            _check_source(cfg.sam_name_or_path, keys[1])
            self.detector, self.detector_processor = _load(
                "GroundingDinoForObjectDetection", cfg.detector_name_or_path, keys[0], self.device, self.dtype,
                cfg.offline)
            self.sam, self.sam_processor = _load("SamModel", cfg.sam_name_or_path, keys[1], self.device, self.dtype,
                                                 cfg.offline)
        else:
            self.clipseg, self.clipseg_processor = _load(
                "CLIPSegForImageSegmentation", cfg.clipseg_name_or_path, keys[2], self.device, self.dtype, cfg.offline)

    # -- public --------------------------------------------------------------------------------

    def __call__(self, image: torch.Tensor | np.ndarray, prompt: str) -> torch.Tensor:
        """image: [H, W, 3] float linear RGB in [0, 1]. Returns [H, W] bool (CPU): the union of
        the masks of every box above the thresholds (CLIPSeg: its thresholded map); all False
        when nothing is found."""
        return self.batch(_as_images(image, batched=False), prompt)[0]

    def batch(self, images: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray],
              prompt: str) -> torch.Tensor:
        """images: [B, H, W, 3] float linear RGB (or a sequence of same-size [H, W, 3]).
        Returns [B, H, W] bool (CPU), each as :meth:`__call__`."""
        imgs = _as_images(images, batched=True)
        caption = _check_prompt(prompt)
        out = []
        for start in range(0, len(imgs), self.config.batch_size):
            chunk = [_to_pil(im) for im in imgs[start:start + self.config.batch_size]]
            out.extend(self._grounded_sam(chunk, caption) if self.backend == "grounded_sam"
                       else self._clipseg(chunk, caption))
        return torch.stack(out)

    def detect(self, image: torch.Tensor | np.ndarray, prompt: str) -> dict[str, Any]:
        """Grounding DINO's boxes above the thresholds for one linear-RGB image: ``boxes`` [N, 4]
        float (x0, y0, x1, y1 in pixels, clamped to the image), ``scores`` [N], ``labels``
        (the prompt words above ``text_threshold``, per box, special tokens left out)."""
        if self.backend != "grounded_sam":
            raise ConfigError(f"{self.key_prefix}: detect needs Grounded-SAM, CLIPSeg is configured",
                              f"set {self.key_prefix}.detector_name_or_path and {self.key_prefix}.sam_name_or_path")
        pil = _to_pil(_as_images(image, batched=False)[0])
        return self._detect([pil], grounding_caption(_check_prompt(prompt)))[0]

    # -- backends ------------------------------------------------------------------------------

    def _inputs(self, encoded: Mapping[str, Any]) -> dict[str, Any]:
        return {k: (v.to(self.device, self.dtype) if k == "pixel_values" else v.to(self.device))
                for k, v in encoded.items() if isinstance(v, torch.Tensor)}

    @torch.no_grad()
    def _detect(self, pils: list, caption: str) -> list[dict[str, Any]]:
        enc = self.detector_processor(images=pils, text=[caption] * len(pils), return_tensors="pt")
        outputs = self.detector(**self._inputs(enc))
        outputs.logits = outputs.logits.float()
        outputs.pred_boxes = outputs.pred_boxes.float()
        sizes = [(p.height, p.width) for p in pils]
        results = self.detector_processor.post_process_grounded_object_detection(
            outputs, enc["input_ids"].to(self.device), threshold=float(self.config.box_threshold),
            text_threshold=float(self.config.text_threshold), target_sizes=sizes)
        special = set(getattr(self.detector_processor.tokenizer, "all_special_tokens", ()))
        dets = []
        for res, (h, w) in zip(results, sizes):
            boxes = res["boxes"].float().cpu()
            limit = torch.tensor([w, h, w, h], dtype=boxes.dtype)
            boxes = torch.minimum(boxes.clamp(min=0), limit)
            labels = [" ".join(w for w in str(t).split() if w not in special) for t in res["text_labels"]]
            dets.append({"boxes": boxes, "scores": res["scores"].float().cpu(), "labels": labels})
        return dets

    @torch.no_grad()
    def _grounded_sam(self, pils: list, caption: str) -> list[torch.Tensor]:
        dets = self._detect(pils, grounding_caption(caption))
        masks = [torch.zeros(p.height, p.width, dtype=torch.bool) for p in pils]
        found = [i for i, d in enumerate(dets) if len(d["boxes"])]
        if not found:
            return masks
        encs = [self.sam_processor(images=pils[i], input_boxes=[dets[i]["boxes"].tolist()], return_tensors="pt")
                for i in found]
        pixels = torch.cat([e["pixel_values"] for e in encs]).to(self.device, self.dtype)
        embeddings = self.sam.get_image_embeddings(pixels)
        for j, (i, enc) in enumerate(zip(found, encs)):
            boxes = enc["input_boxes"].to(self.device, self.dtype)
            out = self.sam(image_embeddings=embeddings[j:j + 1], input_boxes=boxes, multimask_output=False)
            per_box = self.sam_processor.post_process_masks(out.pred_masks.float().cpu(), enc["original_sizes"],
                                                            enc["reshaped_input_sizes"])[0]  # [N, 1, H, W] bool
            masks[i] = per_box.reshape(-1, *per_box.shape[-2:]).any(0)
        return masks

    @torch.no_grad()
    def _clipseg(self, pils: list, prompt: str) -> list[torch.Tensor]:
        enc = self.clipseg_processor(text=[prompt] * len(pils), images=pils, padding=True, return_tensors="pt")
        logits = self.clipseg(**self._inputs(enc)).logits.float()
        logits = logits.reshape(len(pils), 1, *logits.shape[-2:])
        out = []
        for p, lg in zip(pils, logits):
            up = torch.nn.functional.interpolate(lg[None], (p.height, p.width), mode="bilinear", align_corners=False)
            out.append((torch.sigmoid(up[0, 0]) > float(self.config.clipseg_threshold)).cpu())
        return out


def _check_prompt(prompt: str) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"need a non-empty text prompt, got {prompt!r}")
    return prompt.strip()


def _as_images(images: Any, *, batched: bool) -> list:
    """A list of [H, W, 3] arrays / tensors, all the same size."""
    if isinstance(images, (torch.Tensor, np.ndarray)):
        shape = tuple(images.shape)
        want = 4 if batched else 3
        if len(shape) != want or shape[-1] != 3:
            raise ValueError(f"need images [{'B, ' if batched else ''}H, W, 3], got shape {shape}")
        items = list(images) if batched else [images]
    else:
        items = list(images)
    if not items:
        raise ValueError("need at least one image")
    sizes = {tuple(im.shape) for im in items}
    if len(sizes) != 1 or len(next(iter(sizes))) != 3 or next(iter(sizes))[-1] != 3:
        raise ValueError(f"need same-size images [H, W, 3], got shapes {sorted(sizes)}")
    return items
