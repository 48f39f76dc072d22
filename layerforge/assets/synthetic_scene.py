"""A small synthetic scene generator: textured primitives on a ground plane, rendered by Cycles.

Used by tests and as the default input of the lifting pipelines (decomp_nerf, dp_recon, gala,
layerpano3d), so they run on CPU with no user data. The images come from Blender's Cycles
through bpy -- a renderer we did not write -- so our cameras and conventions are checked
against an independent implementation (tests/test_synthetic_scene.py compares its instance
masks and depth with our rasterizer).

Scene: :class:`SceneSpec` holds :class:`SceneObject` s (a mesh in object coordinates, a linear
RGB colour, a 4x4 object-to-world transform) and an optional square ground plane at z = 0.
:func:`toy_scene` makes a box, an ellipsoid (icosphere) and a cylinder (then cones, ...) with
saturated colours and a checker texture in object coordinates, so rotations are visible.

Rendering (:func:`render_cycles`), per view:

- Cycles on CPU, fixed seed, no denoising, no adaptive sampling (deterministic).
- Every sample goes through the **pixel centre** (box filter of 0.01 px): Cycles writes the
  Depth and Object Index passes from the first sample only, so this puts them at the same
  +0.5 pixel centres as our rasterizer and ray generator; the RGB is then point-sampled in
  the image plane (no anti-aliasing), i.e. what a pixel-centre ray renderer (NeRF) predicts.
- "Depth" pass = camera z (Cycles' ``camera_z_depth``: the point in camera space, its z; not
  the ray length); "Object Index" (IndexOB) = ``pass_index`` (object k -> k + 1, ground and world -> 0).
- Passes are written as one uncompressed multilayer OpenEXR per view and read back with the
  minimal reader below (no OpenEXR package is needed).
- Camera: ``matrix_world`` = our OpenGL camera-to-world (:meth:`Camera.to_blender`), lens and
  shift from K (``sensor_fit="HORIZONTAL"``; square pixels, ``fx == fy``).

Files (:func:`write_nerfstudio_scene`) follow the nerfstudio input format that
:mod:`layerforge.assets.nerfstudio_dataset` reads: ``transforms.json`` (OpenGL
``transform_matrix``, shared ``fl_x fl_y cx cy w h``, per-frame ``split``), sRGB 8-bit PNG
images, instance-id PNG masks (uint8, uint16 past 255 objects), camera-z depth as uint16 PNG in
millimetres (``"depth_unit_scale_factor": 0.001``; 0 = no surface), ``instances.json`` and the
ground-truth meshes ``gt/<name>.ply`` in world coordinates plus ``gt/scene.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from layerforge.assets.atomic import atomic_path, atomic_write_json
from layerforge.errors import OutputError

__all__ = [
    "GENERATOR_VERSION",
    "SceneObject",
    "SceneSpec",
    "toy_scene",
    "orbit_views",
    "render_cycles",
    "write_nerfstudio_scene",
    "cached_toy_scene",
    "read_exr",
]

# Bump when the generated files change (cache keys include it).
GENERATOR_VERSION = 1

# Saturated linear colours: red, green, blue, yellow, magenta, cyan, orange, violet.
_PALETTE = (
    (0.80, 0.05, 0.04),
    (0.05, 0.60, 0.08),
    (0.04, 0.12, 0.85),
    (0.85, 0.70, 0.03),
    (0.70, 0.04, 0.65),
    (0.03, 0.60, 0.70),
    (0.90, 0.30, 0.02),
    (0.35, 0.06, 0.85),
)
_GROUND_COLOR = (0.45, 0.45, 0.42)


@dataclass
class SceneObject:
    """One object of a synthetic scene.

    Attributes:
        name: unique name (``instances.json``, ``gt/<name>.ply``).
        mesh: a ``trimesh.Trimesh`` or ``(vertices [V, 3], faces [F, 3])``, object coordinates,
            metres.
        color: base colour, linear RGB in [0, 1].
        to_world: object-to-world 4x4 (rigid, or with scale).
        checker: edge length in metres of the object-space checker texture (alternating
            ``color`` and ``0.35 * color``); 0 for a plain colour.
        smooth: shade with interpolated normals (geometry, masks and depth are the flat
            triangles either way).
    """

    name: str
    mesh: Any
    color: tuple[float, float, float]
    to_world: np.ndarray = field(default_factory=lambda: np.eye(4))
    checker: float = 0.1
    smooth: bool = False

    def local_mesh(self) -> tuple[np.ndarray, np.ndarray]:
        """(vertices [V, 3] float64, faces [F, 3] int64) in object coordinates."""
        if hasattr(self.mesh, "vertices") and hasattr(self.mesh, "faces"):
            v, f = self.mesh.vertices, self.mesh.faces
        else:
            v, f = self.mesh
        return np.asarray(v, np.float64).reshape(-1, 3), np.asarray(f, np.int64).reshape(-1, 3)

    def world_mesh(self, to_world: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(vertices [V, 3], faces [F, 3]) placed by ``to_world`` (default: the object's own)."""
        v, f = self.local_mesh()
        m = np.asarray(self.to_world if to_world is None else to_world, np.float64).reshape(4, 4)
        return v @ m[:3, :3].T + m[:3, 3], f


@dataclass
class SceneSpec:
    """Objects on an optional square ground plane (z = 0, centred at the origin, +Z up).

    Attributes:
        objects: the objects; object ``k`` has instance id ``k + 1``.
        ground: add the ground plane (instance id 0, like the background).
        ground_size: edge length of the ground square in metres.
        ground_color: linear RGB of the ground (checkered with 0.1 m squares when
            ``ground_checker`` > 0).
        ground_checker: edge of the ground's checker squares in metres; 0 for plain.
    """

    objects: list[SceneObject]
    ground: bool = True
    ground_size: float = 4.0
    ground_color: tuple[float, float, float] = _GROUND_COLOR
    ground_checker: float = 0.25

    def ground_mesh(self) -> tuple[np.ndarray, np.ndarray]:
        """The ground square as (vertices [4, 3], faces [2, 3]), world coordinates."""
        h = 0.5 * float(self.ground_size)
        v = np.array([[-h, -h, 0.0], [h, -h, 0.0], [h, h, 0.0], [-h, h, 0.0]])
        return v, np.array([[0, 1, 2], [0, 2, 3]], np.int64)

    def center(self) -> np.ndarray:
        """Centre [3] of the objects' world bounding box (the origin when there are none)."""
        if not self.objects:
            return np.zeros(3)
        pts = np.concatenate([o.world_mesh()[0] for o in self.objects])
        return 0.5 * (pts.min(0) + pts.max(0))

    def world_meshes(
        self, *, remove: Sequence[int] = (), moves: Mapping[int, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All placed geometry as one mesh: (vertices [V, 3], faces [F, 3], instance id per face [F]).

        Instance ids: object ``k`` -> ``k + 1``, ground -> 0. ``remove``/``moves`` as in
        :func:`render_cycles`.
        """
        vs, fs, ids, n = [], [], [], 0
        parts = [] if not self.ground else [(0, *self.ground_mesh())]
        for k, o in enumerate(self.objects):
            if k in set(remove):
                continue
            parts.append((k + 1, *o.world_mesh(None if moves is None else moves.get(k))))
        for inst, v, f in parts:
            vs.append(v)
            fs.append(f + n)
            ids.append(np.full(len(f), inst, np.int64))
            n += len(v)
        if not parts:
            return np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros(0, np.int64)
        return np.concatenate(vs), np.concatenate(fs), np.concatenate(ids)


# ----------------------------------------------------------------------------------------------
# The toy scene
# ----------------------------------------------------------------------------------------------


def _rot_z(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    m = np.eye(4)
    m[:2, :2] = [[c, -s], [s, c]]
    return m


def _shape(kind: int, rng: np.random.Generator) -> tuple[str, Any, float]:
    """(name stem, trimesh with its bottom at z = 0 and centred in x/y, footprint radius)."""
    import trimesh

    j = rng.uniform(0.9, 1.1, 3)
    if kind == 0:
        ext = np.array([0.42, 0.26, 0.30]) * j
        mesh = trimesh.creation.box(extents=ext)
        name = "box"
    elif kind == 1:
        mesh = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
        mesh.apply_scale(np.array([0.20, 0.15, 0.17]) * j)  # an ellipsoid: its yaw is visible
        name = "sphere"
    elif kind == 2:
        mesh = trimesh.creation.cylinder(radius=0.13 * j[0], height=0.36 * j[2], sections=24)
        name = "cylinder"
    else:
        mesh = trimesh.creation.cone(radius=0.15 * j[0], height=0.34 * j[2], sections=24)
        name = "cone"
    v = mesh.vertices.copy()
    v[:, :2] -= 0.5 * (v[:, :2].min(0) + v[:, :2].max(0))
    v[:, 2] -= v[:, 2].min()
    mesh = trimesh.Trimesh(v, mesh.faces, process=False)
    return name, mesh, float(np.linalg.norm(v[:, :2], axis=1).max())


def toy_scene(objects: int = 3, seed: int = 0) -> SceneSpec:
    """A few textured primitives standing on the ground plane, not overlapping, within ~1.5 m.

    Object ``k`` is a box, an ellipsoid (icosphere), a cylinder, then cones, ... (kind
    ``k % 4``), named ``box``, ``sphere``, ``cylinder``, ``cone`` (``_2``, ``_3`` suffixes on
    repeats), each with a distinct saturated colour, a random yaw and sizes jittered by +-10 %,
    placed around a circle with jitter (``seed`` fixes everything).
    """
    if objects < 1:
        raise ValueError(f"toy_scene needs at least one object, got {objects}")
    rng = np.random.default_rng(seed)
    shapes = [_shape(k % 4, rng) for k in range(objects)]
    names: list[str] = []
    for stem, _, _ in shapes:
        count = sum(1 for n in names if n == stem or n.startswith(stem + "_"))
        names.append(stem if count == 0 else f"{stem}_{count + 1}")
    ring = 0.0 if objects == 1 else max(0.45, 0.36 * objects / math.pi)
    phase = rng.uniform(0, 2 * math.pi)
    placed: list[tuple[np.ndarray, float]] = []
    out = []
    for k, (stem, mesh, radius) in enumerate(shapes):
        for _attempt in range(200):
            a = phase + 2 * math.pi * k / objects + rng.uniform(-0.25, 0.25)
            r = ring * rng.uniform(0.85, 1.1)
            xy = np.array([r * math.cos(a), r * math.sin(a)])
            if all(np.linalg.norm(xy - p) > radius + pr + 0.05 for p, pr in placed):
                break
        else:
            raise RuntimeError(f"toy_scene could not place {objects} objects without overlap")
        placed.append((xy, radius))
        m = _rot_z(rng.uniform(0, 2 * math.pi))
        m[:2, 3] = xy
        out.append(SceneObject(names[k], mesh, _PALETTE[k % len(_PALETTE)], m, smooth=stem == "sphere"))
    return SceneSpec(out)


def orbit_views(
    n: int,
    width: int,
    height: int,
    *,
    elevation_deg: tuple[float, float] = (20.0, 50.0),
    distance: float = 1.9,
    fov_y_deg: float = 45.0,
    seed: int = 0,
    target: Sequence[float] | None = (0.0, 0.0, 0.15),
    near: float = 0.05,
    far: float = 100.0,
) -> Any:
    """``n`` cameras all around the scene looking at ``target``, +Z up (a :class:`Camera`, float32).

    Azimuths are spread evenly over 360 degrees (a random phase and +-25 % jitter of the
    spacing); elevations are uniform in ``elevation_deg``; ``seed`` fixes both. Each camera
    comes from :func:`layerforge.renderers.cameras.orbit_cameras` (OpenCV world-to-camera,
    square pixels, principal point at the image centre).
    """
    import torch

    from layerforge.renderers.cameras import orbit_cameras

    rng = np.random.default_rng(seed)
    step = 360.0 / max(n, 1)
    az = rng.uniform(0, 360) + step * np.arange(n) + rng.uniform(-0.25, 0.25, n) * step
    lo, hi = elevation_deg
    el = rng.uniform(lo, hi, n)
    tgt = (0.0, 0.0, 0.0) if target is None else tuple(float(t) for t in target)
    return orbit_cameras(
        torch.as_tensor(el, dtype=torch.float64),
        torch.as_tensor(az, dtype=torch.float64),
        float(distance),
        float(fov_y_deg),
        width,
        height,
        target=tgt,
        near=near,
        far=far,
        dtype=torch.float64,
    ).to(dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# Minimal OpenEXR reader (uncompressed scanline files, as render_cycles writes them)
# ----------------------------------------------------------------------------------------------

_EXR_TYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}


def read_exr(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Channels of an uncompressed, single-part, scanline OpenEXR file: {name: [H, W] float32}.

    Row 0 is the top of the image (EXR's data window runs top to bottom for INCREASING_Y).
    Only ``compression = NONE`` is supported (``render_cycles`` writes that); anything else
    raises ``ValueError``.
    """
    data = Path(path).read_bytes()
    magic, version = struct.unpack_from("<ii", data, 0)
    if magic != 20000630:
        raise ValueError(f"{path}: not an OpenEXR file")
    if version & 0x200 or version & 0x800 or version & 0x1000:
        raise ValueError(f"{path}: tiled, deep or multi-part OpenEXR is not supported")
    pos = 8
    header: dict[str, bytes] = {}
    while data[pos] != 0:
        end = data.index(b"\0", pos)
        name = data[pos:end].decode()
        end2 = data.index(b"\0", end + 1)
        size = struct.unpack_from("<i", data, end2 + 1)[0]
        header[name] = data[end2 + 5 : end2 + 5 + size]
        pos = end2 + 5 + size
    pos += 1
    if header["compression"][0] != 0:
        raise ValueError(f"{path}: compressed OpenEXR (method {header['compression'][0]}) is not supported")
    channels: list[tuple[str, np.dtype]] = []
    cl, p = header["channels"], 0
    while cl[p] != 0:
        end = cl.index(b"\0", p)
        ptype = struct.unpack_from("<i", cl, end + 1)[0]
        channels.append((cl[p:end].decode(), _EXR_TYPES[ptype]))
        p = end + 1 + 16
    x0, y0, x1, y1 = struct.unpack("<iiii", header["dataWindow"])
    w, h = x1 - x0 + 1, y1 - y0 + 1
    offsets = np.frombuffer(data, "<u8", count=h, offset=pos)
    out = {name: np.zeros((h, w), np.float32) for name, _ in channels}
    for off in offsets:
        y, _size = struct.unpack_from("<ii", data, int(off))
        q = int(off) + 8
        for name, dt in channels:
            out[name][y - y0] = np.frombuffer(data, dt, count=w, offset=q)
            q += w * dt.itemsize
    return out


# ----------------------------------------------------------------------------------------------
# Cycles
# ----------------------------------------------------------------------------------------------


def _material(bpy: Any, name: str, color: Sequence[float], checker: float) -> Any:
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Roughness"].default_value = 0.6
    rgba = (*[float(c) for c in color], 1.0)
    if checker > 0:
        coords = nodes.new("ShaderNodeTexCoord")
        tex = nodes.new("ShaderNodeTexChecker")
        # Blender's checker has 2 squares per unit of Scale: one square = 1 / (2 * scale) units
        tex.inputs["Scale"].default_value = 1.0 / (2.0 * checker)
        tex.inputs["Color1"].default_value = rgba
        tex.inputs["Color2"].default_value = (*[0.35 * float(c) for c in color], 1.0)
        links.new(coords.outputs["Object"], tex.inputs["Vector"])
        links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    else:
        bsdf.inputs["Base Color"].default_value = rgba
    return mat


def _add_mesh(
    bpy: Any, name: str, v: np.ndarray, f: np.ndarray, to_world: np.ndarray, mat: Any, index: int, smooth: bool
) -> Any:
    from mathutils import Matrix

    me = bpy.data.meshes.new(name)
    me.from_pydata(v.tolist(), [], f.tolist())
    me.update()
    if smooth:
        for poly in me.polygons:
            poly.use_smooth = True
    me.materials.append(mat)
    obj = bpy.data.objects.new(name, me)
    obj.matrix_world = Matrix(np.asarray(to_world, np.float64).tolist())
    obj.pass_index = index
    bpy.context.scene.collection.objects.link(obj)
    return obj


def _setup_scene(
    bpy: Any,
    spec: SceneSpec,
    samples: int,
    seed: int,
    remove: Sequence[int],
    moves: Mapping[int, np.ndarray] | None,
    threads: int,
) -> tuple[Any, Any]:
    """Reset bpy's session and build the scene: Cycles settings, passes, world, sun, meshes, camera."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    sc = bpy.context.scene
    sc.render.engine = "CYCLES"
    cy = sc.cycles
    cy.device = "CPU"
    cy.samples = int(samples)
    cy.use_adaptive_sampling = False
    cy.use_denoising = False
    cy.seed = int(seed)
    cy.use_animated_seed = False
    cy.pixel_filter_type = "BOX"
    cy.filter_width = 0.01  # every sample through the pixel centre (see the module docstring)
    cy.max_bounces = 4
    sc.render.use_persistent_data = True
    sc.render.film_transparent = False
    sc.render.resolution_percentage = 100
    sc.render.pixel_aspect_x = sc.render.pixel_aspect_y = 1.0
    sc.render.use_border = False
    if threads > 0:
        sc.render.threads_mode = "FIXED"
        sc.render.threads = int(threads)
    sc.view_settings.view_transform = "Standard"
    sc.view_settings.look = "None"
    sc.view_settings.exposure = 0.0
    sc.view_settings.gamma = 1.0
    vl = sc.view_layers[0]
    vl.use_pass_combined = True
    vl.use_pass_z = True
    vl.use_pass_object_index = True
    im = sc.render.image_settings
    im.media_type = "MULTI_LAYER_IMAGE"
    im.file_format = "OPEN_EXR_MULTILAYER"
    im.color_depth = "32"
    im.exr_codec = "NONE"
    im.use_exr_interleave = True  # one part (read_exr reads single-part files)

    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    bg = next(n for n in world.node_tree.nodes if n.type == "BACKGROUND")
    bg.inputs["Color"].default_value = (0.30, 0.33, 0.38, 1.0)
    bg.inputs["Strength"].default_value = 1.0
    sc.world = world

    sun_data = bpy.data.lights.new("sun", "SUN")
    sun_data.energy = 3.0
    sun_data.angle = math.radians(3.0)
    sun = bpy.data.objects.new("sun", sun_data)
    from mathutils import Euler

    sun.rotation_euler = Euler((math.radians(40.0), 0.0, math.radians(30.0)), "XYZ")
    sc.collection.objects.link(sun)

    if spec.ground:
        v, f = spec.ground_mesh()
        mat = _material(bpy, "ground", spec.ground_color, spec.ground_checker)
        _add_mesh(bpy, "ground", v, f, np.eye(4), mat, 0, False)
    gone = set(int(i) for i in remove)
    for k, o in enumerate(spec.objects):
        if k in gone:
            continue
        v, f = o.local_mesh()
        m = o.to_world if moves is None or k not in moves else moves[k]
        mat = _material(bpy, f"mat_{o.name}", o.color, o.checker)
        _add_mesh(bpy, o.name, v, f, np.asarray(m, np.float64), mat, k + 1, o.smooth)

    cam_data = bpy.data.cameras.new("camera")
    cam = bpy.data.objects.new("camera", cam_data)
    sc.collection.objects.link(cam)
    sc.camera = cam
    return sc, cam


def render_cycles(
    spec: SceneSpec,
    cameras: Any,
    *,
    samples: int = 16,
    remove: Sequence[int] = (),
    moves: Mapping[int, np.ndarray] | None = None,
    seed: int = 0,
    threads: int = 0,
) -> dict[str, np.ndarray]:
    """Render ``spec`` from ``cameras`` with Cycles on CPU (see the module docstring).

    Args:
        spec: the scene.
        cameras: a :class:`~layerforge.renderers.cameras.Camera` batch of N views (OpenCV
            world-to-camera, K in pixels, square pixels ``fx == fy``), all W x H.
        samples: Cycles samples per pixel (all through the pixel centre).
        remove: object indices left out (edit ground truth: "delete object k").
        moves: {object index: object-to-world 4x4} replacing those objects' placement.
        seed: Cycles' sampling seed (fixed: same inputs, same pixels).
        threads: CPU threads; 0 lets Blender use all cores.

    Returns:
        ``rgb`` [N, H, W, 3] linear float32, not clipped (world colour where nothing is hit),
        ``instance`` [N, H, W] int32 (0 = background or ground, ``k + 1`` = object ``k``),
        ``depth`` [N, H, W] float32 camera z in metres (0 where nothing is hit),
        ``seconds_per_view`` float (wall time of the renders / N).
    """
    from layerforge.assets.blend import _bpy, _stdout_silenced

    bpy = _bpy()
    w, h = int(cameras.width), int(cameras.height)
    k_all = cameras.K.detach().cpu().double().numpy()
    c2w_all = cameras.to_blender().detach().cpu().double().numpy()
    n = len(cameras)
    rgb = np.zeros((n, h, w, 3), np.float32)
    inst = np.zeros((n, h, w), np.int32)
    depth = np.zeros((n, h, w), np.float32)
    from mathutils import Matrix  # bpy's; importable once bpy is

    with tempfile.TemporaryDirectory(prefix="lf_cycles_") as tmp, _stdout_silenced():
        sc, cam = _setup_scene(bpy, spec, samples, seed, remove, moves, threads)
        sc.render.resolution_x, sc.render.resolution_y = w, h
        cd = cam.data
        cd.type = "PERSP"
        cd.sensor_fit = "HORIZONTAL"
        cd.sensor_width = 36.0
        cd.clip_start = float(cameras.near)
        cd.clip_end = float(cameras.far)
        t0 = time.perf_counter()
        for i in range(n):
            fx, fy, cx, cy = k_all[i, 0, 0], k_all[i, 1, 1], k_all[i, 0, 2], k_all[i, 1, 2]
            if abs(fx - fy) > 1e-6 * fx:
                raise ValueError(f"render_cycles needs square pixels (fx == fy), view {i} has {fx} / {fy}")
            cd.lens = fx / w * cd.sensor_width
            # shift is in units of the fitted (horizontal) sensor size; +y is up in Blender
            cd.shift_x = (0.5 * w - cx) / w
            cd.shift_y = (cy - 0.5 * h) / w
            cam.matrix_world = Matrix(c2w_all[i].tolist())
            out = os.path.join(tmp, f"view_{i:05d}.exr")
            sc.render.filepath = out
            bpy.ops.render.render(write_still=True)
            ch = read_exr(out)
            layer = next(k.rsplit(".", 2)[0] for k in ch if k.endswith("Combined.R"))
            rgb[i] = np.stack([ch[f"{layer}.Combined.{c}"] for c in "RGB"], -1)
            z = ch[f"{layer}.Depth.Z"]
            hit = z <= float(cameras.far)  # Cycles writes 1e10 where a ray escapes
            depth[i] = np.where(hit, z, 0.0)
            inst[i] = np.rint(ch[f"{layer}.Object Index.X"]).astype(np.int32)
        seconds = (time.perf_counter() - t0) / max(n, 1)
        bpy.ops.wm.read_factory_settings(use_empty=True)
    return {"rgb": rgb, "instance": inst, "depth": depth, "seconds_per_view": seconds}


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        # uint16 [H, W] -> mode I;16 (16-bit grey PNG), uint8 -> L or RGB
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")


def write_nerfstudio_scene(
    spec: SceneSpec,
    out_dir: str | os.PathLike[str],
    *,
    width: int = 64,
    height: int = 48,
    n_train: int = 30,
    n_test: int = 6,
    seed: int = 0,
    samples: int = 16,
    cameras: Any = None,
) -> Path:
    """Render ``spec`` with Cycles and write it as a nerfstudio-format folder; returns the folder.

    Views: ``orbit_views(n_train + n_test, width, height, seed=seed)`` around the objects'
    centre (farther than 1.9 m when the objects reach beyond ~0.73 m) unless ``cameras`` is given; every ``(n_train + n_test) // n_test``-th view is a test view (``"split": "test"``),
    the others train. Written (all PNGs 8-bit sRGB or integer, each file atomically):

    - ``images/frame_XXXXX.png``: sRGB 8-bit RGB.
    - ``masks/frame_XXXXX.png``: instance ids (0 = background/ground, ``k + 1`` = object ``k``),
      uint8, or uint16 with more than 255 objects.
    - ``depth/frame_XXXXX.png``: camera z in millimetres, uint16 (0 = nothing hit; clipped at
      65.535 m); ``transforms.json`` says ``"depth_unit_scale_factor": 0.001``.
    - ``transforms.json``: shared ``fl_x fl_y cx cy w h`` (pixel centres at +0.5), per-frame
      OpenGL camera-to-world ``transform_matrix``, ``file_path``, ``mask_path``,
      ``depth_file_path``, ``split``.
    - ``instances.json``: ``{"1": "box", ...}``.
    - ``gt/<name>.ply``: each object's mesh in world coordinates (as placed), and
      ``gt/scene.json``: names, ids, linear colours, row-major ``to_world``, ground size.

    Refuses (``OutputError``) to write into a folder that already holds a ``transforms.json``.
    """
    import torch
    import trimesh

    out = Path(out_dir)
    if (out / "transforms.json").exists():
        raise OutputError(f"{out} already holds a transforms.json", "choose an empty folder or remove it first")
    if cameras is None:
        if n_train < 1 or n_test < 0:
            raise ValueError(f"need n_train >= 1 and n_test >= 0, got {n_train} / {n_test}")
        centre = spec.center()
        reach = max((np.linalg.norm(o.world_mesh()[0] - centre, axis=1).max() for o in spec.objects), default=0.0)
        distance = max(1.9, 2.6 * float(reach))  # 1.9 m frames the 3-object toy scene; wider ones back off
        cameras = orbit_views(n_train + n_test, width, height, seed=seed, target=tuple(centre), distance=distance)
    n = len(cameras)
    every = n // n_test if n_test > 0 else 0
    test = {i for i in range(n) if every and i % every == every - 1 and i // every < n_test}
    res = render_cycles(spec, cameras, samples=samples, seed=seed)
    from layerforge.assets.types import linear_to_srgb

    k = cameras.K[0].double()
    if not all(torch.allclose(cameras.K[i].double(), k) for i in range(n)):
        raise ValueError("write_nerfstudio_scene writes shared intrinsics: give cameras with one K")
    c2w = cameras.to_nerfstudio().double().cpu().numpy()
    mask_dtype = np.uint8 if len(spec.objects) < 256 else np.uint16
    frames = []
    for i in range(n):
        stem = f"frame_{i:05d}.png"
        rgb8 = np.rint(np.clip(linear_to_srgb(res["rgb"][i]), 0, 1) * 255).astype(np.uint8)
        _write_png(out / "images" / stem, rgb8)
        _write_png(out / "masks" / stem, res["instance"][i].astype(mask_dtype))
        mm = np.clip(np.rint(res["depth"][i].astype(np.float64) * 1000.0), 0, 65535).astype(np.uint16)
        _write_png(out / "depth" / stem, mm)
        m = np.eye(4)
        m[:3, :] = c2w[i]
        frames.append(
            {
                "file_path": f"images/{stem}",
                "mask_path": f"masks/{stem}",
                "depth_file_path": f"depth/{stem}",
                "transform_matrix": m.tolist(),
                "split": "test" if i in test else "train",
            }
        )
    meta = {
        "camera_model": "OPENCV",
        "fl_x": float(k[0, 0]),
        "fl_y": float(k[1, 1]),
        "cx": float(k[0, 2]),
        "cy": float(k[1, 2]),
        "w": int(cameras.width),
        "h": int(cameras.height),
        "depth_unit_scale_factor": 0.001,
        "layerforge_synthetic": {
            "generator_version": GENERATOR_VERSION,
            "renderer": "blender cycles (bpy)",
            "samples": int(samples),
            "seed": int(seed),
            "depth": "camera z (OpenCV +z) in millimetres, uint16, 0 = nothing hit",
            "mask": "instance ids, 0 = background and ground",
        },
        "frames": frames,
    }
    atomic_write_json(out / "instances.json", {str(i + 1): o.name for i, o in enumerate(spec.objects)})
    scene = {
        "objects": [
            {
                "id": i + 1,
                "name": o.name,
                "color": [float(c) for c in o.color],
                "to_world": np.asarray(o.to_world, np.float64).tolist(),
                "mesh": f"{o.name}.ply",
            }
            for i, o in enumerate(spec.objects)
        ],
        "ground": {"enabled": bool(spec.ground), "size": float(spec.ground_size), "z": 0.0},
        "units": "metres, +Z up",
    }
    for o in spec.objects:
        v, f = o.world_mesh()
        with atomic_path(out / "gt" / f"{o.name}.ply") as tmp:
            trimesh.Trimesh(v, f, process=False).export(tmp, file_type="ply")
    atomic_write_json(out / "gt" / "scene.json", scene)
    atomic_write_json(out / "transforms.json", meta)  # last: its presence marks a complete folder
    return out


def _cache_key(kwargs: Mapping[str, Any]) -> str:
    blob = json.dumps({"generator_version": GENERATOR_VERSION, **kwargs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_toy_scene(cache_root: str | os.PathLike[str], **kwargs: Any) -> Path:
    """The toy scene as a nerfstudio folder under ``cache_root``, generated on first use.

    ``kwargs``: ``objects`` and ``seed`` go to :func:`toy_scene` (``seed`` also to the
    writer), the rest (``width``, ``height``, ``n_train``, ``n_test``, ``samples``) to
    :func:`write_nerfstudio_scene`. The folder is ``cache_root/<hash of kwargs and
    GENERATOR_VERSION>/``; it is built in a temporary sibling and renamed into place, so a
    crash never leaves a half-written cache entry and concurrent callers share one result.
    """
    scene_keys = {"objects", "seed"}
    write_keys = {"width", "height", "n_train", "n_test", "seed", "samples"}
    unknown = set(kwargs) - scene_keys - write_keys
    if unknown:
        raise TypeError(f"cached_toy_scene got unknown arguments {sorted(unknown)}")
    from layerforge.assets.atomic import cached_folder

    def write(folder: Path) -> None:
        spec = toy_scene(**{k: v for k, v in kwargs.items() if k in scene_keys})
        write_nerfstudio_scene(spec, folder, **{k: v for k, v in kwargs.items() if k in write_keys})

    return cached_folder(Path(cache_root) / _cache_key(kwargs), "transforms.json", write)
