"""The one camera type of layerforge, plus the only converters to other conventions.

Conventions (DESIGN.md):

- World: metres, right-handed, +Z up (Blender's world).
- :class:`Camera` holds intrinsics ``K`` in pixels and ``world_to_camera`` in the **OpenCV**
  convention: camera +x right, +y down, +z forward (the viewing direction).
- Pixel centres sit at +0.5: the centre of pixel row ``i``, column ``j`` has image
  coordinates ``(u, v) = (j + 0.5, i + 0.5)``; ``u`` grows to the right, ``v`` downwards.
  A principal point at the image centre is therefore ``(cx, cy) = (W / 2, H / 2)``.
- OpenGL, nerfstudio and Blender camera-to-world matrices all use the same camera axes:
  the camera looks down its **-Z**, +Y is up, +X right. They differ from OpenCV by flipping
  the camera's Y and Z axes. Blender's world is +Z up like ours, so a Blender camera
  object's ``matrix_world`` is exactly an OpenGL camera-to-world in our world frame.
  nerfstudio's ``transforms.json`` ``transform_matrix`` and ``Cameras.camera_to_worlds``
  ([..., 3, 4]) are OpenGL camera-to-world as well.

Converting to or from any other convention happens here and nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

__all__ = [
    "Camera",
    "OrbitSample",
    "fov_to_focal",
    "focal_to_fov",
    "intrinsics_from_fov",
    "look_at",
    "orbit_cameras",
    "sample_orbit_cameras",
    "generate_rays",
    "project",
    "opencv_w2c_to_opengl_c2w",
    "opengl_c2w_to_opencv_w2c",
    "flip_camera_yz",
]

# Camera-frame axis flip between OpenCV (+y down, +z forward) and OpenGL (+y up, -z forward).
_FLIP_YZ = (1.0, -1.0, -1.0)


def _flip_yz(dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.diag(torch.tensor([*_FLIP_YZ, 1.0], dtype=dtype, device=device))


def _rigid_inverse(m: Tensor) -> Tensor:
    """Inverse of rigid 4x4 transforms [..., 4, 4] (rotation + translation)."""
    r = m[..., :3, :3]
    t = m[..., :3, 3:]
    rt = r.transpose(-1, -2)
    out = torch.zeros_like(m)
    out[..., :3, :3] = rt
    out[..., :3, 3:] = -rt @ t
    out[..., 3, 3] = 1.0
    return out


def _as_4x4(m: Tensor) -> Tensor:
    """Promote [..., 3, 4] to [..., 4, 4] with a (0, 0, 0, 1) bottom row."""
    if m.shape[-2:] == (4, 4):
        return m
    if m.shape[-2:] != (3, 4):
        raise ValueError(f"expected [..., 3, 4] or [..., 4, 4] matrices, got {tuple(m.shape)}")
    bottom = torch.zeros(*m.shape[:-2], 1, 4, dtype=m.dtype, device=m.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([m, bottom], dim=-2)


def opencv_w2c_to_opengl_c2w(world_to_camera: Tensor) -> Tensor:
    """OpenCV world-to-camera [..., 4, 4] -> OpenGL camera-to-world [..., 4, 4].

    The OpenGL camera looks down its -Z with +Y up (also nerfstudio's and Blender's camera).
    """
    flip = _flip_yz(world_to_camera.dtype, world_to_camera.device)
    return _rigid_inverse(world_to_camera) @ flip


def opengl_c2w_to_opencv_w2c(camera_to_world: Tensor) -> Tensor:
    """OpenGL camera-to-world [..., 4, 4] or [..., 3, 4] -> OpenCV world-to-camera [..., 4, 4]."""
    c2w = _as_4x4(camera_to_world)
    flip = _flip_yz(c2w.dtype, c2w.device)
    return _rigid_inverse(c2w @ flip)


def flip_camera_yz(vectors: Tensor) -> Tensor:
    """Camera-frame vectors [..., 3] (normals, directions) between OpenCV (+y down, +z forward)
    and OpenGL (+y up, +z backward): y and z negated. Its own inverse, so it converts either way."""
    return vectors * vectors.new_tensor(_FLIP_YZ)


def fov_to_focal(fov_deg: float | Tensor, size_px: float | Tensor) -> float | Tensor:
    """Focal length in pixels for a full field of view ``fov_deg`` spanning ``size_px`` pixels."""
    if isinstance(fov_deg, Tensor):
        return 0.5 * size_px / torch.tan(torch.deg2rad(fov_deg) * 0.5)
    return 0.5 * size_px / math.tan(math.radians(fov_deg) * 0.5)


def focal_to_fov(focal_px: float | Tensor, size_px: float | Tensor) -> float | Tensor:
    """Full field of view in degrees for focal length ``focal_px`` over ``size_px`` pixels."""
    if isinstance(focal_px, Tensor):
        return torch.rad2deg(2.0 * torch.atan(0.5 * size_px / focal_px))
    return math.degrees(2.0 * math.atan(0.5 * size_px / focal_px))


def intrinsics_from_fov(
    fov_y_deg: float | Tensor,
    width: int,
    height: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Pinhole K [B, 3, 3] (pixels) with square pixels and the principal point at the image centre.

    Args:
        fov_y_deg: vertical field of view in degrees, a float or a tensor [B].
        width, height: image size in pixels.

    Returns:
        K [B, 3, 3] with ``fx = fy = fov_to_focal(fov_y_deg, height)``, ``cx = W/2``,
        ``cy = H/2`` (pixel centres at +0.5). ``B = 1`` for a float FoV.
    """
    fov = torch.as_tensor(fov_y_deg, dtype=dtype, device=device).reshape(-1)
    f = fov_to_focal(fov, float(height))
    k = torch.zeros(fov.shape[0], 3, 3, dtype=dtype, device=fov.device)
    k[:, 0, 0] = f
    k[:, 1, 1] = f
    k[:, 0, 2] = width / 2.0
    k[:, 1, 2] = height / 2.0
    k[:, 2, 2] = 1.0
    return k


@dataclass(eq=False)
class Camera:
    """A batch of B pinhole cameras sharing one image size.

    Attributes:
        K: intrinsics [B, 3, 3] in pixels (``fx, fy, cx, cy``; pixel centres at +0.5).
        world_to_camera: [B, 4, 4] rigid transforms, OpenCV camera axes (+x right, +y down,
            +z forward).
        width, height: image size in pixels.
        near, far: clipping distances along camera +z in metres. The mesh rasterizer clips
            faces at ``near`` (a room seen from inside stays closed); nothing beyond ``far`` is drawn.

    Unbatched ``K`` [3, 3] / ``world_to_camera`` [4, 4] (or [3, 4]) are promoted to B = 1.
    ``cam[i]`` keeps the batch dimension (B = 1); ``len(cam)`` is B.
    """

    K: Tensor
    world_to_camera: Tensor
    width: int
    height: int
    near: float = 0.01
    far: float = 1000.0

    def __post_init__(self) -> None:
        k = torch.as_tensor(self.K)
        w2c = torch.as_tensor(self.world_to_camera)
        if not torch.is_floating_point(k):
            k = k.float()
        w2c = _as_4x4(w2c.to(dtype=k.dtype, device=k.device))
        if k.dim() == 2:
            k = k[None]
        if w2c.dim() == 2:
            w2c = w2c[None]
        if k.shape[-2:] != (3, 3) or k.dim() != 3:
            raise ValueError(f"Camera.K must be [B, 3, 3], got {tuple(k.shape)}")
        if w2c.dim() != 3:
            raise ValueError(f"Camera.world_to_camera must be [B, 4, 4], got {tuple(w2c.shape)}")
        if k.shape[0] != w2c.shape[0]:
            if k.shape[0] == 1:
                k = k.expand(w2c.shape[0], 3, 3)
            elif w2c.shape[0] == 1:
                w2c = w2c.expand(k.shape[0], 4, 4)
            else:
                raise ValueError(
                    f"Camera batch sizes differ: K {k.shape[0]}, world_to_camera {w2c.shape[0]}"
                )
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"Camera size must be positive, got {self.width}x{self.height}")
        if not 0.0 < float(self.near) < float(self.far):
            raise ValueError(f"Camera needs 0 < near < far, got near={self.near} far={self.far}")
        self.K = k
        self.world_to_camera = w2c
        self.width = int(self.width)
        self.height = int(self.height)
        self.near = float(self.near)
        self.far = float(self.far)

    # --- container behaviour -------------------------------------------------------------
    def __len__(self) -> int:
        return self.K.shape[0]

    def __getitem__(self, index: int | slice | Tensor | Sequence[int]) -> Camera:
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise IndexError(f"camera index {index} out of range for {len(self)} cameras")
            index = slice(index % len(self), index % len(self) + 1)
        return replace(self, K=self.K[index], world_to_camera=self.world_to_camera[index])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Camera:
        """A copy with tensors moved to ``device`` and/or cast to ``dtype``."""
        return replace(
            self,
            K=self.K.to(device=device, dtype=dtype),
            world_to_camera=self.world_to_camera.to(device=device, dtype=dtype),
        )

    @property
    def device(self) -> torch.device:
        return self.K.device

    @property
    def dtype(self) -> torch.dtype:
        return self.K.dtype

    @staticmethod
    def cat(cameras: Sequence[Camera]) -> Camera:
        """Concatenate camera batches of the same image size and clip range."""
        first = cameras[0]
        for c in cameras[1:]:
            if (c.width, c.height, c.near, c.far) != (first.width, first.height, first.near, first.far):
                raise ValueError("Camera.cat needs the same width, height, near and far")
        return replace(
            first,
            K=torch.cat([c.K for c in cameras]),
            world_to_camera=torch.cat([c.world_to_camera for c in cameras]),
        )

    # --- derived quantities ----------------------------------------------------------------
    @property
    def camera_to_world(self) -> Tensor:
        """[B, 4, 4] inverse of ``world_to_camera`` (OpenCV camera axes)."""
        return _rigid_inverse(self.world_to_camera)

    @property
    def center(self) -> Tensor:
        """[B, 3] camera centres in world coordinates."""
        return self.camera_to_world[:, :3, 3]

    def resized(self, width: int, height: int) -> Camera:
        """Same view at another resolution (K scaled about the image corner, +0.5 centres kept)."""
        sx, sy = width / self.width, height / self.height
        k = self.K.clone()
        k[:, 0, :] = k[:, 0, :] * sx
        k[:, 1, :] = k[:, 1, :] * sy
        return replace(self, K=k, width=width, height=height)

    # --- conversions ------------------------------------------------------------------------
    @classmethod
    def from_opengl(
        cls,
        camera_to_world: Tensor,
        K: Tensor,
        width: int,
        height: int,
        near: float = 0.01,
        far: float = 1000.0,
    ) -> Camera:
        """From OpenGL camera-to-world [B, 4, 4] or [B, 3, 4] (camera looks down -Z, +Y up)."""
        return cls(K, opengl_c2w_to_opencv_w2c(camera_to_world), width, height, near, far)

    def to_opengl(self) -> Tensor:
        """OpenGL camera-to-world [B, 4, 4] (camera looks down -Z, +Y up)."""
        return opencv_w2c_to_opengl_c2w(self.world_to_camera)

    @classmethod
    def from_nerfstudio(
        cls,
        camera_to_worlds: Tensor,
        K: Tensor,
        width: int,
        height: int,
        near: float = 0.01,
        far: float = 1000.0,
    ) -> Camera:
        """From nerfstudio ``camera_to_worlds`` [B, 3, 4] (or [B, 4, 4]); same axes as OpenGL.

        nerfstudio datasets are often auto-scaled/re-centred by its dataparser; pass matrices
        that are already in world metres (our ``assets.nerfstudio_dataset`` reader does).
        """
        return cls.from_opengl(camera_to_worlds, K, width, height, near, far)

    def to_nerfstudio(self) -> Tensor:
        """nerfstudio ``camera_to_worlds`` [B, 3, 4] (OpenGL axes)."""
        return self.to_opengl()[:, :3, :]

    @classmethod
    def from_blender(
        cls,
        matrix_world: Tensor,
        K: Tensor,
        width: int,
        height: int,
        near: float = 0.01,
        far: float = 1000.0,
    ) -> Camera:
        """From a Blender camera object's ``matrix_world`` [B, 4, 4].

        A Blender camera looks down its local -Z with +Y up: the OpenGL convention. Blender's
        world is +Z up, metres, like ours, so no world change is needed.
        """
        return cls.from_opengl(matrix_world, K, width, height, near, far)

    def to_blender(self) -> Tensor:
        """Blender camera ``matrix_world`` [B, 4, 4] (= OpenGL camera-to-world)."""
        return self.to_opengl()

    def opengl_projection(self) -> Tensor:
        """OpenGL clip-space projection [B, 4, 4] matching K, near and far.

        Use with ``to_opengl()``'s inverse as the view matrix; NDC y is up, and NDC (-1, -1)
        is the bottom-left image corner (pixel-centre convention preserved).
        """
        b = len(self)
        fx, fy = self.K[:, 0, 0], self.K[:, 1, 1]
        cx, cy = self.K[:, 0, 2], self.K[:, 1, 2]
        w, h, n, f = self.width, self.height, self.near, self.far
        p = torch.zeros(b, 4, 4, dtype=self.dtype, device=self.device)
        p[:, 0, 0] = 2.0 * fx / w
        p[:, 0, 2] = 1.0 - 2.0 * cx / w
        p[:, 1, 1] = 2.0 * fy / h
        p[:, 1, 2] = 2.0 * cy / h - 1.0
        p[:, 2, 2] = -(f + n) / (f - n)
        p[:, 2, 3] = -2.0 * f * n / (f - n)
        p[:, 3, 2] = -1.0
        return p


def look_at(
    eye: Tensor | Sequence[float],
    target: Tensor | Sequence[float] = (0.0, 0.0, 0.0),
    up: Tensor | Sequence[float] = (0.0, 0.0, 1.0),
) -> Tensor:
    """World-to-camera [B, 4, 4] (OpenCV) for cameras at ``eye`` looking at ``target``.

    Args:
        eye: camera centres [B, 3] or [3], world metres.
        target: points looked at, [B, 3] or [3].
        up: world up hint, [B, 3] or [3]; default +Z. Image "up" (-y) follows it. When the
            view direction is parallel to ``up``, +Y (or +X) is used as the hint instead.

    Returns:
        [B, 4, 4] world-to-camera with rows (right, down, forward).
    """
    eye_t = torch.as_tensor(eye)
    if not torch.is_floating_point(eye_t):
        eye_t = eye_t.float()
    dtype, device = eye_t.dtype, eye_t.device
    eye_t = eye_t.reshape(-1, 3)
    tgt = torch.as_tensor(target, dtype=dtype, device=device).reshape(-1, 3)
    up_t = torch.as_tensor(up, dtype=dtype, device=device).reshape(-1, 3)
    b = max(eye_t.shape[0], tgt.shape[0], up_t.shape[0])
    eye_t, tgt, up_t = eye_t.expand(b, 3), tgt.expand(b, 3), up_t.expand(b, 3)

    fwd = torch.nn.functional.normalize(tgt - eye_t, dim=-1)
    right = torch.linalg.cross(fwd, up_t, dim=-1)
    bad = right.norm(dim=-1) < 1e-6 * up_t.norm(dim=-1).clamp_min(1e-12)
    if bool(bad.any()):
        alt_y = torch.tensor([0.0, 1.0, 0.0], dtype=dtype, device=device).expand(b, 3)
        alt_x = torch.tensor([1.0, 0.0, 0.0], dtype=dtype, device=device).expand(b, 3)
        alt = torch.where((fwd[:, 1].abs() > 0.9)[:, None], alt_x, alt_y)
        right = torch.where(bad[:, None], torch.linalg.cross(fwd, alt, dim=-1), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    down = torch.linalg.cross(fwd, right, dim=-1)
    rot = torch.stack([right, down, fwd], dim=-2)  # rows: camera axes in world coords
    w2c = torch.zeros(b, 4, 4, dtype=dtype, device=device)
    w2c[:, :3, :3] = rot
    w2c[:, :3, 3] = -(rot @ eye_t[..., None])[..., 0]
    w2c[:, 3, 3] = 1.0
    return w2c


class OrbitSample(NamedTuple):
    """Cameras on an orbit plus the parameters they were made from (all tensors [B])."""

    cameras: Camera
    elevation_deg: Tensor
    azimuth_deg: Tensor
    distance: Tensor
    fov_y_deg: Tensor


def orbit_cameras(
    elevation_deg: Tensor | float,
    azimuth_deg: Tensor | float,
    distance: Tensor | float,
    fov_y_deg: Tensor | float,
    width: int,
    height: int,
    *,
    target: Sequence[float] | Tensor = (0.0, 0.0, 0.0),
    near: float = 0.01,
    far: float = 1000.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Camera:
    """Cameras looking at ``target`` from spherical positions, +Z up.

    Args:
        elevation_deg: [B] degrees above the XY plane (90 = looking straight down).
        azimuth_deg: [B] degrees around +Z, counter-clockwise seen from above;
            0 puts the camera on the +X side of the target, 90 on the +Y side.
        distance: [B] metres from the target.
        fov_y_deg: [B] vertical field of view in degrees.
        width, height: image size in pixels.

    Returns:
        A Camera batch of size B (scalars broadcast).
    """
    el, az, dist, fov = (
        torch.as_tensor(x, dtype=dtype, device=device).reshape(-1)
        for x in (elevation_deg, azimuth_deg, distance, fov_y_deg)
    )
    el, az, dist, fov = torch.broadcast_tensors(el, az, dist, fov)
    tgt = torch.as_tensor(target, dtype=dtype, device=el.device).reshape(-1, 3)
    e, a = torch.deg2rad(el), torch.deg2rad(az)
    offset = torch.stack([e.cos() * a.cos(), e.cos() * a.sin(), e.sin()], dim=-1) * dist[:, None]
    w2c = look_at(tgt + offset, tgt)
    k = intrinsics_from_fov(fov, width, height, dtype=dtype, device=el.device)
    return Camera(k, w2c, width, height, near, far)


def sample_orbit_cameras(
    n: int,
    width: int,
    height: int,
    *,
    elevation_range: tuple[float, float] = (-10.0, 45.0),
    azimuth_range: tuple[float, float] = (-180.0, 180.0),
    distance_range: tuple[float, float] = (1.5, 2.0),
    fov_range: tuple[float, float] = (40.0, 70.0),
    target: Sequence[float] | Tensor = (0.0, 0.0, 0.0),
    generator: torch.Generator | None = None,
    near: float = 0.01,
    far: float = 1000.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> OrbitSample:
    """Random orbit views as SDS methods sample them (uniform in each range, CPU generator).

    Elevation is in degrees above the XY plane, azimuth in degrees around +Z (see
    :func:`orbit_cameras`), distance in metres, FoV vertical in degrees. Sampling draws on the
    CPU from ``generator`` so the same seed gives the same views on every device.
    """

    def draw(lo_hi: tuple[float, float]) -> Tensor:
        lo, hi = lo_hi
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return (lo + (hi - lo) * u).to(dtype=dtype, device=device)

    el, az, dist, fov = draw(elevation_range), draw(azimuth_range), draw(distance_range), draw(fov_range)
    cams = orbit_cameras(
        el, az, dist, fov, width, height, target=target, near=near, far=far, dtype=dtype, device=device
    )
    return OrbitSample(cams, el, az, dist, fov)


def generate_rays(cameras: Camera, *, normalize: bool = True) -> tuple[Tensor, Tensor]:
    """World-space rays through every pixel centre.

    Args:
        cameras: B cameras of size H x W.
        normalize: unit-length directions (default). With ``False`` each direction has camera
            z-component 1, so ``origin + depth * direction`` hits the point at camera depth
            ``depth`` (the z-depth that :func:`rasterize` and :func:`project` report).

    Returns:
        origins [B, H, W, 3] (the camera centres) and directions [B, H, W, 3], world frame.
        Pixel (i, j) goes through image point (j + 0.5, i + 0.5).
    """
    b, h, w = len(cameras), cameras.height, cameras.width
    dtype, device = cameras.dtype, cameras.device
    v, u = torch.meshgrid(
        torch.arange(h, dtype=dtype, device=device) + 0.5,
        torch.arange(w, dtype=dtype, device=device) + 0.5,
        indexing="ij",
    )
    k = cameras.K
    fx, fy = k[:, 0, 0, None, None], k[:, 1, 1, None, None]
    cx, cy = k[:, 0, 2, None, None], k[:, 1, 2, None, None]
    s = k[:, 0, 1, None, None]  # skew (usually 0)
    y = (v - cy) / fy
    x = (u - cx - s * y) / fx
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # [B, H, W, 3]
    c2w = cameras.camera_to_world
    d_world = torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], d_cam)
    if normalize:
        d_world = torch.nn.functional.normalize(d_world, dim=-1)
    origins = c2w[:, None, None, :3, 3].expand(b, h, w, 3)
    return origins, d_world


def project(cameras: Camera, points: Tensor) -> tuple[Tensor, Tensor]:
    """Project world points to image coordinates.

    Args:
        cameras: B cameras.
        points: world points [B, N, 3] or [N, 3] (shared by all cameras), metres.

    Returns:
        pixels [B, N, 2] image coordinates (u right, v down; pixel (i, j) centre at
        (j + 0.5, i + 0.5)) and depth [B, N], the camera-space z in metres. Points with
        depth <= 0 are behind the camera and their pixels are meaningless.
    """
    if points.dim() == 2:
        points = points[None].expand(len(cameras), -1, -1)
    w2c = cameras.world_to_camera.to(points.dtype)
    p_cam = points @ w2c[:, :3, :3].transpose(-1, -2) + w2c[:, None, :3, 3]
    z = p_cam[..., 2]
    p_img = p_cam @ cameras.K.to(points.dtype).transpose(-1, -2)
    return p_img[..., :2] / z[..., None], z
