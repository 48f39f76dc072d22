"""DepthEstimator / Segmenter: tiny random transformers models loaded from a local folder."""

from __future__ import annotations

import pytest
import torch

from layerforge.errors import ModelNotFoundError
from layerforge.models.guidance import DepthEstimator, Segmenter


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
