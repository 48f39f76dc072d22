"""An analytic layered room with known answers for the LayerPano3D pipeline.

A box room shell (the "stuff": four walls, floor and ceiling) and a few floating objects
(spheres and axis-aligned boxes) in two depth bands around the panorama centre, ray-cast
exactly (no mesh). Tests therefore know, for any ray: the first hit, its radial distance,
its shaded linear RGB, its instance id (0 = room shell) and the object's true depth layer
(0 = the nearest band, 1 = the next). Novel views from displaced centres come from the same
ray caster, and :func:`visible_from` tells which of their pixels the panorama centre cannot
see (the disoccluded pixels a layered method has to fill).

World frame as in :mod:`layerforge.renderers.panorama`: metres, +Z up, the panorama centre
at the origin unless said otherwise; depth panoramas hold RADIAL distance along the ray.

Shading is deterministic. Walls: a per-wall base colour times ``0.75 + 0.25 * stripe``
(a soft sinusoid of period 0.6 m along the wall) times a gentle vertical modulation; floor:
a soft checker of 0.5 m cells; ceiling: a faint two-axis sinusoid. Objects: a flat base
colour times ``0.6 + 0.4 * max(0, n . l)`` for a fixed light direction ``l`` and the outward
normal ``n`` (view-independent, so a point has one colour from every viewpoint). Every
channel of every surface stays within [0.05, 0.95]; colours are linear RGB.

Files written by :func:`write_layered_room` (the builtin LayerPano3D input):

- ``pano.png``: 8-bit sRGB equirectangular panorama (antialiased, ``supersample`` x
  ``supersample`` rays a pixel);
- ``pano_depth.npy``: float32 [H, W] radial depth in metres (pixel-centre rays);
- ``pano_ids.png``: 8-bit single-channel instance ids (0 = stuff);
- ``truth.json``: the room bounds and every object (type, centre, size, colour, instance,
  layer, radial distance of its centre); :func:`room_from_truth` rebuilds the scene.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from layerforge.renderers.cameras import Camera, generate_rays

__all__ = [
    "GENERATOR_VERSION",
    "Box",
    "LayeredRoom",
    "Sphere",
    "cached_layered_room",
    "layered_room",
    "render_equirect",
    "render_views",
    "room_from_truth",
    "trace",
    "visible_from",
    "write_layered_room",
]

GENERATOR_VERSION = 1

Vec3 = tuple[float, float, float]
ArrayLike = Tensor | np.ndarray

# shading constants
LIGHT_DIR = np.array([0.3, 0.5, 0.8]) / np.linalg.norm([0.3, 0.5, 0.8])
WALL_STRIPE_PERIOD = 0.6  # metres along each wall
FLOOR_CELL = 0.5  # metres, soft checker cell size
# base colours of the shell faces, indexed 2 * axis + (1 if the max plane else 0):
# -X wall, +X wall, -Y wall, +Y wall, floor, ceiling
SHELL_COLOURS = np.array([
    [0.50, 0.60, 0.72],
    [0.72, 0.62, 0.48],
    [0.72, 0.52, 0.58],
    [0.58, 0.70, 0.52],
    [0.55, 0.40, 0.30],
    [0.86, 0.84, 0.78],
])
_T_MIN = 1e-9  # metres: hits nearer than this along a ray are ignored


@dataclasses.dataclass(frozen=True)
class Sphere:
    """A sphere object. ``centre`` (m, world), ``radius`` (m), ``colour`` linear RGB in [0, 1],
    ``instance`` its id (>= 1), ``layer`` its true depth band (0 = nearest)."""

    centre: Vec3
    radius: float
    colour: Vec3
    instance: int
    layer: int


@dataclasses.dataclass(frozen=True)
class Box:
    """An axis-aligned box object: ``centre`` and ``half_size`` (m, world), ``colour`` linear RGB,
    ``instance`` its id (>= 1), ``layer`` its true depth band (0 = nearest)."""

    centre: Vec3
    half_size: Vec3
    colour: Vec3
    instance: int
    layer: int


@dataclasses.dataclass(frozen=True)
class LayeredRoom:
    """A box room ``[room_min, room_max]`` (m; the panorama centre is inside) and its objects.

    ``objects[k].layer``: 0 = the nearest depth band, 1 = the next (true layer index, near to far).
    """

    room_min: Vec3
    room_max: Vec3
    objects: tuple[Sphere | Box, ...]


def _polar(r: float, yaw_deg: float, z: float) -> Vec3:
    """A point at horizontal distance ``r`` and yaw ``yaw_deg`` (0 = +X, 90 = +Y), height ``z``."""
    a = math.radians(yaw_deg)
    return (round(r * math.cos(a), 4), round(r * math.sin(a), 4), z)


def layered_room() -> LayeredRoom:
    """The default scene.

    Room x in [-4, 4.5], y in [-3.5, 4], z in [-1.5, 1.6] m (the camera at the origin is 1.5 m
    above the floor). Four objects at different yaws, instance ids 1..4:

    1. near sphere (layer 0), yaw -15 deg, centre ~1.42 m away, partly in front of object 3, so
       removing it reveals part of the far box and part of the +X wall;
    2. near box (layer 0), yaw 125 deg, centre ~1.54 m away;
    3. far box (layer 1), yaw ~11 deg, centre ~3.06 m away;
    4. far sphere (layer 1), yaw -140 deg, centre ~3.01 m away.

    Every object floats >= 0.25 m above the floor and below the ceiling and covers roughly
    1-6 % of the equirectangular pixels.
    """
    return LayeredRoom(
        room_min=(-4.0, -3.5, -1.5),
        room_max=(4.5, 4.0, 1.6),
        objects=(
            Sphere(centre=_polar(1.40, -15.0, -0.25), radius=0.50, colour=(0.78, 0.20, 0.14), instance=1, layer=0),
            Box(centre=_polar(1.50, 125.0, -0.35), half_size=(0.38, 0.38, 0.34), colour=(0.82, 0.66, 0.14),
                instance=2, layer=0),
            Box(centre=(3.0, 0.6, 0.05), half_size=(0.5, 0.95, 0.8), colour=(0.14, 0.30, 0.72), instance=3, layer=1),
            Sphere(centre=_polar(3.0, -140.0, 0.2), radius=1.0, colour=(0.18, 0.60, 0.24), instance=4, layer=1),
        ),
    )


# --- ray casting ---------------------------------------------------------------------------


def _as_np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _safe(d: np.ndarray) -> np.ndarray:
    """Directions with exact zeros nudged, so slab divisions give +-huge instead of NaN."""
    return np.where(d == 0.0, 1e-300, d)


def _shell_rgb(x: np.ndarray, y: np.ndarray, z: np.ndarray, face: np.ndarray) -> np.ndarray:
    """[N, 3] shell colours at hit points (x, y, z) [N] on faces [N] (2 * axis + max side)."""
    factor = np.empty(len(face))
    wall = face < 4
    along = np.where(face[wall] < 2, y[wall], x[wall])  # coordinate along the wall
    stripe = 0.5 + 0.5 * np.sin(2.0 * np.pi * along / WALL_STRIPE_PERIOD + 0.7 * face[wall])
    factor[wall] = (0.75 + 0.25 * stripe) * (0.93 + 0.07 * np.cos(2.0 * np.pi * z[wall] / 1.3))
    fl = face == 4
    q = np.sin(np.pi * x[fl] / FLOOR_CELL) * np.sin(np.pi * y[fl] / FLOOR_CELL)
    factor[fl] = 0.7 + 0.3 * (0.5 + 0.5 * np.tanh(4.0 * q))
    ce = face == 5
    factor[ce] = 0.88 + 0.1 * np.sin(2.0 * np.pi * x[ce] / 1.7) * np.sin(2.0 * np.pi * y[ce] / 1.7)
    return SHELL_COLOURS[face] * factor[:, None]


def _trace_np(scene: LayeredRoom, o: np.ndarray, d: np.ndarray, shade: bool = True) -> dict[str, np.ndarray]:
    """First hits of rays with origins o [N, 3] or [3] (one shared origin) and unit directions
    d [N, 3], float64; see :func:`trace`. Without ``shade`` only ``t``, ``points`` and ``ids``."""
    n = len(d)
    if o.ndim == 1:  # a shared origin: scalar columns keep most arithmetic O(1)
        O = [float(v) for v in o]
    else:
        O = [np.ascontiguousarray(o[:, a]) for a in range(3)]
    D = [np.ascontiguousarray(d[:, a]) for a in range(3)]
    pos = [v >= 0.0 for v in D]  # a zero component counts as positive, like its 1e-300 nudge below
    with np.errstate(divide="ignore", over="ignore"):
        inv = [1.0 / np.where(v == 0.0, 1e-300, v) for v in D]
    lo, hi = scene.room_min, scene.room_max
    # room shell: leave through the nearest of the three exit planes
    te = [(np.where(pos[a], hi[a], lo[a]) - O[a]) * inv[a] for a in range(3)]
    axis = np.where((te[0] <= te[1]) & (te[0] <= te[2]), 0, np.where(te[1] <= te[2], 1, 2)).astype(np.int64)
    t = np.minimum(np.minimum(te[0], te[1]), te[2])
    rows = np.arange(n)
    sign = np.where(np.stack(pos, 1)[rows, axis], -1.0, 1.0)  # outward normal sign along `axis`: inward for the shell
    ids = np.zeros(n, np.int64)
    which = np.full(n, -1, np.int64)
    for k, obj in enumerate(scene.objects):
        c = obj.centre
        if isinstance(obj, Sphere):
            oc = [O[a] - c[a] for a in range(3)]
            b = oc[0] * D[0] + oc[1] * D[1] + oc[2] * D[2]
            disc = b * b - (oc[0] * oc[0] + oc[1] * oc[1] + oc[2] * oc[2] - obj.radius ** 2)
            cand = disc >= 0.0
            if not cand.any():
                continue
            sq = np.sqrt(np.where(cand, disc, 0.0))
            t0 = -b - sq
            tk = np.where(t0 > _T_MIN, t0, -b + sq)
            hit = cand & (tk > _T_MIN) & (tk < t)
        else:
            h = obj.half_size
            tmin = [(np.where(pos[a], c[a] - h[a], c[a] + h[a]) - O[a]) * inv[a] for a in range(3)]
            tmax = [(np.where(pos[a], c[a] + h[a], c[a] - h[a]) - O[a]) * inv[a] for a in range(3)]
            tn = np.maximum(np.maximum(tmin[0], tmin[1]), tmin[2])
            tf = np.minimum(np.minimum(tmax[0], tmax[1]), tmax[2])
            outside = tn > _T_MIN
            tk = np.where(outside, tn, tf)
            hit = (tn <= tf) & (tk > _T_MIN) & (tk < t)
            if hit.any():
                # entering, the face is the last slab entered (normal against the ray); leaving, the first left
                tin = np.stack([v[hit] for v in tmin], 1)
                tout = np.stack([v[hit] for v in tmax], 1)
                out_h = outside[hit]
                ax = np.where(out_h, np.argmax(tin, 1), np.argmin(tout, 1))
                along = np.stack(pos, 1)[hit][np.arange(len(ax)), ax]
                axis[hit] = ax
                sign[hit] = np.where(along == out_h, -1.0, 1.0)
        if not hit.any():
            continue
        t = np.where(hit, tk, t)
        ids[hit] = obj.instance
        which[hit] = k
    P = [O[a] + t * D[a] for a in range(3)]
    out = {"t": t, "points": np.stack(P, 1), "ids": ids}
    if not shade:
        return out
    outward = np.zeros((n, 3))
    outward[rows, axis] = sign
    rgb = np.empty((n, 3))
    shell = which < 0
    rgb[shell] = _shell_rgb(P[0][shell], P[1][shell], P[2][shell], 2 * axis[shell] + (sign[shell] < 0))
    for k, obj in enumerate(scene.objects):
        m = which == k
        if not m.any():
            continue
        if isinstance(obj, Sphere):
            outward[m] = (out["points"][m] - np.asarray(obj.centre)) / obj.radius
        lambert = 0.6 + 0.4 * np.maximum(0.0, outward[m] @ LIGHT_DIR)
        rgb[m] = np.asarray(obj.colour, np.float64) * lambert[:, None]
    facing = (outward * d).sum(1) > 0.0
    out["rgb"] = rgb
    out["normals"] = np.where(facing[:, None], -outward, outward)
    return out


def trace(scene: LayeredRoom, origins: ArrayLike, directions: ArrayLike) -> dict[str, Tensor]:
    """Exact first hit of rays against the room shell and the objects.

    Args:
        scene: the room.
        origins: [..., 3] ray origins (world metres), inside the room; one [3] origin is shared by all rays.
        directions: [..., 3] ray directions (unit; normalised here anyway). Broadcast with origins.

    Returns:
        ``t`` [...] distance along the ray (m); ``points`` [..., 3] world hit points (m);
        ``ids`` [...] int64 (0 = room shell, else the object's instance); ``rgb`` [..., 3]
        float32 linear shaded colour in [0, 1]; ``normals`` [..., 3] unit world normals facing
        the ray origin. Computed in float64; ``t``, ``points`` and ``normals`` come back as
        float64 when either input is float64, else float32, on the inputs' torch device (CPU
        for numpy inputs).
    """
    device = next((x.device for x in (origins, directions) if isinstance(x, Tensor)), torch.device("cpu"))
    f64 = any(getattr(x, "dtype", None) in (torch.float64, np.float64) for x in (origins, directions))
    o, d = _as_np(origins), _as_np(directions)
    shape = np.broadcast_shapes(o.shape, d.shape)[:-1]
    d = np.broadcast_to(d, (*shape, 3)).reshape(-1, 3)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    o = o.reshape(3) if o.size == 3 else np.broadcast_to(o, (*shape, 3)).reshape(-1, 3)
    out = _trace_np(scene, o, d)
    geo = torch.float64 if f64 else torch.float32

    def t_(x: np.ndarray, dtype: torch.dtype, tail: tuple[int, ...] = ()) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).reshape(*shape, *tail).to(device=device, dtype=dtype)

    return {
        "t": t_(out["t"], geo),
        "points": t_(out["points"], geo, (3,)),
        "ids": t_(out["ids"], torch.int64),
        "rgb": t_(out["rgb"], torch.float32, (3,)),
        "normals": t_(out["normals"], geo, (3,)),
    }


# --- rendering -------------------------------------------------------------------------------


def _equirect_dirs(height: int, width: int, du: float = 0.5, dv: float = 0.5) -> np.ndarray:
    """[H, W, 3] float64 unit directions through image points (j + du, i + dv) (panorama convention)."""
    v = np.arange(height, dtype=np.float64) + dv
    u = np.arange(width, dtype=np.float64) + du
    lat = (0.5 - v / height) * np.pi
    lon = (1.0 - 2.0 * u / width) * np.pi
    lat, lon = np.meshgrid(lat, lon, indexing="ij")
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], -1)


def render_equirect(
    scene: LayeredRoom,
    height: int,
    width: int,
    center: Sequence[float] = (0.0, 0.0, 0.0),
    supersample: int = 1,
) -> dict[str, Tensor]:
    """Ray-cast an equirectangular panorama taken at ``center`` (world metres).

    Returns:
        ``rgb`` [H, W, 3] float32 linear; ``depth`` [H, W] float32 radial distance from
        ``center`` (m); ``ids`` [H, W] int64 (0 = stuff). With ``supersample`` s > 1 the rgb
        is the mean of s x s evenly spread sub-pixel rays (antialiased); depth and ids always
        come from the pixel-centre ray.
    """
    c = np.asarray(center, np.float64).reshape(3)
    d = _equirect_dirs(height, width).reshape(-1, 3)
    s = int(supersample)
    hit = _trace_np(scene, c, d, shade=s <= 1)
    if s <= 1:
        rgb = hit["rgb"]
    else:
        acc = np.zeros((height * width, 3))
        for a in range(s):
            for b in range(s):
                ds = _equirect_dirs(height, width, (a + 0.5) / s, (b + 0.5) / s).reshape(-1, 3)
                acc += _trace_np(scene, c, ds)["rgb"]
        rgb = acc / (s * s)
    return {
        "rgb": torch.from_numpy(rgb.reshape(height, width, 3).astype(np.float32)),
        "depth": torch.from_numpy(hit["t"].reshape(height, width).astype(np.float32)),
        "ids": torch.from_numpy(hit["ids"].reshape(height, width)),
    }


def render_views(scene: LayeredRoom, cameras: Camera, supersample: int = 1) -> dict[str, Tensor]:
    """Ray-cast perspective views of ``cameras`` (B cameras, h x w pixels, any centres in the room).

    Returns (on the cameras' device):
        ``rgb`` [B, h, w, 3] float32 linear (mean of ``supersample`` x ``supersample`` sub-pixel
        rays); ``depth`` [B, h, w] float32 CAMERA-Z (OpenCV +z forward, m); ``distance``
        [B, h, w] float32 radial distance from the camera centre (m); ``ids`` [B, h, w] int64;
        ``points`` [B, h, w, 3] float32 world hit points (m). All but rgb from pixel-centre rays.
    """
    cams = cameras.to(device="cpu", dtype=torch.float64)
    B, h, w = len(cams), cams.height, cams.width
    s = int(supersample)
    centre = cams.center.numpy()  # [B, 3]
    fwd = cams.world_to_camera[:, 2, :3].numpy()  # [B, 3] camera +z in world
    d = generate_rays(cams)[1].numpy().reshape(B, h * w, 3)
    d_fine = generate_rays(cams.resized(w * s, h * s))[1].numpy().reshape(B, -1, 3) if s > 1 else None
    t, points, ids, rgb = [], [], [], []
    for b in range(B):  # one shared origin a camera
        hit = _trace_np(scene, centre[b], d[b], shade=s <= 1)
        t.append(hit["t"])
        points.append(hit["points"])
        ids.append(hit["ids"])
        if s > 1:
            rgb.append(_trace_np(scene, centre[b], d_fine[b])["rgb"].reshape(h, s, w, s, 3).mean((1, 3)))
        else:
            rgb.append(hit["rgb"])
    pts = np.stack(points)  # [B, hw, 3]
    z = np.einsum("bnk,bk->bn", pts - centre[:, None, :], fwd)
    dev = cameras.device

    def f32(x: np.ndarray, *shape: int) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(x).reshape(*shape).astype(np.float32)).to(dev)

    return {
        "rgb": f32(np.stack(rgb), B, h, w, 3),
        "depth": f32(z, B, h, w),
        "distance": f32(np.stack(t), B, h, w),
        "ids": torch.from_numpy(np.stack(ids).reshape(B, h, w)).to(dev),
        "points": f32(pts, B, h, w, 3),
    }


def visible_from(
    scene: LayeredRoom,
    points: ArrayLike,
    center: Sequence[float] = (0.0, 0.0, 0.0),
    eps: float = 1e-3,
) -> Tensor:
    """Which points [..., 3] (world m) the eye at ``center`` sees: [...] bool.

    True where the straight segment from ``center`` to the point is not blocked by any surface
    nearer than ``(1 - eps)`` times the point's distance. Points on the room shell behind an
    object as seen from ``center`` are False. A novel view's pixels whose hit points are not
    visible from the panorama centre are the DISOCCLUDED pixels.
    """
    device = points.device if isinstance(points, Tensor) else torch.device("cpu")
    p = _as_np(points)
    shape = p.shape[:-1]
    p = p.reshape(-1, 3)
    c = np.asarray(center, np.float64).reshape(3)
    v = p - c
    dist = np.linalg.norm(v, axis=-1)
    tiny = dist < 1e-12
    d = np.where(tiny[:, None], np.array([[1.0, 0.0, 0.0]]), v / np.where(tiny, 1.0, dist)[:, None])
    t = _trace_np(scene, c, d, shade=False)["t"]
    vis = tiny | (t >= dist * (1.0 - eps))
    return torch.from_numpy(vis.reshape(shape)).to(device)


# --- files -----------------------------------------------------------------------------------


def _object_json(obj: Sphere | Box) -> dict:
    sphere = isinstance(obj, Sphere)
    return {
        "type": "sphere" if sphere else "box",
        "centre": list(obj.centre),
        # sphere: the radius (m); box: the half sizes along x, y, z (m)
        "size": float(obj.radius) if sphere else list(obj.half_size),
        "colour": list(obj.colour),
        "instance": int(obj.instance),
        "layer": int(obj.layer),
        "radial_distance": float(np.linalg.norm(obj.centre)),
    }


def _png_bytes(img: np.ndarray, mode: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def write_layered_room(folder: str | Path, height: int = 128, width: int = 256, supersample: int = 2) -> Path:
    """Write the builtin input folder for :func:`layered_room` (see the module docstring).

    ``pano.png`` 8-bit sRGB of the linear rgb, ``pano_depth.npy`` float32 [H, W] radial metres,
    ``pano_ids.png`` 8-bit single channel (0 = stuff), ``truth.json`` the scene. Returns ``folder``.
    """
    from layerforge.assets.atomic import atomic_write_bytes, atomic_write_text
    from layerforge.assets.types import linear_to_srgb

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scene = layered_room()
    r = render_equirect(scene, height, width, supersample=supersample)
    srgb = np.round(linear_to_srgb(r["rgb"].numpy()) * 255.0).clip(0, 255).astype(np.uint8)
    ids = r["ids"].numpy()
    if ids.max() > 255:
        raise ValueError("instance ids must fit in 8 bits")
    buf = io.BytesIO()
    np.save(buf, r["depth"].numpy().astype(np.float32))
    atomic_write_bytes(folder / "pano_depth.npy", buf.getvalue())
    atomic_write_bytes(folder / "pano_ids.png", _png_bytes(ids.astype(np.uint8), "L"))
    truth = {
        "generator_version": GENERATOR_VERSION,
        "height": height,
        "width": width,
        "supersample": supersample,
        "center": [0.0, 0.0, 0.0],
        "depth": "radial metres",
        "room_min": list(scene.room_min),
        "room_max": list(scene.room_max),
        "objects": [_object_json(o) for o in scene.objects],
    }
    atomic_write_text(folder / "truth.json", json.dumps(truth, indent=1))
    atomic_write_bytes(folder / "pano.png", _png_bytes(srgb, "RGB"))  # last: marks the folder complete
    return folder


def room_from_truth(path: str | Path) -> LayeredRoom:
    """Rebuild the :class:`LayeredRoom` from a ``truth.json`` (or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "truth.json"
    t = json.loads(path.read_text())
    objs: list[Sphere | Box] = []
    for o in t["objects"]:
        common = {"centre": tuple(float(x) for x in o["centre"]), "colour": tuple(float(x) for x in o["colour"]),
                      "instance": int(o["instance"]), "layer": int(o["layer"])}
        if o["type"] == "sphere":
            objs.append(Sphere(radius=float(o["size"]), **common))
        elif o["type"] == "box":
            objs.append(Box(half_size=tuple(float(x) for x in o["size"]), **common))
        else:
            raise ValueError(f"unknown object type {o['type']!r} in {path}")
    return LayeredRoom(tuple(float(x) for x in t["room_min"]), tuple(float(x) for x in t["room_max"]), tuple(objs))


def cached_layered_room(cache_root: str | Path, **kwargs) -> Path:
    """:func:`write_layered_room` under ``cache_root/layered_room-<16-hex hash of kwargs and
    GENERATOR_VERSION>/``, made on first use in a temporary sibling and renamed into place (a
    crash leaves no half folder). Returns the existing folder when its ``pano.png`` is there."""
    from layerforge.assets.atomic import cached_folder

    key = hashlib.sha256(json.dumps({"v": GENERATOR_VERSION, **kwargs}, sort_keys=True).encode()).hexdigest()[:16]
    return cached_folder(Path(cache_root) / f"layered_room-{key}", "pano.png", lambda folder: write_layered_room(folder, **kwargs))
