"""The geometry stage's sampler: posed views of the scan with its renders, and canonical SDS views."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from layerforge.models.gala.views import Focus, sample_views
from layerforge.renderers.layers import render_layers


class GalaBatches:
    """Draws one step's batch (see :mod:`layerforge.models.gala.losses` for the keys).

    Args:
        scan_vertices: [V, 3] the scan in the normalised frame (posed). scan_faces: [F, 3].
        face_is_object: [F] bool, the segmentation stage's vote.
        body_vertices: [Vb, 3] the posed body fit; body_faces [Fb, 3].
        keypoints: [18, 3] canonical OpenPose-18 joints (for the ControlNet skeleton).
        posed_foci / canonical_foci: what posed recon views and canonical SDS views look at
            (:func:`~layerforge.models.gala.views.body_foci`).
        views_per_step: B (GALA: 4). resolution: recon image size. sds_resolution: SDS render size.
        close_up_probability: chance a view is a close-up (GALA's zoom-in).
        render_from: steps before this one carry only ``seed`` (the initialisation needs no views).
    """

    def __init__(self, scan_vertices: Tensor, scan_faces: Tensor, face_is_object: Tensor, body_vertices: Tensor,
                 body_faces: Tensor, keypoints: Tensor, posed_foci: Sequence[Focus], canonical_foci: Sequence[Focus],
                 views_per_step: int, resolution: int, sds_resolution: int, close_up_probability: float,
                 device: torch.device | str = "cpu", render_from: int = 0) -> None:
        self.scan_v, self.scan_f = scan_vertices.float().to(device), scan_faces.long().to(device)
        self.labels = torch.where(face_is_object.to(device), 0, 1)  # channel 0 object, 1 human (GALA gt_seg)
        obj = face_is_object.to(device)
        self.obj_f = self.scan_f[obj]
        self.body_v, self.body_f = body_vertices.float().to(device), body_faces.long().to(device)
        self.keypoints = keypoints.float().to(device)
        self.posed_foci, self.canonical_foci = list(posed_foci), list(canonical_foci)
        self.n, self.res, self.sds_res = views_per_step, resolution, sds_resolution
        self.p_close = close_up_probability
        self.device = device
        self.render_from = render_from

    def sample(self, step: int, generator: torch.Generator) -> dict:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        if step < self.render_from:
            return {"seed": seed}
        views = sample_views(self.n, self.res, self.posed_foci, self.p_close, generator, device=self.device)
        canonical = sample_views(self.n, self.sds_res, self.canonical_foci, self.p_close, generator, device=self.device)
        with torch.no_grad():
            gt = render_layers([self.scan_v], [self.scan_f], views.cameras, face_labels=self.labels, num_labels=2)
            gt_obj = render_layers([self.scan_v], [self.obj_f], views.cameras)
            body = render_layers([self.body_v], [self.body_f], views.cameras, antialiased=False)
        return {"seed": seed, "cameras": views.cameras, "views": views, "gt": gt, "gt_object": gt_obj,
                "body_alpha": body.alpha, "canonical": canonical, "keypoints": self.keypoints}


class ScanColourBatches:
    """The texture stage's sampler: posed views of the scan with its unlit colours and face labels.

    Args:
        scan_vertices [V, 3] / scan_faces [F, 3]: the scan (normalised frame); colours: the
            keyword arguments of :func:`~layerforge.models.gala.render.render_colours`
            (``colours=`` or ``uv=`` + ``texture=``). face_is_object [F] bool.
        foci: what views look at; views_per_step, resolution, close_up_probability as :class:`GalaBatches`.
        canonical_foci, keypoints [18, 3], sds_resolution: canonical views for the texture SDS (optional).
    """

    def __init__(self, scan_vertices: Tensor, scan_faces: Tensor, colours: dict, face_is_object: Tensor,
                 foci: Sequence[Focus], views_per_step: int, resolution: int, close_up_probability: float,
                 device: torch.device | str = "cpu", canonical_foci: Sequence[Focus] | None = None,
                 keypoints: Tensor | None = None, sds_resolution: int = 64) -> None:
        self.v, self.f = scan_vertices.float().to(device), scan_faces.long().to(device)
        self.colours = {k: v.to(device) for k, v in colours.items()}
        self.labels = torch.where(face_is_object.to(device), 0, 1)
        self.foci, self.n, self.res, self.p = list(foci), views_per_step, resolution, close_up_probability
        self.device = device
        self.canonical_foci, self.keypoints, self.sds_res = canonical_foci, keypoints, sds_resolution

    def sample(self, step: int, generator: torch.Generator) -> dict:
        from layerforge.renderers.layers import render_colours

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        views = sample_views(self.n, self.res, self.foci, self.p, generator, device=self.device)
        with torch.no_grad():
            rgb, alpha, fid = render_colours(self.v, self.f, views.cameras, **self.colours)
        labels = torch.where(fid >= 0, self.labels[fid.clamp_min(0)], torch.full_like(fid, -1))
        batch = {"seed": seed, "cameras": views.cameras, "gt_rgb": rgb, "gt_alpha": alpha, "gt_labels": labels}
        if self.canonical_foci is not None:
            batch["canonical"] = sample_views(self.n, self.sds_res, self.canonical_foci, self.p, generator, device=self.device)
            batch["keypoints"] = self.keypoints.to(self.device)
        return batch
