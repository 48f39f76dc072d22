"""Blender .blend writer/reader through bpy (Blender as a Python module).

A written file holds one collection named after the asset, one object per part (named
after the part, with its transform and ``layerforge_layer`` / ``layerforge_metadata``
custom properties), Principled-BSDF materials named after ours with packed textures, and
for skinned parts an armature with one vertex group per joint. Blender's world is ours
(+Z up, metres), so nothing is converted.

bpy is heavy and holds one global session: it is imported inside the functions, and both
functions reset that session (factory settings, empty scene) before they start.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from layerforge.assets.atomic import atomic_path
from layerforge.assets.types import GaussianCloud, LayeredAsset, Material, Mesh, Part, linear_to_srgb, srgb_to_linear
from layerforge.assets.validation import check_file, validate_asset
from layerforge.errors import InputError, OutputError


@contextlib.contextmanager
def _stdout_silenced() -> Iterator[None]:
    """Silence stdout for the block: Python's sys.stdout and file descriptor 1 (C-level prints)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        # C stdio buffers stdout when it is not a terminal: flush Blender's prints while fd 1
        # still points at /dev/null, or they surface later
        ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def _bpy() -> Any:
    """Import bpy, or say in one line why it cannot load here."""
    try:
        import bpy
    except ImportError as err:
        # pymeshlab bundles its own Embree; once it is loaded, bpy's Embree symbols clash
        raise OutputError(
            f"bpy (Blender) cannot be imported in this process ({str(err).splitlines()[0][-90:]})",
            "install bpy==5.0.1 with `make setup`, and import bpy before pymeshlab (their bundled Embree libraries clash)",
        ) from None
    return bpy



def write_blend(path: str | os.PathLike[str], asset: LayeredAsset | Mesh) -> Path:
    """Write ``asset`` as a .blend (textures packed inside), atomically; returns the path."""
    bpy = _bpy()
    from mathutils import Matrix

    path = Path(path)
    if isinstance(asset, Mesh):
        asset = LayeredAsset(path.stem, [Part(path.stem, asset)])
    bpy.ops.wm.read_factory_settings(use_empty=True)
    coll = bpy.data.collections.new(asset.name)
    bpy.context.scene.collection.children.link(coll)
    if asset.metadata:
        coll["layerforge_metadata"] = json.dumps(asset.metadata, default=str)
    materials: dict[int, Any] = {}
    for part in asset.parts:
        if isinstance(part.geometry, Mesh):
            data = _mesh_data(part.name, part.geometry)
            mat = part.geometry.material
            if mat is not None:
                if id(mat) not in materials:
                    materials[id(mat)] = _material(mat)
                data.materials.append(materials[id(mat)])
        else:
            data = _points_data(part.name, part.geometry)
        obj = bpy.data.objects.new(part.name, data)
        obj.matrix_world = Matrix(part.transform.astype(np.float64).tolist())
        obj["layerforge_layer"] = str(part.layer)
        if part.metadata:
            obj["layerforge_metadata"] = json.dumps(part.metadata, default=str)
        coll.objects.link(obj)
        if part.skin is not None:
            _armature(coll, obj, part)
    bpy.context.preferences.filepaths.save_version = 0  # no .blend1 backups next to deliverables
    with atomic_path(path) as tmp:
        tmp.unlink()  # Blender would otherwise back up the empty placeholder
        with _stdout_silenced():  # Blender prints "Info: Saved as ..." from C, past sys.stdout
            bpy.ops.wm.save_as_mainfile(filepath=str(tmp), check_existing=False, compress=True)
    return path


def _mesh_data(name: str, mesh: Mesh) -> Any:
    import bpy

    me = bpy.data.meshes.new(name)
    me.vertices.add(len(mesh.vertices))
    me.vertices.foreach_set("co", mesh.vertices.reshape(-1))
    n = len(mesh.faces)
    me.loops.add(3 * n)
    me.loops.foreach_set("vertex_index", mesh.faces.reshape(-1).astype(np.int32))
    me.polygons.add(n)
    me.polygons.foreach_set("loop_start", np.arange(0, 3 * n, 3, dtype=np.int32))
    me.update()
    if mesh.uvs is not None:
        uv = me.uv_layers.new(name="UVMap")
        uv.data.foreach_set("uv", mesh.uvs[mesh.faces].reshape(-1))
    if mesh.colors is not None:
        rgba = np.concatenate([mesh.colors, np.ones((len(mesh.colors), 1), np.float32)], 1)[:, :4] if mesh.colors.shape[1] == 3 else mesh.colors
        attr = me.color_attributes.new("Color", "FLOAT_COLOR", "POINT")
        attr.data.foreach_set("color", np.ascontiguousarray(rgba).reshape(-1))
    if mesh.normals is not None:
        me.normals_split_custom_set_from_vertices(mesh.normals.tolist())
    me.validate()
    return me


def _points_data(name: str, cloud: GaussianCloud) -> Any:
    """Gaussian centres as a vertex-only mesh with DC colour, opacity and scale attributes."""
    import bpy

    me = bpy.data.meshes.new(name)
    me.vertices.add(len(cloud))
    me.vertices.foreach_set("co", cloud.means.reshape(-1))
    rgba = np.concatenate([cloud.rgb(), cloud.opacities()[:, None]], 1)
    me.color_attributes.new("Color", "FLOAT_COLOR", "POINT").data.foreach_set("color", rgba.reshape(-1))
    me.attributes.new("opacity_logit", "FLOAT", "POINT").data.foreach_set("value", cloud.opacity_logits)
    me.attributes.new("log_scale", "FLOAT_VECTOR", "POINT").data.foreach_set("vector", cloud.log_scales.reshape(-1))
    me.update()
    return me


def _image(name: str, img: np.ndarray, srgb: bool) -> Any:
    import bpy

    h, w, c = img.shape
    rgba = np.ones((h, w, 4), np.float32)
    rgba[..., :c] = img
    if srgb:  # 8-bit images hold values in their colour space
        rgba[..., :3] = linear_to_srgb(rgba[..., :3])
    im = bpy.data.images.new(name, w, h, alpha=c == 4)
    im.colorspace_settings.name = "sRGB" if srgb else "Non-Color"
    im.pixels.foreach_set(np.ascontiguousarray(rgba[::-1]).reshape(-1))  # Blender rows run bottom-up
    im.file_format = "PNG"
    im.pack()
    return im


def _material(mat: Material) -> Any:
    import bpy

    bm = bpy.data.materials.new(mat.name)
    bm.use_nodes = True
    nodes, links = bm.node_tree.nodes, bm.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Base Color"].default_value = [float(c) for c in mat.base_color]
    bsdf.inputs["Metallic"].default_value = mat.metallic
    bsdf.inputs["Roughness"].default_value = mat.roughness
    bsdf.inputs["Alpha"].default_value = float(mat.base_color[3])
    bm.diffuse_color = [float(c) for c in mat.base_color]
    if mat.base_color_texture is not None:
        tex = nodes.new("ShaderNodeTexImage")
        tex.image = _image(f"{mat.name}_basecolor", mat.base_color_texture, True)
        links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
        if mat.base_color_texture.shape[2] == 4:
            links.new(tex.outputs["Alpha"], bsdf.inputs["Alpha"])
    if mat.normal_texture is not None:
        tex = nodes.new("ShaderNodeTexImage")
        tex.image = _image(f"{mat.name}_normal", mat.normal_texture, False)
        nmap = nodes.new("ShaderNodeNormalMap")
        links.new(tex.outputs["Color"], nmap.inputs["Color"])
        links.new(nmap.outputs["Normal"], bsdf.inputs["Normal"])
    return bm


def _armature(coll: Any, obj: Any, part: Part) -> None:
    """Armature at bind pose (bone heads at joint origins) + vertex groups + modifier."""
    import bpy
    from mathutils import Matrix

    skin = part.skin
    assert skin is not None
    arm = bpy.data.armatures.new(f"{part.name}_skeleton")
    arm_obj = bpy.data.objects.new(f"{part.name}_skeleton", arm)
    arm_obj.matrix_world = Matrix(part.transform.astype(np.float64).tolist())
    coll.objects.link(arm_obj)
    bpy.context.view_layer.objects.active = arm_obj
    bpy.ops.object.mode_set(mode="EDIT")
    binds = skin.bind_matrices()
    size = max(float(np.ptp(part.geometry.vertices, axis=0).max()) * 0.05, 1e-3)
    bones = []
    for j, name in enumerate(skin.joint_names):
        bone = arm.edit_bones.new(name)
        bone.head = binds[j][:3, 3].tolist()
        bone.tail = (binds[j][:3, 3] + binds[j][:3, 2] / max(np.linalg.norm(binds[j][:3, 2]), 1e-12) * size).tolist()
        if skin.parents[j] >= 0:
            bone.parent = bones[skin.parents[j]]
        bones.append(bone)
    bpy.ops.object.mode_set(mode="OBJECT")
    for j, name in enumerate(skin.joint_names):
        group = obj.vertex_groups.new(name=name)
        rows, cols = np.nonzero((skin.joints == j) & (skin.weights > 0))
        for v, w in zip(rows.tolist(), skin.weights[rows, cols].tolist()):
            group.add([v], w, "ADD")
    mod = obj.modifiers.new("Armature", "ARMATURE")
    mod.object = arm_obj
    obj.parent = arm_obj
    obj.matrix_parent_inverse = arm_obj.matrix_world.inverted()


def read_blend(path: str | os.PathLike[str], validate: bool = True) -> LayeredAsset:
    """Read mesh objects of a .blend (world transforms, triangles, UVs, materials) into a LayeredAsset.

    The asset is the first collection under the scene (its name; all its mesh objects).
    Armatures and skin weights are not read back.
    """
    bpy = _bpy()

    path = check_file(path, (".blend",))
    try:
        bpy.ops.wm.open_mainfile(filepath=str(path), load_ui=False)
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot open .blend ({exc})", "re-save it from Blender") from None
    scene = bpy.context.scene
    coll = scene.collection.children[0] if len(scene.collection.children) else scene.collection
    parts: list[Part] = []
    mats: dict[str, Material] = {}
    for obj in coll.all_objects:
        if obj.type != "MESH":
            continue
        me = obj.data
        verts = np.empty(len(me.vertices) * 3, np.float32)
        me.vertices.foreach_get("co", verts)
        me.calc_loop_triangles()
        tris = np.empty(len(me.loop_triangles) * 3, np.int32)
        me.loop_triangles.foreach_get("vertices", tris)
        uvs = None
        if me.uv_layers.active is not None and len(me.loops):
            loop_uv = np.empty(len(me.loops) * 2, np.float32)
            me.uv_layers.active.data.foreach_get("uv", loop_uv)
            loop_v = np.empty(len(me.loops), np.int32)
            me.loops.foreach_get("vertex_index", loop_v)
            uvs = np.zeros((len(me.vertices), 2), np.float32)
            uvs[loop_v] = loop_uv.reshape(-1, 2)
        material = None
        if len(me.materials) and me.materials[0] is not None:
            bm = me.materials[0]
            material = mats.setdefault(bm.name, _read_material(bm))
        meta = json.loads(obj["layerforge_metadata"]) if "layerforge_metadata" in obj else {}
        layer = obj["layerforge_layer"] if "layerforge_layer" in obj else None
        parts.append(Part(obj.name, Mesh(verts.reshape(-1, 3), tris.reshape(-1, 3), uvs=uvs, material=material),
                          np.array(obj.matrix_world, np.float32), layer, metadata=meta))
    meta = json.loads(coll["layerforge_metadata"]) if "layerforge_metadata" in coll else {}
    asset = LayeredAsset(coll.name if coll is not scene.collection else path.stem, parts, meta)
    return validate_asset(asset, path) if validate else asset


def _read_material(bm: Any) -> Material:
    out = Material(bm.name, base_color=list(bm.diffuse_color))
    if bm.node_tree is None:
        return out
    bsdf = next((n for n in bm.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is None:
        return out
    out.base_color = np.asarray(list(bsdf.inputs["Base Color"].default_value), np.float32)
    out.metallic = float(bsdf.inputs["Metallic"].default_value)
    out.roughness = float(bsdf.inputs["Roughness"].default_value)
    link = next((lk for lk in bsdf.inputs["Base Color"].links), None)
    if link is not None and link.from_node.type == "TEX_IMAGE" and link.from_node.image is not None:
        im = link.from_node.image
        w, h = im.size
        px = np.empty(w * h * 4, np.float32)
        im.pixels.foreach_get(px)
        img = px.reshape(h, w, 4)[::-1]
        out.base_color_texture = srgb_to_linear(img[..., :3]) if im.colorspace_settings.name == "sRGB" else img[..., :3]
    return out
