"""ControlNet-guided SDS and the OpenPose skeleton drawing (linear images; sRGB at the ControlNet)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layerforge.assets.types import linear_to_srgb, srgb_to_linear
from layerforge.models.guidance import ControlNetSDSGuidance, draw_openpose, project_points
from layerforge.models.guidance.openpose import COLORS, LIMBS

S = 8


@pytest.fixture(scope="module")
def cn_guidance(tiny_models):
    return ControlNetSDSGuidance.from_config({
        "pretrained_model_name_or_path": str(tiny_models.sd), "controlnet_name_or_path": str(tiny_models.controlnet),
        "device": "cpu", "latent_size": S, "latent_mode": "direct", "prompt": "a jacket", "guidance_scale": 7.5,
    })


def _skeleton(offset: float = 0.0) -> torch.Tensor:
    kp = torch.tensor([[32, 10], [32, 18], [26, 18], [22, 28], [20, 38], [38, 18], [42, 28], [44, 38], [28, 38],
                       [28, 48], [28, 58], [36, 38], [36, 48], [36, 58], [30, 8], [34, 8], [28, 9], [36, 9]],
                      dtype=torch.float32)
    return kp + offset


def test_control_image_conditions_the_prediction(cn_guidance, oracle_cls):
    images = torch.rand(2, S, S, 4, requires_grad=True)
    t, noise = torch.tensor([300, 700]), torch.randn(2, 4, S, S)
    pose_a = torch.stack([draw_openpose(_skeleton(), 64, 64)] * 2)
    pose_b = torch.stack([draw_openpose(_skeleton(-12.0), 64, 64)] * 2)
    out_a = cn_guidance(images, control_image=pose_a, timesteps=t, noise=noise)
    out_a.loss.backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    out_a2 = cn_guidance(images, control_image=pose_a, timesteps=t, noise=noise)
    out_b = cn_guidance(images, control_image=pose_b, timesteps=t, noise=noise)
    torch.testing.assert_close(out_a.grad, out_a2.grad)
    assert (out_a.grad - out_b.grad).abs().max() > 1e-4
    # control images at another resolution are resized to latent_size * 8
    out_big = cn_guidance(images, control_image=torch.nn.functional.interpolate(
        pose_a.permute(0, 3, 1, 2), (128, 128), mode="bilinear").permute(0, 2, 3, 1), timesteps=t, noise=noise)
    assert out_big.grad.shape == out_a.grad.shape


def test_controlnet_sds_exact_under_oracle(cn_guidance, oracle_cls):
    unet = cn_guidance.unet
    try:
        target = torch.randn(1, 4, S, S)
        oracle = oracle_cls(target, cn_guidance.alphas_cumprod)
        cn_guidance.unet = oracle
        images = torch.rand(1, S, S, 4)
        t, noise = torch.tensor([500]), torch.randn(1, 4, S, S)
        out = cn_guidance(images, control_image=draw_openpose(_skeleton(), 64, 64)[None], timesteps=t, noise=noise)
        abar = cn_guidance.alphas_cumprod[t].view(-1, 1, 1, 1)
        x = images.permute(0, 3, 1, 2) * 2 - 1
        expected = (1 - abar) * (oracle.expected_eps(abar.sqrt() * x + (1 - abar).sqrt() * noise, t) - noise)
        torch.testing.assert_close(out.grad, expected)
    finally:
        cn_guidance.unet = unet


def test_openpose_colours_and_visibility():
    kp = _skeleton()
    img = draw_openpose(kp, 64, 64, stick_width=1, joint_radius=1)
    assert img.shape == (64, 64, 3) and img.dtype == torch.float32
    img = linear_to_srgb(img)  # the drawing is linear; the annotator's colours are 8-bit sRGB
    for j in range(18):  # joint discs are drawn last, in the joint's colour
        x, y = int(kp[j, 0]), int(kp[j, 1])
        if j in (14, 15, 16, 17, 0):
            continue  # face joints are close together; their discs overlap
        np.testing.assert_allclose(img[y, x].numpy(), np.array(COLORS[j]) / 255.0, atol=1 / 255)
    # the limb right hip -> right knee (limb 7) is drawn at 60 % of its colour
    mid = ((kp[8] + kp[9]) / 2).floor().int()
    np.testing.assert_allclose(img[mid[1], mid[0]].numpy(), 0.6 * np.array(COLORS[LIMBS.index((8, 9))]) / 255,
                               atol=2 / 255)
    hidden = torch.ones(18, dtype=torch.bool)
    hidden[4] = False  # right wrist: its disc and the forearm disappear
    img2 = linear_to_srgb(draw_openpose(kp, 64, 64, visible=hidden, stick_width=1, joint_radius=1))
    assert img2[38, 20].sum() == 0 and img[38, 20].sum() > 0  # wrist disc
    assert img2[33, 21].sum() == 0 and img[33, 21].sum() > 0  # forearm
    assert draw_openpose(kp + 1000, 64, 64).sum() == 0  # off-image joints are not drawn
    two = linear_to_srgb(draw_openpose(torch.stack([kp, kp + torch.tensor([0.0, 2.0])]), 64, 64))
    assert two.sum() > img.sum() * 0.9


def test_project_points_opencv_convention():
    K = torch.tensor([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]])
    w2c = torch.eye(4)
    w2c[2, 3] = 2.0  # camera 2 m behind the origin, looking along +z
    uv, front = project_points(torch.tensor([[0.0, 0, 0], [0.2, 0.1, 0], [0, 0, -3]]), K, w2c)
    torch.testing.assert_close(uv[:2], torch.tensor([[32.0, 32.0], [42.0, 37.0]]))
    assert front.tolist() == [True, True, False]


def _spy_controlnet_cond(monkeypatch, controlnet) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    real = controlnet.forward

    def forward(*args, controlnet_cond, **kwargs):
        seen.append(controlnet_cond.detach().clone())
        return real(*args, controlnet_cond=controlnet_cond, **kwargs)

    monkeypatch.setattr(controlnet, "forward", forward)
    return seen


def test_openpose_drawing_is_linear():
    """draw_openpose returns linear RGB: a joint disc is srgb_to_linear of the annotator's colour."""
    kp = _skeleton()
    img = draw_openpose(kp, 64, 64, stick_width=1, joint_radius=1)
    x, y = int(kp[2, 0]), int(kp[2, 1])  # right shoulder: (255, 170, 0)
    np.testing.assert_allclose(img[y, x].numpy(), srgb_to_linear(np.array(COLORS[2]) / 255.0), atol=1e-6)
    assert abs(float(img[y, x, 1]) - 170 / 255) > 0.2  # not the sRGB code value


def test_controlnet_receives_the_annotators_srgb_values(cn_guidance, monkeypatch):
    """Contract: control images are linear; the ControlNet's input is their sRGB encoding, so a
    draw_openpose skeleton reaches it as the annotator's exact 8-bit values."""
    seen = _spy_controlnet_cond(monkeypatch, cn_guidance.controlnet)
    kp = _skeleton()
    pose = draw_openpose(kp, 64, 64)[None]  # at the UNet's pixel size (8 * latent): no resize
    images, t, noise = torch.rand(1, S, S, 4), torch.tensor([500]), torch.randn(1, 4, S, S)
    cn_guidance(images, control_image=pose, timesteps=t, noise=noise)
    cond = seen[0]
    assert cond.shape == (2, 3, 64, 64)  # [cond; uncond] batches both see it
    torch.testing.assert_close(cond[0], linear_to_srgb(pose)[0].permute(2, 0, 1), rtol=0, atol=1e-5)
    codes = cond * 255
    assert (codes - codes.round()).abs().max() < 1e-3  # exactly the annotator's 8-bit codes
    x, y = int(kp[2, 0]), int(kp[2, 1])
    torch.testing.assert_close(cond[0, :, y, x], torch.tensor(COLORS[2]) / 255.0, rtol=0, atol=1e-5)


def test_data_control_images_are_not_colour_encoded(cn_guidance, monkeypatch):
    seen = _spy_controlnet_cond(monkeypatch, cn_guidance.controlnet)
    monkeypatch.setattr(cn_guidance.config, "control_image_color", False)  # e.g. a depth ControlNet
    depth = torch.rand(1, 64, 64, 3)
    cn_guidance(torch.rand(1, S, S, 4), control_image=depth, timesteps=torch.tensor([500]),
                noise=torch.randn(1, 4, S, S))
    torch.testing.assert_close(seen[0][0], depth[0].permute(2, 0, 1))
