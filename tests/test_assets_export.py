"""export_asset (what pipelines call) and describe_file (what ``layerforge inspect`` prints)."""

from __future__ import annotations

import numpy as np
import pytest
from assets_fixtures import chair_asset, random_cloud  # noqa: F401

from layerforge.assets import describe_file, export_asset, read_gltf, read_splat_ply
from layerforge.assets.splat_ply import transform_gaussians
from layerforge.assets.types import LayeredAsset, Part
from layerforge.errors import ConfigError, InputError


def test_default_formats_write_every_deliverable(tmp_path, chair_asset):
    out = export_asset(chair_asset, tmp_path / "export", "chair")
    assert {"glb", "obj", "usd", "blend"} <= set(out)
    assert out["glb"] == tmp_path / "export" / "chair.glb"
    assert {"obj/chair.mtl", "obj/chair_wood_basecolor.png", "usd/chair_flat.usda", "usd/wood_basecolor.png"} <= set(out)
    assert all(p.is_file() and p.stat().st_size > 0 for p in out.values())
    assert "ply" not in out  # no Gaussians
    names = {p.name for p in (tmp_path / "export").rglob("*")}
    assert not any(n.startswith(".") for n in names)  # no temp files left behind
    assert [p.name for p in read_gltf(out["glb"]).parts] == ["post", "seat", "cushion"]


def test_gaussian_layers_get_world_space_splats_per_layer(tmp_path):
    near, far = random_cloud(20, 1, seed=1), random_cloud(30, 1, seed=2)
    move = np.eye(4, dtype=np.float32)
    move[:3, 3] = [0, 0, 5]
    asset = LayeredAsset("pano", [Part("near", near, layer="near"), Part("far", far, move, layer="far")])
    out = export_asset(asset, tmp_path, "pano", formats=("glb",))
    assert {"glb", "ply", "ply/pano_layer_near.ply", "ply/pano_layer_far.ply"} <= set(out) and "obj" not in out
    merged = read_splat_ply(out["ply"])
    assert len(merged) == 50
    far_back = read_splat_ply(out["ply/pano_layer_far.ply"])
    np.testing.assert_allclose(far_back.means, far.means + [0, 0, 5], atol=1e-6)  # world coordinates
    np.testing.assert_allclose(far_back.means, transform_gaussians(far, move).means, atol=1e-6)


def test_describe_file_names_each_format(tmp_path, chair_asset):
    out = export_asset(chair_asset, tmp_path, "chair", formats=("glb", "obj", "usd"))
    assert describe_file(out["glb"]) == "glTF 2.0 binary, 3 parts"
    assert describe_file(out["obj"]) == "Wavefront OBJ"
    assert describe_file(out["usd"]) == "USD stage (layered)"
    assert describe_file(out["usd/chair_flat.usda"]) == "USD stage"
    from layerforge.assets.splat_ply import write_splat_ply

    splat = write_splat_ply(tmp_path / "s.ply", random_cloud(12, 2))
    assert describe_file(splat) == "3DGS PLY, 12 splats SH2"
    assert all(len(describe_file(p)) <= 28 for p in [*out.values(), splat])


def test_bad_requests(tmp_path, chair_asset):
    with pytest.raises(ConfigError, match="unknown export format"):
        export_asset(chair_asset, tmp_path, "chair", formats=("fbx",))
    with pytest.raises(InputError, match="no parts"):
        export_asset(LayeredAsset("empty"), tmp_path, "empty")


def test_package_import_is_light():
    import subprocess
    import sys

    code = ("import sys, layerforge.assets; "
            "print(sorted(m for m in ('bpy', 'pxr', 'trimesh', 'torch', 'plyfile') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
