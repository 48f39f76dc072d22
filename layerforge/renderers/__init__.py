"""Shared renderers: cameras, mesh rasterization, Gaussians, volume, panorama, depth -> normals.

Only cheap imports here (torch); gsplat / nerfstudio are imported inside the functions
that need them.
"""

from layerforge.renderers.cameras import (  # noqa: F401
    Camera,
    OrbitSample,
    flip_camera_yz,
    focal_to_fov,
    fov_to_focal,
    generate_rays,
    intrinsics_from_fov,
    look_at,
    orbit_cameras,
    project,
    sample_orbit_cameras,
)
from layerforge.renderers.depth_normals import camera_points_from_depth, normals_from_depth  # noqa: F401
from layerforge.renderers.mesh import (  # noqa: F401
    Fragments,
    antialias,
    interpolate,
    normal_map,
    rasterize,
    rasterize_clip,
    rasterize_uv,
    render_mesh,
    render_textured_parts,
    sample_texture,
    shade_lambert,
)
from layerforge.renderers.gaussians import render_gaussians  # noqa: F401
from layerforge.renderers.output import RenderOutput  # noqa: F401
from layerforge.renderers.volume import render_output_from_rays, volume_render  # noqa: F401
