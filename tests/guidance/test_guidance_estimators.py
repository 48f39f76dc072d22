"""DepthEstimator / NormalEstimator / Segmenter: tiny random transformers models loaded from a local folder.

Colour contract: all take linear RGB and sRGB-encode it for the model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layerforge.assets.types import srgb_to_linear
from layerforge.errors import ModelNotFoundError
from layerforge.models.guidance import DepthEstimator, NormalEstimator, Segmenter
from layerforge.renderers.depth_normals import (
    camera_points_from_depth,
    normals_from_depth,
)


@pytest.fixture(scope="module")
def tiny_dpt(tmp_path_factory):
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)
    cfg = DPTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=32,
                    patch_size=8, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 8, 8],
                    fusion_hidden_size=8, reassemble_factors=[4, 2, 1, 0.5], head_hidden_size=8)
    path = tmp_path_factory.mktemp("tiny_dpt")
    DPTForDepthEstimation(cfg).save_pretrained(path)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_segformer(tmp_path_factory):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    cfg = SegformerConfig(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                          num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=3,
                          id2label={0: "sky", 1: "wall", 2: "chair"}, label2id={"sky": 0, "wall": 1, "chair": 2})
    path = tmp_path_factory.mktemp("tiny_segformer")
    SegformerForSemanticSegmentation(cfg).save_pretrained(path)
    SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_depth_estimator(tiny_dpt):
    est = DepthEstimator(str(tiny_dpt), device="cpu")
    image = torch.rand(24, 40, 3)
    depth = est(image)
    assert depth.shape == (24, 40) and depth.dtype == torch.float32 and torch.isfinite(depth).all()
    torch.testing.assert_close(est(image), depth)


def test_segmenter(tiny_segformer):
    seg = Segmenter(str(tiny_segformer), device="cpu")
    segments = seg(torch.rand(24, 40, 3))
    assert segments and all(s.mask.shape == (24, 40) and s.mask.dtype == torch.bool for s in segments)
    assert {s.label for s in segments} <= {"sky", "wall", "chair"}
    union = torch.stack([s.mask for s in segments]).sum(0)
    assert (union == 1).all()  # semantic segments partition the image


def test_missing_estimator_folder(tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        DepthEstimator(str(tmp_path / "depth"), key="layerpano3d.depth.pretrained_model_name_or_path")
    msg = str(err.value)
    assert "layerpano3d.depth.pretrained_model_name_or_path" in msg and "\n" not in msg
    (tmp_path / "seg").mkdir()
    (tmp_path / "seg" / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="preprocessor_config.json, weights not found"):
        Segmenter(str(tmp_path / "seg"))
    with pytest.raises(ModelNotFoundError, match="segmenter.pretrained_model_name_or_path"):
        Segmenter(None)


def _linear_from_srgb_codes(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """(8-bit sRGB codes [H, W, 3], the linear float image they encode)."""
    codes = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return codes, torch.from_numpy(srgb_to_linear(codes / 255.0))


def _spy_pixel_values(monkeypatch, model) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    real = model.forward

    def forward(pixel_values, *args, **kwargs):
        seen.append(pixel_values.detach().clone())
        return real(pixel_values, *args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    return seen


@pytest.mark.parametrize("which", ["depth", "segmenter"])
def test_estimators_take_linear_and_feed_the_model_srgb(which, tiny_dpt, tiny_segformer, monkeypatch):
    """Contract: linear in; the model's input tensor is the image processor's output for the
    sRGB encoding (before the fix the depth estimator took sRGB and fed it unconverted)."""
    from PIL import Image

    est = (DepthEstimator(str(tiny_dpt), device="cpu") if which == "depth"
           else Segmenter(str(tiny_segformer), device="cpu"))
    codes, linear = _linear_from_srgb_codes(24, 40)
    seen = _spy_pixel_values(monkeypatch, est.pipe.model)
    est(linear)
    expected = est.pipe.image_processor(images=Image.fromarray(codes), return_tensors="pt").pixel_values
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=1e-5)
    # and not the linear values read as if they were sRGB (what the old depth estimator did)
    as_if_srgb = Image.fromarray(np.round(linear.numpy() * 255).astype(np.uint8))
    wrong = est.pipe.image_processor(images=as_if_srgb, return_tensors="pt").pixel_values
    assert (seen[0] - wrong).abs().max() > 0.1


def test_depth_of_linear_image_equals_depth_of_its_srgb_encoding(tiny_dpt):
    """The same picture gives the same depth whether handed over as linear floats (our
    convention) or as the 8-bit sRGB file a transformers user would pass the pipeline."""
    from PIL import Image

    est = DepthEstimator(str(tiny_dpt), device="cpu")
    codes, linear = _linear_from_srgb_codes(32, 32, seed=1)
    ours = est(linear)
    theirs = est.pipe(Image.fromarray(codes))["predicted_depth"].float().reshape(32, 32)
    scale = float(ours.abs().max())  # the random model's depths are tiny (~1e-10)
    assert scale > 0
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * scale)
    srgb_read_as_linear = est(torch.from_numpy(codes / 255.0).float())  # what the old contract expected
    assert (srgb_read_as_linear - ours).abs().max() > 1e-2 * scale


def test_estimators_refuse_non_rgb(tiny_dpt):
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        DepthEstimator(str(tiny_dpt), device="cpu")(torch.rand(8, 8, 4))


def _plane_z(h: int, w: int, k: torch.Tensor, normal: torch.Tensor, offset: float) -> torch.Tensor:
    """[H, W] camera z of the plane n . X = offset (OpenCV camera frame)."""
    rays = camera_points_from_depth(torch.ones(1, h, w, 1), k)[0]
    return offset / (rays @ normal)


def test_normal_estimator_loads_like_depth_and_returns_camera_frame_normals(tiny_dpt):
    est = NormalEstimator(str(tiny_dpt), device="cpu")
    k = torch.tensor([[30.0, 0.0, 20.0], [0.0, 30.0, 12.0], [0.0, 0.0, 1.0]])
    image = torch.rand(24, 40, 3)
    n = est(image, k)
    assert n.shape == (24, 40, 3) and n.dtype == torch.float32 and torch.isfinite(n).all()
    length = n.norm(dim=-1)
    assert ((length - 1).abs() < 1e-5).logical_or(length == 0).all()
    torch.testing.assert_close(est(image, k.numpy()), n)
    # the wiring: depth -> camera z -> normals
    torch.testing.assert_close(n, normals_from_depth(est.camera_z(est.depth(image))[None, ..., None], k)[0])
    with pytest.raises(ModelNotFoundError, match="normal.pretrained_model_name_or_path"):
        NormalEstimator(None)


@pytest.mark.parametrize("prediction", ["inverse_depth", "depth"])
def test_normal_estimator_turns_the_prediction_into_the_plane_normal(tiny_dpt, prediction, monkeypatch):
    """The model's output (here replaced by a plane's scaled inverse depth, or scaled depth) gives
    the plane's normal exactly: the unknown scale of monocular depth does not change normals."""
    est = NormalEstimator(str(tiny_dpt), device="cpu", prediction=prediction)
    h, w = 24, 40
    k = torch.tensor([[30.0, 0.0, 20.0], [0.0, 32.0, 12.0], [0.0, 0.0, 1.0]])
    normal = torch.nn.functional.normalize(torch.tensor([0.2, -0.3, -1.0]), dim=0)
    z = _plane_z(h, w, k, normal, -3.0)
    out = 7.0 / z if prediction == "inverse_depth" else 0.25 * z
    out[5, 7] = 0.0  # no prediction there
    monkeypatch.setattr(est, "depth", lambda image: out)
    n = est(torch.rand(h, w, 3), k)
    zero = n.norm(dim=-1) == 0
    assert zero[5, 7] and zero[4, 7] and zero[5, 8]
    inner = ~zero
    inner[0], inner[-1], inner[:, 0], inner[:, -1] = False, False, False, False
    assert inner.sum() == (h - 2) * (w - 2) - 5
    assert (n[inner] - normal).abs().max() < 1e-4
    with pytest.raises(ValueError, match="prediction must be"):
        NormalEstimator(str(tiny_dpt), device="cpu", prediction="disparity")
