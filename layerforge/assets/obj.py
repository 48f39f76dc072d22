"""Wavefront OBJ + MTL + PNG texture writer (one ``o`` object per part, relative paths).

OBJ has no transforms and no up-axis field. Blender, Maya and most DCCs read and write OBJ
as +Y up, so we write +Y up (world (x, y, z) -> (x, z, -y), as for glTF), say so in a
``# layerforge up_axis=Y`` comment, and :func:`layerforge.assets.mesh_io.read_mesh` reads
every OBJ as +Y up, ours and others' alike. Vertex colours go on the ``v`` lines (x y z r g b, linear),
PBR factors use the common MTL extension (Pr, Pm), textures are PNGs next to the .obj.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np

from layerforge.assets.atomic import atomic_write_bytes, atomic_write_text
from layerforge.assets.types import LayeredAsset, Material, Mesh, Part, safe_name, texture_to_png

log = logging.getLogger(__name__)

UP_MARKER = "# layerforge up_axis=Y"
DEFAULT_MATERIAL = "layerforge_default"
_TO_Y_UP = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], np.float64)


def write_obj(path: str | os.PathLike[str], asset: LayeredAsset | Mesh) -> dict[str, Path]:
    """Write ``asset`` as ``<path>`` + ``<stem>.mtl`` + ``<stem>_<material>_*.png``, atomically each.

    Mesh parts are baked to world coordinates (OBJ has no transforms), then to +Y up.
    Gaussian parts are skipped (write them with :func:`write_splat_ply`). Returns
    ``{"obj": path, "mtl": path, <texture file name>: path, ...}``.
    """
    path = Path(path)
    if isinstance(asset, Mesh):
        asset = LayeredAsset(path.stem, [Part(path.stem, asset)])
    out: dict[str, Path] = {}
    mat_names = _material_names(asset)
    mtl_text, textures = _mtl(asset, mat_names, path.stem)
    for name, data in textures.items():
        out[name] = atomic_write_bytes(path.parent / name, data)
    out["mtl"] = atomic_write_text(path.with_suffix(".mtl"), mtl_text)

    buf = io.StringIO()
    buf.write(f"{UP_MARKER}\n# {asset.name}: metres, written by layerforge\nmtllib {path.stem}.mtl\n")
    base = 0  # OBJ indices are 1-based and global across objects
    used: set[str] = set()
    for part in asset.parts:
        if not isinstance(part.geometry, Mesh):
            log.warning("OBJ %s: skipping Gaussian part %r (OBJ holds meshes only)", path, part.name)
            continue
        mesh = part.geometry.transformed(part.transform)
        name = safe_name(part.name)  # OBJ names end at whitespace; keep them distinct
        while name in used:
            name += "_"
        used.add(name)
        buf.write(f"o {name}\n")
        verts = mesh.vertices.astype(np.float64) @ _TO_Y_UP.T
        if mesh.colors is not None:
            np.savetxt(buf, np.hstack([verts, mesh.colors[:, :3]]), fmt="v %.7g %.7g %.7g %.5g %.5g %.5g")
        else:
            np.savetxt(buf, verts, fmt="v %.7g %.7g %.7g")
        if mesh.uvs is not None:
            np.savetxt(buf, mesh.uvs, fmt="vt %.7g %.7g")
        if mesh.normals is not None:
            np.savetxt(buf, mesh.normals.astype(np.float64) @ _TO_Y_UP.T, fmt="vn %.6g %.6g %.6g")
        # OBJ material state persists across objects: name one for every part
        buf.write(f"usemtl {mat_names[id(mesh.material)] if mesh.material is not None else DEFAULT_MATERIAL}\n")
        f = mesh.faces + base + 1
        if mesh.uvs is not None and mesh.normals is not None:
            np.savetxt(buf, np.repeat(f, 3, axis=1), fmt="f %d/%d/%d %d/%d/%d %d/%d/%d")
        elif mesh.uvs is not None:
            np.savetxt(buf, np.repeat(f, 2, axis=1), fmt="f %d/%d %d/%d %d/%d")
        elif mesh.normals is not None:
            np.savetxt(buf, np.repeat(f, 2, axis=1), fmt="f %d//%d %d//%d %d//%d")
        else:
            np.savetxt(buf, f, fmt="f %d %d %d")
        base += len(mesh.vertices)
    out["obj"] = atomic_write_text(path, buf.getvalue())
    return out


def _material_names(asset: LayeredAsset) -> dict[int, str]:
    names: dict[int, str] = {}
    used: set[str] = set()
    for mat in asset.materials():
        name = safe_name(mat.name)
        while name in used or name == DEFAULT_MATERIAL:
            name += "_"
        used.add(name)
        names[id(mat)] = name
    return names


def _mtl(asset: LayeredAsset, names: dict[int, str], stem: str) -> tuple[str, dict[str, bytes]]:
    lines = [f"# materials of {asset.name}, written by layerforge"]
    textures: dict[str, bytes] = {}
    for mat in asset.materials():
        name = names[id(mat)]
        lines += _material_lines(mat, name)
        if mat.base_color_texture is not None:
            file = f"{stem}_{name}_basecolor.png"
            textures[file] = texture_to_png(mat.base_color_texture, srgb=True)
            lines.append(f"map_Kd {file}")
        if mat.normal_texture is not None:
            file = f"{stem}_{name}_normal.png"
            textures[file] = texture_to_png(mat.normal_texture, srgb=False)
            lines.append(f"map_Bump {file}")
        lines.append("")
    if any(isinstance(p.geometry, Mesh) and p.geometry.material is None for p in asset.parts):
        lines += _material_lines(Material(DEFAULT_MATERIAL, [0.8, 0.8, 0.8, 1.0]), DEFAULT_MATERIAL)
    return "\n".join(lines) + "\n", textures


def _material_lines(mat: Material, name: str) -> list[str]:
    r, g, b, a = (float(c) for c in mat.base_color)
    return ["", f"newmtl {name}", f"Kd {r:.6g} {g:.6g} {b:.6g}", "Ka 0 0 0", "Ks 0.5 0.5 0.5", f"d {a:.6g}",
            "illum 2", f"Pr {mat.roughness:.6g}", f"Pm {mat.metallic:.6g}"]
