"""Motion-adapter stage: SECC maps (canonical, source, driving) → a residual tri-plane added to the
I2P plane of the head-only source image, rendered at the target frame's camera.

An example is (source frame, target frame) of one clip of a `r3p preprocess` dataset, at least
`min_gap` frames apart (`pairs_per_clip` per clip, drawn with a generator seeded by the clip id):
the I2P input is the head-only source frame (the stored head label), the adapter input the three
SECC maps at zero pose (9 channels, [-1, 1], background -1) rendered from the stored identity and
expressions (`secc_maps`), the camera the target's stored `eg3d_cam`; targets are the head-only
target frame, its head mask and its lip box (the stored `mouth_box`, as fractions of the crop).
Losses: head-masked L1 (mask dilated, weight `w_outside` outside) on SR and raw, lip-box L1 on SR,
opacity L1 towards the head mask. A new run starts from an i2p run (`training.motion.i2p`, required)
for everything but the adapter; the I2P image encoder trains only in steps [i2p_train_from,
i2p_train_until) (paper: 6k to 70k), the decoder and SR train throughout. Not implemented: the blink
and perturbation regularisers, the decoder/SR freeze steps, perceptual and adversarial terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from training.head_nets import HeadRenderer, TinyAdapter
from preprocessing.record import SEG_HEAD
from training.i2p import STAGE as I2P_STAGE
from training.i2p import I2PParams, _image, _mask, build_head, with_render_seeds
from training.stage import Stage, StageError


@dataclass
class MotionParams(I2PParams):
    adapter_width: int = 32
    w_lip: float = 1.0
    w_outside: float = 0.2
    dilate: int = 3  # mask dilation kernel at the render size (paper: 41 at 512²)
    i2p: str | None = None  # the i2p run (name under the runs folder, or a checkpoint folder) a new run starts from
    i2p_train_from: int = 1_000_000_000  # the I2P encoder trains in steps [from, until); frozen otherwise
    i2p_train_until: int = 1_000_000_000
    pairs_per_clip: int = 8
    min_gap: int = 5  # frames between source and target


def _decode(data: bytes) -> np.ndarray:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise StageError("motion: a stored frame image is not decodable JPEG/PNG; re-run `r3p preprocess`")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB) if arr.ndim == 3 else arr


def draw_pairs(valid: np.ndarray, n: int, min_gap: int, rng: np.random.Generator) -> np.ndarray:
    """(≤ n, 2) (source, target) frame indices among `valid` frames, |source − target| ≥ min_gap."""
    idx = np.flatnonzero(valid)
    out = []
    for _ in range(n):
        if len(idx) < 2:
            break
        s = int(rng.choice(idx))
        far = idx[np.abs(idx - s) >= max(1, min_gap)]
        if len(far):
            out.append((s, int(rng.choice(far))))
    return np.asarray(out, np.int64).reshape(-1, 2)


def lip_box_mask(boxes: np.ndarray, size: int) -> np.ndarray:
    """(N, 4) boxes (x0, y0, x1, y1 as image fractions) → (N, 1, size, size) float32 pixel masks."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    c = (np.arange(size) + 0.5) / size
    inx = (c[None] >= boxes[:, 0:1]) & (c[None] <= boxes[:, 2:3])
    iny = (c[None] >= boxes[:, 1:2]) & (c[None] <= boxes[:, 3:4])
    return (iny[:, :, None] & inx[:, None, :])[:, None].astype(np.float32)


def source_input(image: np.ndarray, head_mask: np.ndarray, p: MotionParams) -> np.ndarray:
    """The I2P input: (N, H, W, 3) uint8 frames and (N, H, W) head masks → head-only (N, 3, S, S) in [-1, 1]
    (S = image_size; outside the head -1, i.e. black)."""
    m = _mask(head_mask, p.image_size)
    return _image(image, p.image_size) * m + (m - 1)


def secc_maps(face3d, id_coeff: np.ndarray, source_exp: np.ndarray, driving_exp: np.ndarray, size: int) -> np.ndarray:
    """The adapter's three SECC maps for N driving expressions of one identity: (N, 3, size, size, 3) in
    [-1, 1] = canonical (zero expression), source expression, driving expression, all at zero pose
    (`preprocessing.render.render_secc`, the maps preprocessing stores)."""
    from preprocessing.render import render_secc

    drv = np.asarray(driving_exp, np.float32).reshape(-1, 64)
    ident = np.asarray(id_coeff, np.float32).reshape(1, 80)
    fixed = render_secc(face3d, np.repeat(ident, 2, 0), np.stack([np.zeros(64, np.float32),
                                                                  np.asarray(source_exp, np.float32).reshape(64)]),
                        size=size)
    driving = render_secc(face3d, np.repeat(ident, len(drv), 0), drv, size=size)
    return np.stack([np.broadcast_to(fixed[0], driving.shape), np.broadcast_to(fixed[1], driving.shape), driving], 1)


def stack_secc(secc: np.ndarray) -> np.ndarray:
    """(N, 3 maps, H, W, 3) → the adapter's (N, 9, H, W) input."""
    secc = np.asarray(secc, np.float32)
    if secc.ndim != 5 or secc.shape[1] != 3 or secc.shape[-1] != 3:
        raise StageError(f"motion: SECC must be (N, 3 maps, H, W, 3) in [-1, 1], got {secc.shape}")
    n, _, h, w, _ = secc.shape
    return np.ascontiguousarray(secc.transpose(0, 1, 4, 2, 3).reshape(n, 9, h, w))


def pair_examples(source: np.ndarray, source_mask: np.ndarray, target: np.ndarray, target_mask: np.ndarray,
                  secc: np.ndarray, cameras: np.ndarray, lip_box: np.ndarray, p: MotionParams) -> dict[str, np.ndarray]:
    """Examples of N (source, target) pairs: images (N, H, W, 3) uint8, masks (N, H, W) bool, SECC
    (N, 3, h, w, 3) in [-1, 1] (canonical, source, driving), target cameras (N, 25), lip boxes (N, 4)."""
    n = len(source)
    s9 = stack_secc(secc)
    for name, a, shape in (("cameras", cameras, (n, 25)), ("lip_box", lip_box, (n, 4))):
        if np.shape(a) != shape:
            raise StageError(f"motion: {name} must be {shape}, got {np.shape(a)}")
    hi, lo = _mask(target_mask, p.image_size), _mask(target_mask, p.render_resolution)
    return {"input": source_input(source, source_mask, p), "secc": s9, "cam": np.asarray(cameras, np.float32),
            "sr": _image(target, p.image_size) * hi + (hi - 1),
            "raw": _image(target, p.render_resolution) * lo + (lo - 1), "mask": lo, "mask_hi": hi,
            "lip": lip_box_mask(lip_box, p.image_size)}


def build_motion_head(p: MotionParams) -> HeadRenderer:
    """The I2P head of `p` with a tiny motion adapter."""
    return build_head(p, TinyAdapter(in_size=p.image_size, plane_channels=p.plane_channels,
                                     plane_resolution=p.plane_resolution, width=p.adapter_width))


def init_from_i2p(model: HeadRenderer, i2p_state: dict[str, torch.Tensor]) -> None:
    """Load an i2p run's weights into everything but the adapter; StageError naming missing keys."""
    own = {k for k in model.state_dict() if not k.startswith("adapter.")}
    missing = sorted(own - set(i2p_state))
    if missing:
        raise StageError(f"motion: the i2p checkpoint lacks {missing[:3]}... (was it made with the same sizes?)")
    model.load_state_dict({k: v for k, v in i2p_state.items() if k in own}, strict=False)


def _weighted_l1(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean over examples of each example's w-weighted mean |a − b| (per example, so a batch split over
    workers averages to the same loss)."""
    per = ((a - b).abs() * w).flatten(1).sum(1) / (w.flatten(1).sum(1) * a.shape[1]).clamp_min(1e-6)
    return per.mean()


_FACE3D: dict[int, object] = {}


def _face3d(face_model):
    from preprocessing.face3d import Face3D

    key = id(face_model)
    if key not in _FACE3D:
        _FACE3D.clear()
        _FACE3D[key] = (Face3D(face_model), face_model)
    return _FACE3D[key][0]


def I2P_CHECK(stage: Stage, p: MotionParams) -> None:
    """The i2p stage's checks on the shared sizes, with this stage's key names."""
    try:
        type(I2P_STAGE).check_params(I2P_STAGE, p)
    except StageError as exc:
        raise StageError(str(exc).replace("training.i2p.", f"training.{stage.name}.")) from None


class MotionStage(Stage):
    """The motion adapter on talking-face pairs (see the module docstring)."""

    name = "motion"
    uses_audio = False
    ddp_find_unused = True  # the I2P encoder has no gradient while it is frozen
    Params = MotionParams
    frame_columns = ("index", "valid", "frame_jpeg", "seg_png", "exp", "eg3d_cam", "mouth_box")
    sizes = {"tiny": {"steps": 300, "batch_size": 4, "lr": 1e-3},
             "paper": {"steps": 250_000, "batch_size": 4, "lr": 1e-4, "lr_decay": 0.95, "lr_decay_every": 5000,
                       "lr_min": 5e-6, "plane_channels": 32, "plane_resolution": 256, "render_resolution": 128,
                       "samples_coarse": 48, "samples_fine": 48, "image_size": 512, "sr": "paper",
                       "w_lip": 0.5, "w_opacity": 0.1, "dilate": 11, "i2p_train_from": 6000,
                       "i2p_train_until": 70_000, "adapter_width": 64}}

    def check_params(self, p: MotionParams) -> None:
        I2P_CHECK(self, p)
        for k in ("pairs_per_clip", "min_gap"):
            if getattr(p, k) < 1:
                raise StageError(f"config key 'training.motion.{k}' must be >= 1 (got {getattr(p, k)})")

    def required_checkpoints(self, p: MotionParams) -> dict[str, str | None]:
        return {"i2p": p.i2p}

    def example_context(self, p, face_model):
        return {"face_model": face_model}

    def examples(self, clip, p: MotionParams) -> dict[str, np.ndarray]:
        f = clip.frames
        n = len(f["frame_jpeg"])
        ok = (f["valid"] > 0.5) & np.isfinite(f["eg3d_cam"]).all(1) & np.isfinite(f["mouth_box"]).all(1)
        ok &= np.array([a is not None and b is not None for a, b in zip(f["frame_jpeg"], f["seg_png"])], bool)
        seed = int.from_bytes(clip.clip_id.encode()[:8].ljust(8, b"\0"), "little") % (2**63)
        pairs = draw_pairs(ok, p.pairs_per_clip, p.min_gap, np.random.default_rng(seed))
        if len(pairs) == 0 or n == 0:
            return {}
        face3d = _face3d(clip.context["face_model"])
        img = {i: _decode(f["frame_jpeg"][i]) for i in np.unique(pairs)}
        head = {i: _decode(f["seg_png"][i]) == SEG_HEAD for i in img}
        crop = float(next(iter(img.values())).shape[0])
        secc = np.concatenate([secc_maps(face3d, clip.id_coeff, f["exp"][s], f["exp"][t][None], p.image_size)
                               for s, t in pairs])
        src, tgt = pairs[:, 0], pairs[:, 1]
        return pair_examples(np.stack([img[i] for i in src]), np.stack([head[i] for i in src]),
                             np.stack([img[i] for i in tgt]), np.stack([head[i] for i in tgt]), secc,
                             f["eg3d_cam"][tgt], f["mouth_box"][tgt] / crop, p)

    def build(self, p, info):
        return build_motion_head(p)

    def init_weights(self, model, p: MotionParams) -> None:
        if not p.i2p:
            raise StageError("stage motion starts from an i2p run: set training.motion.i2p=RUN_OR_CHECKPOINT")
        from safetensors.torch import load_file

        from training.checkpoint import WEIGHTS, check_checkpoint, read_meta

        meta = read_meta(p.i2p)
        if meta.get("stage") != "i2p":
            raise StageError(f"training.motion.i2p={p.i2p} is a {meta.get('stage')!r} checkpoint; give an i2p run")
        init_from_i2p(model, load_file(str(check_checkpoint(p.i2p) / WEIGHTS)))

    def prepare(self, batch, step, gen, p):
        return with_render_seeds(batch, gen)

    def loss(self, model, batch, step, p, frozen):
        train_i2p = p.i2p_train_from <= step < p.i2p_train_until
        out = model(batch["input"], batch["cam"][:, None], batch["secc"], seeds=batch.get("render_seed"),
                    train_i2p=train_i2p)
        out = {k: v[:, 0] for k, v in out.items()}
        k = 2 * (p.dilate // 2) + 1
        w_lo = p.w_outside + (1 - p.w_outside) * F.max_pool2d(batch["mask"], k, 1, k // 2)
        w_hi = F.interpolate(w_lo, size=out["sr"].shape[-2:], mode="nearest")
        l_sr = _weighted_l1(out["sr"], batch["sr"], w_hi)
        l_raw = _weighted_l1(out["rgb"], batch["raw"], w_lo)
        l_lip = _weighted_l1(out["sr"], batch["sr"], batch["lip"])
        l_op = (out["opacity"] - batch["mask"]).abs().mean()
        total = l_sr + l_raw + p.w_lip * l_lip + p.w_opacity * l_op
        return total, {"l1_sr": l_sr.item(), "l1_raw": l_raw.item(), "l1_lip": l_lip.item(), "opacity": l_op.item()}


STAGE = MotionStage()
