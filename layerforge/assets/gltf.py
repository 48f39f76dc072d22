"""GLB (binary glTF 2.0) writer and glTF/GLB reader, pure numpy + json.

glTF is +Y up (spec, section 3.4); our world is +Z up. The conversion lives here only:
world (x, y, z) -> glTF (x, z, -y), i.e. glTF = C @ world with C below, and matrices
M -> C M C^-1. Blender's importer undoes it, so files open upright.

Written layout: one root node named after the asset; one child node per part (name, local
matrix, mesh, extras {layer, metadata}); PBR materials with embedded PNG textures; UVs with
glTF's V (v_gltf = 1 - v); skinned parts get their joints as nodes under the root.
Skinned meshes are baked to world (glTF ignores a skinned node's transform), so a skin's
inverse bind matrices are world-space. Parts whose skins name one shared ``Skin.skeleton``
get ONE set of joint nodes and ONE glTF skin, named after the skeleton (with
``extras.layerforge_skeleton``), referenced by each of their mesh nodes; a part with
``skeleton=None`` gets its own joints and a skin named ``<part>_skin``.
Gaussian parts are written as point primitives coloured by their DC colour (a preview:
the splat itself goes to the 3DGS PLY).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from layerforge.assets.atomic import atomic_write_bytes
from layerforge.assets.types import (
    GaussianCloud,
    LayeredAsset,
    Material,
    Mesh,
    Part,
    Skin,
    skeleton_groups,
    unique_skeleton_name,
    texture_from_image,
    texture_to_png,
)
from layerforge.assets.validation import check_file, validate_asset
from layerforge.errors import InputError

log = logging.getLogger(__name__)

# world (+Z up) -> glTF (+Y up)
C = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], np.float64)
C_INV = C.T

_FLOAT, _UINT, _USHORT, _UBYTE = 5126, 5125, 5123, 5121
_COMPONENT = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
_NCOMP = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963


class _Builder:
    """Accumulates the JSON document and the single binary buffer."""

    def __init__(self) -> None:
        self.bin = bytearray()
        self.doc: dict[str, Any] = {"asset": {"version": "2.0", "generator": "layerforge"}, "buffers": [],
                                    "bufferViews": [], "accessors": []}

    def view(self, data: bytes, target: int | None = None) -> int:
        self.bin.extend(b"\0" * (-len(self.bin) % 4))
        entry: dict[str, Any] = {"buffer": 0, "byteOffset": len(self.bin), "byteLength": len(data)}
        if target is not None:
            entry["target"] = target
        self.bin.extend(data)
        self.doc["bufferViews"].append(entry)
        return len(self.doc["bufferViews"]) - 1

    def accessor(self, arr: np.ndarray, kind: str, ctype: int, target: int | None = _ARRAY_BUFFER, bounds: bool = False) -> int:
        arr = np.ascontiguousarray(arr, dtype=_COMPONENT[ctype])
        entry: dict[str, Any] = {"bufferView": self.view(arr.tobytes(), target), "componentType": ctype,
                                 "count": int(arr.shape[0]), "type": kind}
        if bounds:
            flat = arr.reshape(arr.shape[0], -1)
            entry["min"] = flat.min(0).tolist()
            entry["max"] = flat.max(0).tolist()
        self.doc["accessors"].append(entry)
        return len(self.doc["accessors"]) - 1

    def add(self, key: str, entry: dict[str, Any]) -> int:
        self.doc.setdefault(key, []).append(entry)
        return len(self.doc[key]) - 1


def _matrix_list(m: np.ndarray) -> list[float]:
    return np.asarray(m, np.float64).T.reshape(-1).tolist()  # glTF matrices are column-major


def write_glb(path: str | os.PathLike[str], asset: LayeredAsset | Mesh) -> Path:
    """Write ``asset`` (or a single Mesh) as a self-contained .glb, atomically; returns the path."""
    if isinstance(asset, Mesh):
        asset = LayeredAsset(Path(path).stem, [Part(Path(path).stem, asset)])
    b = _Builder()
    nodes: list[dict[str, Any]] = [{"name": asset.name, "children": []}]
    if asset.metadata:
        nodes[0]["extras"] = {"metadata": asset.metadata}
    materials: dict[int, int] = {}
    skeleton_groups(asset.parts)  # InputError if parts of one skeleton disagree
    shared_skins: dict[str, int] = {}  # skeleton name -> glTF skin index
    for part in asset.parts:
        node: dict[str, Any] = {"name": part.name, "extras": {"layer": part.layer, "metadata": part.metadata}}
        if isinstance(part.geometry, Mesh):
            mesh, transform = part.geometry, part.transform.astype(np.float64)
            if part.skin is not None:  # glTF ignores a skinned node's transform: bake it
                mesh, transform = mesh.transformed(transform), np.eye(4)
            prim = _mesh_primitive(b, mesh, part.skin)
            if mesh.material is not None:
                if id(mesh.material) not in materials:
                    materials[id(mesh.material)] = _material(b, mesh.material)
                prim["material"] = materials[id(mesh.material)]
            if part.skin is not None:
                shared = part.skin.skeleton
                if shared is None:
                    node["skin"] = _skin(b, part, nodes, f"{part.name}_skin")
                else:
                    if shared not in shared_skins:
                        shared_skins[shared] = _skin(b, part, nodes, shared)
                        b.doc["skins"][-1]["extras"] = {"layerforge_skeleton": shared}
                    node["skin"] = shared_skins[shared]
        else:
            transform = part.transform.astype(np.float64)
            prim = _points_primitive(b, part.geometry)
        node["mesh"] = b.add("meshes", {"name": part.name, "primitives": [prim]})
        if not np.allclose(transform, np.eye(4)):
            node["matrix"] = _matrix_list(C @ transform @ C_INV)
        nodes.append(node)
        nodes[0]["children"].append(len(nodes) - 1)
    b.doc["nodes"] = nodes
    b.doc["scenes"] = [{"name": asset.name, "nodes": [0]}]
    b.doc["scene"] = 0
    b.bin.extend(b"\0" * (-len(b.bin) % 4))
    b.doc["buffers"] = [{"byteLength": len(b.bin)}]
    js = json.dumps(b.doc, separators=(",", ":")).encode("utf-8")
    js += b" " * (-len(js) % 4)
    total = 12 + 8 + len(js) + 8 + len(b.bin)
    data = b"".join([struct.pack("<III", 0x46546C67, 2, total), struct.pack("<II", len(js), 0x4E4F534A), js,
                     struct.pack("<II", len(b.bin), 0x004E4942), bytes(b.bin)])
    return atomic_write_bytes(path, data)


def _to_gltf(points: np.ndarray) -> np.ndarray:
    return np.asarray(points, np.float32) @ C[:3, :3].T.astype(np.float32)


def _mesh_primitive(b: _Builder, mesh: Mesh, skin: Skin | None) -> dict[str, Any]:
    attrs = {"POSITION": b.accessor(_to_gltf(mesh.vertices), "VEC3", _FLOAT, bounds=True)}
    if mesh.normals is not None:
        attrs["NORMAL"] = b.accessor(_to_gltf(mesh.normals), "VEC3", _FLOAT)
    if mesh.uvs is not None:
        uv = mesh.uvs.copy()
        uv[:, 1] = 1.0 - uv[:, 1]
        attrs["TEXCOORD_0"] = b.accessor(uv, "VEC2", _FLOAT)
    if mesh.colors is not None:
        attrs["COLOR_0"] = b.accessor(np.clip(mesh.colors, 0, 1), "VEC4" if mesh.colors.shape[1] == 4 else "VEC3", _FLOAT)
    if skin is not None:
        attrs["JOINTS_0"] = b.accessor(skin.joints, "VEC4", _USHORT)
        attrs["WEIGHTS_0"] = b.accessor(skin.weights, "VEC4", _FLOAT)
    indices = b.accessor(mesh.faces.reshape(-1), "SCALAR", _UINT, _ELEMENT_ARRAY_BUFFER)
    return {"attributes": attrs, "indices": indices, "mode": 4}


def _points_primitive(b: _Builder, cloud: GaussianCloud) -> dict[str, Any]:
    return {"attributes": {"POSITION": b.accessor(_to_gltf(cloud.means), "VEC3", _FLOAT, bounds=True),
                           "COLOR_0": b.accessor(cloud.rgb(), "VEC3", _FLOAT)}, "mode": 0}


def _texture(b: _Builder, img: np.ndarray, srgb: bool, name: str) -> int:
    if "samplers" not in b.doc:
        b.add("samplers", {"magFilter": 9729, "minFilter": 9987, "wrapS": 10497, "wrapT": 10497})
    image = b.add("images", {"name": name, "mimeType": "image/png", "bufferView": b.view(texture_to_png(img, srgb))})
    return b.add("textures", {"source": image, "sampler": 0})


def _material(b: _Builder, mat: Material) -> int:
    pbr: dict[str, Any] = {"baseColorFactor": mat.base_color.tolist(), "metallicFactor": mat.metallic,
                           "roughnessFactor": mat.roughness}
    entry: dict[str, Any] = {"name": mat.name, "pbrMetallicRoughness": pbr}
    if mat.base_color_texture is not None:
        pbr["baseColorTexture"] = {"index": _texture(b, mat.base_color_texture, True, f"{mat.name}_basecolor")}
    if mat.normal_texture is not None:
        entry["normalTexture"] = {"index": _texture(b, mat.normal_texture, False, f"{mat.name}_normal")}
    tex = mat.base_color_texture
    if mat.base_color[3] < 1.0 or (tex is not None and tex.shape[2] == 4 and tex[..., 3].min() < 1.0):
        entry["alphaMode"] = "BLEND"
    return b.add("materials", entry)


def _skin(b: _Builder, part: Part, nodes: list[dict[str, Any]], skin_name: str) -> int:
    """Add joint nodes under the root and a skin called ``skin_name`` with world-space inverse bind
    matrices (the part's transform is baked into its mesh), so parts of one skeleton can share it."""
    skin = part.skin
    assert skin is not None
    t = part.transform.astype(np.float64)
    globals_ = np.array([C @ t @ m @ C_INV for m in skin.bind_matrices()])
    ibms = np.array([C @ ibm @ np.linalg.inv(t) @ C_INV for ibm in skin.inverse_bind_matrices.astype(np.float64)])
    first = len(nodes)
    for j, name in enumerate(skin.joint_names):
        p = int(skin.parents[j])
        local = globals_[j] if p < 0 else np.linalg.inv(globals_[p]) @ globals_[j]
        nodes.append({"name": name, "matrix": _matrix_list(local)})
        if p < 0:
            nodes[0]["children"].append(first + j)
        else:
            nodes[first + p].setdefault("children", []).append(first + j)
    ibm_acc = b.accessor(ibms.transpose(0, 2, 1).reshape(-1, 16), "MAT4", _FLOAT, target=None)
    roots = [first + j for j in range(len(skin.joint_names)) if skin.parents[j] < 0]
    return b.add("skins", {"name": skin_name, "joints": list(range(first, first + len(skin.joint_names))),
                           "inverseBindMatrices": ibm_acc, "skeleton": roots[0]})


# ----------------------------------------------------------------------------- reading


def read_gltf(path: str | os.PathLike[str], validate: bool = True) -> LayeredAsset:
    """Read a .glb/.gltf into a LayeredAsset in our frame (+Z up, metres).

    One part per triangle primitive of every mesh node (named after the node; "_<i>" for
    extra primitives); part transforms are the nodes' world matrices converted to +Z up.
    Materials (factors, base-colour and normal textures), UVs (V flipped back), vertex
    colours and skins are read. Point/line primitives are skipped. Parts that share one glTF
    skin (several mesh nodes or primitives) come back with skins naming the same
    ``Skin.skeleton``: the skin's ``extras.layerforge_skeleton`` (our files), else the skin's
    name, else its first root joint's name (made unique per skin with "_"); a skin used by one
    part only, without that extra, gives ``skeleton=None``.
    """
    path = check_file(path, (".glb", ".gltf"))
    doc, bin_chunk = _load_document(path)
    required = set(doc.get("extensionsRequired", []))
    if required:
        raise InputError(f"{path}: needs glTF extensions {sorted(required)}",
                         "re-export without compression (e.g. gltf-transform copy)")
    buffers = [_buffer(path, doc, i, buf, bin_chunk) for i, buf in enumerate(doc.get("buffers", []))]
    reader = _Reader(path, doc, buffers)
    scene = doc.get("scenes", [{}])[doc.get("scene", 0)] if doc.get("scenes") else {"nodes": _root_nodes(doc)}
    joint_nodes = {j for s in doc.get("skins", []) for j in s.get("joints", [])}
    skeletons = _skeleton_names(doc)
    parts: list[Part] = []
    names: set[str] = set()

    def visit(idx: int, parent: np.ndarray) -> None:
        node = doc["nodes"][idx]
        world = parent @ _node_matrix(node)
        if "mesh" in node and idx not in joint_nodes:
            mesh_doc = doc["meshes"][node["mesh"]]
            base = node.get("name") or mesh_doc.get("name") or f"node_{idx}"
            for k, prim in enumerate(mesh_doc.get("primitives", [])):
                if prim.get("mode", 4) != 4:
                    log.warning("%s: skipping non-triangle primitive in %r", path, base)
                    continue
                name = base if k == 0 else f"{base}_{k}"
                while name in names:
                    name += "_"
                names.add(name)
                mesh = reader.mesh(prim)
                skin = reader.skin(node["skin"], prim, skeletons.get(node["skin"])) if "skin" in node else None
                extras = node.get("extras", {}) if isinstance(node.get("extras"), dict) else {}
                transform = np.eye(4) if skin is not None else C_INV @ world @ C
                parts.append(Part(name, mesh, transform, extras.get("layer"), skin, dict(extras.get("metadata", {}))))
        for child in node.get("children", []):
            visit(child, world)

    roots = scene.get("nodes", [])
    if len(roots) == 1 and "mesh" not in doc["nodes"][roots[0]] and np.allclose(_node_matrix(doc["nodes"][roots[0]]), np.eye(4)):
        name = doc["nodes"][roots[0]].get("name") or path.stem  # our files: the root node is the asset
    else:
        name = scene.get("name") or path.stem
    try:
        for r in roots:
            visit(r, np.eye(4))
    except (KeyError, IndexError, TypeError, ValueError) as exc:  # a reference the file does not hold
        raise InputError(f"{path}: malformed glTF ({type(exc).__name__}: {exc})", "re-export it (glTF validator helps)") from None
    meta = {}
    if len(roots) == 1 and isinstance(doc["nodes"][roots[0]].get("extras"), dict):
        meta = dict(doc["nodes"][roots[0]]["extras"].get("metadata", {}))
    asset = LayeredAsset(name, parts, meta)
    return validate_asset(asset, path) if validate else asset


def _skeleton_names(doc: dict[str, Any]) -> dict[int, str]:
    """``{skin index: shared skeleton name}`` for skins marked as shared or used by several triangle primitives."""
    users: dict[int, int] = {}
    for node in doc.get("nodes", []):
        if "skin" in node and "mesh" in node:
            prims = doc["meshes"][node["mesh"]].get("primitives", [])
            users[node["skin"]] = users.get(node["skin"], 0) + sum(p.get("mode", 4) == 4 for p in prims)
    out: dict[int, str] = {}
    used: set[str] = set()
    for i, skin in enumerate(doc.get("skins", [])):
        extras = skin.get("extras") if isinstance(skin.get("extras"), dict) else {}
        name = extras.get("layerforge_skeleton")
        if not name and users.get(i, 0) > 1:
            joints = skin.get("joints", [])
            children = {c for j in joints for c in doc["nodes"][j].get("children", [])}
            roots = [j for j in joints if j not in children]
            name = skin.get("name") or (doc["nodes"][roots[0]].get("name") if roots else None) or f"skeleton_{i}"
        if name:
            out[i] = unique_skeleton_name(name, used)
    return out


def _root_nodes(doc: dict[str, Any]) -> list[int]:
    children = {c for n in doc.get("nodes", []) for c in n.get("children", [])}
    return [i for i in range(len(doc.get("nodes", []))) if i not in children]


def _load_document(path: Path) -> tuple[dict[str, Any], bytes | None]:
    data = path.read_bytes()
    try:
        if data[:4] == b"glTF":
            _, version, _ = struct.unpack_from("<III", data, 0)
            if version != 2:
                raise InputError(f"{path}: glTF version {version}", "re-export as glTF 2.0")
            offset, doc, bin_chunk = 12, None, None
            while offset + 8 <= len(data):
                length, kind = struct.unpack_from("<II", data, offset)
                chunk = data[offset + 8 : offset + 8 + length]
                if kind == 0x4E4F534A:
                    doc = json.loads(chunk.decode("utf-8"))
                elif kind == 0x004E4942:
                    bin_chunk = chunk
                offset += 8 + length
            if doc is None:
                raise ValueError("no JSON chunk")
            return doc, bin_chunk
        return json.loads(data.decode("utf-8")), None
    except (ValueError, UnicodeDecodeError, struct.error) as exc:
        raise InputError(f"{path}: not a valid glTF/GLB file ({exc})", "re-export it as glTF 2.0") from None


def _buffer(path: Path, doc: dict[str, Any], i: int, buf: dict[str, Any], bin_chunk: bytes | None) -> bytes:
    uri = buf.get("uri")
    if uri is None:
        if bin_chunk is None:
            raise InputError(f"{path}: buffer {i} has no data", "re-export the GLB")
        return bin_chunk
    return _uri_bytes(path, uri, "buffer")


def _uri_bytes(path: Path, uri: str, what: str) -> bytes:
    if uri.startswith("data:"):
        return base64.b64decode(uri.split(",", 1)[1])
    from urllib.parse import unquote

    ref = path.parent / unquote(uri)
    if not ref.is_file():
        raise InputError(f"{path}: missing {what} file {ref}", "copy it next to the .gltf or embed it (export .glb)")
    return ref.read_bytes()


def _node_matrix(node: dict[str, Any]) -> np.ndarray:
    if "matrix" in node:
        return np.asarray(node["matrix"], np.float64).reshape(4, 4).T
    m = np.eye(4)
    x, y, z, w = node.get("rotation", [0, 0, 0, 1])
    m[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                 [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                 [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]]
    m[:3, :3] *= np.asarray(node.get("scale", [1, 1, 1]), np.float64)[None, :]
    m[:3, 3] = node.get("translation", [0, 0, 0])
    return m


class _Reader:
    def __init__(self, path: Path, doc: dict[str, Any], buffers: list[bytes]) -> None:
        self.path, self.doc, self.buffers = path, doc, buffers
        self.materials: dict[int, Material] = {}

    def accessor(self, idx: int) -> np.ndarray:
        acc = self.doc["accessors"][idx]
        if "sparse" in acc:
            raise InputError(f"{self.path}: sparse accessors are not supported", "re-export without sparse accessors")
        dtype = np.dtype(_COMPONENT[acc["componentType"]]).newbyteorder("<")
        n, count = _NCOMP[acc["type"]], acc["count"]
        if "bufferView" not in acc:
            return np.zeros((count, n), np.float32)
        view = self.doc["bufferViews"][acc["bufferView"]]
        buf = self.buffers[view["buffer"]]
        if count == 0:
            return np.zeros((0, n), dtype)
        start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
        row = n * dtype.itemsize
        stride = view.get("byteStride") or row
        if start + (count - 1) * stride + row > len(buf):
            raise InputError(f"{self.path}: accessor {idx} runs past its buffer", "re-export the file")
        raw = np.frombuffer(buf, np.uint8, count=(count - 1) * stride + row, offset=start)
        rows = np.lib.stride_tricks.as_strided(raw, shape=(count, row), strides=(stride, 1))
        out = np.ascontiguousarray(rows).view(dtype).reshape(count, n)
        if acc.get("normalized"):
            out = out.astype(np.float32) / np.float32(np.iinfo(dtype).max)
        return out

    def mesh(self, prim: dict[str, Any]) -> Mesh:
        attrs = prim.get("attributes", {})
        if "POSITION" not in attrs:
            raise InputError(f"{self.path}: a primitive has no POSITION", "re-export the mesh with positions")
        verts = self.accessor(attrs["POSITION"]).astype(np.float32) @ C_INV[:3, :3].T.astype(np.float32)
        faces = self.accessor(prim["indices"]).reshape(-1, 3) if "indices" in prim else np.arange(len(verts)).reshape(-1, 3)
        normals = None
        if "NORMAL" in attrs:
            normals = self.accessor(attrs["NORMAL"]).astype(np.float32) @ C_INV[:3, :3].T.astype(np.float32)
        uvs = None
        if "TEXCOORD_0" in attrs:
            uvs = self.accessor(attrs["TEXCOORD_0"]).astype(np.float32)
            uvs[:, 1] = 1.0 - uvs[:, 1]
        colors = self.accessor(attrs["COLOR_0"]).astype(np.float32) if "COLOR_0" in attrs else None
        material = self.material(prim["material"]) if "material" in prim else None
        return Mesh(verts, faces.astype(np.int64), normals, uvs, colors, material)

    def skin(self, idx: int, prim: dict[str, Any], skeleton: str | None = None) -> Skin:
        skin = self.doc["skins"][idx]
        attrs = prim["attributes"]
        if "JOINTS_0" not in attrs or "WEIGHTS_0" not in attrs:
            raise InputError(f"{self.path}: skinned primitive lacks JOINTS_0/WEIGHTS_0", "re-export the skin weights")
        joints = skin["joints"]
        position = {node: j for j, node in enumerate(joints)}
        parent_of = {c: i for i, n in enumerate(self.doc["nodes"]) for c in n.get("children", [])}
        parents = [position.get(parent_of.get(node, -1), -1) for node in joints]
        order = _parent_first(parents)
        new_index = np.empty(len(joints), np.int64)
        new_index[order] = np.arange(len(joints))
        ibm = (self.accessor(skin["inverseBindMatrices"]).reshape(-1, 4, 4).transpose(0, 2, 1)
               if "inverseBindMatrices" in skin else np.tile(np.eye(4), (len(joints), 1, 1)))
        ibm = np.array([C_INV @ m @ C for m in ibm.astype(np.float64)])
        return Skin(
            joint_names=[self.doc["nodes"][joints[j]].get("name", f"joint_{j}") for j in order],
            parents=np.array([new_index[parents[j]] if parents[j] >= 0 else -1 for j in order]),
            inverse_bind_matrices=ibm[order],
            joints=new_index[self.accessor(attrs["JOINTS_0"]).astype(np.int64)],
            weights=self.accessor(attrs["WEIGHTS_0"]).astype(np.float32),
            skeleton=skeleton,
        )

    def texture(self, info: dict[str, Any] | None, srgb: bool) -> np.ndarray | None:
        if info is None:
            return None
        tex = self.doc["textures"][info["index"]]
        img = self.doc["images"][tex["source"]]
        if "bufferView" in img:
            view = self.doc["bufferViews"][img["bufferView"]]
            start = view.get("byteOffset", 0)
            data = self.buffers[view["buffer"]][start : start + view["byteLength"]]
        else:
            data = _uri_bytes(self.path, img["uri"], "texture")
        return texture_from_image(bytes(data), srgb, f"{self.path} image {img.get('name', tex['source'])!r}")

    def material(self, idx: int) -> Material:
        if idx not in self.materials:
            m = self.doc["materials"][idx]
            pbr = m.get("pbrMetallicRoughness", {})
            self.materials[idx] = Material(
                name=m.get("name") or f"material_{idx}",
                base_color=np.asarray(pbr.get("baseColorFactor", [1, 1, 1, 1]), np.float32),
                base_color_texture=self.texture(pbr.get("baseColorTexture"), True),
                metallic=pbr.get("metallicFactor", 1.0),
                roughness=pbr.get("roughnessFactor", 1.0),
                normal_texture=self.texture(m.get("normalTexture"), False),
            )
        return self.materials[idx]


def _parent_first(parents: list[int]) -> list[int]:
    order: list[int] = []
    placed: set[int] = set()
    while len(order) < len(parents):
        progressed = False
        for j, p in enumerate(parents):
            if j not in placed and (p < 0 or p in placed):
                order.append(j)
                placed.add(j)
                progressed = True
        if not progressed:
            raise InputError("skin joints form a cycle", "fix the joint hierarchy")
    return order
