"""Tiny random diffusion models saved like real ones, and an oracle prior.

The session fixture ``tiny_models`` builds a Stable-Diffusion-shaped pipeline (UNet, VAE,
CLIP text encoder with a hand-written BPE vocabulary, DDIM scheduler), an inpainting
pipeline (9-channel UNet) and a ControlNet, all with a few thousand random parameters,
``save_pretrained``s them to a temp folder in the real layout (model_index.json, unet/,
vae/, ...) and returns the paths: every test then loads them through the production loader.
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

LATENT = 8  # latent side; images are 8x larger (VAE with 4 blocks)
TEXT_LEN = 16


@dataclass
class TinyModels:
    sd: Path  # text-to-image pipeline folder
    inpaint: Path  # inpainting pipeline folder (9-channel UNet)
    controlnet: Path  # ControlNetModel folder


def _tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    chars = string.ascii_lowercase + ",."
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges = [("a", "n"), ("an", "d</w>"), ("v", "i"), ("vi", "e"), ("vie", "w</w>"), ("o", "f"), ("of", "f</w>")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=TEXT_LEN)


def _text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         vocab_size=vocab_size, max_position_embeddings=TEXT_LEN, bos_token_id=0,
                         eos_token_id=1, pad_token_id=1, projection_dim=16)
    return CLIPTextModel(cfg)


def _unet(in_channels: int = 4):
    from diffusers import UNet2DConditionModel

    # Stable Diffusion's topology in miniature: 4 levels, 3 stride-2 downsamplings (so the total
    # stride is 8 latent pixels, as in SD 1.x/2.x), cross-attention in the first three.
    return UNet2DConditionModel(
        sample_size=LATENT, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 8, 16, 16), down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=16, norm_num_groups=4,
        attention_head_dim=2,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 4, 4, 4), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=2,
        sample_size=LATENT * 8,
    )


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def build_tiny_models(root: Path) -> TinyModels:
    """Build and save the tiny random models under ``root`` (seeded, ~1 s)."""
    from diffusers import ControlNetModel, StableDiffusionInpaintPipeline, StableDiffusionPipeline

    torch.manual_seed(0)
    tok = _tokenizer()
    text = _text_encoder(len(tok.get_vocab()))
    unet, vae = _unet(), _vae()
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=_scheduler(),
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(root / "tiny-sd")
    StableDiffusionInpaintPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=_unet(9), scheduler=_scheduler(),
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False).save_pretrained(root / "tiny-sd-inpaint")
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 4, 4, 4))
    # A real ControlNet starts with zero convolutions (no effect); give ours random ones so
    # tests can see the conditioning image change the prediction.
    for name, p in controlnet.named_parameters():
        if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
            torch.nn.init.normal_(p, std=0.3)
    controlnet.save_pretrained(root / "tiny-controlnet")
    return TinyModels(sd=root / "tiny-sd", inpaint=root / "tiny-sd-inpaint", controlnet=root / "tiny-controlnet")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return build_tiny_models(tmp_path_factory.mktemp("guidance_models"))


@pytest.fixture(scope="session")
def tiny_sd_pipe(tiny_models: TinyModels):
    """The tiny text-to-image pipeline, loaded once through the production loader (CPU, fp32)."""
    from layerforge.models.guidance.loading import LoadOptions, load_pipeline

    return load_pipeline(str(tiny_models.sd), options=LoadOptions(device="cpu", dtype="float32"))


class OracleUNet(torch.nn.Module):
    """A 'UNet' whose noise prediction is exact for one known clean latent.

    For x_t = sqrt(abar) x0 + sqrt(1 - abar) eps it returns
    eps_hat = (x_t - sqrt(abar) target) / sqrt(1 - abar), which equals eps when x0 == target,
    so eps_hat - eps = sqrt(abar / (1 - abar)) (x0 - target): SDS under it pulls x0 to target.
    Conditioning (text, ControlNet residuals) is accepted and ignored.
    """

    def __init__(self, target: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("target", target.float())
        self.register_buffer("abar", alphas_cumprod.float())
        self.calls = 0

    @property
    def device(self) -> torch.device:
        return self.target.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def expected_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.abar[t].view(-1, 1, 1, 1)
        target = self.target.repeat(x_t.shape[0] // self.target.shape[0], 1, 1, 1)  # CFG stacks [cond; uncond]
        return (x_t - a.sqrt() * target) / (1 - a).sqrt()

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, encoder_hidden_states=None, **_: object):
        self.calls += 1
        return SimpleNamespace(sample=self.expected_eps(x_t.float(), t))


@pytest.fixture
def oracle_cls() -> type[OracleUNet]:
    return OracleUNet
