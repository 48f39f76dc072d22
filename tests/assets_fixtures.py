"""Tiny assets for the tests/test_assets_*.py files, and a helper that imports a file into bpy.

(tests/conftest.py is shared, so these live here and are imported explicitly.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from layerforge.assets.types import GaussianCloud, LayeredAsset, Material, Mesh, Part, Skin

# a tall thin box: 0.2 m x 0.3 m footprint, 2 m high along world +Z
TALL = (0.2, 0.3, 2.0)


def box(extents=(1.0, 1.0, 1.0), center=(0.0, 0.0, 0.0), seed: int = 0, attrs: bool = True) -> Mesh:
    """Closed box, 24 vertices (4 per side, so UVs/normals are per side), outward CCW faces."""
    ext = np.asarray(extents, np.float64) / 2
    verts, faces, normals, uvs = [], [], [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            n = np.zeros(3)
            n[axis] = sign
            u_ax, v_ax = [a for a in range(3) if a != axis]
            corners = []
            for cu, cv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                p = np.zeros(3)
                p[axis], p[u_ax], p[v_ax] = sign, cu, cv
                corners.append(p)
            base = len(verts)
            # make (1,-1)->(1,1) winding CCW seen from outside
            order = [0, 1, 2, 3] if np.dot(np.cross(corners[1] - corners[0], corners[2] - corners[0]), n) > 0 else [0, 3, 2, 1]
            verts += [corners[i] for i in order]
            normals += [n] * 4
            uvs += [((corners[i][u_ax] + 1) / 2, (corners[i][v_ax] + 1) / 2) for i in order]
            faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
    rng = np.random.default_rng(seed)
    v = np.asarray(verts) * ext + np.asarray(center)
    if not attrs:
        return Mesh(v, faces)
    return Mesh(v, faces, normals=np.asarray(normals), uvs=np.asarray(uvs) * 0.9 + 0.05, colors=rng.random((24, 4)).astype(np.float32))


def checker(h: int = 8, w: int = 16, alpha: bool = False) -> np.ndarray:
    """[h, w, 3|4] float32 texture with distinct rows/columns (catches flips)."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x / (w - 1), y / (h - 1), ((x + y) % 2) * 0.5 + 0.25], -1).astype(np.float32)
    if alpha:
        img = np.concatenate([img, np.full((h, w, 1), 0.75, np.float32)], -1)
    return img


def translate(x: float, y: float, z: float) -> np.ndarray:
    m = np.eye(4, dtype=np.float32)
    m[:3, 3] = (x, y, z)
    return m


@pytest.fixture
def chair_asset() -> LayeredAsset:
    """Two textured parts + one plain part, two layers, a transform and metadata."""
    wood = Material("wood", [0.9, 0.7, 0.5, 1.0], checker(), metallic=0.1, roughness=0.7,
                    normal_texture=np.full((4, 4, 3), [0.5, 0.5, 1.0], np.float32))
    paint = Material("paint", [0.2, 0.4, 0.8, 1.0], metallic=0.0, roughness=0.3)
    post = box(TALL, seed=1)
    post.material = wood
    seat = box((0.6, 0.5, 0.05), seed=2)
    seat.material = paint
    plain = box((0.1, 0.1, 0.1), seed=3, attrs=False)
    rot = np.array([[0, -1, 0, 0.5], [1, 0, 0, 0.0], [0, 0, 1, 1.0], [0, 0, 0, 1]], np.float32)  # 90 deg about Z
    return LayeredAsset("chair", [
        Part("post", post, translate(1.0, 2.0, 1.0), layer="frame", metadata={"convex": 1}),
        Part("seat", seat, rot, layer="frame"),
        Part("cushion", plain, translate(0.0, 0.0, 0.6), layer="soft"),
    ], metadata={"source": "test"})


def random_cloud(n: int, degree: int, seed: int = 0) -> GaussianCloud:
    rng = np.random.default_rng(seed)
    return GaussianCloud(
        means=rng.normal(size=(n, 3)).astype(np.float32),
        quats=rng.normal(size=(n, 4)).astype(np.float32),
        log_scales=rng.normal(-3, 0.5, size=(n, 3)).astype(np.float32),
        opacity_logits=rng.normal(size=n).astype(np.float32),
        sh=rng.normal(0, 0.3, size=(n, (degree + 1) ** 2, 3)).astype(np.float32),
    )


def skinned_part() -> Part:
    """A tall box with two joints (root at the base, 'tip' 1 m up), weights blending by height."""
    mesh = box(TALL, center=(0, 0, 1.0), seed=4, attrs=False)
    ibm = np.stack([np.eye(4), np.eye(4)]).astype(np.float32)
    ibm[1, 2, 3] = -1.0  # joint 'tip' sits at z = 1
    w_tip = np.clip(mesh.vertices[:, 2] / 2.0, 0, 1)
    joints = np.tile([0, 1, 0, 0], (len(mesh.vertices), 1))
    weights = np.stack([1 - w_tip, w_tip, np.zeros_like(w_tip), np.zeros_like(w_tip)], 1)
    return Part("arm", mesh, translate(0.5, 0.0, 0.0), skin=Skin(["root", "tip"], [-1, 0], ibm, joints, weights))


def bpy_load(path: Path):
    """Open ``path`` in an empty Blender session as a user would: a .blend with File > Open,
    anything else with its default importer (no option changed). Returns the bpy module."""
    import bpy

    suffix = path.suffix.lower()
    if suffix == ".blend":
        bpy.ops.wm.open_mainfile(filepath=str(path), load_ui=False)
        bpy.context.view_layer.update()
        return bpy
    bpy.ops.wm.read_factory_settings(use_empty=True)
    if suffix in (".glb", ".gltf"):
        bpy.ops.import_scene.gltf(filepath=str(path))
    elif suffix == ".obj":
        bpy.ops.wm.obj_import(filepath=str(path))
    elif suffix == ".ply":
        bpy.ops.wm.ply_import(filepath=str(path))
    elif suffix == ".stl":
        bpy.ops.wm.stl_import(filepath=str(path))
    else:
        bpy.ops.wm.usd_import(filepath=str(path))
    bpy.context.view_layer.update()
    return bpy


def bpy_world_mesh(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every mesh object Blender shows after :func:`bpy_load`, in world space, merged:
    ([V, 3] float64 vertex positions in metres, [F, 3] triangle indices)."""
    bpy = bpy_load(path)
    verts, tris, base = [], [], 0
    for o in bpy.data.objects:
        if o.type != "MESH":
            continue
        mesh = o.data
        mesh.calc_loop_triangles()
        co = np.empty(len(mesh.vertices) * 3, np.float64)
        mesh.vertices.foreach_get("co", co)
        m = np.array(o.matrix_world, np.float64)
        verts.append(co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3])
        t = np.empty(len(mesh.loop_triangles) * 3, np.int64)
        mesh.loop_triangles.foreach_get("vertices", t)
        tris.append(t.reshape(-1, 3) + base)
        base += len(mesh.vertices)
    if not verts:
        raise AssertionError(f"Blender found no mesh in {path}")
    return np.concatenate(verts), np.concatenate(tris)


def bpy_import(path: Path) -> dict[str, dict]:
    """Import ``path`` into an empty Blender session with the importer's defaults.

    Returns {object name: {type, verts, bbox_min, bbox_max (world, metres), corner_uvs,
    materials, images (names of loaded images reachable from its materials),
    vertex_groups, bones}}.
    """
    bpy = bpy_load(path)
    out = {}
    for o in bpy.data.objects:
        info = {"type": o.type, "verts": len(o.data.vertices) if o.type == "MESH" else 0, "materials": [],
                "images": [], "vertex_groups": [g.name for g in o.vertex_groups],
                "bones": [b.name for b in o.data.bones] if o.type == "ARMATURE" else []}
        if o.type == "MESH":
            co = np.empty(len(o.data.vertices) * 3, np.float32)
            o.data.vertices.foreach_get("co", co)
            m = np.array(o.matrix_world)
            world = co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]
            info["bbox_min"], info["bbox_max"] = world.min(0), world.max(0)
            if o.data.uv_layers.active is not None:  # [loops, 5]: world position and UV of each corner
                loop_v = np.empty(len(o.data.loops), np.int32)
                o.data.loops.foreach_get("vertex_index", loop_v)
                uv = np.empty(len(o.data.loops) * 2, np.float32)
                o.data.uv_layers.active.data.foreach_get("uv", uv)
                info["corner_uvs"] = np.hstack([world[loop_v], uv.reshape(-1, 2)])
            for mat in o.data.materials:
                if mat is None:
                    continue
                info["materials"].append(mat.name)
                if mat.node_tree is not None:
                    info["images"] += [n.image.name for n in mat.node_tree.nodes if n.type == "TEX_IMAGE" and n.image is not None
                                       and n.image.size[0] > 0]
        out[o.name] = info
    return out


def assert_corner_uvs_match(info: dict, part) -> None:
    """Every (world position, UV) corner Blender shows exists in ``part`` (so V is not flipped)."""
    world = part.geometry.transformed(part.transform).vertices
    ours = np.hstack([world, part.geometry.uvs])
    got = info["corner_uvs"]
    dist = np.abs(got[:, None, :] - ours[None, :, :]).max(-1).min(1)
    assert dist.max() < 1e-5, f"corner UVs differ by up to {dist.max():.3g}"
