"""Object edits of a trained :class:`~.model.UDCNeRF`, applied at render time.

UDC-NeRF edits (``edit_udc.py``, ``render_rays_edit_hack``) render each object's rays in that
object's original frame (``Tow = inv(transform)``) through its component of the fine network
and composite the components; the background stays where it is and a removed object is simply
not rendered. Here every component *slot* evaluates its object's code at the inverse-transformed
sample points (and directions), on the samples every slot shares:

- ``remove k``: slot k returns sigma -5e6 (alpha 0, never wins the composition);
- ``move k by d``: slot k is evaluated at ``x - d``;
- ``rotate k by deg about +Z through c``: at ``Rz(-deg) (x - c) + c``;
- ``duplicate k to offset o``: one more slot (appended after the K+1) evaluating object k at
  its current transform followed by ``x - o``.

Edits apply in order and compose (move then rotate rotates about the moved centre only if the
centre is given there; a ``None`` centre is the object's density centroid in its original frame,
:func:`object_centre`, moved by the object's current transform).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Sequence

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .model import UDCNeRF

__all__ = ["Edit", "Slot", "make_slots", "object_centre", "resolve_centres"]

EditKind = Literal["remove", "move", "rotate", "duplicate"]
# object_centre: grid cells per axis and the raw-sigma threshold that counts as occupied (ours).
CENTRE_GRID = 32
CENTRE_SIGMA_THRESHOLD = 1.0


@dataclass(frozen=True)
class Edit:
    """One object edit.

    Attributes:
        kind: ``"remove"``, ``"move"``, ``"rotate"`` or ``"duplicate"``.
        object: the object id k >= 1 (the background cannot be edited).
        offset: [dx, dy, dz] metres (move, duplicate).
        degrees: rotation about +Z, degrees, counter-clockwise seen from above (rotate).
        centre: [x, y, z] metres the rotation turns about; ``None``: resolve with
            :func:`resolve_centres` (the object's density centroid) before rendering.
    """

    kind: EditKind
    object: int
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    degrees: float = 0.0
    centre: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("remove", "move", "rotate", "duplicate"):
            raise ValueError(f"Edit.kind must be remove, move, rotate or duplicate, got {self.kind!r}")
        if self.object < 1:
            raise ValueError(f"Edit.object must be an object id >= 1 (0 is the background), got {self.object}")

    @classmethod
    def remove(cls, k: int) -> Edit:
        return cls("remove", k)

    @classmethod
    def move(cls, k: int, offset: Sequence[float]) -> Edit:
        return cls("move", k, offset=tuple(float(v) for v in offset))  # type: ignore[arg-type]

    @classmethod
    def rotate(cls, k: int, degrees: float, centre: Sequence[float] | None = None) -> Edit:
        return cls("rotate", k, degrees=float(degrees),
                   centre=None if centre is None else tuple(float(v) for v in centre))  # type: ignore[arg-type]

    @classmethod
    def duplicate(cls, k: int, offset: Sequence[float]) -> Edit:
        return cls("duplicate", k, offset=tuple(float(v) for v in offset))  # type: ignore[arg-type]


def _translation(d: Sequence[float]) -> Tensor:
    m = torch.eye(4, dtype=torch.float64)
    m[:3, 3] = torch.tensor([float(v) for v in d], dtype=torch.float64)
    return m


def _rotation_z(degrees: float, centre: Sequence[float]) -> Tensor:
    a = math.radians(degrees)
    rot = torch.eye(4, dtype=torch.float64)
    rot[0, 0], rot[0, 1], rot[1, 0], rot[1, 1] = math.cos(a), -math.sin(a), math.sin(a), math.cos(a)
    return _translation(centre) @ rot @ _translation([-float(v) for v in centre])


@dataclass
class Slot:
    """One rendered component: object ``object``'s code, placed by ``to_world`` (4x4, original -> world).

    Attributes:
        object: code index (0 background, k object k).
        to_world: [4, 4] float64 rigid transform from the object's original frame to the world.
        removed: contributes nothing.
    """

    object: int
    to_world: Tensor = field(default_factory=lambda: torch.eye(4, dtype=torch.float64))
    removed: bool = False

    @property
    def is_identity(self) -> bool:
        return bool(torch.equal(self.to_world, torch.eye(4, dtype=torch.float64)))

    def to_original(self, points: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
        """World points [P, 3] (m) and directions [P, 3] -> the object's original frame."""
        inv = torch.linalg.inv(self.to_world)
        rot, trans = inv[:3, :3].to(points), inv[:3, 3].to(points)
        if torch.equal(inv[:3, :3], torch.eye(3, dtype=torch.float64)):
            return points + trans, directions  # pure translation: x - d exactly
        return points @ rot.T + trans, directions @ rot.T


def make_slots(edits: Sequence[Edit] | None, objects: int) -> list[Slot]:
    """The K+1 component slots (plus one per duplicate) after applying ``edits`` in order."""
    slots = [Slot(k) for k in range(objects + 1)]
    for e in edits or ():
        if e.object > objects:
            raise ValueError(f"edit of object {e.object}, but the model has objects 1..{objects}")
        s = slots[e.object]
        if e.kind == "remove":
            s.removed = True
        elif e.kind == "move":
            s.to_world = _translation(e.offset) @ s.to_world
        elif e.kind == "rotate":
            if e.centre is None:
                raise ValueError("Edit.rotate needs a centre: call resolve_centres(model, edits) first")
            s.to_world = _rotation_z(e.degrees, e.centre) @ s.to_world
        else:
            slots.append(Slot(e.object, _translation(e.offset) @ s.to_world.clone(), s.removed))
    return slots


@torch.no_grad()
def object_centre(model: UDCNeRF, k: int, resolution: int = CENTRE_GRID,
                  threshold: float = CENTRE_SIGMA_THRESHOLD) -> tuple[float, float, float]:
    """Centroid (m) of the grid points of the scene box where object k's raw sigma exceeds ``threshold``.

    Falls back to the box centre when no point does.
    """
    lo, hi = model.fine.aabb[0], model.fine.aabb[1]
    u = (torch.arange(resolution, dtype=lo.dtype, device=lo.device) + 0.5) / resolution
    g = torch.stack(torch.meshgrid(u, u, u, indexing="ij"), -1).reshape(-1, 3)
    pts = lo + (hi - lo) * g
    dirs = torch.zeros_like(pts)
    dirs[:, 2] = -1.0
    sig = torch.cat([model.fine.components_at(p, d)[2][:, k] for p, d in zip(pts.split(8192), dirs.split(8192))])
    occ = sig > threshold
    c = pts[occ].mean(0) if bool(occ.any()) else 0.5 * (lo + hi)
    return tuple(float(v) for v in c)  # type: ignore[return-value]


def resolve_centres(model: UDCNeRF, edits: Sequence[Edit]) -> list[Edit]:
    """``edits`` with every missing rotation centre filled: the object's centroid moved by the edits before it."""
    out: list[Edit] = []
    for i, e in enumerate(edits):
        if e.kind == "rotate" and e.centre is None:
            c0 = torch.tensor([*object_centre(model, e.object), 1.0], dtype=torch.float64)
            placed = make_slots(out, model.objects)[e.object].to_world @ c0
            e = Edit.rotate(e.object, e.degrees, placed[:3].tolist())
        out.append(e)
    return out
