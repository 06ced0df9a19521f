"""The tri-plane volume renderer (EG3D), pure torch, CPU and GPU.

Conventions
-----------
- World box [-box/2, box/2]³ (box = 1). A point p is sampled on three axis-aligned feature planes
  `planes` (B, 3, C, H, W): plane 0 reads (x, y), plane 1 (x, z), plane 2 (z, x) as grid_sample's
  (width, height) coordinates 2p/box (bilinear, zeros outside, align_corners=False) — EG3D's plane
  order, which the official decoder weights expect. The three features are averaged.
- Cameras are EG3D's 25-d vectors: cam2world 4×4 (row-major 16) + normalised intrinsics 3×3
  (fx, skew, cx, 0, fy, cy, 0, 0, 1; image coordinates in [0, 1]); OpenCV camera axes (x right,
  y down, z forward). Ray (row i, col j) of an R×R image passes through the normalised pixel
  centre ((j + 0.5)/R, (i + 0.5)/R); directions are unit vectors, depths are distances along them.
- The decoder maps the mean feature to a raw density σ and features; the density is
  softplus(σ − 1); samples composite with EG3D's midpoint rule (MipRayMarcher2); black background;
  features (and RGB = the first three) are returned scaled to [-1, 1] as EG3D's marcher does.
- Sampling: `samples_coarse` stratified depths between the ray's entry and exit of the box (or a
  fixed [ray_start, ray_end]), then `samples_fine` importance samples from the coarse weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from preprocessing.eg3d.layers import FullyConnectedLayer

# A field maps points (B, M, 3) in world units to (raw σ (B, M, 1), features (B, M, C)).
Field = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class RenderOptions:
    """Ray marching sizes (paper: 128² rays, 48 + 48 samples, box 1, near/far from the box)."""

    resolution: int = 128
    samples_coarse: int = 48
    samples_fine: int = 48
    box_warp: float = 1.0
    ray_start: float | None = None  # None: where the ray enters the box
    ray_end: float | None = None  # None: where it leaves
    density_shift: float = -1.0  # σ activation softplus(σ + shift)
    perturb: bool = False  # jitter the stratified depths (training); off = deterministic
    chunk_rays: int = 8192  # rays evaluated at once (bounds memory)

    def __post_init__(self) -> None:
        if self.resolution < 1 or self.samples_coarse < 2 or self.samples_fine < 0:
            raise ValueError(f"render options need resolution >= 1, samples_coarse >= 2, samples_fine >= 0; got {self}")
        if (self.ray_start is None) != (self.ray_end is None):
            raise ValueError("give both ray_start and ray_end, or neither (near/far from the box)")


# ---------------------------------------------------------------------------------------------
# tri-plane sampling and the decoder
# ---------------------------------------------------------------------------------------------

def plane_coordinates(points: torch.Tensor, box_warp: float = 1.0) -> torch.Tensor:
    """(B, M, 3) world points → (B, 3, M, 2) grid_sample coordinates on the xy, xz and zx planes."""
    p = points * (2.0 / box_warp)
    x, y, z = p.unbind(-1)
    return torch.stack([torch.stack([x, y], -1), torch.stack([x, z], -1), torch.stack([z, x], -1)], 1)


def sample_triplane(planes: torch.Tensor, points: torch.Tensor, box_warp: float = 1.0) -> torch.Tensor:
    """Bilinear features (B, 3, M, C) of the three planes (B, 3, C, H, W) at points (B, M, 3)."""
    if planes.ndim != 5 or planes.shape[1] != 3:
        raise ValueError(f"planes must be (B, 3, C, H, W), got {tuple(planes.shape)}")
    b, _, c, h, w = planes.shape
    grid = plane_coordinates(points, box_warp).reshape(b * 3, 1, -1, 2).to(planes.dtype)
    out = F.grid_sample(planes.reshape(b * 3, c, h, w), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)  # (B·3, C, 1, M)
    return out.reshape(b, 3, c, -1).permute(0, 1, 3, 2)


class TriplaneDecoder(torch.nn.Module):
    """EG3D's OSGDecoder: mean plane feature → FC 32→64, softplus, FC 64→1+32 (σ, features)."""

    def __init__(self, n_features: int = 32, hidden: int = 64, out_features: int = 32, lr_multiplier: float = 1.0):
        super().__init__()
        self.n_features, self.out_features = n_features, out_features
        self.net = torch.nn.Sequential(
            FullyConnectedLayer(n_features, hidden, lr_multiplier=lr_multiplier),
            torch.nn.Softplus(),
            FullyConnectedLayer(hidden, 1 + out_features, lr_multiplier=lr_multiplier))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, M, C) mean features → raw σ (B, M, 1), features in (−0.001, 1.001) (B, M, out)."""
        x = self.net(features.reshape(-1, features.shape[-1])).reshape(*features.shape[:-1], -1)
        return x[..., :1], torch.sigmoid(x[..., 1:]) * (1 + 2 * 0.001) - 0.001


def triplane_field(planes: torch.Tensor, decoder: Callable, box_warp: float = 1.0) -> Field:
    """The radiance field of a tri-plane: points → decoder(mean of the three plane features)."""
    def field(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return decoder(sample_triplane(planes, points, box_warp).mean(1))
    return field


# ---------------------------------------------------------------------------------------------
# cameras and rays
# ---------------------------------------------------------------------------------------------

def split_camera(cameras: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 25) EG3D cameras → cam2world (B, 4, 4) and normalised intrinsics (B, 3, 3)."""
    if cameras.ndim != 2 or cameras.shape[1] != 25:
        raise ValueError("cameras must be (B, 25) EG3D vectors (cam2world 16 + intrinsics 9), "
                         f"got {tuple(cameras.shape)}")
    return cameras[:, :16].reshape(-1, 4, 4), cameras[:, 16:].reshape(-1, 3, 3)


def ray_bundle(cameras: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and unit directions (B, R², 3), row-major over an R×R image, for (B, 25) cameras."""
    c2w, k = split_camera(cameras)
    b = cameras.shape[0]
    idx = (torch.arange(resolution, dtype=cameras.dtype, device=cameras.device) + 0.5) / resolution
    v, u = torch.meshgrid(idx, idx, indexing="ij")
    u, v = u.reshape(1, -1), v.reshape(1, -1)
    fx, fy, cx, cy, sk = (k[:, 0, 0, None], k[:, 1, 1, None], k[:, 0, 2, None], k[:, 1, 2, None], k[:, 0, 1, None])
    y_cam = (v - cy) / fy
    x_cam = (u - cx - sk * y_cam) / fx
    d_cam = torch.stack([x_cam, y_cam, torch.ones_like(x_cam)], -1)  # (B, R², 3)
    dirs = F.normalize(d_cam @ c2w[:, :3, :3].transpose(1, 2), dim=-1)
    origins = c2w[:, None, :3, 3].expand(b, resolution * resolution, 3)
    return origins, dirs


def project_points(points: torch.Tensor, cameras: torch.Tensor, resolution: int) -> torch.Tensor:
    """World points (B, M, 3) → (B, M, 3): pixel x, y (y down, centres at +0.5) of an R×R image, camera z."""
    c2w, k = split_camera(cameras)
    rot, centre = c2w[:, :3, :3], c2w[:, :3, 3]
    cam = (points - centre[:, None]) @ rot  # world → camera: Rᵀ(p − c), as row vectors
    uvw = cam @ k.transpose(1, 2)
    return torch.stack([uvw[..., 0] / uvw[..., 2] * resolution, uvw[..., 1] / uvw[..., 2] * resolution,
                        cam[..., 2]], -1)


def ray_box_limits(origins: torch.Tensor, dirs: torch.Tensor,
                   box: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entry and exit distances (…, 1) of rays through the box [-box/2, box/2]³ and whether they hit it."""
    half = box / 2
    inv = 1.0 / torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t0, t1 = (-half - origins) * inv, (half - origins) * inv
    near = torch.minimum(t0, t1).amax(-1, keepdim=True).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1, keepdim=True)
    return near, far, far > near


def stratified_depths(near: torch.Tensor, far: torch.Tensor, n: int, perturb: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """n depths (…, n) evenly spaced from near to far (…, 1), each optionally jittered by up to one step."""
    t = torch.linspace(0, 1, n, dtype=near.dtype, device=near.device)
    depths = near + (far - near) * t
    if perturb:
        step = (far - near) / (n - 1)
        depths = depths + torch.rand(depths.shape, generator=generator, dtype=near.dtype, device=near.device) * step
    return depths


def composite(sigma: torch.Tensor, features: torch.Tensor, depths: torch.Tensor,
              density_shift: float = -1.0) -> dict[str, torch.Tensor]:
    """EG3D midpoint compositing of raw σ (R, N, 1) and features (R, N, C) at sorted depths (R, N).

    Returns features (R, C) in [-1, 1] (black background), depth (R,) (weighted mean of the
    midpoints, +inf → clamped to the sample range where nothing is hit), opacity (R,) and the
    per-interval weights (R, N − 1).
    """
    deltas = depths[:, 1:] - depths[:, :-1]
    mid = lambda a: (a[:, :-1] + a[:, 1:]) / 2  # noqa: E731
    density = F.softplus(mid(sigma)[..., 0] + density_shift)
    alpha = 1 - torch.exp(-density * deltas)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha + 1e-10], 1), 1)[:, :-1]
    weights = alpha * trans
    opacity = weights.sum(1)
    feats = (weights[..., None] * mid(features)).sum(1)
    depth = torch.nan_to_num((weights * mid(depths)).sum(1) / opacity, float("inf"))
    depth = torch.minimum(torch.maximum(depth, depths.amin(1)), depths.amax(1))
    return {"features": feats * 2 - 1, "depth": depth, "opacity": opacity, "weights": weights}


def importance_depths(depths: torch.Tensor, weights: torch.Tensor, n: int, perturb: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """n depths (R, n) drawn from the piecewise-constant pdf of the coarse weights (R, N − 1).

    As EG3D: weights are max-pooled then average-pooled over neighbours and floored by 0.01, the
    pdf lives on the midpoints of the coarse depths; inverse-CDF at evenly spaced quantiles
    (or uniform random ones with `perturb`).
    """
    w = F.max_pool1d((weights + 1e-5)[:, None], 2, 1, padding=1)
    w = F.avg_pool1d(w, 2, 1)[:, 0] + 0.01  # (R, N − 1)
    bins = (depths[:, :-1] + depths[:, 1:]) / 2  # (R, N − 1)
    w = w[:, 1:-1]  # N − 3 interval weights over the first N − 2 midpoints (as EG3D)
    pdf = w / w.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)  # (R, N − 1)
    if perturb:
        u = torch.rand((cdf.shape[0], n), generator=generator, dtype=cdf.dtype, device=cdf.device)
    else:
        u = torch.linspace(0, 1, n, dtype=cdf.dtype, device=cdf.device).expand(cdf.shape[0], n)
    u = u.contiguous()
    idx = torch.searchsorted(cdf, u, right=True)
    lo = (idx - 1).clamp(0, cdf.shape[1] - 1)
    hi = idx.clamp(0, cdf.shape[1] - 1)
    cdf_lo, cdf_hi = cdf.gather(1, lo), cdf.gather(1, hi)
    bin_lo, bin_hi = bins.gather(1, lo), bins.gather(1, hi)
    span = torch.where(cdf_hi - cdf_lo < 1e-5, torch.ones_like(cdf_hi), cdf_hi - cdf_lo)
    return bin_lo + (u - cdf_lo) / span * (bin_hi - bin_lo)


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------

def _render_rays(field: Field, origins: torch.Tensor, dirs: torch.Tensor, opt: RenderOptions,
                 generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """Render (B, R, 3) rays of one chunk → features (B, R, C), depth (B, R), opacity (B, R)."""
    b, r, _ = origins.shape
    o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    if opt.ray_start is None:
        near, far, hit = ray_box_limits(o, d, opt.box_warp)
        # rays that miss the box sample the box's depth range around their closest approach to its centre.
        # (EG3D fills them with the min/max over the rays that hit, which makes a pixel depend on the other
        # cameras of the batch: a batch split over workers would render differently.)
        t_mid = -(o * d).sum(-1, keepdim=True) / d.pow(2).sum(-1, keepdim=True).clamp_min(1e-12)
        half = 0.5 * opt.box_warp * 3 ** 0.5
        near = torch.where(hit, near, (t_mid - half).clamp_min(0.0))
        far = torch.where(hit, far, (t_mid + half).clamp_min(1e-3))
    else:
        near = torch.full_like(o[:, :1], opt.ray_start)
        far = torch.full_like(o[:, :1], opt.ray_end)

    def run(depths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pts = (o[:, None] + d[:, None] * depths[..., None]).reshape(b, -1, 3)
        sigma, feats = field(pts)
        n = depths.shape[1]
        return sigma.reshape(b * r, n, 1), feats.reshape(b * r, n, -1)

    depths = stratified_depths(near, far, opt.samples_coarse, opt.perturb, generator)
    sigma, feats = run(depths)
    if opt.samples_fine > 0:
        coarse = composite(sigma, feats, depths, opt.density_shift)
        fine = importance_depths(depths, coarse["weights"].detach(), opt.samples_fine, opt.perturb, generator).detach()
        sigma_f, feats_f = run(fine)
        depths = torch.cat([depths, fine], 1)
        order = depths.argsort(1)
        depths = depths.gather(1, order)
        sigma = torch.cat([sigma, sigma_f], 1).gather(1, order[..., None])
        feats = torch.cat([feats, feats_f], 1).gather(1, order[..., None].expand(-1, -1, feats.shape[-1]))
    out = composite(sigma, feats, depths, opt.density_shift)
    return {"features": out["features"].reshape(b, r, -1), "depth": out["depth"].reshape(b, r),
            "opacity": out["opacity"].reshape(b, r)}


def render_field(field: Field, cameras: torch.Tensor, options: RenderOptions = RenderOptions(),
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Volume-render a field for (B, 25) cameras: features (B, C, R, R) and rgb (B, 3, R, R) in
    [-1, 1], depth (B, 1, R, R) in world units along the ray, opacity (B, 1, R, R) in [0, 1]."""
    res = options.resolution
    origins, dirs = ray_bundle(cameras, res)
    b, n_rays = origins.shape[:2]
    step = max(1, options.chunk_rays // max(b, 1))
    parts = [_render_rays(field, origins[:, s:s + step], dirs[:, s:s + step], options, generator)
             for s in range(0, n_rays, step)]
    feats = torch.cat([p["features"] for p in parts], 1)
    depth = torch.cat([p["depth"] for p in parts], 1)
    opacity = torch.cat([p["opacity"] for p in parts], 1)
    features = feats.permute(0, 2, 1).reshape(b, -1, res, res)
    return {"features": features, "rgb": features[:, :3], "depth": depth.reshape(b, 1, res, res),
            "opacity": opacity.reshape(b, 1, res, res)}


def render(planes: torch.Tensor, cameras: torch.Tensor, decoder: Callable,
           options: RenderOptions = RenderOptions(),
           generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Render tri-planes (B, 3, C, H, W) through `decoder` for (B, 25) EG3D cameras (see `render_field`)."""
    if cameras.shape[0] != planes.shape[0]:
        raise ValueError(f"planes and cameras need the same batch size, got {planes.shape[0]} and {cameras.shape[0]}")
    return render_field(triplane_field(planes, decoder, options.box_warp), cameras.to(planes.dtype), options, generator)
