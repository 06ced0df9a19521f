"""The tri-plane volume renderer against analytic answers (sphere, plane, camera convention)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from preprocessing.triplane import (RenderOptions, TriplaneDecoder, project_points, ray_box_limits, ray_bundle,
                                    render, render_field, sample_triplane)

torch.set_num_threads(2)
FOCAL = 4.2647


def _camera(position, look_at=(0.0, 0.0, 0.0), focal: float = FOCAL) -> torch.Tensor:
    """A (1, 25) EG3D camera at `position` looking at `look_at` (OpenCV axes, world y up)."""
    pos = np.asarray(position, np.float64)
    fwd = np.asarray(look_at, np.float64) - pos
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, fwd, pos
    k = [focal, 0, 0.5, 0, focal, 0.5, 0, 0, 1]
    return torch.tensor(np.concatenate([c2w.reshape(-1), k])[None], dtype=torch.float64)


def _constant_sphere(centre, radius: float, density: float):
    """Field of a sphere of constant density (after softplus(σ − 1)) and zero features."""
    raw = 1.0 + math.log(math.expm1(density))
    c = torch.tensor(centre, dtype=torch.float64)

    def field(points):
        inside = (points - c).norm(dim=-1, keepdim=True) <= radius
        sigma = torch.where(inside, torch.full_like(inside, raw, dtype=points.dtype),
                            torch.full_like(inside, -60.0, dtype=points.dtype))
        return sigma, torch.zeros(*points.shape[:-1], 3, dtype=points.dtype)
    return field


def test_constant_density_sphere_opacity_and_depth():
    radius, k = 0.15, 8.0
    cam = _camera((0.0, 0.0, 2.0))
    opt = RenderOptions(resolution=16, samples_coarse=1500, samples_fine=0)
    out = render_field(_constant_sphere((0.0, 0.0, 0.0), radius, k), cam, opt)
    origins, dirs = ray_bundle(cam, 16)
    # exact chord of each ray through the sphere
    o, d = origins[0], dirs[0]
    b = (o * d).sum(-1)
    disc = b ** 2 - ((o ** 2).sum(-1) - radius ** 2)
    hit = disc > 1e-3
    half = disc.clamp_min(0).sqrt()
    t0, chord = -b - half, 2 * half
    expect_op = 1 - torch.exp(-k * chord)
    expect_depth = t0 + 1 / k - chord * torch.exp(-k * chord) / (1 - torch.exp(-k * chord))
    op = out["opacity"][0, 0].reshape(-1)
    depth = out["depth"][0, 0].reshape(-1)
    assert hit.sum() > 20 and (~hit).sum() > 20
    # the box is 1 long here; with 1500 samples a step is 1/1500, the density jump costs < k·step
    assert torch.allclose(op[hit], expect_op[hit], atol=6e-3)
    assert torch.allclose(depth[hit], expect_depth[hit], atol=3e-3)
    assert op[disc < -1e-3].max() < 1e-6
    # the centre pixel's ray: chord 2r, depth = 2 − r + 1/k − 2r·e^{−2rk}/(1 − e^{−2rk})
    centre = float(2 - radius + 1 / k - 2 * radius * math.exp(-2 * radius * k) / (1 - math.exp(-2 * radius * k)))
    assert abs(float(depth[hit].min()) - centre) < 0.01


def test_opaque_plane_depth_through_triplanes_and_decoder():
    """A wall z < z0 written into the planes that hold z (xz and zx) is hit at t = (2 − z0)/cos θ."""
    z0, res = 0.1, 256
    planes = torch.zeros(1, 3, 4, res, res, dtype=torch.float64)
    coords = (torch.arange(res, dtype=torch.float64) + 0.5) / res * 2 - 1  # grid coordinate 2p/box
    step = (coords * 0.5 < z0).to(torch.float64)  # world z < z0 → 1
    planes[0, 1, 0] = step[:, None]  # plane 1 (x, z): height axis = z
    planes[0, 2, 0] = step[None, :]  # plane 2 (z, x): width axis = z

    def decoder(feat):  # mean feature 2/3 where z < z0; huge density there
        return 3000.0 * feat[..., :1] - 1000.0, feat[..., :3]
    cam = _camera((0.0, 0.0, 2.0))
    out = render(planes, cam, decoder, RenderOptions(resolution=9, samples_coarse=64, samples_fine=64))
    _, dirs = ray_bundle(cam, 9)
    cos = -dirs[0, :, 2]
    expect = (2.0 - z0) / cos  # empty from the box's front face z = 0.5 down to the wall at z0
    inside = out["opacity"][0, 0].reshape(-1) > 0.99
    assert inside.all()
    assert torch.allclose(out["depth"][0, 0].reshape(-1), expect, atol=0.01)


def test_plane_depth_of_a_slab_seen_from_the_side():
    """A thin slab |z − z0| < w is hit at t = (2 − z0 − w)/cos θ from a camera on +z."""
    z0, w = -0.1, 0.05

    def field(points):
        inside = (points[..., 2:] - z0).abs() < w
        return torch.where(inside, 2000.0, -60.0).to(points.dtype), points.new_zeros(*points.shape[:-1], 3)
    cam = _camera((0.0, 0.0, 2.0))
    out = render_field(field, cam, RenderOptions(resolution=7, samples_coarse=48, samples_fine=48))
    _, dirs = ray_bundle(cam, 7)
    expect = (2.0 - z0 - w) / (-dirs[0, :, 2])
    assert out["opacity"].min() > 0.999
    assert torch.allclose(out["depth"][0, 0].reshape(-1), expect, atol=5e-3)


def test_ray_box_limits():
    o = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 2.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    near, far, hit = ray_box_limits(o, d)
    assert torch.allclose(near[0], torch.tensor([1.5])) and torch.allclose(far[0], torch.tensor([2.5]))
    assert hit[0].item() and not hit[1].item()


def test_projection_matches_ray_through_pixel_centre():
    """A point projected by a camera lands on the pixel whose ray passes through it."""
    cam = _camera((0.8, 0.5, 2.4), look_at=(0.0, 0.0, 0.2))
    res = 32
    origins, dirs = ray_bundle(cam, res)
    pts = origins + dirs * 2.5  # a point on each ray
    px = project_points(pts, cam, res)
    jj, ii = np.meshgrid(np.arange(res) + 0.5, np.arange(res) + 0.5)
    assert np.allclose(px[0, :, 0].numpy(), jj.reshape(-1), atol=1e-9)
    assert np.allclose(px[0, :, 1].numpy(), ii.reshape(-1), atol=1e-9)


def test_blob_lands_where_the_dataset_camera_projects_it():
    """With the dataset's eg3d_cam (neutral and turned head), a density blob renders where the camera
    projects it, and world +y (up) appears in the upper rows."""
    from preprocessing.fitting import eg3d_camera
    euler = np.array([[0.0, 0.0, 0.0], [0.1, 0.35, -0.05]])
    trans = np.array([[0.0, 0.0, 0.0], [0.1, -0.05, 0.3]])
    cams = torch.as_tensor(eg3d_camera(euler, trans), dtype=torch.float64)
    res = 48
    for blob in ([0.0, 0.2, 0.0], [0.15, -0.1, 0.1]):
        c = torch.tensor(blob, dtype=torch.float64)
        for i in range(2):
            field = _constant_sphere(blob, 0.04, 80.0)
            out = render_field(field, cams[i:i + 1], RenderOptions(resolution=res, samples_coarse=96, samples_fine=32))
            op = out["opacity"][0, 0]
            yy, xx = torch.meshgrid(torch.arange(res) + 0.5, torch.arange(res) + 0.5, indexing="ij")
            cx = float((op * xx).sum() / op.sum())
            cy = float((op * yy).sum() / op.sum())
            p = project_points(c[None, None], cams[i:i + 1], res)[0, 0]
            assert abs(cx - float(p[0])) < 0.3 and abs(cy - float(p[1])) < 0.3, (blob, i, cx, cy, p)
            if i == 0 and blob[1] > 0:
                assert cy < res / 2 - 3  # above the centre: upper rows


def test_gradients_finite_and_reach_planes_and_decoder():
    torch.manual_seed(0)
    planes = (torch.randn(2, 3, 8, 16, 16) * 0.5).requires_grad_(True)
    dec = TriplaneDecoder(8, 16, 8)
    cams = torch.cat([_camera((0, 0, 2.7), (0, 0, 0.2)), _camera((1.0, 0.3, 2.5), (0, 0, 0.2))]).float()
    out = render(planes, cams, dec, RenderOptions(resolution=8, samples_coarse=12, samples_fine=12, perturb=True),
                 generator=torch.Generator().manual_seed(1))
    assert out["features"].shape == (2, 8, 8, 8) and out["rgb"].shape == (2, 3, 8, 8)
    loss = out["rgb"].square().mean() + out["depth"].mean() + out["opacity"].mean()
    loss.backward()
    assert torch.isfinite(planes.grad).all() and planes.grad.abs().sum() > 0
    for p in dec.parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert out["rgb"].min() >= -1.0 - 1e-6 and out["rgb"].max() <= 1.0 + 1e-6


def test_sample_triplane_axes():
    """Plane 0 reads (x, y), plane 1 (x, z), plane 2 (z, x): a ramp along width shows which axis."""
    res = 64
    ramp = ((torch.arange(res) + 0.5) / res * 2 - 1)[None, :].expand(res, res)  # value = width coord
    planes = ramp.expand(1, 3, 1, res, res).clone()
    pts = torch.tensor([[[0.2, -0.1, 0.3]]])
    f = sample_triplane(planes, pts)[0, :, 0, 0]
    assert torch.allclose(f, torch.tensor([0.4, 0.4, 0.6]), atol=1e-5)  # 2·x, 2·x, 2·z
    planes_h = ramp.t().expand(1, 3, 1, res, res).clone()  # value = height coord
    f = sample_triplane(planes_h, pts)[0, :, 0, 0]
    assert torch.allclose(f, torch.tensor([-0.2, 0.6, 0.4]), atol=1e-5)  # 2·y, 2·z, 2·x


def test_deterministic_without_perturbation():
    torch.manual_seed(0)
    planes = torch.randn(1, 3, 8, 16, 16)
    dec = TriplaneDecoder(8, 16, 8)
    cam = _camera((0, 0, 2.7), (0, 0, 0.2)).float()
    opt = RenderOptions(resolution=8, samples_coarse=10, samples_fine=10)
    a, b = render(planes, cam, dec, opt), render(planes, cam, dec, opt)
    assert torch.equal(a["features"], b["features"]) and torch.equal(a["depth"], b["depth"])


def test_bad_camera_shape_is_named():
    with pytest.raises(ValueError, match="25"):
        ray_bundle(torch.zeros(1, 16), 4)


def test_render_sizes_from_config():
    from pipeline.config import load_config
    tiny, paper = load_config("tiny").triplane.options(), load_config("paper").triplane.options()
    assert (tiny.resolution, tiny.samples_coarse, tiny.samples_fine) == (32, 16, 16)
    assert (paper.resolution, paper.samples_coarse, paper.samples_fine, paper.box_warp) == (128, 48, 48, 1.0)
    assert paper.ray_start is None  # near/far from the box, as Real3D-Portrait renders
