"""layerforge: meshes, scans, posed photos and prompts into decomposed, production-ready 3D assets."""

__version__ = "0.2.0"
