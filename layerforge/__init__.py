"""layerforge: meshes, scans, posed photos and prompts into decomposed, production-ready 3D assets."""

__version__ = "0.1.0"
