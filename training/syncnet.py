"""SyncNet stage: the landmark–audio lip-sync expert that A2M's sync loss uses (frozen).

Audio encoder over 10 rows of 50 Hz audio features (HuBERT 1024-d when the dataset has it, else
the 80-bin log-mel: the same model with another input width); mouth encoder over 5 video frames
of the morphable model's 68 keypoints in canonical pose. The keypoints are the expression's
displacement (identity removed: lm(id, exp) − lm(id, 0)) so the expert sees motion, not face
shape. Each encoder gives an L2-normalised embedding; the loss is BCE on (cos + 1) / 2.
Negatives (reference mix): the same clip with the audio shifted 2–5 frames (30 %) or 5–10 frames
(20 %), another example of the batch (10 %); positives 40 %.

Example (one window at frame k): `exp` (5, 64), `audio` rows for frames k − 10 … k + 15 (50, D),
so any shift up to ±10 frames is a slice of the example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from training.keypoints import KeypointBasis, Keypoints
from training.nets import ConvEncoder, Standardize
from training.stage import ClipArrays, Stage, StageError, StageParams


@dataclass
class SyncNetParams(StageParams):
    frames: int = 5  # video frames per window (audio rows = 2 × frames)
    max_shift: int = 10  # frames of audio context each side of a window
    window_stride: int = 1  # frames between consecutive windows of a clip
    width: int = 128
    layers: int = 3
    embed: int = 1024
    p_positive: float = 0.4
    p_shift_small: float = 0.3  # shifted 2–5 frames
    p_shift_large: float = 0.2  # shifted 5–10 frames; the rest: another example of the batch


class SyncNet(nn.Module):
    """Audio and mouth encoders; `forward(audio (B, 2F, D), exp (B, F, 64))` → cosine (B,)."""

    def __init__(self, p: SyncNetParams, audio_dim: int, basis: KeypointBasis, audio_mean, audio_std,
                 motion_scale: float):
        super().__init__()
        self.frames = p.frames
        self.kp = Keypoints(basis)
        self.norm = Standardize(audio_mean, audio_std)
        self.register_buffer("motion_scale", torch.tensor(float(motion_scale)))
        self.audio_enc = ConvEncoder(audio_dim, p.width, p.layers, 2 * p.frames, p.embed, downsample=True)
        self.mouth_enc = ConvEncoder(68 * 3, p.width, p.layers, p.frames, p.embed)

    def audio_embedding(self, audio: torch.Tensor) -> torch.Tensor:
        return self.audio_enc(self.norm(audio))

    def mouth_embedding(self, exp: torch.Tensor) -> torch.Tensor:
        lm = self.kp.expression(exp) * self.motion_scale  # (B, F, 68, 3)
        return self.mouth_enc(lm.flatten(2))

    def forward(self, audio: torch.Tensor, exp: torch.Tensor) -> torch.Tensor:
        return (self.audio_embedding(audio) * self.mouth_embedding(exp)).sum(-1)


def sync_bce(cos: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """BCE of the probability (cos + 1) / 2 against 0/1 labels."""
    prob = ((cos + 1) / 2).clamp(1e-6, 1 - 1e-6)
    return nn.functional.binary_cross_entropy(prob, label.to(prob.dtype))


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (Mann–Whitney, ties counted half) of scores for 0/1 labels."""
    s, y = scores.double().flatten(), labels.flatten().bool()
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None]).double().sum() + 0.5 * (pos[:, None] == neg[None]).double().sum()
    return float(greater / (len(pos) * len(neg)))


def motion_scale_for(basis: KeypointBasis) -> float:
    """1 / RMS keypoint displacement of an expression with unit-variance coefficients (input scaling)."""
    rms = float(np.sqrt((basis.exp_base ** 2).sum(-1).mean()))
    return 1.0 / max(rms, 1e-8)


@torch.no_grad()
def offset_scores(model: SyncNet, exp: np.ndarray, audio: np.ndarray, max_shift: int = 10) -> np.ndarray:
    """Mean cosine over a clip's windows for audio shifted by −max_shift … +max_shift frames (2·max_shift + 1,).

    Shift s pairs the video window at frame k with the audio of frames k + s; for a clip whose audio is
    d frames late, the maximum is at s = d."""
    f = model.frames
    t = min(len(exp), len(audio) // 2)
    ks = np.arange(max_shift, t - f - max_shift + 1)
    if len(ks) == 0:
        raise StageError(f"clip of {t} frames is too short for sync offsets up to ±{max_shift} frames")
    e = torch.as_tensor(np.stack([exp[k:k + f] for k in ks]), dtype=torch.float32)
    mouth = model.mouth_embedding(e)
    out = []
    a = torch.as_tensor(audio, dtype=torch.float32)
    for s in range(-max_shift, max_shift + 1):
        wins = torch.stack([a[2 * (k + s):2 * (k + s + f)] for k in ks])
        out.append(float((model.audio_embedding(wins) * mouth).sum(-1).mean()))
    return np.asarray(out)


class SyncNetStage(Stage):
    name = "syncnet"
    clip_columns = ("id_coeff",)  # + the audio column (mel or hubert), chosen by the job
    frame_columns = ("index", "exp")
    Params = SyncNetParams
    sizes = {
        "tiny": dict(steps=2000, batch_size=64, lr=2e-3, lr_decay=0.5, lr_decay_every=500, width=128, layers=3,
                     embed=128, window_stride=1),
        # reference: Adam 1e-3 × 0.98 every 5k steps (floor 5e-5), 8192 pairs per step, grad-norm clip 1
        "paper": dict(steps=4_000_000, batch_size=8192, lr=1e-3, lr_decay=0.98, lr_decay_every=5000, lr_min=5e-5,
                      width=128, layers=3, embed=1024, window_stride=1),
    }
    best_metric = ("val_auc", True)

    def check_params(self, p: SyncNetParams) -> None:
        super().check_params(p)
        if p.max_shift < 5:
            raise StageError(f"config key 'training.syncnet.max_shift' must be >= 5 (got {p.max_shift})")
        if p.frames < 2:
            raise StageError(f"config key 'training.syncnet.frames' must be >= 2 (got {p.frames})")

    def examples(self, clip: ClipArrays, p: SyncNetParams) -> dict[str, np.ndarray]:
        f, ms = p.frames, p.max_shift
        exp = clip.frames["exp"]
        t = min(len(exp), clip.n_frames)
        ks = np.arange(ms, t - f - ms + 1, p.window_stride)
        d = clip.audio.shape[1]
        if len(ks) == 0:
            return {"exp": np.zeros((0, f, 64), np.float32), "audio": np.zeros((0, 2 * (f + 2 * ms), d), np.float32)}
        return {"exp": np.stack([exp[k:k + f] for k in ks]).astype(np.float32),
                "audio": np.stack([clip.audio[2 * (k - ms):2 * (k + f + ms)] for k in ks]).astype(np.float32)}

    def build(self, p: SyncNetParams, info: dict[str, Any]) -> SyncNet:
        basis = KeypointBasis.from_dict(info["keypoints"])
        return SyncNet(p, info["audio_dim"], basis, info["audio_mean"], info["audio_std"], motion_scale_for(basis))

    def prepare(self, batch: dict, step: int, gen: torch.Generator, p: SyncNetParams) -> dict:
        b, f, ms = batch["exp"].shape[0], p.frames, p.max_shift
        u = torch.rand(b, generator=gen)
        small = torch.randint(2, 6, (b,), generator=gen)
        large = torch.randint(5, ms + 1, (b,), generator=gen)
        sign = torch.where(torch.rand(b, generator=gen) < 0.5, -1, 1)
        other = (torch.arange(b) + torch.randint(1, max(2, b), (b,), generator=gen)) % b
        c1, c2, c3 = p.p_positive, p.p_positive + p.p_shift_small, p.p_positive + p.p_shift_small + p.p_shift_large
        shift = torch.where(u < c1, 0, torch.where(u < c2, small * sign, torch.where(u < c3, large * sign, 0)))
        src = torch.where(u >= c3, other, torch.arange(b))
        label = (u < c1).float()
        start = 2 * (ms + shift)
        idx = start[:, None] + torch.arange(2 * f)[None]
        audio = batch["audio"][src[:, None], idx]  # (B, 2F, D)
        return {"exp": batch["exp"], "audio": audio, "label": label}

    def loss(self, model, batch, step, p, frozen):
        cos = model(batch["audio"], batch["exp"])
        loss = sync_bce(cos, batch["label"])
        return loss, {"loss_sync": loss.item()}

    @torch.no_grad()
    def validate(self, model, batches, p, frozen):
        cos = torch.cat([model(b["audio"], b["exp"]) for b in batches])
        label = torch.cat([b["label"] for b in batches])
        return {"val_loss": float(sync_bce(cos, label)), "val_auc": roc_auc(cos, label),
                "val_accuracy": float(((cos > 0).float() == label).float().mean())}


STAGE = SyncNetStage()
