"""LayerPano3D: layered 3D panoramas (depth layers, completion, one set of 3D Gaussians per layer)."""
