"""Blender .blend writer/reader through bpy (Blender as a Python module).

A written file holds one collection named after the asset, one object per part (named
after the part, with its transform and ``layerforge_layer`` / ``layerforge_metadata``
custom properties), Principled-BSDF materials named after ours with packed textures, and
for skinned parts an armature with one vertex group per joint. Parts whose skins share one
``Skin.skeleton`` get ONE armature object (object and data named after the skeleton, at the
identity, bones at the world-space bind pose); each of their meshes is parented to it with an
Armature modifier targeting it. A part with ``skeleton=None`` gets its own ``<part>_skeleton``.
Blender's world is ours (+Z up, metres), so nothing is converted.

bpy is heavy and holds one global session: it is imported inside the functions, and both
functions reset that session (factory settings, empty scene) before they start.

Byte reproducibility: the same asset gives the same file bytes, in one process or in two.
Blender 5.0.1 alone does not (measured: two saves of the test chair in one process differ in
1474 of 487,980 uncompressed bytes, and two processes' saves differ too), for five reasons,
each fixed here on the uncompressed file Blender writes (:func:`_normalise_blend`, which finds
the fields by name in the file's own struct catalogue, DNA1):

- ``session_uid`` of every ID and pose channel: a per-process counter (differs within one
  process, not across two); written as 0, and Blender assigns fresh ones on reading.
- ``bNode.identifier``: drawn from a time-seeded RNG; renumbered 1, 2, ... in file order
  (shader trees only; they reference nodes by pointer, never by identifier).
- ``Mesh.face_sets_color_seed``: time-seeded (colours of sculpt face sets); written as 0.
- ``ScrEdge.v1/v2`` (the UI's screen edges): ordered by heap address; written in file-address
  order instead (Blender re-sorts them by address on reading anyway).
- Uninitialised memory: the bytes after the terminating NUL of FileGlobal's and
  ImagePackedFile's strings (zeroed), and the ``.select_edge`` attribute that
  ``Mesh.update()`` creates as int2 over uninitialised memory (selection attributes are
  removed before saving: a deliverable has nothing selected).

Blender compresses with zstd, which Python 3.11 cannot write; the normalised file is written
gzip-compressed (``mtime=0``, so deterministic), which Blender still reads (its pre-3.0
format). :func:`_normalise_blend` leaves a file whose layout it does not recognise as Blender
wrote it, with a warning (tests/test_assets_blend.py then fails on the bytes).
"""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import io
import json
import logging
import os
import re
import struct
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from layerforge.assets.atomic import atomic_path
from layerforge.assets.types import (
    GaussianCloud,
    LayeredAsset,
    Material,
    Mesh,
    Part,
    Skin,
    linear_to_srgb,
    skeleton_groups,
    srgb_to_linear,
)
from layerforge.assets.validation import check_file, validate_asset
from layerforge.errors import InputError, OutputError

log = logging.getLogger(__name__)

# gzip level of written .blend files. Measured on a 164k-vertex mesh (15.5 MB uncompressed):
# level 1 0.18 s -> 5.8 MB, level 6 1.1 s -> 5.9 MB, level 9 2.4 s -> 5.9 MB (Blender's zstd: 6.6 MB).
GZIP_LEVEL = 1
# Selection attributes Mesh.update() adds; ".select_edge" holds uninitialised memory (Blender 5.0.1).
_SELECTION_ATTRIBUTES = (".select_vert", ".select_edge", ".select_poly")


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
    """Write ``asset`` as a .blend (textures packed inside), atomically; returns the path.

    The file is gzip-compressed and byte-reproducible: the same asset gives the same bytes
    (module docstring). Selection attributes are not written (nothing is selected).
    """
    bpy = _bpy()
    from mathutils import Matrix

    path = Path(path)
    if isinstance(asset, Mesh):
        asset = LayeredAsset(path.stem, [Part(path.stem, asset)])
    groups = skeleton_groups(asset.parts)  # InputError if parts of one skeleton disagree
    clash = sorted(set(groups) & {p.name for p in asset.parts})
    if clash:
        raise InputError(f"asset {asset.name!r}: skeleton {clash[0]!r} has the name of a part",
                         "name the shared skeleton apart from every part (it becomes the armature object's name)")
    armatures: dict[str, Any] = {}
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
        if part.skin is not None and part.skin.skeleton is not None:
            shared = part.skin.skeleton
            if shared not in armatures:
                members = groups[shared]
                first = members[0]
                assert first.skin is not None
                world = [m.geometry.transformed(m.transform).vertices for m in members if isinstance(m.geometry, Mesh)]
                armatures[shared] = _armature(coll, shared, first.skin, first.transform.astype(np.float64) @ first.skin.bind_matrices(),
                                              np.eye(4), np.concatenate(world))
            _bind(obj, armatures[shared], part.skin, used_only=True)
        elif part.skin is not None:
            arm_obj = _armature(coll, f"{part.name}_skeleton", part.skin, part.skin.bind_matrices(),
                                part.transform.astype(np.float64), part.geometry.vertices)
            _bind(obj, arm_obj, part.skin)
    bpy.context.preferences.filepaths.save_version = 0  # no .blend1 backups next to deliverables
    with atomic_path(path) as tmp:
        tmp.unlink()  # Blender would otherwise back up the empty placeholder
        with _stdout_silenced():  # Blender prints "Info: Saved as ..." from C, past sys.stdout
            bpy.ops.wm.save_as_mainfile(filepath=str(tmp), check_existing=False, compress=False)
        tmp.write_bytes(gzip.compress(_normalise_blend(tmp.read_bytes()), compresslevel=GZIP_LEVEL, mtime=0))
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
    _remove_selection(me)
    return me


def _remove_selection(me: Any) -> None:
    """Drop the selection attributes (nothing selected); ``.select_edge`` would be written uninitialised."""
    for name in _SELECTION_ATTRIBUTES:
        attr = me.attributes.get(name)
        if attr is not None:
            me.attributes.remove(attr)


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
    _remove_selection(me)
    return me


# ---- byte-reproducible files ---------------------------------------------------------------
# Blender 5 file layout (blenloader/intern/writefile.cc, makesdna/DNA_sdna_types.h): a header
# "BLENDER" + its size in 2 digits + "-01" (format 1) + "v" (little-endian) + version, then
# blocks: a 32-byte head (code, SDNA struct index, address, byte length, element count) and the
# data; the DNA1 block lists every struct's fields, so fields are found by name, not offset.
_BLEND_MAGIC = re.compile(rb"BLENDER(\d\d)-01v\d{4}")
_BHEAD = struct.Struct("<4siQqq")
_HEADER_SHOWN = len(b"BLENDER17-01v0500")  # bytes of an unrecognised header quoted in the warning
_POINTER_SIZE = 8
_NTREE_SHADER = 0  # bNodeTree.type of material / world / light node trees (DNA_node_types.h)
# Structs written with uninitialised bytes after the NUL of their char[] strings (measured).
_STRING_STRUCTS = ("FileGlobal", "ImagePackedFile")


class _Sdna:
    """Field offsets of the structs in a .blend's DNA1 block."""

    def __init__(self, dna: bytes) -> None:
        pos = 4  # "SDNA"
        self.names, pos = self._strings(dna, pos, b"NAME")
        self.types, pos = self._strings(dna, pos, b"TYPE")
        self._expect(dna, pos, b"TLEN")
        n = len(self.types)
        self.sizes = struct.unpack_from(f"<{n}h", dna, pos + 4)
        pos = self._align(pos + 4 + 2 * n)
        self._expect(dna, pos, b"STRC")
        (count,) = struct.unpack_from("<i", dna, pos + 4)
        pos += 8
        self.structs: list[tuple[int, list[tuple[int, int]]]] = []
        for _ in range(count):
            type_index, nfields = struct.unpack_from("<hh", dna, pos)
            fields = [struct.unpack_from("<hh", dna, pos + 4 + 4 * i) for i in range(nfields)]
            self.structs.append((type_index, fields))
            pos += 4 + 4 * nfields
        self.struct_of_type = {t: i for i, (t, _) in enumerate(self.structs)}
        self._layouts: dict[int, dict[str, tuple[int, int, str]]] = {}

    @staticmethod
    def _align(pos: int) -> int:
        return (pos + 3) & ~3

    @staticmethod
    def _expect(dna: bytes, pos: int, tag: bytes) -> None:
        if dna[pos:pos + 4] != tag:
            raise ValueError(f"DNA1: expected {tag!r} at {pos}, found {dna[pos:pos + 4]!r}")

    def _strings(self, dna: bytes, pos: int, tag: bytes) -> tuple[list[str], int]:
        self._expect(dna, pos, tag)
        (count,) = struct.unpack_from("<i", dna, pos + 4)
        pos += 8
        out = []
        for _ in range(count):
            end = dna.index(b"\0", pos)
            out.append(dna[pos:end].decode("latin-1"))
            pos = end + 1
        return out, self._align(pos)

    def struct_name(self, index: int) -> str:
        return self.types[self.structs[index][0]] if 0 <= index < len(self.structs) else ""

    def size(self, index: int) -> int:
        return self.sizes[self.structs[index][0]]

    def layout(self, index: int) -> dict[str, tuple[int, int, str]]:
        """``{"id.session_uid": (offset, size, type), ...}``, nested structs flattened."""
        if index not in self._layouts:
            out: dict[str, tuple[int, int, str]] = {}
            self._flatten(index, 0, "", out)
            self._layouts[index] = out
        return self._layouts[index]

    def _flatten(self, index: int, base: int, prefix: str, out: dict[str, tuple[int, int, str]]) -> None:
        offset = base
        for type_index, name_index in self.structs[index][1]:
            name, type_name = self.names[name_index], self.types[type_index]
            count = 1
            for dim in re.findall(r"\[(\d+)\]", name):
                count *= int(dim)
            pointer = name.startswith(("*", "(*"))
            size = (_POINTER_SIZE if pointer else self.sizes[type_index]) * count
            nested = self.struct_of_type.get(type_index)
            if nested is not None and not pointer and "[" not in name:
                self._flatten(nested, offset, f"{prefix}{name}.", out)
            else:
                out[prefix + name] = (offset, size, type_name)
            offset += size


def _normalise_blend(data: bytes) -> bytes:
    """Make an uncompressed Blender 5 file byte-reproducible (the five causes in the module docstring).

    Args:
        data: the bytes of an uncompressed .blend, as ``save_as_mainfile(compress=False)`` wrote it.

    Returns:
        the same file with those fields rewritten, same length and layout; ``data`` unchanged
        (and a warning logged) when its header or struct catalogue is not the expected one.
    """
    match = _BLEND_MAGIC.match(data)
    if match is None:
        log.warning("blend: unrecognised file header %r; left as Blender wrote it (not byte-reproducible)",
                    data[:_HEADER_SHOWN])
        return data
    blocks: list[tuple[int, bytes, int, int, int]] = []  # (data offset, code, sdna index, length, count)
    pos = int(match.group(1))
    dna = None
    while pos + _BHEAD.size <= len(data):
        code, sdna_index, _addr, length, count = _BHEAD.unpack_from(data, pos)
        blocks.append((pos + _BHEAD.size, code, sdna_index, length, count))
        if code == b"DNA1":
            dna = data[pos + _BHEAD.size:pos + _BHEAD.size + length]
        if code == b"ENDB":
            break
        pos += _BHEAD.size + length
    try:
        if dna is None:
            raise ValueError("no DNA1 block")
        sdna = _Sdna(dna)
    except (ValueError, struct.error) as err:
        log.warning("blend: unexpected file layout (%s); left as Blender wrote it (not byte-reproducible)", err)
        return data
    out = bytearray(data)

    def fields(sdna_index: int, *names: str) -> list[tuple[int, int, str]] | None:
        layout = sdna.layout(sdna_index)
        return [layout[n] for n in names] if all(n in layout for n in names) else None

    uid_fields: dict[int, list[tuple[int, int]]] = {}

    def session_uids(sdna_index: int) -> list[tuple[int, int]]:
        if sdna_index not in uid_fields:
            uid_fields[sdna_index] = [(o, n) for path, (o, n, _) in sdna.layout(sdna_index).items()
                                      if "session_uid" in path.split(".")]
        return uid_fields[sdna_index]

    shader_only = True
    for start, code, index, length, count in blocks:
        if sdna.struct_name(index) == "bNodeTree" and count and (f := fields(index, "type")):
            shader_only &= struct.unpack_from("<i", data, start + f[0][0])[0] == _NTREE_SHADER
    node_id = 0
    for start, code, index, length, count in blocks:
        if code in (b"DNA1", b"ENDB") or count <= 0:
            continue
        name = sdna.struct_name(index)
        size = sdna.size(index) if name else 0
        if not size or size * count > length:
            continue
        if not session_uids(index) and name not in ("Mesh", "bNode", "ScrEdge", *_STRING_STRUCTS):
            continue  # most blocks (vertex groups, custom data, ...) hold nothing to normalise
        for k in range(count):
            base = start + k * size
            for offset, fsize in session_uids(index):  # IDs (embedded ones too), pose channels
                out[base + offset:base + offset + fsize] = bytes(fsize)
            if name == "Mesh" and (f := fields(index, "face_sets_color_seed")):
                struct.pack_into("<i", out, base + f[0][0], 0)
            elif name == "bNode" and shader_only and (f := fields(index, "identifier")):
                node_id += 1
                struct.pack_into("<i", out, base + f[0][0], node_id)
            elif name == "ScrEdge" and (f := fields(index, "*v1", "*v2")):
                (o1, _, _), (o2, _, _) = f
                v1, v2 = struct.unpack_from("<Q", out, base + o1)[0], struct.unpack_from("<Q", out, base + o2)[0]
                if v1 > v2:
                    struct.pack_into("<Q", out, base + o1, v2)
                    struct.pack_into("<Q", out, base + o2, v1)
            elif name in _STRING_STRUCTS:
                for offset, fsize, type_name in sdna.layout(index).values():
                    if type_name == "char" and fsize > 1:
                        field = out[base + offset:base + offset + fsize]
                        nul = field.find(0)
                        if nul >= 0:
                            out[base + offset + nul:base + offset + fsize] = bytes(fsize - nul)
    return bytes(out)


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


def _armature(coll: Any, name: str, skin: Skin, binds: np.ndarray, matrix_world: np.ndarray, vertices: np.ndarray) -> Any:
    """Armature object ``name`` at bind pose (bone heads at joint origins); returns it.

    Args:
        binds: [J, 4, 4] joint -> armature-object frame at bind pose.
        matrix_world: [4, 4] the armature object's world matrix.
        vertices: [V, 3] the skinned vertices (in any frame), to size the bones (5% of their extent).
    """
    import bpy
    from mathutils import Matrix

    arm = bpy.data.armatures.new(name)
    arm_obj = bpy.data.objects.new(name, arm)
    arm_obj.matrix_world = Matrix(np.asarray(matrix_world, np.float64).tolist())
    coll.objects.link(arm_obj)
    bpy.context.view_layer.objects.active = arm_obj
    bpy.ops.object.mode_set(mode="EDIT")
    size = max(float(np.ptp(vertices, axis=0).max()) * 0.05, 1e-3)
    bones = []
    for j, joint in enumerate(skin.joint_names):
        bone = arm.edit_bones.new(joint)
        bone.head = binds[j][:3, 3].tolist()
        bone.tail = (binds[j][:3, 3] + binds[j][:3, 2] / max(np.linalg.norm(binds[j][:3, 2]), 1e-12) * size).tolist()
        if skin.parents[j] >= 0:
            bone.parent = bones[skin.parents[j]]
        bones.append(bone)
    bpy.ops.object.mode_set(mode="OBJECT")
    return arm_obj


def _bind(obj: Any, arm_obj: Any, skin: Skin, used_only: bool = False) -> None:
    """Vertex groups of ``skin`` on ``obj``, an Armature modifier targeting ``arm_obj``, and ``obj`` parented to it.

    One group per joint (in joint order), or with ``used_only`` one per joint that weighs some
    vertex (a part using a subset of a shared skeleton).
    """
    for j, name in enumerate(skin.joint_names):
        rows, cols = np.nonzero((skin.joints == j) & (skin.weights > 0))
        if used_only and not len(rows):
            continue
        group = obj.vertex_groups.new(name=name)
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
