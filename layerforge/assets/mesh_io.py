"""Input mesh readers: OBJ(+MTL), PLY, STL, OFF, GLB/glTF, USD -> our Mesh or LayeredAsset.

Up axis: every format is read the way Blender's default importer reads it, so that an
input and our deliverables imported side by side in Blender overlay (:data:`BLENDER_UP`):
OBJ and glTF are +Y up in the file and converted to our +Z up; PLY, STL and OFF are taken
as stored (+Z up); USD says its own upAxis and metersPerUnit. ``up_axis="Y"`` or ``"Z"``
overrides the rule for a file that breaks its format's convention. OBJ is parsed here
(one part per ``o``/``g`` object and material, MTL materials and textures); PLY/STL/OFF go
through trimesh, USD through usd-core. Everything read is validated
(:mod:`layerforge.assets.validation`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from layerforge.assets.types import LayeredAsset, Material, Mesh, Part, srgb_to_linear, texture_from_image
from layerforge.assets.validation import check_file, check_texture_files, validate_asset, validate_mesh
from layerforge.errors import InputError

USD_SUFFIXES = (".usd", ".usda", ".usdc", ".usdz")
MESH_SUFFIXES = (".obj", ".ply", ".stl", ".off", ".glb", ".gltf", *USD_SUFFIXES)
BLENDER_UP = {".obj": "Y", ".glb": "Y", ".gltf": "Y", ".ply": "Z", ".stl": "Z", ".off": "Z"}
"""The file axis Blender 5.0's default importer takes as up, per suffix (OBJ: forward -Z,
up Y; glTF: +Y up by spec; PLY/STL: forward Y, up Z, i.e. as stored; OFF has no Blender
importer and is read as stored). USD files carry their own upAxis."""
# file frame +Y up -> world +Z up: (x, y, z) -> (x, -z, y)
_Y_TO_Z = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], np.float64)


def read_mesh(path: str | os.PathLike[str], *, up_axis: str | None = None, validate: bool = True) -> Mesh:
    """Read a mesh file as one merged Mesh in world coordinates (metres, +Z up).

    Args:
        path: .obj, .ply, .stl, .off, .glb, .gltf or .usd/.usda/.usdc/.usdz file.
        up_axis: None or "auto" for Blender's rule (module docstring); "Y" or "Z" to
            override the file's up axis.
        validate: raise InputError for empty, non-finite, degenerate or absurd meshes.
    """
    path = check_file(path, MESH_SUFFIXES)
    mesh = read_asset(path, up_axis=up_axis, validate=False).merged_mesh()
    return validate_mesh(mesh, path) if validate else mesh


def _override(up_axis: str | None) -> str | None:
    """``None``/``"auto"`` -> None (the format's rule); ``"y"``/``"Z"`` -> ``"Y"``/``"Z"``."""
    if up_axis is None or str(up_axis).lower() == "auto":
        return None
    if str(up_axis).upper() not in ("Y", "Z"):
        raise InputError(f"up axis {up_axis!r} is not auto, Y or Z", "pass input_up_axis=auto, Y or Z")
    return str(up_axis).upper()


def up_axis_rule(path: str | os.PathLike[str], up_axis: str | None = None) -> str:
    """One line saying which file axis is read as up for ``path`` and why (for the run log)."""
    path = Path(path)
    forced = _override(up_axis)
    if forced is not None:
        return f"{path.name}: +{forced} up in the file (input_up_axis={forced})"
    suffix = path.suffix.lower()
    if suffix in USD_SUFFIXES:
        return f"{path.name}: the stage's upAxis and metersPerUnit (as Blender's USD importer); override with input_up_axis=Y|Z"
    axis = BLENDER_UP.get(suffix, "Z")
    return f"{path.name}: +{axis} up in the file, as Blender's default importer reads {suffix}; override with input_up_axis=Y|Z"


def read_asset(path: str | os.PathLike[str], *, up_axis: str | None = None, validate: bool = True) -> LayeredAsset:
    """Read a mesh file keeping its parts: one Part per object (OBJ ``o``/``g``, glTF node, scene geometry).

    ``up_axis`` as for :func:`read_mesh`.
    """
    path = check_file(path, MESH_SUFFIXES)
    forced = _override(up_axis)
    suffix = path.suffix.lower()
    if suffix in USD_SUFFIXES:
        from layerforge.assets.usd import read_usd

        return read_usd(path, validate=validate, up_axis=forced)
    y_up = (forced or BLENDER_UP[suffix]) == "Y"
    if suffix in (".glb", ".gltf"):
        from layerforge.assets.gltf import read_gltf

        asset = read_gltf(path, validate=False)  # converted from +Y up, as the spec says
        if not y_up:  # the file ignored the spec: undo the conversion
            for p in asset.parts:
                p.transform = (np.linalg.inv(_Y_TO_Z) @ p.transform.astype(np.float64)).astype(np.float32)
    elif suffix == ".obj":
        asset = _read_obj(path, y_up)
    else:
        asset = _read_trimesh(path, y_up)
    return validate_asset(asset, path) if validate else asset


def _to_world(parts: list[Part], y_up: bool) -> None:
    if y_up:
        for p in parts:
            p.transform = (_Y_TO_Z @ p.transform.astype(np.float64)).astype(np.float32)


def _read_trimesh(path: Path, y_up: bool) -> LayeredAsset:
    import trimesh

    try:
        scene = trimesh.load(str(path), force="scene", process=False)
    except Exception as exc:  # trimesh raises many types for malformed files
        raise InputError(f"{path}: cannot parse ({type(exc).__name__}: {exc})", "re-export the mesh") from None
    parts: list[Part] = []
    pointclouds = 0
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geom = scene.geometry[geom_name]
        if not isinstance(geom, trimesh.Trimesh):
            pointclouds += 1
            continue
        colors = uvs = None
        visual = geom.visual
        if visual.kind == "vertex":
            colors = srgb_to_linear(np.asarray(visual.vertex_colors, np.float32)[:, :4] / 255.0)
            colors[:, 3] = np.asarray(visual.vertex_colors)[:, 3] / 255.0
        elif visual.kind == "texture" and getattr(visual, "uv", None) is not None and len(visual.uv) == len(geom.vertices):
            uvs = np.asarray(visual.uv, np.float32)
        mesh = Mesh(np.asarray(geom.vertices), np.asarray(geom.faces), uvs=uvs, colors=colors)
        parts.append(Part(str(node), mesh, np.asarray(transform, np.float32)))
    if not parts:
        hint = "it is a point cloud; for a 3DGS splat use read_splat_ply" if pointclouds else "export a mesh with faces"
        raise InputError(f"{path}: no triangle mesh found", hint)
    _to_world(parts, y_up)
    return LayeredAsset(path.stem, parts)


# ----------------------------------------------------------------------------- OBJ


def _read_obj(path: Path, y_up: bool) -> LayeredAsset:
    text = path.read_text(encoding="utf-8", errors="replace")
    v: list[list[str]] = []
    vt: list[list[str]] = []
    vn: list[list[str]] = []
    groups: dict[tuple[str, str | None], list[list[str]]] = {}
    obj_name, mat_name = path.stem, None
    mtllibs: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        tok = raw.split()
        if not tok or tok[0].startswith("#"):
            continue
        key = tok[0]
        if key == "v":
            v.append(tok[1:7])
        elif key == "vt":
            vt.append(tok[1:3])
        elif key == "vn":
            vn.append(tok[1:4])
        elif key == "f":
            if len(tok) < 4:
                raise InputError(f"{path}:{lineno}: face with fewer than 3 corners", "repair the OBJ")
            groups.setdefault((obj_name, mat_name), []).append(tok[1:])
        elif key in ("o", "g") and len(tok) > 1:
            obj_name = " ".join(tok[1:])
        elif key == "usemtl" and len(tok) > 1:
            mat_name = " ".join(tok[1:])
        elif key == "mtllib":
            mtllibs += tok[1:]
    try:
        positions = _floats(v, 3, path, "v")
        colors = None
        if any(len(r) >= 6 for r in v):  # "v x y z r g b"; NaN where a vertex has no colour
            colors = np.array([r[3:6] if len(r) >= 6 else ["nan"] * 3 for r in v], dtype=np.float64).astype(np.float32)
        texcoords = _floats(vt, 2, path, "vt")
        normals = _floats(vn, 3, path, "vn")
    except ValueError as exc:
        raise InputError(f"{path}: malformed number ({exc})", "repair the OBJ") from None
    materials = _read_mtls(path, mtllibs)
    parts: list[Part] = []
    names: set[str] = set()
    for (oname, mname), faces in groups.items():
        name = oname if oname not in names else f"{oname}_{mname}"
        while name in names:
            name += "_"
        names.add(name)
        mesh = _obj_group(path, faces, positions, colors, texcoords, normals, materials.get(mname) if mname else None)
        parts.append(Part(name, mesh))
    if not parts:
        raise InputError(f"{path}: OBJ has no faces ({len(positions)} vertices)", "export a mesh with faces")
    _to_world(parts, y_up)
    return LayeredAsset(path.stem, parts)


def _floats(rows: list[list[str]], n: int, path: Path, what: str) -> np.ndarray:
    if not rows:
        return np.zeros((0, n), np.float32)
    if any(len(r) < n for r in rows):
        raise InputError(f"{path}: a '{what}' line has fewer than {n} numbers", "repair the OBJ")
    return np.array([r[:n] for r in rows], dtype=np.float64).astype(np.float32)


def _obj_group(path: Path, faces: list[list[str]], positions: np.ndarray, colors: np.ndarray | None,
               texcoords: np.ndarray, normals: np.ndarray, material: Material | None) -> Mesh:
    sizes = np.array([len(f) for f in faces])
    corners = np.full((int(sizes.sum()), 3), 0, np.int64)
    counts = (len(positions), len(texcoords), len(normals))
    flat = [c.split("/") for f in faces for c in f]
    try:
        for k in range(3):
            col = [int(c[k]) if len(c) > k and c[k] else 0 for c in flat]
            idx = np.array(col, np.int64)
            corners[:, k] = np.where(idx < 0, idx + counts[k], idx - 1)  # 1-based, negative = relative, absent -> -1
    except ValueError as exc:
        raise InputError(f"{path}: malformed face index ({exc})", "repair the OBJ") from None
    for k, what in enumerate(("vertex", "texture coordinate", "normal")):
        used = corners[:, k][corners[:, k] != -1] if k else corners[:, k]
        if used.size and (used.min() < 0 or used.max() >= counts[k]):
            raise InputError(f"{path}: face refers to a missing {what}", "repair the OBJ")
    # one vertex per distinct (v, vt, vn) corner, then fan-triangulate polygons
    uniq, inverse = np.unique(corners, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    tri = [np.stack([np.full(s - 2, b), b + np.arange(1, s - 1), b + np.arange(2, s)], 1) for b, s in zip(starts, sizes)]
    tris = inverse[np.concatenate(tri)]
    vcol = colors[uniq[:, 0]] if colors is not None else None
    has_uv, has_n = bool((uniq[:, 1] >= 0).all()), bool((uniq[:, 2] >= 0).all())
    return Mesh(
        vertices=positions[uniq[:, 0]],
        faces=tris,
        normals=normals[uniq[:, 2]] if has_n and len(normals) else None,
        uvs=texcoords[uniq[:, 1]] if has_uv and len(texcoords) else None,
        colors=vcol if vcol is not None and not np.isnan(vcol).any() else None,
        material=material,
    )


def _read_mtls(path: Path, libs: list[str]) -> dict[str, Material]:
    materials: dict[str, Material] = {}
    for lib in libs:
        mtl = path.parent / lib
        if not mtl.is_file():
            raise InputError(f"{path}: missing material library {mtl}", "copy the .mtl next to the .obj")
        try:
            materials.update(_parse_mtl(mtl))
        except ValueError as exc:
            raise InputError(f"{mtl}: malformed material library ({exc})", "repair the .mtl") from None
    return materials


def _parse_mtl(mtl: Path) -> dict[str, Material]:
    specs: dict[str, dict[str, object]] = {}
    cur: dict[str, object] | None = None
    for raw in mtl.read_text(encoding="utf-8", errors="replace").splitlines():
        tok = raw.split()
        if not tok or tok[0].startswith("#"):
            continue
        key = tok[0]
        if key == "newmtl":
            cur = specs.setdefault(" ".join(tok[1:]), {})
        elif cur is None:
            continue
        elif key in ("Kd", "d", "Tr", "Pr", "Pm") and len(tok) > 1:
            cur[key] = [float(x) for x in tok[1:4]]
        elif key in ("map_Kd", "map_Bump", "map_bump", "bump", "norm") and len(tok) > 1:
            cur["map_Kd" if key == "map_Kd" else "normal"] = mtl.parent / tok[-1]
    refs = [s[k] for s in specs.values() for k in ("map_Kd", "normal") if k in s]
    check_texture_files(refs, mtl)  # type: ignore[arg-type]
    out: dict[str, Material] = {}
    for name, s in specs.items():
        kd = list(s.get("Kd", [1.0, 1.0, 1.0]))[:3]  # type: ignore[call-overload]
        alpha = s["d"][0] if "d" in s else (1.0 - s["Tr"][0] if "Tr" in s else 1.0)  # type: ignore[index]
        out[name] = Material(
            name=name,
            base_color=np.array(kd + [alpha], np.float32),
            base_color_texture=_load(s.get("map_Kd"), True),  # type: ignore[arg-type]
            roughness=s["Pr"][0] if "Pr" in s else 0.5,  # type: ignore[index]
            metallic=s["Pm"][0] if "Pm" in s else 0.0,  # type: ignore[index]
            normal_texture=_load(s.get("normal"), False),  # type: ignore[arg-type]
        )
    return out


def _load(file: Path | None, srgb: bool) -> np.ndarray | None:
    if file is None:
        return None
    img = texture_from_image(file.read_bytes(), srgb, str(file))
    return img[..., :3] if not srgb else img
