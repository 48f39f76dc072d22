"""Typed artifacts: how a stage's outputs are written and read back.

``ctx.save("cameras", views)`` picks the codec of the object's type, writes
``stages/<stage>/cameras<suffix>`` and records the codec in the manifest;
``ctx.load("cameras")`` in a later stage reads it back as the same type. One codec per type:

    Mesh / LayeredAsset -> .glb  (our glTF writer and reader: parts, materials, skins)
    GaussianCloud       -> .ply  (3DGS PLY)
    CameraSet           -> .npz  (cameras, images, masks, depths)
    SceneFrame          -> .json ({"to_world": 4x4})
    torch.nn.Module     -> .pt   (its state_dict; load into a module of the same build)
    dict of arrays      -> .npz
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layerforge.errors import InputError


@dataclasses.dataclass(frozen=True)
class Codec:
    """How one artifact type is written and read."""

    name: str
    suffix: str
    accepts: Callable[[Any], bool]
    save: Callable[[Any, Path], Any]
    load: Callable[[Path, Any], Any]  # (path, like) -> object; ``like`` is a module to load a state_dict into


def _save_asset(obj: Any, path: Path) -> None:
    from layerforge.assets.gltf import write_glb

    write_glb(path, obj)


def _load_asset(path: Path, like: Any) -> Any:
    from layerforge.assets.gltf import read_gltf

    asset = read_gltf(path, validate=False)
    from layerforge.assets.types import Mesh

    return asset.merged_mesh() if like is Mesh else asset


def _is_asset(obj: Any) -> bool:
    from layerforge.assets.types import LayeredAsset, Mesh

    return isinstance(obj, (LayeredAsset, Mesh))


def _is_cloud(obj: Any) -> bool:
    from layerforge.assets.types import GaussianCloud

    return isinstance(obj, GaussianCloud)


def _save_cloud(obj: Any, path: Path) -> None:
    from layerforge.assets.splat_ply import write_splat_ply

    write_splat_ply(path, obj)


def _load_cloud(path: Path, like: Any) -> Any:
    from layerforge.assets.splat_ply import read_splat_ply

    return read_splat_ply(path)


def _is_camera_set(obj: Any) -> bool:
    from layerforge.renderers.camera_set import CameraSet

    return isinstance(obj, CameraSet)


def _load_camera_set(path: Path, like: Any) -> Any:
    from layerforge.renderers.camera_set import CameraSet

    return CameraSet.load(path)


def _is_frame(obj: Any) -> bool:
    from layerforge.assets.frame import SceneFrame

    return isinstance(obj, SceneFrame)


def _load_frame(path: Path, like: Any) -> Any:
    from layerforge.assets.frame import SceneFrame

    return SceneFrame.load(path)


def _save_module(obj: torch.nn.Module, path: Path) -> None:
    from layerforge.assets.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj.state_dict(), tmp)


def _load_module(path: Path, like: Any) -> Any:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(like, torch.nn.Module):
        like.load_state_dict(state)
        return like
    return state


def _save_arrays(obj: dict[str, Any], path: Path) -> None:
    from layerforge.assets.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **{k: np.asarray(v) for k, v in obj.items()})


def _load_arrays(path: Path, like: Any) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


CODECS: tuple[Codec, ...] = (
    Codec("asset", ".glb", _is_asset, _save_asset, _load_asset),
    Codec("gaussians", ".ply", _is_cloud, _save_cloud, _load_cloud),
    Codec("cameras", ".npz", _is_camera_set, lambda o, p: o.save(p), _load_camera_set),
    Codec("frame", ".json", _is_frame, lambda o, p: o.save(p), _load_frame),
    Codec("state_dict", ".pt", lambda o: isinstance(o, torch.nn.Module), _save_module, _load_module),
    Codec("arrays", ".npz", lambda o: isinstance(o, dict) and all(isinstance(k, str) for k in o), _save_arrays, _load_arrays),
)


def codec_for(obj: Any) -> Codec:
    """The codec that writes ``obj``.

    Raises:
        TypeError: no codec writes this type (a stage bug, not a user error).
    """
    for codec in CODECS:
        if codec.accepts(obj):
            return codec
    raise TypeError(f"no artifact codec for {type(obj).__name__}; known: {', '.join(c.name for c in CODECS)}")


def codec_named(name: str) -> Codec:
    for codec in CODECS:
        if codec.name == name:
            return codec
    raise InputError(f"artifact codec '{name}' is unknown to this version", "re-run the stage that made it")


def save_artifact(obj: Any, path_without_suffix: str | os.PathLike[str]) -> tuple[Path, str]:
    """Write ``obj`` with its codec; return (path with the codec's suffix, codec name)."""
    codec = codec_for(obj)
    path = Path(f"{path_without_suffix}{codec.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    codec.save(obj, path)
    return path, codec.name


def load_artifact(path: str | os.PathLike[str], codec: str, like: Any = None) -> Any:
    """Read an artifact written by :func:`save_artifact` (``like``: a type or a module to load into)."""
    return codec_named(codec).load(Path(path), like)
