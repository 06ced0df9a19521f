"""The learned compositor of `r3p animate`: a trained `htbsr` run behind the `compose` seam.

Per chunk of rendered heads it runs the HTB-SR module of `training.htbsr` exactly as in training: the
head SR image and opacity, the source's inpainted torso (RGB + mask at the module's work size), the
torso keypoints of the source and of each driven frame, and the background (the source's plate or
`--bg`) → the fused image and the person alpha at the module's output size. The result is resized to
the output size and, last, laid over the full-resolution background by the predicted person alpha, so
pixels where the person alpha is 0 are the background image itself (`--bg` replaces it exactly).

Driving keypoints (jaw ends, chin, nose bridge: `training.htbsr.KP_INDICES`): training uses the
tracked landmarks of the target frame; at inference there is no target frame, so each driven frame's
keypoints are the source's tracked ones moved by the 3DMM: kp_drv = kp_src + P(id, exp_t, pose_t) −
P(id, exp_src, pose_src), P the projected keypoints in the aligned crop (the fit's own camera). The
pose is the driving video's fitted pose per frame, or the source's own pose (audio-driven: only the
expression moves the jaw keypoints).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from training.htbsr import KP_INDICES


class CompositorError(RuntimeError):
    """An htbsr checkpoint that cannot composite for this model (wrong stage, wrong head)."""


def projected_keypoints(face3d: Any, id_coeff: np.ndarray, exp: np.ndarray, euler: np.ndarray, trans: np.ndarray,
                        crop_size: int) -> np.ndarray:
    """(n, 4, 2) torso-driving keypoints of the 3DMM (identity `id_coeff`, per-frame exp (n, 64), euler and trans
    (n, 3)) projected into the aligned crop by the fit's camera, as fractions of the crop (x right, y down)."""
    from preprocessing.face3d import join_coeffs

    exp = np.asarray(exp, np.float32).reshape(-1, 64)
    n = len(exp)
    euler = np.broadcast_to(np.asarray(euler, np.float32).reshape(-1, 3), (n, 3))
    trans = np.broadcast_to(np.asarray(trans, np.float32).reshape(-1, 3), (n, 3))
    idc = np.broadcast_to(np.asarray(id_coeff, np.float32).reshape(1, -1), (n, np.size(id_coeff)))
    with torch.inference_mode():
        c = join_coeffs(id=torch.as_tensor(idc.copy()), exp=torch.as_tensor(exp), euler=torch.as_tensor(euler.copy()),
                        trans=torch.as_tensor(trans.copy()))
        lm = face3d.landmarks(c, size=int(crop_size))
    return (lm[:, list(KP_INDICES)].float().numpy() / float(crop_size)).astype(np.float32)


def driving_keypoints(face3d: Any, kp_src: np.ndarray, id_coeff: np.ndarray, src_exp: np.ndarray,
                      src_euler: np.ndarray, src_trans: np.ndarray, exp: np.ndarray, euler: np.ndarray | None,
                      trans: np.ndarray | None, crop_size: int) -> np.ndarray:
    """(n, 4, 2): the source's tracked keypoints `kp_src` (4, 2) moved by the 3DMM from the source's (exp, pose)
    to each frame's (exp, pose); euler/trans None = the source's pose every frame."""
    exp = np.asarray(exp, np.float32).reshape(-1, 64)
    n = len(exp)
    euler = np.broadcast_to(src_euler, (n, 3)) if euler is None else euler
    trans = np.broadcast_to(src_trans, (n, 3)) if trans is None else trans
    p0 = projected_keypoints(face3d, id_coeff, src_exp[None], src_euler[None], src_trans[None], crop_size)
    p = projected_keypoints(face3d, id_coeff, exp, euler, trans, crop_size)
    return (np.asarray(kp_src, np.float32)[None] + (p - p0)).astype(np.float32)


class HTBSRCompositor:
    """A loaded htbsr checkpoint. `__call__(head_sr (n, S, S, 3) uint8, head_opacity (n, r, r), torso (H, W, 3)
    uint8, torso_mask (H, W) in [0, 1], background (H, W, 3) uint8, kp_src (4, 2), kp_drv (n, 4, 2))` →
    (frames (n, H, W, 3) uint8, person alpha (n, H, W) float32)."""

    def __init__(self, checkpoint: str | os.PathLike, device: str | torch.device | None = None) -> None:
        from training.checkpoint import load_weights, read_meta
        from training.htbsr import STAGE

        self.meta = read_meta(checkpoint)
        if self.meta.get("stage") != "htbsr":
            raise CompositorError(f"--htbsr {checkpoint}: a {self.meta.get('stage')!r} checkpoint; give an htbsr "
                                  "run (`r3p train --stage htbsr`)")
        self.params = STAGE.params_from_dict(self.meta["params"])
        self.net = STAGE.build(self.params, {})  # the module needs no dataset info
        load_weights(checkpoint, self.net)
        self.checkpoint = str(checkpoint)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = self.net.to(self.device).eval()
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def motion(self) -> str | None:
        """The motion run the htbsr run was trained over (as given in its params)."""
        return self.params.motion

    @property
    def out_size(self) -> int:
        return int(self.params.out_size)

    def _static(self, torso: np.ndarray, torso_mask: np.ndarray, background: np.ndarray):
        """(torso (1, 4, W, W), background (1, 3, W, W)) tensors, cached per input arrays."""
        from training.i2p import _image, _mask

        key = hash((torso.ctypes.data, torso_mask.ctypes.data, background.ctypes.data, torso.shape))
        if key not in self._cache:
            w = self.params.work_size
            m = _mask(np.asarray(torso_mask, np.float32)[None] > 0.5, w)
            t = np.concatenate([_image(torso[None], w) * m + (m - 1), m], 1).astype(np.float32)
            self._cache = {key: (torch.as_tensor(t, device=self.device),
                                 torch.as_tensor(_image(background[None], w), device=self.device))}
        return self._cache[key]

    def __call__(self, head_sr: np.ndarray, head_opacity: np.ndarray, torso: np.ndarray, torso_mask: np.ndarray,
                 background: np.ndarray, kp_src: np.ndarray, kp_drv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        n = len(head_sr)
        h, w = background.shape[:2]
        if kp_drv.shape != (n, len(KP_INDICES), 2):
            raise ValueError(f"kp_drv must be ({n}, {len(KP_INDICES)}, 2), got {kp_drv.shape}")
        t, bg = self._static(torso, torso_mask, background)
        dev = self.device
        hs = torch.as_tensor(np.ascontiguousarray(head_sr), device=dev).permute(0, 3, 1, 2).float() / 127.5 - 1
        op = torch.as_tensor(np.asarray(head_opacity, np.float32), device=dev)[:, None]
        ks = torch.as_tensor(np.asarray(kp_src, np.float32), device=dev).expand(n, -1, -1)
        kd = torch.as_tensor(np.asarray(kp_drv, np.float32), device=dev)
        with torch.inference_mode():
            out = self.net(hs, op, t.expand(n, -1, -1, -1), ks, kd, bg.expand(n, -1, -1, -1))
            img = ((out["image"].clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).float().cpu().numpy()
            alpha = out["alpha"][:, 0].clamp(0, 1).float().cpu().numpy()
        interp = cv2.INTER_AREA if img.shape[1] > h else cv2.INTER_LINEAR
        frames = np.empty((n, h, w, 3), np.uint8)
        alphas = np.empty((n, h, w), np.float32)
        bgf = background.astype(np.float32)
        for i in range(n):
            im = cv2.resize(img[i], (w, h), interpolation=interp) if img.shape[1:3] != (h, w) else img[i]
            a = cv2.resize(alpha[i], (w, h), interpolation=interp) if alpha.shape[1:] != (h, w) else alpha[i]
            a = np.clip(a, 0, 1)
            alphas[i] = a
            frames[i] = np.clip(a[..., None] * im + (1 - a[..., None]) * bgf + 0.5, 0, 255).astype(np.uint8)
        return frames, alphas


__all__ = ["CompositorError", "HTBSRCompositor", "driving_keypoints", "projected_keypoints"]
