"""TextSegmenter (Grounded-SAM, CLIPSeg): tiny random transformers models saved to a temp folder
and loaded through the production loader.

The detector's scores and SAM's masks are forced where a test needs a known answer: the
thresholds, the box geometry handed to SAM and the union of the masks are then checked
against a hand-built expectation.
"""

from __future__ import annotations

import string
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from layerforge.errors import ConfigError, ModelNotFoundError
from layerforge.models.guidance.text_segmenter import (
    TextSegmenter,
    TextSegmenterConfig,
    grounding_caption,
)

H, W = 24, 32  # test images; SAM resizes them x2 (longest edge 64), so box edges on integers stay exact
WORDS = ["a", "red", "jacket", "shirt", "hat", "person"]


def _bert_tokenizer():
    from transformers import BertTokenizer

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *WORDS])}
    return BertTokenizer(vocab=vocab)


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + ".":
        vocab[c] = len(vocab)
    for c in string.ascii_lowercase + ".":
        vocab[c + "</w>"] = len(vocab)
    merges = [("j", "a"), ("ja", "c"), ("jac", "k"), ("e", "t</w>")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=16)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Folders of a tiny Grounding DINO (Swin + BERT), SAM and CLIPSeg, saved like real ones."""
    from transformers import (
        BertConfig,
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        CLIPSegTextConfig,
        CLIPSegVisionConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
        SwinConfig,
        ViTImageProcessor,
    )

    root = tmp_path_factory.mktemp("text_segmenter")
    torch.manual_seed(0)
    tok = _bert_tokenizer()
    swin = SwinConfig(image_size=128, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                      window_size=4, out_features=["stage2", "stage3", "stage4"])
    bert = BertConfig(vocab_size=len(tok.get_vocab()), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=32)
    # d_model 32: the input projections use GroupNorm(32); 2 decoder layers: the box heads are tied across layers
    dino = GroundingDinoConfig(backbone_config=swin, text_config=bert, num_queries=10, encoder_layers=1,
                               decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
                               decoder_attention_heads=2, d_model=32, max_text_len=32, encoder_n_points=2,
                               decoder_n_points=2)
    GroundingDinoForObjectDetection(dino).save_pretrained(root / "dino")
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 96, "longest_edge": 128}),
                           tokenizer=tok).save_pretrained(root / "dino")

    sam = SamConfig(
        vision_config=SamVisionConfig(hidden_size=16, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                                      image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1],
                                      num_pos_feats=8, mlp_dim=32),
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8,
                                                     mask_input_channels=4),
        mask_decoder_config=SamMaskDecoderConfig(hidden_size=16, mlp_dim=32, num_attention_heads=2,
                                                 iou_head_hidden_dim=16))
    SamModel(sam).save_pretrained(root / "sam")
    SamProcessor(image_processor=SamImageProcessor(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}, mask_size={"longest_edge": 32},
        mask_pad_size={"height": 32, "width": 32})).save_pretrained(root / "sam")

    ctok = _clip_tokenizer()
    clipseg = CLIPSegConfig(
        text_config=CLIPSegTextConfig(vocab_size=len(ctok.get_vocab()), hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16,
                                      bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=CLIPSegVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16, extract_layers=[0, 1], reduce_dim=8, decoder_num_attention_heads=2,
        decoder_intermediate_size=16)
    CLIPSegForImageSegmentation(clipseg).save_pretrained(root / "clipseg")
    CLIPSegProcessor(image_processor=ViTImageProcessor(size={"height": 32, "width": 32}),
                     tokenizer=ctok).save_pretrained(root / "clipseg")
    return SimpleNamespace(dino=root / "dino", sam=root / "sam", clipseg=root / "clipseg")


@pytest.fixture(scope="module")
def grounded(tiny):
    cfg = {"detector_name_or_path": str(tiny.dino), "sam_name_or_path": str(tiny.sam), "device": "cpu"}
    return TextSegmenter(cfg)


@pytest.fixture(scope="module")
def clipseg(tiny):
    return TextSegmenter({"clipseg_name_or_path": str(tiny.clipseg), "device": "cpu"})


# -- forced model outputs ----------------------------------------------------------------------

def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def _force_detections(monkeypatch, seg: TextSegmenter, per_image: list[list[tuple[float, tuple[int, int, int, int]]]]):
    """Replace the detector's scores and boxes: image b gets queries (score, (x0, y0, x1, y1) in
    pixels of the H x W image) on the prompt's first word; every other query scores ~0."""
    real = seg.detector.forward

    def forward(*args, **kwargs):
        out = real(*args, **kwargs)
        logits = torch.full_like(out.logits, -20.0)
        boxes = torch.full_like(out.pred_boxes, 0.5)
        for b, dets in enumerate(per_image[: len(logits)]):
            for q, (score, (x0, y0, x1, y1)) in enumerate(dets):
                logits[b, q, 1] = _logit(score)  # token 1: the first word after [CLS]
                boxes[b, q] = torch.tensor([(x0 + x1) / 2 / W, (y0 + y1) / 2 / H, (x1 - x0) / W, (y1 - y0) / H])
        out.logits, out.pred_boxes = logits, boxes
        return out

    monkeypatch.setattr(seg.detector, "forward", forward)


def _box_masks_sam(monkeypatch, seg: TextSegmenter) -> list[torch.Tensor]:
    """Make SAM's mask for each box the box itself (logits +1 inside, -1 outside, at the padded
    input size), so the expected union can be drawn by hand; returns the boxes SAM received."""
    seen: list[torch.Tensor] = []
    side = seg.sam_processor.image_processor.pad_size["height"]

    def forward(image_embeddings=None, input_boxes=None, multimask_output=True, **_):
        seen.append(input_boxes.detach().clone())
        centres = torch.arange(side, dtype=torch.float32) + 0.5
        x0, y0, x1, y1 = (input_boxes[0, :, i, None, None].float() for i in range(4))
        inside = (centres[None, None, :] > x0) & (centres[None, None, :] < x1) & \
                 (centres[None, :, None] > y0) & (centres[None, :, None] < y1)
        logits = inside.float() * 2 - 1  # [N, side, side]
        return SimpleNamespace(pred_masks=logits[None, :, None], iou_scores=torch.ones(1, len(logits), 1))

    monkeypatch.setattr(seg.sam, "forward", forward)
    return seen


def _draw(*boxes: tuple[int, int, int, int]) -> torch.Tensor:
    mask = torch.zeros(H, W, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask


# -- tests ---------------------------------------------------------------------------------------

def test_grounded_sam_full_path_returns_an_image_size_bool_mask(tiny, grounded):
    image = torch.rand(H, W, 3)
    mask = grounded(image, "red jacket")
    assert mask.shape == (H, W) and mask.dtype == torch.bool
    # every query kept (scores > 0): the real SAM runs on 10 boxes and its masks are unioned
    every = TextSegmenter({"detector_name_or_path": str(tiny.dino), "sam_name_or_path": str(tiny.sam),
                           "box_threshold": 0.0, "device": "cpu", "batch_size": 2})
    union = every(image.numpy(), "jacket")
    assert union.shape == (H, W) and union.dtype == torch.bool
    dets = every.detect(image, "jacket")
    assert dets["boxes"].shape == (10, 4) and len(dets["labels"]) == 10
    assert all(set(label.replace(".", " ").split()) <= {"jacket"} for label in dets["labels"])  # no [CLS]/[SEP]
    assert (dets["boxes"][:, 0::2] <= W).all() and (dets["boxes"][:, 1::2] <= H).all() and (dets["boxes"] >= 0).all()
    # batch (3 images in chunks of 2) == one call per image
    images = torch.stack([image, torch.rand(H, W, 3), torch.rand(H, W, 3)])
    batch = every.batch(images, "jacket")
    assert batch.shape == (3, H, W) and batch.dtype == torch.bool
    assert torch.equal(batch[0], union)
    for b in range(3):
        assert torch.equal(batch[b], every(images[b], "jacket"))


def test_boxes_above_the_box_threshold_give_the_union_of_their_sam_masks(grounded, monkeypatch):
    a, b, c = (2, 4, 10, 12), (8, 10, 20, 22), (22, 0, 30, 8)  # b overlaps a
    # image 0: a (0.9) and b (0.31) pass 0.3, c (0.29) does not; image 1: nothing passes
    _force_detections(monkeypatch, grounded, [[(0.9, a), (0.31, b), (0.29, c)], [(0.29, a), (0.1, b)]])
    seen = _box_masks_sam(monkeypatch, grounded)
    masks = grounded.batch(torch.rand(2, H, W, 3), "jacket")
    assert torch.equal(masks[0], _draw(a, b)) and masks[0].sum() == 64 + 144 - 4
    assert not masks[1].any()
    # SAM got the two kept boxes, in its resized input frame (x2), for image 0 only
    assert len(seen) == 1 and seen[0].shape == (1, 2, 4)
    torch.testing.assert_close(seen[0][0].float(), 2 * torch.tensor([a, b], dtype=torch.float32), atol=1e-4, rtol=0)
    dets = grounded.detect(torch.rand(H, W, 3), "jacket")
    assert dets["labels"] == ["jacket", "jacket"]
    torch.testing.assert_close(dets["scores"], torch.tensor([0.9, 0.31]))
    # nothing above the threshold: all False, SAM not called
    _force_detections(monkeypatch, grounded, [[(0.3, a), (0.05, c)]])
    assert not grounded(torch.rand(H, W, 3), "jacket").any() and len(seen) == 1


def test_the_box_threshold_comes_from_the_config(tiny, monkeypatch):
    seg = TextSegmenter(TextSegmenterConfig(detector_name_or_path=str(tiny.dino), sam_name_or_path=str(tiny.sam),
                                            box_threshold=0.2, device="cpu"))
    a, c = (2, 4, 10, 12), (22, 0, 30, 8)
    _force_detections(monkeypatch, seg, [[(0.9, a), (0.29, c), (0.15, (0, 0, 4, 4))]])
    _box_masks_sam(monkeypatch, seg)
    assert torch.equal(seg(torch.rand(H, W, 3), "jacket"), _draw(a, c))


def test_models_see_the_srgb_encoding_of_the_linear_image(grounded, clipseg, monkeypatch):
    """A linear 0.5 grey reaches every processor as the 8-bit sRGB code 188."""
    from transformers import CLIPSegProcessor, GroundingDinoProcessor, SamProcessor

    seen: list = []
    for cls in (GroundingDinoProcessor, SamProcessor, CLIPSegProcessor):
        real = cls.__call__

        def spy(self, *args, images=None, _real=real, **kwargs):
            seen.append(images)
            return _real(self, *args, images=images, **kwargs)

        monkeypatch.setattr(cls, "__call__", spy)
    _force_detections(monkeypatch, grounded, [[(0.9, (2, 4, 10, 12))]])
    grey = torch.full((H, W, 3), 0.5)
    grounded(grey, "jacket")
    clipseg(grey.numpy(), "jacket")
    assert len(seen) == 3  # detector, SAM, CLIPSeg
    for images in seen:
        for im in (images if isinstance(images, list) else [images]):
            arr = np.asarray(im)
            assert arr.dtype == np.uint8 and arr.shape == (H, W, 3) and (arr == 188).all()


def test_clipseg_thresholds_the_sigmoid_resized_to_the_image(clipseg, monkeypatch):
    image = torch.rand(H, W, 3)
    mask = clipseg(image, "red jacket")
    assert mask.shape == (H, W) and mask.dtype == torch.bool
    batch = clipseg.batch(torch.stack([image, torch.rand(H, W, 3)]), "red jacket")
    assert batch.shape == (2, H, W) and torch.equal(batch[0], mask)
    # forced logits at the model's 32 x 32: left half sigmoid 0.6 (> 0.5), right half 0.4
    real = clipseg.clipseg.forward

    def forward(*args, **kwargs):
        out = real(*args, **kwargs)
        logits = torch.full_like(out.logits, _logit(0.4))
        logits[..., :16] = _logit(0.6)
        out.logits = logits
        return out

    monkeypatch.setattr(clipseg.clipseg, "forward", forward)
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[:, : W // 2] = True
    assert torch.equal(clipseg(image, "jacket"), expected)


def test_missing_models_and_backends_are_one_line_errors(tiny, tmp_path):
    def one_line(err, *words):
        msg = str(err.value)
        assert "\n" not in msg and all(w in msg for w in words), msg

    with pytest.raises(ModelNotFoundError) as err:
        TextSegmenter({"detector_name_or_path": str(tmp_path / "nope"), "sam_name_or_path": str(tiny.sam)})
    one_line(err, "segment.detector_name_or_path", "folder not found")
    with pytest.raises(ModelNotFoundError) as err:
        TextSegmenter({"detector_name_or_path": str(tiny.dino), "sam_name_or_path": str(tmp_path / "sam")},
                      key_prefix="gala.segment")
    one_line(err, "gala.segment.sam_name_or_path")
    with pytest.raises(ModelNotFoundError) as err:
        TextSegmenter({"detector_name_or_path": str(tiny.dino)})
    one_line(err, "segment.sam_name_or_path", "no model configured")
    (tmp_path / "weights_only").mkdir()
    (tmp_path / "weights_only" / "config.json").write_text("{}")
    (tmp_path / "weights_only" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelNotFoundError) as err:
        TextSegmenter({"clipseg_name_or_path": str(tmp_path / "weights_only")})
    one_line(err, "segment.clipseg_name_or_path", "preprocessor_config.json")
    with pytest.raises(ConfigError) as err:
        TextSegmenter(None)
    one_line(err, "no text segmenter", "segment.detector_name_or_path", "segment.sam_name_or_path",
             "segment.clipseg_name_or_path")
    with pytest.raises(ConfigError) as err:
        TextSegmenter({"sam_name_or_path": str(tiny.sam), "clipseg_name_or_path": str(tiny.clipseg)})
    one_line(err, "two text segmenters", "segment.sam_name_or_path", "segment.clipseg_name_or_path")
    with pytest.raises(ConfigError, match="segment.box_threshold"):
        TextSegmenter({"clipseg_name_or_path": str(tiny.clipseg), "box_threshold": 1.5})
    with pytest.raises(ConfigError, match="unknown key segment.threshold"):
        TextSegmenter({"clipseg_name_or_path": str(tiny.clipseg), "threshold": 0.5})


def test_inputs_are_checked(clipseg):
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        clipseg(torch.rand(H, W, 4), "jacket")
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        clipseg.batch(torch.rand(H, W, 3), "jacket")
    with pytest.raises(ValueError, match="prompt"):
        clipseg(torch.rand(H, W, 3), "  ")
    with pytest.raises(ConfigError, match="detect needs Grounded-SAM"):
        clipseg.detect(torch.rand(H, W, 3), "jacket")
    assert grounding_caption("  Red Jacket ") == "red jacket." and grounding_caption("hat.") == "hat."
