"""One entry point for deliverables: :func:`export_asset`, and :func:`describe_file` for ``inspect``."""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path

from layerforge.assets.types import GaussianCloud, LayeredAsset, Mesh
from layerforge.errors import ConfigError, InputError

log = logging.getLogger(__name__)

FORMATS = ("glb", "obj", "usd", "blend", "ply")


def export_asset(
    asset: LayeredAsset,
    out_dir: str | os.PathLike[str],
    stem: str,
    formats: tuple[str, ...] | list[str] = ("glb", "obj", "usd", "blend"),
) -> dict[str, Path]:
    """Write ``asset`` in each of ``formats`` as ``<out_dir>/<stem>.<ext>`` (+ side files).

    Formats: "glb" (self-contained), "obj" (+ .mtl + PNGs; mesh parts only), "usd"
    (``.usda`` + textures; several layers -> per-layer sublayer files + ``<stem>_flat.usda``),
    "blend", "ply" (3DGS splat of all Gaussian parts in world coordinates, plus one file per
    layer when Gaussians span several layers). "ply" is added whenever the asset has
    Gaussian parts, since the splat is their real deliverable.

    Returns ``{format: main file}`` plus ``{"<format>/<file name>": side file}`` for every
    other file written (textures, MTL, USD layers), so callers can record all of them.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"unknown export format(s) {unknown}", f"choose from {', '.join(FORMATS)}")
    if not asset.parts:
        raise InputError(f"asset {asset.name!r} has no parts", "export an asset with at least one mesh or Gaussian part")
    out_dir = Path(out_dir)
    has_mesh = any(isinstance(p.geometry, Mesh) for p in asset.parts)
    gauss = [p for p in asset.parts if isinstance(p.geometry, GaussianCloud)]
    wanted = list(dict.fromkeys(list(formats) + (["ply"] if gauss else [])))
    out: dict[str, Path] = {}

    def side(fmt: str, files: dict[str, Path], main_key: str) -> None:
        out[fmt] = files[main_key]
        out.update({f"{fmt}/{p.name}": p for k, p in files.items() if k != main_key})

    for fmt in wanted:
        if fmt == "glb":
            from layerforge.assets.gltf import write_glb

            out["glb"] = write_glb(out_dir / f"{stem}.glb", asset)
        elif fmt == "obj":
            if not has_mesh:
                log.warning("asset %r has no mesh parts: no OBJ written", asset.name)
                continue
            from layerforge.assets.obj import write_obj

            side("obj", write_obj(out_dir / f"{stem}.obj", asset), "obj")
        elif fmt == "usd":
            from layerforge.assets.usd import write_usd

            side("usd", write_usd(out_dir / f"{stem}.usda", asset), "usd")
        elif fmt == "blend":
            from layerforge.assets.blend import write_blend

            out["blend"] = write_blend(out_dir / f"{stem}.blend", asset)
        elif fmt == "ply":
            if not gauss:
                log.warning("asset %r has no Gaussian parts: no splat PLY written", asset.name)
                continue
            from layerforge.assets.splat_ply import merge_gaussian_parts, write_splat_ply

            out["ply"] = write_splat_ply(out_dir / f"{stem}.ply", merge_gaussian_parts(gauss))
            layers = list(dict.fromkeys(p.layer for p in gauss))
            if len(layers) > 1:
                for layer in layers:
                    f = write_splat_ply(out_dir / f"{stem}_layer_{layer}.ply",
                                        merge_gaussian_parts([p for p in gauss if p.layer == layer]))
                    out[f"ply/{f.name}"] = f
    return out


def describe_file(path: str | os.PathLike[str]) -> str:
    """A short (<= 28 characters) name for a deliverable's format, read from its header only."""
    p = Path(path)
    suffix = p.suffix.lower()
    try:
        if suffix == ".glb":
            with open(p, "rb") as f:
                head = f.read(20)
                if head[:4] != b"glTF":
                    return "GLB (bad header)"
                length = struct.unpack_from("<I", head, 12)[0]
                doc = json.loads(f.read(length))
            meshes = sum(1 for n in doc.get("nodes", []) if "mesh" in n)
            return f"glTF 2.0 binary, {meshes} parts"
        if suffix == ".ply":
            return _describe_ply(p)
        if suffix in (".usda", ".usdc", ".usd", ".usdz"):
            if suffix == ".usda" or (suffix == ".usd" and p.read_bytes()[:8] == b"#usda 1."):
                text = p.read_text(encoding="utf-8", errors="replace")[:4096]
                return "USD stage (layered)" if "subLayers" in text else "USD stage"
            return "USD stage (binary)" if suffix != ".usdz" else "USDZ package"
    except (OSError, ValueError, struct.error):
        return f"{suffix.lstrip('.')} (unreadable)"
    return {
        ".obj": "Wavefront OBJ",
        ".mtl": "OBJ materials (MTL)",
        ".blend": "Blender scene",
        ".png": "PNG texture",
        ".jpg": "JPEG image",
        ".json": "JSON",
        ".stl": "STL mesh",
        ".off": "OFF mesh",
    }.get(suffix, suffix.lstrip(".") or "file")


def _describe_ply(p: Path) -> str:
    with open(p, "rb") as f:
        head = f.read(65536)
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        return "PLY (bad header)"
    lines = head[:end].decode("ascii", errors="replace").splitlines()
    props = [ln.split()[-1] for ln in lines if ln.startswith("property")]
    count = next((int(ln.split()[2]) for ln in lines if ln.startswith("element vertex")), 0)
    if "f_dc_0" in props:
        rest = sum(1 for q in props if q.startswith("f_rest_"))
        degree = int(round((rest / 3 + 1) ** 0.5)) - 1
        return f"3DGS PLY, {count} splats SH{degree}"
    return "PLY mesh" if any(ln.startswith("element face") for ln in lines) else "PLY point cloud"
