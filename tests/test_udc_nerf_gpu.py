"""UDC-NeRF on CUDA: both pipeline configs (fast and paper) give the CPU's renders and train.

Run by `make gpu-check` on a machine with a GPU (skipped elsewhere). Kept to light imports:
the GPU machine runs it with its own Python and the carried wheels.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import layerforge
from layerforge.models.udc_nerf import UDCNeRF, paper_terms
from layerforge.pipelines.decomp_nerf_config import ModelConfig

CONFIGS = Path(layerforge.__file__).parent / "configs" / "pipeline"
BOXES = (((-0.5, -0.5, -0.5), (0.0, 0.5, 0.5)), ((0.0, -0.5, -0.5), (0.5, 0.5, 0.5)), ((-0.3, -0.3, -0.3), (0.3, 0.3, 0.3)))


def _model_config(name: str):
    section = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml").get("model", {}))
    if name == "decomp_nerf_paper":  # the paper file overrides the fast one
        section = {**OmegaConf.to_container(OmegaConf.load(CONFIGS / "decomp_nerf.yaml")["model"]), **section}
    return ModelConfig(**section).udc_config(3, BOXES)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["decomp_nerf", "decomp_nerf_paper"])
def test_config_renders_like_the_cpu_and_trains_on_cuda(name):
    torch.manual_seed(0)
    model = UDCNeRF(_model_config(name)).eval()
    g = torch.Generator().manual_seed(1)
    origins = torch.tensor([0.0, -1.2, 0.4]) + 0.05 * torch.randn(512, 3, generator=g)
    directions = torch.nn.functional.normalize(torch.tensor([0.0, 1.0, -0.3]) + 0.3 * torch.randn(512, 3, generator=g), dim=-1)
    with torch.no_grad():
        cpu = model(origins, directions)
        gpu_model = model.cuda()
        gpu = gpu_model(origins.cuda(), directions.cuda())
    for key in ("rgb", "merged_rgb", "component_alpha", "segmentation"):
        assert torch.allclose(cpu[key], gpu[key].cpu(), atol=2e-3), key

    gpu_model.train()
    batch = {"origins": origins.cuda(), "directions": directions.cuda(), "rgb": torch.rand(512, 3, generator=g).cuda(),
             "instance": torch.randint(0, 4, (512,), generator=g).cuda(),
             "pseudo_background": torch.rand(512, 3, generator=g).cuda(), "seed": 3}
    info = {"log": {}}
    loss = sum(t.weight * t(gpu_model, batch, 0, info) for t in paper_terms())
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in gpu_model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)
