"""Dependencies point one way: pipelines -> models -> renderers -> assets (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import layerforge

ROOT = Path(layerforge.__file__).parent
LAYERS = ["assets", "renderers", "models", "pipelines"]  # each may import the ones before it
# Documented exceptions: the nerfstudio dataset reader converts cameras into our Camera convention
# (renderers.cameras) and returns posed views as renderers.camera_set.CameraSet; the Object-NeRF
# converter turns OpenCV camera-to-world into nerfstudio's through renderers.cameras.Camera.
EXCEPTIONS = {
    ("assets/nerfstudio_dataset.py", "renderers"),
    ("assets/object_nerf.py", "renderers"),
    ("assets/synthetic_scene.py", "renderers"),  # orbit cameras for the generated views (cameras.py only)
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("layerforge."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("layerforge.")}
    return found


def test_no_module_imports_a_layer_above_its_own():
    bad = []
    for layer_index, layer in enumerate(LAYERS):
        for path in sorted((ROOT / layer).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for imported in _imports(path):
                if imported in LAYERS and LAYERS.index(imported) > layer_index and (rel, imported) not in EXCEPTIONS:
                    bad.append(f"{rel} imports layerforge.{imported}")
    assert not bad, bad
