"""3DGS PLY: exact round trips for SH degrees 0..3, the Inria header, other tools' files, world placement."""

from __future__ import annotations

import numpy as np
import pytest
from assets_fixtures import bpy_import, random_cloud

from layerforge.assets.splat_ply import (
    inria_properties,
    read_splat_ply,
    rotate_sh,
    sh_basis,
    transform_gaussians,
    write_splat_ply,
)
from layerforge.assets.types import GaussianCloud, LayeredAsset, Part
from layerforge.errors import InputError


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_is_bit_exact(tmp_path, degree):
    cloud = random_cloud(50, degree, seed=degree)
    path = write_splat_ply(tmp_path / f"d{degree}.ply", cloud)
    back = read_splat_ply(path)
    assert back.sh_degree == degree
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        np.testing.assert_array_equal(getattr(back, name), getattr(cloud, name), err_msg=name)


def test_header_matches_inria_layout_property_for_property(tmp_path):
    path = write_splat_ply(tmp_path / "s.ply", random_cloud(7, 3))
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    lines = raw[:end].decode("ascii").splitlines()
    expected = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                + [f"f_rest_{i}" for i in range(45)]
                + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 7"]
    assert lines[3:-1] == [f"property float {p}" for p in expected]
    assert lines[-1] == "end_header"
    assert len(raw) - end == 7 * len(expected) * 4  # nothing but float32 rows follows
    assert inria_properties(3) == expected


def test_f_rest_is_channel_major_and_values_land_in_their_columns(tmp_path):
    cloud = random_cloud(3, 2)
    path = write_splat_ply(tmp_path / "s.ply", cloud)
    raw = path.read_bytes()
    body = np.frombuffer(raw[raw.index(b"end_header\n") + 11:], "<f4").reshape(3, -1)
    names = inria_properties(2)
    col = {n: i for i, n in enumerate(names)}
    k = 9  # coefficients per channel at degree 2
    for c in range(3):
        for j in range(1, k):
            np.testing.assert_array_equal(body[:, col[f"f_rest_{c * (k - 1) + j - 1}"]], cloud.sh[:, j, c])
    np.testing.assert_array_equal(body[:, col["opacity"]], cloud.opacity_logits)
    np.testing.assert_array_equal(body[:, col["rot_0"]], cloud.quats[:, 0])  # w first
    np.testing.assert_array_equal(body[:, [col["nx"], col["ny"], col["nz"]]], 0)


def test_reads_files_from_other_tools_any_order_extra_properties_ascii(tmp_path):
    from plyfile import PlyData, PlyElement

    cloud = random_cloud(5, 1)
    names = inria_properties(1)[::-1] + ["extra_feature"]  # reversed order + unknown property
    table = np.zeros(5, dtype=[(n, "f4") for n in names])
    table["x"], table["y"], table["z"] = cloud.means.T
    for c in range(3):
        table[f"f_dc_{c}"] = cloud.sh[:, 0, c]
        for j in range(3):
            table[f"f_rest_{c * 3 + j}"] = cloud.sh[:, 1 + j, c]
    table["opacity"] = cloud.opacity_logits
    for i in range(3):
        table[f"scale_{i}"] = cloud.log_scales[:, i]
    for i in range(4):
        table[f"rot_{i}"] = cloud.quats[:, i]
    PlyData([PlyElement.describe(table, "vertex")], text=True).write(str(tmp_path / "other.ply"))
    back = read_splat_ply(tmp_path / "other.ply")
    np.testing.assert_allclose(back.sh, cloud.sh, rtol=1e-6)
    np.testing.assert_allclose(back.means, cloud.means, rtol=1e-6)
    np.testing.assert_allclose(back.quats, cloud.quats, rtol=1e-6)


def test_mesh_ply_is_rejected_with_one_line_message(tmp_path):
    import trimesh

    trimesh.creation.box().export(tmp_path / "mesh.ply")
    with pytest.raises(InputError, match="not a 3DGS PLY") as err:
        read_splat_ply(tmp_path / "mesh.ply")
    assert "\n" not in str(err.value) and "mesh.ply" in str(err.value)


def test_transform_places_gaussians_in_world_and_rotates_colour():
    cloud = random_cloud(20, 3, seed=5)
    angle = 0.7
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    rot = rot @ np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    m = np.eye(4)
    m[:3, :3] = 2.0 * rot
    m[:3, 3] = [1, 2, 3]
    world = transform_gaussians(cloud, m)
    np.testing.assert_allclose(world.means, cloud.means @ (2 * rot).T + [1, 2, 3], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_covariances(world), 4 * rot @ _covariances(cloud) @ rot.T, rtol=1e-4, atol=1e-9)
    # the rotated field seen from direction rot @ d has the colour the original had from d
    d = np.random.default_rng(1).normal(size=(10, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    before = np.einsum("mk,nkc->nmc", sh_basis(d, 3), cloud.sh)
    after = np.einsum("mk,nkc->nmc", sh_basis(d @ rot.T, 3), world.sh)
    np.testing.assert_allclose(after, before, atol=1e-4)


def test_non_uniform_scale_transforms_covariances():
    cloud = random_cloud(10, 0, seed=2)
    a = np.diag([1.0, 3.0, 0.5])
    m = np.eye(4)
    m[:3, :3] = a
    world = transform_gaussians(cloud, m)
    np.testing.assert_allclose(_covariances(world), a @ _covariances(cloud) @ a.T, rtol=1e-4, atol=1e-10)


def test_rotate_sh_identity_and_inverse():
    sh = random_cloud(4, 2).sh
    rot = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], np.float64)
    np.testing.assert_allclose(rotate_sh(rotate_sh(sh, rot), rot.T), sh, atol=1e-5)
    assert not np.allclose(rotate_sh(sh, rot), sh, atol=1e-3)


def test_blender_imports_our_splat_with_every_gaussian(tmp_path):
    cloud = random_cloud(123, 3)
    asset = LayeredAsset("pano", [Part("layer0", cloud)])
    path = write_splat_ply(tmp_path / "pano.ply", asset.parts[0].geometry)
    objs = bpy_import(path)
    (info,) = objs.values()
    assert info["verts"] == 123
    np.testing.assert_allclose(info["bbox_min"], cloud.means.min(0), atol=1e-5)
    np.testing.assert_allclose(info["bbox_max"], cloud.means.max(0), atol=1e-5)


def test_invalid_cloud_shapes_raise_input_error():
    with pytest.raises(InputError, match="SH coefficients"):
        GaussianCloud(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((2, 3)), np.zeros(2), np.zeros((2, 5, 3)))
    with pytest.raises(InputError, match="quats"):
        GaussianCloud(np.zeros((2, 3)), np.zeros((3, 4)), np.zeros((2, 3)), np.zeros(2), np.zeros((2, 1, 3)))


def _covariances(cloud: GaussianCloud) -> np.ndarray:
    q = cloud.quats.astype(np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    r = np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)
    s2 = np.exp(2 * cloud.log_scales.astype(np.float64))
    return np.einsum("nij,nj,nkj->nik", r, s2, r)


def test_truncated_ply_is_an_input_error(tmp_path):
    path = write_splat_ply(tmp_path / "s.ply", random_cloud(20, 1))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match="s.ply: not a readable PLY"):
        read_splat_ply(path)
