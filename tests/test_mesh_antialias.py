"""Antialiased coverage against the exact covered area of a shape as one vertex moves.

``gradcheck`` with visibility held fixed only checks that autograd differentiates the blend
formula; it cannot see a blend that counts a silhouette edge twice or that jumps when a pixel
centre changes sides. Here the antialiased mask of a triangle (and of a two-triangle quad) is
compared with its exact area (pixels^2): its sum, the autograd slope along a sweep of one
vertex, and the continuity of the sum from step to step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from layerforge.renderers.cameras import Camera
from layerforge.renderers.mesh import antialias, rasterize

SIZE = 32  # image width and height in pixels; every triangle below stays >= 2 px inside
FOCAL = 30.0  # focal length in pixels
STEP_PX = 0.02  # screen-space step of the moving vertex per sweep sample
N_STEPS = 120  # 120 steps of 0.02 px: a 2.4 px sweep
JUMP_PX2 = 0.05  # a step that changes the mask sum this much more than the exact area is a jump
# (also the per-pixel change that marks where it happened: a continuous step moves a blend
# by at most ~2 * STEP_PX)
CORNER_PX = 1.0  # a pixel centre this close to a projected vertex is at a corner
CORNER_JUMP_PX2 = 0.75  # bound on one corner jump (blending each edge both ways: up to 2.3)
MAX_CORNER_JUMPS = 8  # in one sweep (blending each edge both ways: 69 to 119 here)


@dataclass
class Sweep:
    """Per-step figures of one sweep (all [N_STEPS + 1] float64 tensors)."""

    mask_sum: torch.Tensor  # sum of the antialiased mask, px^2
    exact_area: torch.Tensor  # exact screen-space triangle area, px^2
    slope: torch.Tensor  # autograd d(mask_sum)/ds, px^2 per px of vertex motion
    images: torch.Tensor  # [N_STEPS + 1, H, W] antialiased masks
    vertices: torch.Tensor  # [N_STEPS + 1, V, 2] exact projected vertices, pixels

    @property
    def true_slope(self) -> torch.Tensor:
        """[N_STEPS] finite-difference slope of the exact area per step."""
        return torch.diff(self.exact_area) / STEP_PX

    @property
    def slope_ratio(self) -> float:
        """Mean autograd slope over mean exact-area slope (1 when the gradient is the area's)."""
        return float(self.slope.mean() / self.true_slope.mean())

    @property
    def jumps(self) -> torch.Tensor:
        """[N_STEPS] |change of the mask sum - change of the exact area| per step, px^2."""
        return (torch.diff(self.mask_sum) - torch.diff(self.exact_area)).abs()

    @property
    def discontinuities(self) -> torch.Tensor:
        """[N_STEPS] |change of the mask sum - what its own autograd slope predicts| per step
        (trapezoid rule), px^2: large only where the sum is discontinuous, whatever its slope."""
        predicted = 0.5 * (self.slope[1:] + self.slope[:-1]) * STEP_PX
        return (torch.diff(self.mask_sum) - predicted).abs()

    def off_corner_jumps(self) -> list[int]:
        """Steps n (n -> n + 1) that jump and cannot be put on a corner: a pixel changes by
        more than JUMP_PX2 farther than CORNER_PX from every projected vertex (before and
        after the step), or no single pixel changes by that much."""
        h, w = self.images.shape[1:]
        ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        centres = torch.stack([jj, ii], dim=-1).double() + 0.5  # [H, W, 2] (x, y)
        bad = []
        for n in (self.jumps > JUMP_PX2).nonzero()[:, 0].tolist():
            changed = (self.images[n + 1] - self.images[n]).abs() > JUMP_PX2
            verts = torch.cat([self.vertices[n], self.vertices[n + 1]])  # [2V, 2]
            dist = (centres[changed][:, None] - verts[None]).norm(dim=-1).amin(-1)
            if not bool(changed.any()) or bool((dist > CORNER_PX).any()):
                bad.append(n)
        return bad


def _camera() -> Camera:
    k = torch.tensor(
        [[FOCAL, 0.0, SIZE / 2], [0.0, FOCAL, SIZE / 2], [0.0, 0.0, 1.0]], dtype=torch.float64
    )
    return Camera(k, torch.eye(4, dtype=torch.float64), SIZE, SIZE)  # camera frame = world


def _sweep(
    pix: list[list[float]],
    depth: list[float],
    faces: list[list[int]],
    moving: int,
    direction: tuple[float, float],
) -> Sweep:
    """Move vertex ``moving`` of a flat-outlined mesh by STEP_PX along a screen ``direction``.

    Args:
        pix: [V, 2] screen positions of the vertices (pixels), in the order of the mesh's
            convex outline, which gives its exact area (shoelace formula).
        depth: [V] camera depths (metres).
        faces: [F, 3] triangles (one winding) tiling the outline.
        moving: index of the vertex that moves.
        direction: screen direction of the motion (normalised here).

    The vertex moves in world space, at constant depth, so its projection moves on a straight
    line; the sweep parameter ``s`` is the screen distance moved, in pixels.
    """
    cam = _camera()
    p0 = torch.tensor(pix, dtype=torch.float64)  # [V, 2]
    z = torch.tensor(depth, dtype=torch.float64)[:, None]  # [V, 1]
    centre = torch.tensor([SIZE / 2, SIZE / 2], dtype=torch.float64)
    base = torch.cat([(p0 - centre) / FOCAL * z, z], dim=-1)  # [V, 3] world = camera frame
    d = torch.tensor(direction, dtype=torch.float64)
    d = d / d.norm()
    world_dir = torch.zeros_like(base)
    world_dir[moving, :2] = d * z[moving, 0] / FOCAL  # one screen pixel of motion at that depth
    screen_dir = torch.zeros_like(p0)
    screen_dir[moving] = d
    faces_t = torch.tensor(faces)
    sums, areas, slopes, images, verts = [], [], [], [], []
    for n in range(N_STEPS + 1):
        s = torch.tensor(n * STEP_PX, dtype=torch.float64, requires_grad=True)
        x = base + s * world_dir
        fr = rasterize(x, faces_t, cam)
        mask = fr.mask[..., None].double()  # alpha 1 on covered pixel centres, 0 elsewhere
        image = antialias(mask, fr, x, faces_t, cam)
        total = image.sum()
        (g,) = torch.autograd.grad(total, s)
        q = p0 + n * STEP_PX * screen_dir  # exact projected vertices, [V, 2]
        assert bool((q > 2.0).all() and (q < SIZE - 2.0).all())  # no clipping by the image
        r = q.roll(-1, dims=0)
        sums.append(float(total.detach()))
        areas.append(0.5 * abs(float((q[:, 0] * r[:, 1] - q[:, 1] * r[:, 0]).sum())))
        slopes.append(float(g))
        images.append(image.detach()[0, ..., 0])
        verts.append(q)
    as_t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return Sweep(as_t(sums), as_t(areas), as_t(slopes), torch.stack(images), torch.stack(verts))


_ANGLE = math.radians(35.0)  # a sweep direction that is not axis-aligned
_TRI = [[0, 1, 2]]
CASES = {
    # a generic triangle, its vertex 1 moving obliquely (all three edges change)
    "oblique": (
        [[5.3, 6.1], [25.7, 9.4], [11.2, 26.6]],
        [2.0, 2.3, 2.6],
        _TRI,
        1,
        (math.cos(_ANGLE), math.sin(_ANGLE)),
    ),
    # edge 0-1 near-horizontal (slope ~0.05), its end moving mostly down across pixel rows
    "near_horizontal": (
        [[4.3, 20.2], [27.6, 21.3], [14.1, 5.7]], [2.1, 2.4, 1.9], _TRI, 1, (0.28, 0.96)
    ),
    # the same triangle transposed: edge 0-1 near-vertical, its end moving across columns
    "near_vertical": (
        [[20.2, 4.3], [21.3, 27.6], [5.7, 14.1]], [2.1, 2.4, 1.9], _TRI, 1, (0.96, 0.28)
    ),
    # two triangles sharing the diagonal 0-2 (not a silhouette: pairs walk across it), the
    # moving vertex 2 on both of them
    "quad": (
        [[5.2, 7.3], [24.6, 4.8], [26.1, 23.9], [7.7, 25.4]],
        [2.0, 2.2, 2.5, 2.3],
        [[0, 1, 2], [0, 2, 3]],
        2,
        (math.cos(-_ANGLE), math.sin(-_ANGLE)),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_antialiased_coverage_follows_the_exact_area(case: str):
    pix, depth, faces, moving, direction = CASES[case]
    sw = _sweep(pix, depth, faces, moving, direction)
    n_jumps = int((sw.jumps > JUMP_PX2).sum())
    off_corner = sw.off_corner_jumps()
    figures = (
        f"{case}: slope ratio {sw.slope_ratio:.3f}, jumps > {JUMP_PX2} px^2: {n_jumps} "
        f"({len(off_corner)} off corners), max jump {float(sw.jumps.max()):.3f} px^2, "
        f"discontinuities > {JUMP_PX2} px^2: {int((sw.discontinuities > JUMP_PX2).sum())}, "
        f"max |sum - area| {float((sw.mask_sum - sw.exact_area).abs().max()):.3f} px^2"
    )
    print(figures)
    # (a) the mask sum is the covered area, up to the corners (exact along straight edges;
    # sub-pixel slivers at a corner cover no pixel centre)
    assert (sw.mask_sum - sw.exact_area).abs().max() < 1.0, figures
    # (b) the autograd slope is the exact area's slope, on average over the sweep
    assert 0.9 < sw.slope_ratio < 1.1, figures
    # (c) the sum is continuous along every edge: a step may jump only where a corner passes a
    # pixel centre (a sliver appearing, the walk's exit switching between a corner's two edges,
    # or an edge turning through 45 degrees), and only by a fraction of a pixel
    assert not off_corner, f"{figures}; off-corner jumps at steps {off_corner}"
    assert n_jumps <= MAX_CORNER_JUMPS and float(sw.jumps.max()) < CORNER_JUMP_PX2, figures
