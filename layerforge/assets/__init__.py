"""Asset model (Mesh, Material, Skin, GaussianCloud, LayeredAsset), readers, writers, validation.

Importing this package is light: bpy, pxr, trimesh, plyfile and PIL are imported inside the
functions that need them.
"""

from layerforge.assets.blend import read_blend, write_blend
from layerforge.assets.export import FORMATS, describe_file, export_asset
from layerforge.assets.gltf import read_gltf, write_glb
from layerforge.assets.mesh_io import read_asset, read_mesh
from layerforge.assets.obj import write_obj
from layerforge.assets.splat_ply import merge_gaussian_parts, read_splat_ply, transform_gaussians, write_splat_ply
from layerforge.assets.types import GaussianCloud, LayeredAsset, Material, Mesh, Part, Skin
from layerforge.assets.usd import read_usd, write_usd
from layerforge.assets.validation import validate_asset, validate_cloud, validate_mesh

__all__ = [
    "FORMATS",
    "GaussianCloud",
    "LayeredAsset",
    "Material",
    "Mesh",
    "Part",
    "Skin",
    "describe_file",
    "export_asset",
    "merge_gaussian_parts",
    "read_asset",
    "read_blend",
    "read_gltf",
    "read_mesh",
    "read_splat_ply",
    "read_usd",
    "transform_gaussians",
    "validate_asset",
    "validate_cloud",
    "validate_mesh",
    "write_blend",
    "write_glb",
    "write_obj",
    "write_splat_ply",
    "write_usd",
]
