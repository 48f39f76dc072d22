"""The asset model every pipeline returns and every writer understands.

All geometry is in metres, in the world frame: right-handed, +Z up (Blender's). Other
conventions (glTF's +Y up, OBJ's lack of transforms) exist only inside writers/readers.
Arrays are numpy (float32 geometry, int64 indices), never torch. Colours and textures are
float32 linear in [0, 1]; sRGB encoding happens only when a file is written or read.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from layerforge.errors import InputError


def _f32(name: str, a: Any, shape: tuple[int | None, ...]) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    _check_shape(name, arr, shape)
    return arr


def _int(name: str, a: Any, shape: tuple[int | None, ...]) -> np.ndarray:
    arr = np.asarray(a)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name} has dtype {arr.dtype}", "pass integer indices")
    arr = np.ascontiguousarray(arr.astype(np.int64, copy=False))
    _check_shape(name, arr, shape)
    return arr


def _check_shape(name: str, arr: np.ndarray, shape: tuple[int | None, ...]) -> None:
    ok = arr.ndim == len(shape) and all(s is None or s == n for s, n in zip(shape, arr.shape))
    if not ok:
        want = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
        raise InputError(f"{name} has shape {list(arr.shape)}, expected {want}", "fix the array shape")


def safe_name(name: str) -> str:
    """A file/prim-safe version of ``name``: letters, digits and underscores, not starting with a digit."""
    s = re.sub(r"[^A-Za-z0-9_]", "_", name) or "_"
    return "_" + s if s[0].isdigit() else s


@dataclass
class Material:
    """PBR metallic-roughness material (the glTF 2.0 model).

    Args:
        name: unique within an asset; becomes the material name in every file.
        base_color: [4] float32 linear RGBA factor (multiplies the texture).
        base_color_texture: optional [H, W, 3|4] float32 linear RGB(A) in [0, 1]; stored sRGB in files.
        metallic, roughness: scalar factors in [0, 1].
        normal_texture: optional [H, W, 3] float32 tangent-space normal map, encoded (n + 1) / 2
            in [0, 1] (OpenGL/glTF +Y green); stored as raw (non-colour) data.
    """

    name: str = "material"
    base_color: np.ndarray = field(default_factory=lambda: np.ones(4, np.float32))
    base_color_texture: np.ndarray | None = None
    metallic: float = 0.0
    roughness: float = 0.5
    normal_texture: np.ndarray | None = None

    def __post_init__(self) -> None:
        bc = np.asarray(self.base_color, np.float32).reshape(-1)
        if bc.size == 3:
            bc = np.append(bc, 1.0).astype(np.float32)
        self.base_color = _f32(f"material {self.name!r} base_color", bc, (4,))
        if self.base_color_texture is not None:
            self.base_color_texture = _texture(f"material {self.name!r} base_color_texture", self.base_color_texture, (3, 4))
        if self.normal_texture is not None:
            self.normal_texture = _texture(f"material {self.name!r} normal_texture", self.normal_texture, (3,))
        self.metallic = float(self.metallic)
        self.roughness = float(self.roughness)


def _texture(name: str, img: Any, channels: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype == np.uint8:  # 8-bit codes are usually sRGB: converting is the caller's call
        raise InputError(f"{name} is 8-bit", "pass float32 linear values in [0, 1] (texture_from_image decodes files)")
    arr = _f32(name, arr, (None, None, None))
    if arr.shape[2] not in channels or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{name} has shape {list(arr.shape)}", f"pass an [H, W, {'|'.join(map(str, channels))}] image")
    if not np.isfinite(arr).all() or arr.min() < -1e-3 or arr.max() > 1 + 1e-3:
        raise InputError(f"{name} has values outside [0, 1]", "pass linear values in [0, 1]")
    return arr


@dataclass
class Mesh:
    """A triangle mesh in its part's local frame (metres, +Z up).

    Args:
        vertices: [V, 3] float32 positions, metres.
        faces: [F, 3] int64 vertex indices, counter-clockwise seen from outside.
        normals: optional [V, 3] float32 unit vertex normals.
        uvs: optional [V, 2] float32 texture coordinates, OpenGL convention (v = 0 is the
            image's bottom row); glTF's flipped V is handled in its writer/reader.
        colors: optional [V, 3|4] float32 linear vertex colours in [0, 1].
        material: optional :class:`Material`.
    """

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray | None = None
    uvs: np.ndarray | None = None
    colors: np.ndarray | None = None
    material: Material | None = None

    def __post_init__(self) -> None:
        self.vertices = _f32("mesh vertices", self.vertices, (None, 3))
        faces = np.asarray(self.faces)
        self.faces = _int("mesh faces", faces.reshape(0, 3).astype(np.int64) if faces.size == 0 else faces, (None, 3))
        v = len(self.vertices)
        if self.normals is not None:
            self.normals = _f32("mesh normals", self.normals, (v, 3))
        if self.uvs is not None:
            self.uvs = _f32("mesh uvs", self.uvs, (v, 2))
        if self.colors is not None:
            self.colors = _f32("mesh colors", self.colors, (v, None))
            if self.colors.shape[1] not in (3, 4):
                raise InputError(f"mesh colors have {self.colors.shape[1]} channels", "pass RGB or RGBA vertex colours")
        if self.faces.size and (self.faces.min() < 0 or self.faces.max() >= v):
            raise InputError(f"mesh faces index vertices outside [0, {v})", "fix the face indices")

    def transformed(self, matrix: np.ndarray) -> Mesh:
        """This mesh with ``matrix`` ([4, 4], applied to column vectors) applied to positions and normals."""
        m = np.asarray(matrix, np.float64)
        verts = self.vertices.astype(np.float64) @ m[:3, :3].T + m[:3, 3]
        normals = None
        if self.normals is not None:
            n = self.normals.astype(np.float64) @ np.linalg.inv(m[:3, :3])
            normals = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        flip = np.linalg.det(m[:3, :3]) < 0
        faces = self.faces[:, ::-1] if flip else self.faces
        return Mesh(verts, faces, normals, self.uvs, self.colors, self.material)

    def bounds(self) -> np.ndarray:
        """[2, 3] float32 min and max corner, metres."""
        return np.stack([self.vertices.min(0), self.vertices.max(0)])


@dataclass
class Skin:
    """Linear-blend skinning data for a mesh part (glTF's model).

    Args:
        joint_names: J unique names.
        parents: [J] int64 parent joint index, -1 for roots; parents come before children.
        inverse_bind_matrices: [J, 4, 4] float32, mesh-local frame -> joint frame at bind pose.
        joints: [V, 4] int64 joint indices per vertex.
        weights: [V, 4] float32 weights per vertex, rows sum to 1.
        skeleton: optional name of a skeleton shared with other parts (a body and its garments):
            parts whose skins name the same skeleton get one joint hierarchy (one glTF skin, one
            UsdSkel Skeleton, one Blender armature named after it). They must agree on
            ``joint_names``, ``parents`` and the world-space bind pose
            (``part.transform @ bind_matrices()``); ``joints`` index that shared list, so each
            part may use any subset. None: the part has its own joints.
    """

    joint_names: list[str]
    parents: np.ndarray
    inverse_bind_matrices: np.ndarray
    joints: np.ndarray
    weights: np.ndarray
    skeleton: str | None = None

    def __post_init__(self) -> None:
        j = len(self.joint_names)
        self.parents = _int("skin parents", self.parents, (j,))
        self.inverse_bind_matrices = _f32("skin inverse_bind_matrices", self.inverse_bind_matrices, (j, 4, 4))
        self.joints = _int("skin joints", self.joints, (None, 4))
        self.weights = _f32("skin weights", self.weights, (len(self.joints), 4))
        if any(p >= i for i, p in enumerate(self.parents)):
            raise InputError("skin parents must precede their children", "order joints parent-first")
        if self.joints.size and (self.joints.min() < 0 or self.joints.max() >= j):
            raise InputError(f"skin joint indices outside [0, {j})", "fix the per-vertex joint indices")
        if self.skeleton is not None and (not isinstance(self.skeleton, str) or not self.skeleton):
            raise InputError(f"skin skeleton name {self.skeleton!r} is not a non-empty string", "name the shared skeleton, or pass None")

    def bind_matrices(self) -> np.ndarray:
        """[J, 4, 4] float64 joint-to-mesh-local transforms at bind pose (inverses of the IBMs)."""
        return np.linalg.inv(self.inverse_bind_matrices.astype(np.float64))


def skeleton_groups(parts: list[Part]) -> dict[str, list[Part]]:
    """Skinned parts grouped by their skin's shared ``skeleton`` name, in part order.

    Parts without a skin or with ``skeleton=None`` are left out. Raises a one-line
    :class:`InputError` naming the skeleton and two parts when members disagree on joint names,
    parents or the world-space bind pose (``part.transform @ skin.bind_matrices()``, compared to
    1e-5 relative / 1e-5 m absolute).
    """
    groups: dict[str, list[Part]] = {}
    for part in parts:
        if part.skin is not None and part.skin.skeleton is not None:
            groups.setdefault(part.skin.skeleton, []).append(part)
    fix = "give every part of one skeleton the same joints, parents and world-space bind pose (part.transform @ bind matrices)"
    for name, members in groups.items():
        first = members[0]
        ref = first.skin
        assert ref is not None
        ref_world = first.transform.astype(np.float64) @ ref.bind_matrices()
        for other in members[1:]:
            skin = other.skin
            assert skin is not None
            where = f"skeleton {name!r}: parts {first.name!r} and {other.name!r}"
            if list(skin.joint_names) != list(ref.joint_names):
                raise InputError(f"{where} have different joint names", fix)
            if not np.array_equal(skin.parents, ref.parents):
                raise InputError(f"{where} have different joint parents", fix)
            world = other.transform.astype(np.float64) @ skin.bind_matrices()
            bad = [j for j in range(len(ref.joint_names)) if not np.allclose(world[j], ref_world[j], rtol=1e-5, atol=1e-5)]
            if bad:
                raise InputError(f"{where} have different bind poses (joint {ref.joint_names[bad[0]]!r})", fix)
    return groups


def unique_skeleton_name(name: Any, used: set[str]) -> str:
    """``str(name)``, with ``_`` appended until it is not in ``used``; records it there (readers of shared skeletons)."""
    name = str(name)
    while name in used:
        name += "_"
    used.add(name)
    return name


def sh_degree_for(coeffs: int) -> int:
    """The SH degree d with (d + 1)^2 == coeffs; InputError otherwise."""
    d = int(round(np.sqrt(coeffs))) - 1
    if d < 0 or (d + 1) ** 2 != coeffs:
        raise InputError(f"{coeffs} SH coefficients per channel is not (degree + 1)^2", "pass 1, 4, 9, 16... coefficients")
    return d


@dataclass
class GaussianCloud:
    """3D Gaussians, stored as in 3DGS files (pre-activation), in the part's local frame.

    Args:
        means: [N, 3] float32 centres, metres.
        quats: [N, 4] float32 rotations, wxyz (need not be normalised).
        log_scales: [N, 3] float32 log of the per-axis standard deviations (metres).
        opacity_logits: [N] float32 logit of the opacity.
        sh: [N, K, 3] float32 SH coefficients, K = (degree + 1)^2; ``sh[:, 0]`` is the DC term.
    """

    means: np.ndarray
    quats: np.ndarray
    log_scales: np.ndarray
    opacity_logits: np.ndarray
    sh: np.ndarray

    def __post_init__(self) -> None:
        self.means = _f32("gaussian means", self.means, (None, 3))
        n = len(self.means)
        self.quats = _f32("gaussian quats", self.quats, (n, 4))
        self.log_scales = _f32("gaussian log_scales", self.log_scales, (n, 3))
        self.opacity_logits = _f32("gaussian opacity_logits", np.asarray(self.opacity_logits).reshape(-1), (n,))
        self.sh = _f32("gaussian sh", self.sh, (n, None, 3))
        sh_degree_for(self.sh.shape[1])

    def __len__(self) -> int:
        return len(self.means)

    @property
    def sh_degree(self) -> int:
        return sh_degree_for(self.sh.shape[1])

    def rgb(self) -> np.ndarray:
        """[N, 3] float32 view-independent colour in [0, 1] from the DC term."""
        return np.clip(0.5 + SH_C0 * self.sh[:, 0], 0.0, 1.0).astype(np.float32)

    def opacities(self) -> np.ndarray:
        """[N] float32 opacity in (0, 1)."""
        return (1.0 / (1.0 + np.exp(-self.opacity_logits.astype(np.float64)))).astype(np.float32)


SH_C0 = 0.28209479177387814  # Y_0^0; 3DGS stores colour = 0.5 + SH_C0 * f_dc

Geometry = Union[Mesh, GaussianCloud]


@dataclass
class Part:
    """One named part of an asset: a mesh or a Gaussian cloud placed in the world.

    Args:
        name: unique within the asset; becomes the node/object/prim name.
        geometry: a :class:`Mesh` or :class:`GaussianCloud` in the part's local frame.
        transform: [4, 4] float32 local-to-world matrix (column vectors, metres).
        layer: the layer this part belongs to (e.g. "body", "garment", "depth_0");
            defaults to ``name``.
        skin: optional :class:`Skin` for an animatable mesh part.
        metadata: JSON-serialisable extras (written as glTF extras / USD customData).
    """

    name: str
    geometry: Geometry
    transform: np.ndarray = field(default_factory=lambda: np.eye(4, dtype=np.float32))
    layer: str | None = None
    skin: Skin | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.transform = _f32(f"part {self.name!r} transform", self.transform, (4, 4))
        if not np.allclose(self.transform[3], [0, 0, 0, 1], atol=1e-6):
            raise InputError(f"part {self.name!r} transform has a projective last row", "pass an affine 4x4 matrix")
        if self.layer is None:
            self.layer = self.name
        if self.skin is not None:
            if not isinstance(self.geometry, Mesh):
                raise InputError(f"part {self.name!r} has a skin but no mesh", "skin only mesh parts")
            if len(self.skin.joints) != len(self.geometry.vertices):
                raise InputError(
                    f"part {self.name!r} skin has {len(self.skin.joints)} vertices, mesh {len(self.geometry.vertices)}",
                    "give one joints/weights row per vertex",
                )

    @property
    def is_mesh(self) -> bool:
        return isinstance(self.geometry, Mesh)


@dataclass
class LayeredAsset:
    """Named parts grouped into layers: what a pipeline returns and every writer understands.

    Args:
        name: asset name (root node / collection / USD model root).
        parts: parts with unique names.
        metadata: JSON-serialisable extras.
    """

    name: str
    parts: list[Part] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [p.name for p in self.parts]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InputError(f"asset {self.name!r} has duplicate part names {dup}", "give every part a unique name")

    @property
    def layers(self) -> list[str]:
        """Layer names in first-appearance order."""
        return list(dict.fromkeys(p.layer for p in self.parts))  # type: ignore[misc]

    def part(self, name: str) -> Part:
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(name)

    def materials(self) -> list[Material]:
        """Distinct materials of mesh parts, by identity, in part order."""
        seen: dict[int, Material] = {}
        for p in self.parts:
            if isinstance(p.geometry, Mesh) and p.geometry.material is not None:
                seen.setdefault(id(p.geometry.material), p.geometry.material)
        return list(seen.values())

    def merged_mesh(self) -> Mesh:
        """All mesh parts in world coordinates as one Mesh (UVs/colours kept only if every part has them)."""
        meshes = [p.geometry.transformed(p.transform) for p in self.parts if isinstance(p.geometry, Mesh)]
        if not meshes:
            raise InputError(f"asset {self.name!r} has no mesh parts", "merge only assets with meshes")
        offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
        verts = np.concatenate([m.vertices for m in meshes])
        faces = np.concatenate([m.faces + o for m, o in zip(meshes, offsets)])

        def cat(attr: str) -> np.ndarray | None:
            vals = [getattr(m, attr) for m in meshes]
            if any(v is None for v in vals) or len({v.shape[1] for v in vals}) != 1:
                return None
            return np.concatenate(vals)

        mats = {id(m.material) for m in meshes}
        material = meshes[0].material if len(mats) == 1 else None
        return Mesh(verts, faces, cat("normals"), cat("uvs"), cat("colors"), material)


def _torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear, float32, same shape.

    A torch tensor gives a float32 tensor on its device, differentiable everywhere and not
    clipped (the curve continues linearly below 0 and as the power law above 1), so a gradient
    reaches pixels at or beyond 0 and 1.
    """
    if _torch_tensor(x):
        x = x.float()
        return (x / 12.92).where(x <= 0.04045, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)
    x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """Linear values in [0, 1] -> sRGB encoding, float32, same shape.

    A torch tensor gives a float32 tensor on its device, differentiable everywhere and not
    clipped (the curve continues linearly below 0 and as the power law above 1), so a gradient
    reaches pixels at or beyond 0 and 1.
    """
    if _torch_tensor(x):
        x = x.float()
        return (x * 12.92).where(x <= 0.0031308, 1.055 * x.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)
    x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055).astype(np.float32)


def texture_to_png(img: np.ndarray, srgb: bool) -> bytes:
    """Encode an [H, W, C] float32 linear image in [0, 1] as 8-bit PNG bytes (sRGB-encoded if ``srgb``).

    Row 0 of ``img`` is the top row of the picture (the file's first row).
    """
    import io

    from PIL import Image

    data = linear_to_srgb(img) if srgb else np.clip(img, 0.0, 1.0)
    if srgb and img.shape[2] == 4:  # alpha is never sRGB-encoded
        data[..., 3] = np.clip(img[..., 3], 0.0, 1.0)
    codes = np.round(data * 255.0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(codes, mode="RGBA" if codes.shape[2] == 4 else "RGB").save(buf, format="PNG")
    return buf.getvalue()


def frames_to_gif(frames: np.ndarray, frame_ms: int) -> bytes:
    """Encode [N, H, W, 3] float32 linear frames in [0, 1] as a looping animated GIF (sRGB, 8-bit)."""
    import io

    from PIL import Image

    codes = np.round(linear_to_srgb(np.asarray(frames)[..., :3]) * 255.0).astype(np.uint8)
    images = [Image.fromarray(c, mode="RGB") for c in codes]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    return buf.getvalue()


def texture_from_image(data: bytes, srgb: bool, source: str = "image") -> np.ndarray:
    """Decode PNG/JPEG bytes into an [H, W, 3|4] float32 linear image in [0, 1] (sRGB-decoded if ``srgb``)."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{source}: cannot decode image ({exc})", "re-save it as PNG or JPEG") from None
    has_alpha = "A" in im.getbands() or (im.mode == "P" and "transparency" in im.info)
    im = im.convert("RGBA" if has_alpha else "RGB")
    arr = np.asarray(im, dtype=np.float32) / 255.0
    if srgb:
        out = srgb_to_linear(arr)
        if arr.shape[2] == 4:
            out[..., 3] = arr[..., 3]
        return out
    return arr
