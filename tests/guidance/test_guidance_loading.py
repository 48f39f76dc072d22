"""Loading: real folder layout, one-line errors naming the config key, dtype/device/offline."""

from __future__ import annotations

import shutil

import pytest
import torch

from layerforge.errors import ConfigError, ModelNotFoundError
from layerforge.models.guidance import LoadOptions, SDSGuidance, load_model, load_pipeline
from layerforge.models.guidance.loading import is_offline, resolve_dtype

KEY = "guidance.pretrained_model_name_or_path"


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and "; " in msg
    return msg


def test_loads_real_layout_frozen_on_cpu(tiny_models):
    g = SDSGuidance.from_config({"pretrained_model_name_or_path": str(tiny_models.sd), "device": "cpu",
                                 "latent_size": 8, "prompt": "a chair", "attention_slicing": True, "vae_tiling": True})
    assert g.device.type == "cpu" and g.dtype == torch.float32
    assert g.alphas_cumprod.shape == (1000,)
    assert not any(p.requires_grad for p in g.unet.parameters())
    assert g.vae.use_tiling


def test_dtype_from_config(tiny_models):
    pipe = load_pipeline(tiny_models.sd, options=LoadOptions(device="cpu", dtype="bfloat16"))
    assert pipe.unet.dtype == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    with pytest.raises(ConfigError, match="guidance.dtype"):
        LoadOptions.from_mapping({"dtype": "float8"})


def test_missing_folder_names_key_and_layout(tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        SDSGuidance.from_config({"pretrained_model_name_or_path": str(tmp_path / "nope"), "device": "cpu"})
    msg = _one_line(err)
    assert KEY in msg and "model_index.json" in msg and "unet/" in msg and "folder not found" in msg
    with pytest.raises(ModelNotFoundError, match=KEY):
        SDSGuidance.from_config({"device": "cpu"})  # nothing configured


def test_incomplete_folder(tiny_models, tmp_path):
    broken = tmp_path / "sd"
    shutil.copytree(tiny_models.sd, broken)
    for f in (broken / "unet").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelNotFoundError) as err:
        load_pipeline(broken, key="dp_recon.guidance.pretrained_model_name_or_path")
    msg = _one_line(err)
    assert "dp_recon.guidance.pretrained_model_name_or_path" in msg and "unet/ has no weights" in msg
    shutil.rmtree(broken / "tokenizer")
    (broken / "model_index.json").unlink()
    with pytest.raises(ModelNotFoundError, match="no model_index.json"):
        load_pipeline(broken)


def test_uncached_hub_id_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert is_offline(None) and not is_offline(False)
    with pytest.raises(ModelNotFoundError) as err:
        load_pipeline("layerforge-tests/no-such-model", options=LoadOptions(device="cpu"))
    assert KEY in _one_line(err)


def test_controlnet_folder(tiny_models, tmp_path):
    cn = load_model("ControlNetModel", tiny_models.controlnet, key="guidance.controlnet_name_or_path",
                    options=LoadOptions(device="cpu"))
    assert not any(p.requires_grad for p in cn.parameters())
    with pytest.raises(ModelNotFoundError, match="guidance.controlnet_name_or_path.*no config.json"):
        load_model("ControlNetModel", tmp_path, key="guidance.controlnet_name_or_path")


def test_shipped_configs_parse():
    from pathlib import Path

    from omegaconf import OmegaConf

    from layerforge.models.guidance import ControlNetSDSConfig, InpaintConfig, PanoramaConfig, SDSConfig
    from layerforge.models.guidance.loading import config_from_mapping

    folder = Path(__file__).resolve().parents[2] / "layerforge" / "configs" / "guidance"
    files = sorted(folder.glob("*.yaml"))
    assert len(files) >= 4
    for f in files:
        name = f.stem
        cls = (ControlNetSDSConfig if "controlnet" in name else SDSConfig if name.startswith("sd")
               else InpaintConfig if name.startswith("inpaint") else PanoramaConfig)
        cfg = config_from_mapping(cls, OmegaConf.load(f))
        assert isinstance(cfg, cls), name
    dp = config_from_mapping(SDSConfig, OmegaConf.load(folder / "sd21_sds.yaml"))
    assert dp.guidance_scale == 50.0 and dp.weighting == "fantasia3d" and dp.latent_mode == "direct"
