"""GALA's two layers: human and object DMTet geometries in canonical space, posed by LBS.

Both layers live in the canonical space of :class:`~layerforge.models.gala.canonical.CanonicalSpace`
on one tet grid box; each step extracts both canonical meshes, borrows skinning from the
nearest canonical body vertices and poses them to the scan's pose (GALA ``getMesh`` /
``cano_to_posed``). The losses (:mod:`.losses`) compare those posed meshes with the scan.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from layerforge.models.dmtet import DMTetConfig, DMTetGeometry, marching_tets
from layerforge.models.gala.canonical import CanonicalSpace, PosedBody

LAYERS = ("human", "object")


@dataclasses.dataclass
class LayerMeshes:
    """One step's meshes: per layer ``canonical`` [V, 3], ``posed`` [V, 3], ``faces`` [F, 3] and
    the grid ``sdf`` [N] they came from."""

    canonical: dict[str, Tensor]
    posed: dict[str, Tensor]
    faces: dict[str, Tensor]
    sdf: dict[str, Tensor]


class GalaLayers(nn.Module):
    """Human and object DMTet layers over ``bounds`` [2, 3] (canonical space, metres).

    ``space`` and ``target`` (the scan's pose) are not parameters and are not saved.
    """

    def __init__(self, bounds: Tensor, config: DMTetConfig, space: CanonicalSpace, target: PosedBody, seed: int = 0) -> None:
        super().__init__()
        self.human = DMTetGeometry(bounds, config, seed=seed)
        self.object = DMTetGeometry(bounds, config, seed=seed + 1)
        self.space = space
        self.target = target

    def layer(self, name: str) -> DMTetGeometry:
        return self.human if name == "human" else self.object

    def meshes(self, pose: PosedBody | None = None, detach: bool = False) -> LayerMeshes:
        """Extract both layers and pose them (default: to the scan's pose)."""
        target = self.target if pose is None else pose
        can, posed, faces, sdfs = {}, {}, {}, {}
        for name in LAYERS:
            geo = self.layer(name)
            sdf, verts_grid = geo.sdf_and_deform()
            v, f = marching_tets(verts_grid, sdf, geo.tets)
            if detach:
                v = v.detach()
            can[name], faces[name], sdfs[name] = v, f, sdf
            posed[name] = self.space.to_posed(v, target) if len(v) else v
        return LayerMeshes(can, posed, faces, sdfs)


class TexturedLayers(nn.Module):
    """GALA's texture stage model: a colour field per layer on fixed meshes (meshes are not parameters).

    Args:
        canonical: {name: [V, 3]} canonical vertices (where the fields are queried, metres).
        posed: {name: [V, 3]} the same vertices posed to the scan (where they are rendered).
        faces: {name: [F, 3]}.
        bounds: [2, 3] the fields' box (canonical space).
        config: the fields' sizes (:class:`~layerforge.models.dp_recon.texture.TextureFieldConfig`).
    """

    def __init__(self, canonical: dict[str, Tensor], posed: dict[str, Tensor], faces: dict[str, Tensor],
                 bounds: Tensor, config=None) -> None:
        from layerforge.models.dp_recon.texture import TextureField, TextureFieldConfig

        super().__init__()
        self.fields = nn.ModuleDict({n: TextureField(bounds, config or TextureFieldConfig()) for n in canonical})
        self.canonical, self.posed, self.faces = canonical, posed, faces

    def render(self, name: str, cameras) -> tuple[Tensor, Tensor]:
        """(rgb [B, H, W, 3], alpha [B, H, W, 1]) of layer ``name`` posed, unlit."""
        from layerforge.renderers.layers import render_colours

        dev = next(self.parameters()).device
        rgb, alpha, _ = render_colours(self.posed[name].to(dev), self.faces[name].to(dev), cameras.to(device=dev),
                                       field=self.fields[name], field_points=self.canonical[name].to(dev))
        return rgb, alpha

    def render_canonical(self, cameras, names: tuple[str, ...] = LAYERS) -> tuple[Tensor, Tensor]:
        """(rgb [B, H, W, 3], alpha [B, H, W, 1]) of the layers together in canonical space, unlit:
        each pixel's colour from the field of the layer it sees (GALA's canonical texture SDS)."""
        from layerforge.renderers.mesh import antialias, interpolate, rasterize

        dev = next(self.parameters()).device
        cams = cameras.to(device=dev)
        verts = [self.canonical[n].to(dev) for n in names]
        offs = [0]
        for v in verts[:-1]:
            offs.append(offs[-1] + len(v))
        allv = torch.cat(verts)
        allf = torch.cat([self.faces[n].to(dev) + o for n, o in zip(names, offs)])
        owner = torch.cat([torch.full((len(self.faces[n]),), k, device=dev) for k, n in enumerate(names)])
        frags = rasterize(allv, allf, cams)
        pts = interpolate(allv, frags, allf)
        hit = frags.mask
        layer = torch.where(hit, owner[frags.face_id.clamp_min(0)], torch.full_like(frags.face_id, -1))
        rgb = torch.zeros(*hit.shape, 3, device=dev)
        for k, n in enumerate(names):
            sel = layer == k
            if bool(sel.any()):
                rgb = rgb.masked_scatter(sel[..., None].expand_as(rgb), self.fields[n](pts[sel]).to(rgb))
        a = hit[..., None].to(rgb)
        img = antialias(torch.cat([rgb * a, a], dim=-1), frags, allv, allf, cams)
        return img[..., :3], img[..., 3:]
