"""End to end: SDS under the oracle prior drives a mesh's colours through our mesh renderer."""

from __future__ import annotations

import pytest
import torch

mesh = pytest.importorskip("layerforge.renderers.mesh")
cameras = pytest.importorskip("layerforge.renderers.cameras")

from layerforge.models.guidance import SDSGuidance  # noqa: E402

S = 8  # latent side


def _plane(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """An n x n vertex grid in the x-z plane (1 m square, facing -y), two triangles per cell."""
    u = torch.linspace(-0.5, 0.5, n)
    xx, zz = torch.meshgrid(u, u, indexing="xy")
    verts = torch.stack([xx.reshape(-1), torch.zeros(n * n), zz.reshape(-1)], -1)
    faces = []
    for r in range(n - 1):
        for c in range(n - 1):
            i = r * n + c
            faces += [[i, i + 1, i + n], [i + 1, i + n + 1, i + n]]
    return verts, torch.tensor(faces)


def test_sds_fits_vertex_colours_through_the_renderer(tiny_sd_pipe, oracle_cls):
    torch.manual_seed(0)
    verts, faces = _plane()
    cam = cameras.Camera(K=cameras.intrinsics_from_fov(30.0, 32, 32),
                         world_to_camera=cameras.look_at((0.0, -2.0, 0.0)), width=32, height=32)

    def render(colours: torch.Tensor) -> torch.Tensor:
        out = mesh.render_mesh(verts, faces, cam, vertex_colors=colours, antialias_edges=False)
        return torch.cat([out.rgb, out.alpha], -1)  # [1, 32, 32, 4]: colour + mask, latent-direct

    g = SDSGuidance(dict(prompt="a plane", latent_size=S, device="cpu", latent_mode="direct", guidance_scale=7.5,
                         weighting="dreamfusion"), pipe=tiny_sd_pipe)
    target_colours = torch.rand(verts.shape[0], 3)
    target_latent = g.images_to_latents(render(target_colours)).detach()
    g.unet = oracle_cls(target_latent, g.alphas_cumprod)

    colours = torch.nn.Parameter(torch.full_like(target_colours, 0.5))
    opt = torch.optim.Adam([colours], lr=0.03)
    with torch.no_grad():
        start = float((g.images_to_latents(render(colours)) - target_latent).abs().mean())
    for step in range(150):
        opt.zero_grad()
        g(render(colours), step=step).loss.backward()
        opt.step()
    with torch.no_grad():
        err = float((g.images_to_latents(render(colours)) - target_latent).abs().mean())
    assert err < 0.1 * start, (start, err)
