"""Builds the sample meshes shipped in layerforge/data/ (run once; the outputs are committed).

chair.obj: a dining chair in metres, seat at 0.45 m, built from boxes and cylinders (+Z up)
and merged into one watertight solid with manifold3d (so it has the thin legs, slats and
flat panels that make convex decomposition interesting). Written the way Blender writes
OBJ (+Y up in the file: world (x, y, z) -> file (x, z, -y)), so Blender's default OBJ
importer and our reader both stand it upright.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh


def box(size: tuple[float, float, float], centre: tuple[float, float, float]) -> trimesh.Trimesh:
    return trimesh.creation.box(extents=size, transform=trimesh.transformations.translation_matrix(centre))


def cylinder(radius: float, height: float, centre: tuple[float, float, float]) -> trimesh.Trimesh:
    return trimesh.creation.cylinder(
        radius=radius, height=height, sections=16, transform=trimesh.transformations.translation_matrix(centre)
    )


def chair() -> trimesh.Trimesh:
    seat_z, seat_t = 0.45, 0.04
    w, d = 0.44, 0.42
    parts = [box((w, d, seat_t), (0, 0, seat_z))]
    leg_r, leg_h = 0.02, seat_z - seat_t / 2
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(cylinder(leg_r, leg_h, (sx * (w / 2 - 0.03), sy * (d / 2 - 0.03), leg_h / 2)))
    # back posts rise above the seat at the rear (+Y), joined by a top rail and three slats
    post_h = 0.45
    for sx in (-1, 1):
        parts.append(box((0.035, 0.035, post_h), (sx * (w / 2 - 0.03), d / 2 - 0.03, seat_z + post_h / 2)))
    parts.append(box((w - 0.02, 0.03, 0.08), (0, d / 2 - 0.03, seat_z + post_h - 0.04)))
    for x in (-0.1, 0.0, 0.1):
        parts.append(box((0.04, 0.02, post_h - 0.1), (x, d / 2 - 0.03, seat_z + (post_h - 0.1) / 2)))
    # stretchers between the legs
    for sy in (-1, 1):
        parts.append(box((w - 0.06, 0.02, 0.02), (0, sy * (d / 2 - 0.03), 0.15)))
    solid = trimesh.boolean.union(parts, engine="manifold")
    solid.merge_vertices()
    assert solid.is_watertight, "sample chair must be watertight"
    return solid


if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "layerforge" / "data"
    out.mkdir(parents=True, exist_ok=True)
    mesh = chair()
    z_up_to_y_up = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], np.float64)
    file_mesh = mesh.copy()
    file_mesh.apply_transform(z_up_to_y_up)
    lines = ["# chair.obj: a dining chair in metres, +Y up in the file (Blender's OBJ convention), written by scripts/make_sample_meshes.py"]
    lines += [f"v {x:.8f} {y:.8f} {z:.8f}" for x, y, z in file_mesh.vertices]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in file_mesh.faces]
    (out / "chair.obj").write_text("\n".join(lines) + "\n")
    print(f"chair.obj: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, bounds {np.round(mesh.bounds, 3).tolist()}")
