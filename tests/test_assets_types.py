"""The asset model: shapes/dtypes enforced with InputError, transforms, merging, colour encoding."""

from __future__ import annotations

import numpy as np
import pytest
from assets_fixtures import box, chair_asset  # noqa: F401

from layerforge.assets.types import (
    LayeredAsset,
    Material,
    Mesh,
    Part,
    Skin,
    linear_to_srgb,
    srgb_to_linear,
    texture_from_image,
    texture_to_png,
)
from layerforge.errors import InputError


def test_mesh_coerces_dtypes_and_rejects_bad_shapes():
    m = Mesh(np.zeros((3, 3), np.float64), [[0, 1, 2]])
    assert m.vertices.dtype == np.float32 and m.faces.dtype == np.int64
    with pytest.raises(InputError, match=r"vertices has shape \[3, 2\], expected \[N, 3\]"):
        Mesh(np.zeros((3, 2)), [[0, 1, 2]])
    with pytest.raises(InputError, match="outside"):
        Mesh(np.zeros((3, 3)), [[0, 1, 3]])
    with pytest.raises(InputError, match="integer"):
        Mesh(np.zeros((3, 3)), np.array([[0.0, 1.0, 2.0]]))
    with pytest.raises(InputError, match="uvs"):
        Mesh(np.zeros((3, 3)), [[0, 1, 2]], uvs=np.zeros((2, 2)))


def test_transformed_moves_points_rotates_normals_and_keeps_winding_outward():
    m = box(seed=0)
    mat = np.diag([2.0, 1.0, 1.0, 1.0])
    mat[:3, 3] = [1, 0, 0]
    t = m.transformed(mat)
    np.testing.assert_allclose(t.bounds(), [[0, -0.5, -0.5], [2, 0.5, 0.5]], atol=1e-6)
    np.testing.assert_allclose(t.normals, m.normals, atol=1e-6)  # axis-aligned normals survive a stretch
    mirrored = m.transformed(np.diag([-1.0, 1, 1, 1]))
    v = mirrored.vertices[mirrored.faces]
    face_n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    centroid = v.mean(1)
    assert (np.einsum("ij,ij->i", face_n, centroid) > 0).all()  # still counter-clockwise from outside


def test_merged_mesh_places_parts_in_world(chair_asset):
    merged = chair_asset.merged_mesh()
    assert len(merged.vertices) == 72 and merged.faces.max() == 71
    np.testing.assert_allclose(merged.vertices[:24].mean(0), [1.0, 2.0, 1.0], atol=1e-6)  # the post's transform
    assert merged.uvs is None  # one part has no UVs


def test_asset_rejects_duplicate_part_names_and_bad_transforms():
    with pytest.raises(InputError, match="duplicate part names"):
        LayeredAsset("a", [Part("x", box()), Part("x", box())])
    bad = np.eye(4)
    bad[3, 0] = 1
    with pytest.raises(InputError, match="projective"):
        Part("x", box(), bad)
    assert LayeredAsset("a", [Part("x", box(), layer="l1"), Part("y", box())]).layers == ["l1", "y"]


def test_skin_checks_hierarchy_and_sizes():
    ibm = np.tile(np.eye(4), (2, 1, 1))
    with pytest.raises(InputError, match="precede"):
        Skin(["a", "b"], [1, -1], ibm, np.zeros((8, 4), int), np.zeros((8, 4)))
    with pytest.raises(InputError, match="one joints/weights row per vertex"):
        Part("p", box(), skin=Skin(["a", "b"], [-1, 0], ibm, np.zeros((3, 4), int), np.zeros((3, 4))))


def test_srgb_round_trip_and_known_values():
    x = np.linspace(0, 1, 101, dtype=np.float32)
    np.testing.assert_allclose(srgb_to_linear(linear_to_srgb(x)), x, atol=1e-6)
    assert srgb_to_linear(np.float32(0.5)) == pytest.approx(0.2140, abs=1e-4)


def test_png_encoding_is_srgb_and_top_row_first():
    img = np.zeros((2, 3, 3), np.float32)
    img[0, :, 0] = srgb_to_linear(np.float32(128 / 255))  # top row: sRGB code 128
    data = texture_to_png(img, srgb=True)
    from io import BytesIO

    from PIL import Image

    codes = np.asarray(Image.open(BytesIO(data)))
    assert codes[0, 0, 0] == 128 and codes[1, 0, 0] == 0
    np.testing.assert_allclose(texture_from_image(data, srgb=True), img, atol=2e-3)
    with pytest.raises(InputError, match="cannot decode"):
        texture_from_image(b"not an image", srgb=True, source="t.png")


def test_material_validates_textures():
    with pytest.raises(InputError, match="base_color_texture"):
        Material("m", base_color_texture=np.zeros((4, 4, 2)))
    with pytest.raises(InputError, match="8-bit"):
        Material("m", base_color_texture=np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match=r"outside \[0, 1\]"):
        Material("m", normal_texture=np.full((4, 4, 3), 2.0))
    assert Material("m", base_color=[1, 0, 0]).base_color.tolist() == [1, 0, 0, 1]
