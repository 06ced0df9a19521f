"""Multi-view teacher data: the paper's camera distributions and the morphable (3DMM) teacher.

Cameras are EG3D 25-d vectors (`preprocessing.triplane`): cam2world + normalised intrinsics with
focal 4.2647 and centre 0.5, world y up, the head near the origin. `look_at_camera` follows EG3D's
look-at pose sampler: the camera sits at `radius` from the world origin at horizontal angle
π/2 + yaw and vertical angle π/2 + pitch (mapped to the polar angle arccos(1 − 2v/π), as the
sampler does, so a "pitch" of 10° elevates the camera by about 6.4°), looking at (0, 0, 0.2).

The morphable teacher draws a random head from the face model — identity, expression, albedo and
SH lighting (the real BFM when installed, else the synthetic model, which says so in its
metadata) — places it in EG3D's world as the dataset's cameras do (a canonical 3DMM point p in
decimetres is at 0.27·p + (0, 0.006, 0.161)), and rasterises it from each camera with exact depth
and mask over a random background. Lighting is fixed to the head, so all views of one sample
agree: the data is multi-view consistent by construction. It has no hair, ears, neck or torso
(the face model is a face mask); what I2P learns from it is face geometry only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from preprocessing.face3d import Face3D, sh_shade
from preprocessing.face_model import FaceModel
from preprocessing.raster import interpolate, rasterize
from preprocessing.triplane import project_points

EG3D_FOCAL = 2985.29 / 700.0
HEAD_SCALE = 0.27  # EG3D world units per 3DMM decimetre (the dataset's eg3d_cam)
HEAD_OFFSET = (0.0, 0.006, 0.161)
LOOK_AT = (0.0, 0.0, 0.2)


# ---------------------------------------------------------------------------------------------
# cameras
# ---------------------------------------------------------------------------------------------

def intrinsics_vector(focal: float = EG3D_FOCAL) -> np.ndarray:
    """The 9 normalised intrinsics (fx, 0, cx, 0, fy, cy, 0, 0, 1) with centre 0.5."""
    return np.array([focal, 0, 0.5, 0, focal, 0.5, 0, 0, 1], np.float64)


def look_at_camera(pitch: float, yaw: float, radius: float, look_at=LOOK_AT, focal: float = EG3D_FOCAL) -> np.ndarray:
    """(25,) float32 EG3D camera from pitch/yaw (radians, EG3D's look-at sampler) and radius."""
    theta = math.pi / 2 + yaw
    v = min(max((math.pi / 2 + pitch) / math.pi, 1e-5), 1 - 1e-5)
    phi = math.acos(1 - 2 * v)
    origin = radius * np.array([math.sin(phi) * math.cos(math.pi - theta), math.cos(phi),
                                math.sin(phi) * math.sin(math.pi - theta)])
    fwd = np.asarray(look_at, np.float64) - origin
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, fwd, origin
    return np.concatenate([c2w.reshape(-1), intrinsics_vector(focal)]).astype(np.float32)


@dataclass(frozen=True)
class CameraDistribution:
    """The paper's camera distributions (degrees; radii in EG3D world units)."""

    cond_pitch_deg: float = 10.0
    cond_yaw_deg: float = 16.0
    cond_radius: tuple[float, float] = (2.7, 3.2)
    view_pitch_deg: float = 26.0
    view_yaw_deg: float = 38.0
    view_radius: tuple[float, float] = (2.7, 4.0)
    real_pose_fraction: float = 0.5  # with a pose bank: chance a view takes a real frame's camera

    def __post_init__(self) -> None:
        if not 0.0 <= self.real_pose_fraction <= 1.0:
            raise ValueError(f"real_pose_fraction must be in [0, 1], got {self.real_pose_fraction}")


def _uniform_camera(rng: np.random.Generator, pitch_deg: float, yaw_deg: float,
                    radius: tuple[float, float]) -> np.ndarray:
    pitch = math.radians(rng.uniform(-pitch_deg, pitch_deg))
    yaw = math.radians(rng.uniform(-yaw_deg, yaw_deg))
    return look_at_camera(pitch, yaw, rng.uniform(*radius))


def conditioning_camera(rng: np.random.Generator, dist: CameraDistribution = CameraDistribution()) -> np.ndarray:
    """(25,) camera for the generator's mapping network: pitch U(±10°), yaw U(±16°), radius U(2.7, 3.2)."""
    return _uniform_camera(rng, dist.cond_pitch_deg, dist.cond_yaw_deg, dist.cond_radius)


def view_camera(rng: np.random.Generator, dist: CameraDistribution = CameraDistribution(),
                pose_bank: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """(25,) camera of one rendered view and its source: 'real' (a random row of `pose_bank` (N, 25),
    with probability `real_pose_fraction`) or 'random' (pitch U(±26°), yaw U(±38°), radius U(2.7, 4))."""
    use_real = pose_bank is not None and len(pose_bank) > 0 and rng.random() < dist.real_pose_fraction
    if use_real:
        return np.asarray(pose_bank[rng.integers(len(pose_bank))], np.float32), "real"
    return _uniform_camera(rng, dist.view_pitch_deg, dist.view_yaw_deg, dist.view_radius), "random"


def head_to_world(points: np.ndarray | torch.Tensor):
    """Canonical 3DMM points (…, 3) in decimetres → EG3D world coordinates (0.27·p + offset)."""
    off = HEAD_OFFSET
    if isinstance(points, torch.Tensor):
        return points * HEAD_SCALE + torch.tensor(off, dtype=points.dtype, device=points.device)
    return np.asarray(points) * HEAD_SCALE + np.asarray(off, dtype=np.float64)


def ray_distance(depth_z: np.ndarray, cameras: np.ndarray) -> np.ndarray:
    """Camera-axis depth (V, H, W) → distance along each pixel's ray (EG3D's depth convention)."""
    v, h, w = depth_z.shape
    k = np.asarray(cameras, np.float64)[:, 16:].reshape(v, 3, 3)
    ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
    out = np.empty_like(depth_z)
    for i in range(v):
        fx, fy, cx, cy = k[i, 0, 0], k[i, 1, 1], k[i, 0, 2], k[i, 1, 2]
        x = (xs[None, :] - cx) / fx
        y = (ys[:, None] - cy) / fy
        out[i] = depth_z[i] * np.sqrt(1.0 + x ** 2 + y ** 2)
    return out


# ---------------------------------------------------------------------------------------------
# the morphable teacher
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HeadPrior:
    """Spread of the random heads (standard deviations of the coefficients)."""

    id_std: float = 1.0
    exp_std: float = 0.3
    tex_std: float = 0.8
    light_std: float = 0.2  # first-order SH (a dominant direction), same for R, G, B
    ambient_std: float = 0.1


@dataclass
class Head:
    """One random head: 3DMM coefficients (canonical pose), SH lighting and a background."""

    seed: int
    id: np.ndarray  # (80,)
    exp: np.ndarray  # (64,)
    tex: np.ndarray  # (80,)
    gamma: np.ndarray  # (27,) SH, channel-major, +0.8 on the DC terms at shading time
    background: np.ndarray  # (2, 3) top and bottom colours in 0..1


@dataclass
class Views:
    """Renders of one head from V cameras: the image at `size`², depth and mask (at `size`² for the
    morphable teacher, at EG3D's render resolution for EG3D), and EG3D's opacity when it has one."""

    image: np.ndarray  # (V, H, W, 3) uint8
    depth: np.ndarray  # (V, h, w) float32, distance along the ray in EG3D world units, +inf background
    mask: np.ndarray  # (V, h, w) bool, head pixels (EG3D: opacity > 0.5)
    cameras: np.ndarray  # (V, 25) float32
    opacity: np.ndarray | None = None  # (V, h, w) float32 accumulated opacity (EG3D only)


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """(V, H, W, 3) uint8 → (V, size, size, 3) uint8, antialiased bilinear (as the reference makes
    its 128² raw targets from the 512² images)."""
    x = torch.as_tensor(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    y = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


class MorphableTeacher:
    """Random 3DMM heads rendered from EG3D cameras (exact depth and mask; CPU rasteriser)."""

    name = "morphable"

    def __init__(self, model: FaceModel, size: int = 512, prior: HeadPrior = HeadPrior()):
        self.model = model
        self.face3d = Face3D(model)
        self.size = int(size)
        self.prior = prior

    @property
    def synthetic(self) -> bool:
        """True when the face model is the synthetic stand-in, not the real BFM."""
        return bool(self.model.synthetic)

    def sample(self, seed: int) -> Head:
        """The head for `seed` (deterministic)."""
        rng = np.random.default_rng(seed)
        p = self.prior
        light = rng.normal(0.0, p.light_std, 3)
        light[1] = abs(light[1])  # the n_z band (SH index 2): lit from the front half, never back-lit black
        gamma = np.zeros((3, 9), np.float32)
        gamma[:, 1:4] = light
        gamma[:, 0] = rng.normal(0.0, p.ambient_std)
        bg = rng.uniform(0.0, 1.0, (2, 3))
        return Head(seed=int(seed), id=rng.normal(0, p.id_std, 80).astype(np.float32),
                    exp=rng.normal(0, p.exp_std, 64).astype(np.float32),
                    tex=rng.normal(0, p.tex_std, 80).astype(np.float32), gamma=gamma.reshape(-1),
                    background=bg.astype(np.float32))

    def vertices(self, head: Head) -> np.ndarray:
        """(N, 3) float64 head vertices in EG3D world coordinates."""
        with torch.no_grad():
            shape = self.face3d.shape(torch.as_tensor(head.id)[None], torch.as_tensor(head.exp)[None])
        return head_to_world(shape[0].double().numpy())

    def colours(self, head: Head) -> np.ndarray:
        """(N, 3) float32 lit albedo in 0..1 (lighting in head coordinates: identical in every view)."""
        with torch.no_grad():
            shape = self.face3d.shape(torch.as_tensor(head.id)[None], torch.as_tensor(head.exp)[None])
            normals = self.face3d.normals(shape)
            albedo = self.face3d.albedo(torch.as_tensor(head.tex)[None])
            col = sh_shade(albedo, normals, torch.as_tensor(head.gamma)[None])
        return col[0].clamp(0, 1).numpy().astype(np.float32)

    def background(self, head: Head) -> np.ndarray:
        """(H, W, 3) float32 vertical gradient between the head's two background colours."""
        t = ((np.arange(self.size) + 0.5) / self.size)[:, None, None]
        top, bottom = head.background[0], head.background[1]
        return np.broadcast_to((1 - t) * top + t * bottom, (self.size, self.size, 3)).astype(np.float32)

    def render(self, head: Head, cameras: np.ndarray) -> Views:
        """Render `head` from (V, 25) cameras: image, ray depth and mask at `size`²."""
        cams = np.asarray(cameras, np.float32).reshape(-1, 25)
        verts = torch.as_tensor(self.vertices(head))[None].expand(len(cams), -1, -1)
        px = project_points(verts, torch.as_tensor(cams, dtype=torch.float64), self.size).numpy()
        frags = rasterize(px, self.model.tri, self.size, self.size)
        colour = interpolate(frags, self.model.tri, self.colours(head), background=0.0)
        mask = frags.mask
        image = np.where(mask[..., None], colour, self.background(head)[None])
        depth_z = np.where(mask, frags.depth, np.inf).astype(np.float32)
        depth = ray_distance(depth_z, cams).astype(np.float32)
        img = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
        return Views(image=img, depth=depth, mask=mask, cameras=cams)


# ---------------------------------------------------------------------------------------------
# the EG3D teacher
# ---------------------------------------------------------------------------------------------

@dataclass
class Latent:
    """One EG3D sample: its seed, latent z and conditioning camera."""

    seed: int
    z: np.ndarray  # (z_dim,) float32
    cond_camera: np.ndarray  # (25,) float32


class EG3DTeacher:
    """EG3D heads: z and a conditioning camera from the seed, ws with truncation ψ, rendered per camera."""

    name = "eg3d"

    def __init__(self, generator, truncation_psi: float = 0.7, cameras: CameraDistribution = CameraDistribution()):
        self.generator = generator.eval()
        self.truncation_psi = float(truncation_psi)
        self.cameras = cameras
        self.size = int(generator.cfg.img_resolution)
        self.device = next(generator.parameters()).device

    def sample(self, seed: int) -> Latent:
        """z ~ N(0, I) and a conditioning camera (pitch ±10°, yaw ±16°, radius 2.7–3.2) for `seed`."""
        rng = np.random.default_rng(seed)
        z = rng.standard_normal(self.generator.cfg.z_dim).astype(np.float32)
        return Latent(seed=int(seed), z=z, cond_camera=conditioning_camera(rng, self.cameras))

    @torch.no_grad()
    def render(self, head: Latent, cameras: np.ndarray) -> Views:
        """The SR image (size²), rendered depth and opacity (render resolution) for (V, 25) cameras."""
        cams = np.asarray(cameras, np.float32).reshape(-1, 25)
        g = self.generator
        z = torch.as_tensor(head.z, device=self.device)[None]
        cond = torch.as_tensor(head.cond_camera, device=self.device)[None]
        ws = g.mapping(z, cond, truncation_psi=self.truncation_psi)
        planes = g.planes(ws)
        v = len(cams)
        out = g.synthesis(ws.expand(v, -1, -1), torch.as_tensor(cams, device=self.device),
                          planes=planes.expand(v, -1, -1, -1, -1))
        img = ((out["image"].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        opacity = out["opacity"][:, 0].float().cpu().numpy()
        depth = out["image_depth"][:, 0].float().cpu().numpy()
        depth = np.where(opacity > 0.5, depth, np.inf).astype(np.float32)
        return Views(image=img, depth=depth, mask=opacity > 0.5, cameras=cams, opacity=opacity.astype(np.float32))
