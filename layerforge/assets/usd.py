"""USD writer and reader (usd-core), Z up, metres.

Layout written (prim names are :func:`safe_name` of the asset/part names, made unique)::

    /<Asset>                 Xform, kind=component, the default prim
      /Looks/<Material>      UsdPreviewSurface (+ UsdUVTexture for base colour / normal map)
      /<Part>                Xform with the part transform, customData layer/metadata
        /<Part>              Mesh (points, faces, normals, primvars:st, displayColor;
                             a skinned part is a SkelRoot with a /Skeleton and UsdSkel
                             joint indices/weights on the mesh) or
                             Points for a Gaussian part (centres, widths, DC colour)
      /<Skeleton name>       SkelRoot for parts whose skins share one ``Skin.skeleton``,
                             customData layerforge:skeleton = the name
        /Skeleton            one Skeleton: world-space bind and rest transforms
        /<Part>              Xform (identity: the mesh is baked to world, as in glTF),
                             customData layer/metadata as above
          /<Part>            Mesh bound to ../Skeleton (UsdSkel.BindingAPI: skel:skeleton,
                             jointIndices/jointWeights into the skeleton's joint list,
                             geomBindTransform identity)

A shared skeleton whose parts sit in several layers is defined, identically, in each layer
file that holds one of its parts, so every composition of the layers holds one Skeleton.

Textures are PNG files in ``<stem>_textures/`` with relative asset paths. An asset with
several layers is written as a root file that sublayers one file per layer
(``<stem>_layer_<name>.usda``), so a layer can be swapped or muted, plus
``<stem>_flat.usda`` holding everything in one file for tools that do not compose layers.
pxr is imported inside functions only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from layerforge.assets.atomic import atomic_path, atomic_write_bytes
from layerforge.assets.types import (
    GaussianCloud,
    LayeredAsset,
    Material,
    Mesh,
    Part,
    Skin,
    safe_name,
    skeleton_groups,
    unique_skeleton_name,
    texture_from_image,
    texture_to_png,
)
from layerforge.assets.validation import check_file, check_texture_files, validate_asset
from layerforge.errors import InputError

LOOKS = "Looks"


def write_usd(path: str | os.PathLike[str], asset: LayeredAsset | Mesh) -> dict[str, Path]:
    """Write ``asset`` as USD (``.usda``/``.usdc``/``.usd``) with its textures, atomically per file.

    Returns ``{"usd": root file, "usd_flat": single-file version (only for several layers),
    "usd_layer_<layer>": per-layer files, "<texture name>": png, ...}``.
    """
    path = Path(path)
    if path.suffix.lower() not in (".usda", ".usdc", ".usd"):
        raise InputError(f"{path}: not a USD file name", "use a .usda, .usdc or .usd suffix")
    if isinstance(asset, Mesh):
        asset = LayeredAsset(path.stem, [Part(path.stem, asset)])
    skeleton_groups(asset.parts)  # InputError before any file is written
    out: dict[str, Path] = {}
    tex_dir = f"{path.stem}_textures"
    names = _Names(asset)
    textures = _texture_files(asset, tex_dir, names)
    for rel, data in textures.items():
        out[Path(rel).name] = atomic_write_bytes(path.parent / rel, data)
    layers = asset.layers
    if len(layers) <= 1:
        out["usd"] = _write_stage(path, asset, asset.parts, tex_dir, [], names)
        return out
    sub: list[str] = []
    used: set[str] = set()
    for layer in layers:
        name = f"{path.stem}_layer_{_unique(safe_name(layer), used)}.usda"
        parts = [p for p in asset.parts if p.layer == layer]
        out[f"usd_layer_{layer}"] = _write_stage(path.parent / name, asset, parts, tex_dir, [], names)
        sub.append(f"./{name}")
    out["usd"] = _write_stage(path, asset, [], tex_dir, sub, names)
    out["usd_flat"] = _write_stage(path.with_name(f"{path.stem}_flat{path.suffix}"), asset, asset.parts, tex_dir, [], names)
    return out


class _Names:
    """Unique prim names for parts and materials (distinct names can share a safe_name)."""

    def __init__(self, asset: LayeredAsset) -> None:
        used = {LOOKS}
        self.parts = {p.name: _unique(safe_name(p.name), used) for p in asset.parts}
        shared = dict.fromkeys(p.skin.skeleton for p in asset.parts if p.skin is not None and p.skin.skeleton is not None)
        self.skeletons = {s: _unique(safe_name(s), used) for s in shared}  # SkelRoot prims beside the parts
        used = set()
        self.materials = {id(m): _unique(safe_name(m.name), used) for m in asset.materials()}


def _unique(name: str, used: set[str]) -> str:
    while name in used:
        name += "_"
    used.add(name)
    return name


def _texture_files(asset: LayeredAsset, tex_dir: str, names: _Names) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for mat in asset.materials():
        name = names.materials[id(mat)]
        if mat.base_color_texture is not None:
            files[f"{tex_dir}/{name}_basecolor.png"] = texture_to_png(mat.base_color_texture, srgb=True)
        if mat.normal_texture is not None:
            files[f"{tex_dir}/{name}_normal.png"] = texture_to_png(mat.normal_texture, srgb=False)
    return files


def _write_stage(path: Path, asset: LayeredAsset, parts: list[Part], tex_dir: str, sublayers: list[str],
                 names: _Names) -> Path:
    from pxr import Kind, Sdf, Usd, UsdGeom

    with atomic_path(path) as tmp:
        layer = Sdf.Layer.CreateNew(str(tmp), args={"format": "usda"} if path.suffix == ".usd" else {})
        stage = Usd.Stage.Open(layer)
        UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z)
        UsdGeom.SetStageMetersPerUnit(stage, 1.0)
        root_path = Sdf.Path("/" + safe_name(asset.name))
        root = UsdGeom.Xform.Define(stage, root_path).GetPrim()
        stage.SetDefaultPrim(root)
        Usd.ModelAPI(root).SetKind(Kind.Tokens.component)
        if asset.metadata:
            root.SetCustomDataByKey("layerforge:metadata", _plain(asset.metadata))
        layer.subLayerPaths = sublayers
        if sublayers:  # keep the asset's part order across the composed layers
            root.SetChildrenReorder(list(dict.fromkeys(_top_prim(p, names) for p in asset.parts)))
        materials: dict[int, Any] = {}
        groups = skeleton_groups(asset.parts)  # InputError if parts of one skeleton disagree
        skeletons: dict[str, Any] = {}
        for part in parts:
            _define_part(stage, root_path, part, materials, tex_dir, names, groups, skeletons)
        layer.Save()
    return path


def _plain(obj: Any) -> Any:
    """Metadata as USD-storable dictionaries/strings/numbers."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def _top_prim(part: Part, names: _Names) -> str:
    """Name of the root's child holding ``part``: its own prim, or its shared skeleton's SkelRoot."""
    if part.skin is not None and part.skin.skeleton is not None:
        return names.skeletons[part.skin.skeleton]
    return names.parts[part.name]


def _define_part(stage: Any, root: Any, part: Part, materials: dict[int, Any], tex_dir: str, names: _Names,
                 groups: dict[str, list[Part]], skeletons: dict[str, Any]) -> None:
    from pxr import Gf, Sdf, UsdGeom, UsdShade, UsdSkel, Vt

    shared = part.skin.skeleton if part.skin is not None else None
    transform = part.transform.astype(np.float64)
    if shared is not None:  # under the skeleton's SkelRoot, baked to world (skeleton space)
        if shared not in skeletons:
            skeletons[shared] = _define_shared_skeleton(stage, root, shared, groups[shared], names)
        part_path = skeletons[shared].GetPath().GetParentPath().AppendChild(names.parts[part.name])
        xf = UsdGeom.Xform.Define(stage, part_path)
        transform = np.eye(4)
    else:
        part_path = root.AppendChild(names.parts[part.name])
        # a skinned part must sit under a SkelRoot (an Xformable like Xform) with its skeleton
        xf = UsdSkel.Root.Define(stage, part_path) if part.skin is not None else UsdGeom.Xform.Define(stage, part_path)
    # USD matrices act on row vectors: store the transpose of our column-vector matrix
    xf.AddTransformOp().Set(Gf.Matrix4d(transform.T.tolist()))
    prim = xf.GetPrim()
    if part.metadata.get(VISIBILITY_VARIANTS):
        _visibility_variants(prim)
    prim.SetCustomDataByKey("layerforge:name", part.name)
    prim.SetCustomDataByKey("layerforge:layer", str(part.layer))
    if part.metadata:
        prim.SetCustomDataByKey("layerforge:metadata", _plain(part.metadata))
    # the geometry prim shares the part's name: Blender merges an Xform with its only child
    # into one object named after the child
    geom_path = prim.GetPath().AppendChild(names.parts[part.name])
    if isinstance(part.geometry, GaussianCloud):
        cloud = part.geometry
        pts = UsdGeom.Points.Define(stage, geom_path)
        pts.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(cloud.means))
        pts.CreateWidthsAttr(Vt.FloatArray.FromNumpy((2.0 * np.exp(cloud.log_scales.mean(1))).astype(np.float32)))
        pts.CreateDisplayColorPrimvar(UsdGeom.Tokens.vertex).Set(Vt.Vec3fArray.FromNumpy(cloud.rgb()))
        pts.CreateDisplayOpacityPrimvar(UsdGeom.Tokens.vertex).Set(Vt.FloatArray.FromNumpy(cloud.opacities()))
        pts.CreateExtentAttr(UsdGeom.PointBased.ComputeExtent(pts.GetPointsAttr().Get()))
        return
    mesh = part.geometry if shared is None else part.geometry.transformed(part.transform)
    um = UsdGeom.Mesh.Define(stage, geom_path)
    um.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(mesh.vertices))
    um.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(len(mesh.faces), 3, np.int32)))
    um.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(mesh.faces.reshape(-1).astype(np.int32)))
    um.CreateExtentAttr(Vt.Vec3fArray.FromNumpy(mesh.bounds()))
    um.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    if mesh.normals is not None:
        um.CreateNormalsAttr(Vt.Vec3fArray.FromNumpy(mesh.normals))
        um.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
    api = UsdGeom.PrimvarsAPI(um)
    if mesh.uvs is not None:
        st = api.CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex)
        st.Set(Vt.Vec2fArray.FromNumpy(mesh.uvs))
    if mesh.colors is not None:
        um.CreateDisplayColorPrimvar(UsdGeom.Tokens.vertex).Set(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(mesh.colors[:, :3])))
        if mesh.colors.shape[1] == 4:
            um.CreateDisplayOpacityPrimvar(UsdGeom.Tokens.vertex).Set(Vt.FloatArray.FromNumpy(np.ascontiguousarray(mesh.colors[:, 3])))
    if part.skin is not None and shared is not None:
        _bind_mesh(um.GetPrim(), skeletons[shared], part.skin)
    elif part.skin is not None:
        skel = _define_skeleton(stage, part_path.AppendChild("Skeleton"), part.skin, part.skin.bind_matrices())
        _bind_mesh(um.GetPrim(), skel, part.skin)  # mesh-local == skeleton space: both sit under the part prim
    if mesh.material is not None:
        if id(mesh.material) not in materials:
            materials[id(mesh.material)] = _define_material(stage, root, mesh.material, tex_dir, names.materials[id(mesh.material)])
        UsdShade.MaterialBindingAPI.Apply(um.GetPrim()).Bind(materials[id(mesh.material)])


VISIBILITY_VARIANTS = "usd_visibility_variants"
"""Part metadata flag: give the part's prim a ``visibility`` variant set (``shown`` | ``hidden``),
so a USD user toggles each object of a decomposed scene without editing the file."""


def _visibility_variants(prim: Any) -> None:
    from pxr import UsdGeom

    vset = prim.GetVariantSets().AddVariantSet("visibility")
    for name, token in (("shown", UsdGeom.Tokens.inherited), ("hidden", UsdGeom.Tokens.invisible)):
        vset.AddVariant(name)
        vset.SetVariantSelection(name)
        with vset.GetVariantEditContext():
            UsdGeom.Imageable(prim).CreateVisibilityAttr().Set(token)
    vset.SetVariantSelection("shown")


def _joint_paths(skin: Skin) -> list[str]:
    """UsdSkel joint tokens: each joint's path from its root ("root", "root/tip", ...)."""
    paths: list[str] = []
    for j, name in enumerate(skin.joint_names):
        p = int(skin.parents[j])
        paths.append(safe_name(name) if p < 0 else f"{paths[p]}/{safe_name(name)}")
    return paths


def _define_shared_skeleton(stage: Any, root: Any, name: str, members: list[Part], names: _Names) -> Any:
    """The SkelRoot of skeleton ``name`` and its Skeleton, posed at the members' world-space bind pose."""
    from pxr import UsdSkel

    first = members[0]
    assert first.skin is not None
    skel_root = UsdSkel.Root.Define(stage, root.AppendChild(names.skeletons[name]))
    skel_root.GetPrim().SetCustomDataByKey("layerforge:skeleton", name)
    prim_name = _unique("Skeleton", {names.parts[p.name] for p in members})
    world = first.transform.astype(np.float64) @ first.skin.bind_matrices()
    return _define_skeleton(stage, skel_root.GetPath().AppendChild(prim_name), first.skin, world)


def _define_skeleton(stage: Any, path: Any, skin: Skin, binds: np.ndarray) -> Any:
    """A Skeleton at ``path`` with ``skin``'s joints; ``binds`` [J, 4, 4] joint -> skeleton space at bind pose."""
    from pxr import Gf, UsdSkel, Vt

    skel = UsdSkel.Skeleton.Define(stage, path)
    skel.CreateJointsAttr(_joint_paths(skin))
    skel.CreateJointNamesAttr(list(skin.joint_names))
    local = [b if p < 0 else np.linalg.inv(binds[p]) @ b for b, p in zip(binds, skin.parents)]
    skel.CreateBindTransformsAttr(Vt.Matrix4dArray([Gf.Matrix4d(m.T.tolist()) for m in binds]))
    skel.CreateRestTransformsAttr(Vt.Matrix4dArray([Gf.Matrix4d(m.T.tolist()) for m in local]))
    return skel


def _bind_mesh(mesh_prim: Any, skel: Any, skin: Skin) -> None:
    """Bind ``mesh_prim`` (already in ``skel``'s space) to ``skel`` with ``skin``'s weights."""
    from pxr import Gf, UsdSkel, Vt

    binding = UsdSkel.BindingAPI.Apply(mesh_prim)
    binding.CreateSkeletonRel().SetTargets([skel.GetPath()])
    binding.CreateJointIndicesPrimvar(False, 4).Set(Vt.IntArray.FromNumpy(skin.joints.reshape(-1).astype(np.int32)))
    binding.CreateJointWeightsPrimvar(False, 4).Set(Vt.FloatArray.FromNumpy(skin.weights.reshape(-1)))
    binding.CreateGeomBindTransformAttr(Gf.Matrix4d(1.0))


def _define_material(stage: Any, root: Any, mat: Material, tex_dir: str, name: str) -> Any:
    from pxr import Gf, Sdf, UsdShade

    looks = root.AppendChild(LOOKS)
    if not stage.GetPrimAtPath(looks):
        stage.DefinePrim(looks, "Scope")
    material = UsdShade.Material.Define(stage, looks.AppendChild(name))
    surf = UsdShade.Shader.Define(stage, material.GetPath().AppendChild("PreviewSurface"))
    surf.CreateIdAttr("UsdPreviewSurface")
    rgba = [float(c) for c in mat.base_color]
    surf.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(mat.metallic)
    surf.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(mat.roughness)
    surf.CreateInput("opacity", Sdf.ValueTypeNames.Float).Set(rgba[3])
    diffuse = surf.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f)
    diffuse.Set(Gf.Vec3f(*rgba[:3]))
    material.CreateSurfaceOutput().ConnectToSource(surf.ConnectableAPI(), "surface")
    if mat.base_color_texture is None and mat.normal_texture is None:
        return material
    reader = UsdShade.Shader.Define(stage, material.GetPath().AppendChild("STReader"))
    reader.CreateIdAttr("UsdPrimvarReader_float2")
    reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("st")
    st = reader.CreateOutput("result", Sdf.ValueTypeNames.Float2)

    def texture(shader_name: str, file: str, colorspace: str, scale: list[float], bias: list[float]) -> Any:
        tex = UsdShade.Shader.Define(stage, material.GetPath().AppendChild(shader_name))
        tex.CreateIdAttr("UsdUVTexture")
        tex.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(Sdf.AssetPath(f"./{tex_dir}/{file}"))
        tex.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set(colorspace)
        tex.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(st)
        tex.CreateInput("scale", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(*scale))
        tex.CreateInput("bias", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(*bias))
        tex.CreateInput("wrapS", Sdf.ValueTypeNames.Token).Set("repeat")
        tex.CreateInput("wrapT", Sdf.ValueTypeNames.Token).Set("repeat")
        return tex

    if mat.base_color_texture is not None:
        tex = texture("BaseColorTexture", f"{name}_basecolor.png", "sRGB", rgba, [0, 0, 0, 0])
        diffuse.ConnectToSource(tex.CreateOutput("rgb", Sdf.ValueTypeNames.Float3))
        if mat.base_color_texture.shape[2] == 4:
            surf.GetInput("opacity").ConnectToSource(tex.CreateOutput("a", Sdf.ValueTypeNames.Float))
    if mat.normal_texture is not None:
        tex = texture("NormalTexture", f"{name}_normal.png", "raw", [2, 2, 2, 1], [-1, -1, -1, 0])
        surf.CreateInput("normal", Sdf.ValueTypeNames.Normal3f).ConnectToSource(tex.CreateOutput("rgb", Sdf.ValueTypeNames.Float3))
    return material


# ----------------------------------------------------------------------------- reading


def read_usd(path: str | os.PathLike[str], validate: bool = True, up_axis: str | None = None) -> LayeredAsset:
    """Read a USD stage (composed) into a LayeredAsset in metres, +Z up.

    One part per UsdGeom.Mesh (triangulated by fan; named after the part recorded in
    customData, else the prim), with its world transform, UVs
    (``primvars:st``), display colours and its bound UsdPreviewSurface material.
    The stage's metersPerUnit and upAxis are honoured; ``up_axis="Y"`` or ``"Z"``
    overrides the upAxis of a stage that declares it wrongly. A mesh bound to a UsdSkel
    Skeleton gets a :class:`Skin` (its ``skel:joints`` order honoured, inverse bind matrices
    ``bind^-1 @ geomBindTransform``); meshes bound to one Skeleton share a ``Skin.skeleton``
    name: the SkelRoot's customData ``layerforge:skeleton`` (our files), else, when several
    meshes use it, the Skeleton's parent prim name. A Skeleton of one mesh gives ``skeleton=None``.
    """
    from pxr import Usd, UsdGeom, UsdShade

    path = check_file(path, (".usd", ".usda", ".usdc", ".usdz"))
    try:
        stage = Usd.Stage.Open(str(path))
    except Exception as exc:  # pxr raises Tf.ErrorException for unparsable layers
        raise InputError(f"{path}: cannot open USD stage ({str(exc).splitlines()[-1].strip()})", "re-export it") from None
    if stage is None:
        raise InputError(f"{path}: cannot open USD stage", "re-export it")
    scale = UsdGeom.GetStageMetersPerUnit(stage)
    fix = np.diag([scale, scale, scale, 1.0])
    if (up_axis or str(UsdGeom.GetStageUpAxis(stage))).upper() == "Y":
        fix = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], np.float64) @ fix
    cache = UsdGeom.XformCache()
    parts: list[Part] = []
    mats: dict[str, Material] = {}
    names: set[str] = set()
    skeletons = _skeleton_names(stage)
    for prim in stage.Traverse():
        if not prim.IsA(UsdGeom.Mesh):
            continue
        parent = prim.GetParent()
        xform_prim = parent if parent and parent.GetName() == prim.GetName() and parent.IsA(UsdGeom.Xformable) else prim
        name = str(xform_prim.GetCustomDataByKey("layerforge:name") or xform_prim.GetName())
        while name in names:
            name += "_"
        names.add(name)
        world = np.asarray(cache.GetLocalToWorldTransform(prim), np.float64).T
        mesh = _read_mesh_prim(path, UsdGeom.Mesh(prim))
        bound, _ = UsdShade.MaterialBindingAPI(prim).ComputeBoundMaterial()
        if bound:
            key = str(bound.GetPath())
            if key not in mats:
                mats[key] = _read_material(path, bound)
            mesh.material = mats[key]
        skin = _read_skin(prim, skeletons)
        layer = xform_prim.GetCustomDataByKey("layerforge:layer")
        meta = xform_prim.GetCustomDataByKey("layerforge:metadata") or {}
        parts.append(Part(name, mesh, fix @ world, layer, skin, dict(meta)))
    root = stage.GetDefaultPrim()
    asset = LayeredAsset(root.GetName() if root else path.stem, parts,
                         dict(root.GetCustomDataByKey("layerforge:metadata") or {}) if root else {})
    return validate_asset(asset, path) if validate else asset


def _bound_skeleton(prim: Any) -> Any:
    """The UsdSkel.Skeleton ``prim`` is bound to by its own skel:skeleton, or None."""
    from pxr import UsdSkel

    if not prim.HasAPI(UsdSkel.BindingAPI):
        return None
    targets = UsdSkel.BindingAPI(prim).GetSkeletonRel().GetTargets()
    skel = UsdSkel.Skeleton(prim.GetStage().GetPrimAtPath(targets[0])) if targets else None
    return skel if skel else None


def _skeleton_names(stage: Any) -> dict[str, str]:
    """``{Skeleton path: shared skeleton name}`` for skeletons marked by our writer or bound by several meshes."""
    from pxr import UsdGeom

    users: dict[str, int] = {}
    for prim in stage.Traverse():
        skel = _bound_skeleton(prim) if prim.IsA(UsdGeom.Mesh) else None
        if skel is not None:
            key = str(skel.GetPath())
            users[key] = users.get(key, 0) + 1
    out: dict[str, str] = {}
    used: set[str] = set()
    for key, count in users.items():
        parent = stage.GetPrimAtPath(key).GetParent()
        name = parent.GetCustomDataByKey("layerforge:skeleton") if parent else None
        if not name and count > 1:
            name = parent.GetName() if parent and str(parent.GetPath()) != "/" else stage.GetPrimAtPath(key).GetName()
        if name:
            out[key] = unique_skeleton_name(name, used)
    return out


def _read_skin(prim: Any, skeletons: dict[str, str]) -> Skin | None:
    from pxr import UsdSkel

    skel = _bound_skeleton(prim)
    binding = UsdSkel.BindingAPI(prim)
    if skel is None or not binding.GetJointIndicesPrimvar():
        return None
    tokens = [str(t) for t in skel.GetJointsAttr().Get()]
    index = {t: j for j, t in enumerate(tokens)}
    parents = [index.get(t.rsplit("/", 1)[0], -1) if "/" in t else -1 for t in tokens]
    names = list(skel.GetJointNamesAttr().Get() or [t.rsplit("/", 1)[-1] for t in tokens])
    binds = np.array([np.asarray(m, np.float64).T for m in skel.GetBindTransformsAttr().Get()])
    size = binding.GetJointIndicesPrimvar().GetElementSize()
    if size != 4:
        return None  # only 4 influences per vertex are modelled
    joints = np.asarray(binding.GetJointIndicesPrimvar().Get(), np.int64).reshape(-1, 4)
    mesh_joints = binding.GetJointsAttr().Get() if binding.GetJointsAttr() else None
    if mesh_joints:  # skel:joints: this mesh's indices refer to its own joint order
        joints = np.array([index[str(t)] for t in mesh_joints], np.int64)[joints]
    geom_bind = binding.GetGeomBindTransformAttr().Get() if binding.GetGeomBindTransformAttr() else None
    to_skel = np.eye(4) if geom_bind is None else np.asarray(geom_bind, np.float64).T  # mesh -> skeleton space
    return Skin(names, parents, np.linalg.inv(binds) @ to_skel, joints,
                np.asarray(binding.GetJointWeightsPrimvar().Get(), np.float32).reshape(-1, 4),
                skeleton=skeletons.get(str(skel.GetPath())))


def _read_mesh_prim(path: Path, um: Any) -> Mesh:
    from pxr import UsdGeom

    points = np.asarray(um.GetPointsAttr().Get() or [], np.float32).reshape(-1, 3)
    counts = np.asarray(um.GetFaceVertexCountsAttr().Get() or [], np.int64)
    idx = np.asarray(um.GetFaceVertexIndicesAttr().Get() or [], np.int64)
    if len(counts) and counts.min() < 3:
        raise InputError(f"{path}: mesh {um.GetPath()} has faces with < 3 corners", "repair the mesh")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    tris = [np.stack([np.full(c - 2, s), s + np.arange(1, c - 1), s + np.arange(2, c)], 1) for s, c in zip(starts, counts)]
    corner_tris = np.concatenate(tris) if tris else np.zeros((0, 3), np.int64)
    faces = idx[corner_tris] if len(idx) else np.zeros((0, 3), np.int64)
    api = UsdGeom.PrimvarsAPI(um)

    def vertex_primvar(name: str, width: int) -> np.ndarray | None:
        pv = api.GetPrimvar(name)
        if not pv or not pv.HasValue():
            return None
        vals = np.asarray(pv.ComputeFlattened(), np.float32).reshape(-1, width)
        if pv.GetInterpolation() in (UsdGeom.Tokens.vertex, UsdGeom.Tokens.varying) and len(vals) == len(points):
            return vals
        return None  # faceVarying etc.: not representable per vertex

    normals = None
    n_attr = um.GetNormalsAttr().Get()
    if n_attr is not None and len(n_attr) == len(points):
        normals = np.asarray(n_attr, np.float32)
    return Mesh(points, faces, normals, vertex_primvar("st", 2), vertex_primvar("displayColor", 3))


def _read_material(path: Path, material: Any) -> Material:
    from pxr import UsdShade

    out = Material(name=material.GetPrim().GetName())
    surf = material.ComputeSurfaceSource()[0]
    if not surf:
        return out

    def value(name: str, default: Any) -> Any:
        inp = surf.GetInput(name)
        return inp.Get() if inp and inp.Get() is not None else default

    out.metallic = float(value("metallic", 0.0))
    out.roughness = float(value("roughness", 0.5))
    rgb = list(value("diffuseColor", (0.18, 0.18, 0.18)))
    out.base_color = np.array(rgb + [float(value("opacity", 1.0))], np.float32)
    for inp_name, srgb in (("diffuseColor", True), ("normal", False)):
        inp = surf.GetInput(inp_name)
        if not inp or not inp.HasConnectedSource():
            continue
        tex = UsdShade.ConnectableAPI(inp.GetConnectedSources()[0][0].source.GetPrim())
        file_inp = UsdShade.Shader(tex.GetPrim()).GetInput("file")
        asset_path = file_inp.Get() if file_inp else None
        if asset_path is None:
            continue
        resolved = asset_path.resolvedPath or ""
        if not resolved:
            check_texture_files([path.parent / asset_path.path], path)
            resolved = str(path.parent / asset_path.path)
        img = texture_from_image(Path(resolved).read_bytes(), srgb, resolved)
        if srgb:
            scale = UsdShade.Shader(tex.GetPrim()).GetInput("scale")
            if scale and scale.Get() is not None:
                out.base_color = np.asarray(scale.Get(), np.float32)
            out.base_color_texture = img
        else:
            out.normal_texture = img[..., :3]
    return out
