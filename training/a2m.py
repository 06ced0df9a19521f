"""A2M stage: audio → 64-d expression per video frame (conditional VAE with a normalising-flow prior).

Condition g (25 fps): audio features (2 rows per frame, conv ×½), f0 quantised to coarse bins and
embedded (pooled ×½), a per-frame blink flag (embedded) and a mouth-amplitude scalar times a learned
vector, concatenated and projected. Posterior q(z | exp, g): conv + gated WN stack, downsampled
×`stride` to the latent rate. Prior: N(0, I) pushed through mean-only residual coupling flows
conditioned on g (log-det 0). Decoder: transposed conv back to 25 fps + WN conditioned on g → exp.
KL = E_q[log q(z) − log N(flow(z))], cyclically annealed.

Losses (reference weights in `paper`): KL, expression MSE, weighted landmark MSE (68 keypoints
from the face model, lips ×5, eyes ×3, upper lids ×20), temporal Laplacian of the predicted
expression, L2 on it, and BCE(cos, 1) of a frozen SyncNet on random 5-frame windows.

Controls, from the stored per-frame series: blink = eye aspect ratio below 0.85 × the clip's 75th
percentile (the whole closed run, not eroded to one frame as the reference); mouth_amp = the 90th
percentile of the mouth opening over the window (the reference uses the clip's).
Inference: z = temperature · N(0, I) → inverse flow → decoder (`predict_motion`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from training.keypoints import KeypointBasis, Keypoints, landmark_weights, mouth_opening
from training.nets import WN, Standardize
from training.stage import ClipArrays, Stage, StageError, StageParams
from training.syncnet import motion_scale_for, sync_bce

F0_MIN, F0_MAX = 50.0, 600.0


@dataclass
class A2MParams(StageParams):
    window: int = 100  # video frames per example (a multiple of stride)
    window_stride: int = 25
    hidden: int = 256
    kernel: int = 5
    enc_layers: int = 8
    dec_layers: int = 4
    latent: int = 16
    stride: int = 4  # frames per latent step (25 fps → 6.25 Hz)
    flows: int = 4
    flow_hidden: int = 64
    flow_layers: int = 4
    f0_bins: int = 300
    kl_weight: float = 0.02
    kl_ramp: int = 2000  # cyclical annealing: 0 → kl_weight over kl_ramp steps ...
    kl_hold: int = 2000  # ... held for kl_hold steps, repeated
    w_exp: float = 0.5
    w_lm: float = 0.5
    w_lap: float = 1.0
    w_l2: float = 0.1
    w_sync: float = 0.2
    sync_windows: int = 8  # random 5-frame windows per example for the sync loss
    syncnet: str | None = None  # SyncNet checkpoint (run name or folder); required when w_sync > 0
    blink_threshold: float = 0.85
    temperature: float = 0.2


def f0_coarse(f0: torch.Tensor, bins: int) -> torch.Tensor:
    """Hz → integer bins: 0 = unvoiced, 1 … bins−1 log-spaced over 50–600 Hz."""
    lf = (torch.log(f0.clamp_min(F0_MIN)) - math.log(F0_MIN)) / (math.log(F0_MAX) - math.log(F0_MIN))
    b = 1 + (lf.clamp(0, 1) * (bins - 2)).round().long()
    return torch.where(f0 > 0, b, torch.zeros_like(b))


class Coupling(nn.Module):
    """Mean-only residual coupling: x1 += m(x0, g) (log-det 0), then the halves swap."""

    def __init__(self, channels: int, hidden: int, layers: int, cond: int):
        super().__init__()
        self.half = channels // 2
        self.pre = nn.Conv1d(self.half, hidden, 1)
        self.wn = WN(hidden, 3, layers, cond)
        self.post = nn.Conv1d(hidden, channels - self.half, 1)
        nn.init.zeros_(self.post.weight)
        nn.init.zeros_(self.post.bias)

    def forward(self, x: torch.Tensor, g: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        if not reverse:
            x0, x1 = x[:, :self.half], x[:, self.half:]
            x1 = x1 + self.post(self.wn(self.pre(x0), g))
            return torch.cat([x1, x0], 1)
        x1, x0 = x[:, :x.shape[1] - self.half], x[:, x.shape[1] - self.half:]
        x1 = x1 - self.post(self.wn(self.pre(x0), g))
        return torch.cat([x0, x1], 1)


class A2M(nn.Module):
    """The conditional VAE; see the module docstring."""

    def __init__(self, p: A2MParams, audio_dim: int, basis: KeypointBasis, audio_mean, audio_std,
                 motion_scale: float):
        super().__init__()
        h, self.stride, self.latent, self.f0_bins = p.hidden, p.stride, p.latent, p.f0_bins
        self.kp = Keypoints(basis)
        self.norm = Standardize(audio_mean, audio_std)
        self.register_buffer("motion_scale", torch.tensor(float(motion_scale)))
        self.register_buffer("amp_ref", torch.tensor(0.0))  # mean mouth_amp of the first training batch
        self.audio_enc = nn.Sequential(nn.Conv1d(audio_dim, h, 3, padding=1), nn.GELU(),
                                       nn.Conv1d(h, h, 3, stride=2, padding=1))
        self.f0_emb = nn.Embedding(p.f0_bins, h)
        self.blink_emb = nn.Embedding(2, h)
        self.amp_vec = nn.Parameter(torch.randn(h) * 0.1)
        self.cond = nn.Conv1d(4 * h, h, 1)
        self.enc_in = nn.Conv1d(64, h, 1)
        self.enc = WN(h, p.kernel, p.enc_layers, h)
        self.enc_out = nn.Conv1d(h, 2 * p.latent, p.stride, stride=p.stride)
        self.flows = nn.ModuleList(Coupling(p.latent, p.flow_hidden, p.flow_layers, h) for _ in range(p.flows))
        self.dec_in = nn.ConvTranspose1d(p.latent, h, p.stride, stride=p.stride)
        self.dec = WN(h, p.kernel, p.dec_layers, h)
        self.dec_out = nn.Conv1d(h, 64, 1)

    def condition(self, audio: torch.Tensor, f0: torch.Tensor, blink: torch.Tensor,
                  amp: torch.Tensor) -> torch.Tensor:
        """g (B, H, T) from audio (B, 2T, D), f0 (B, 2T) Hz, blink (B, T) 0/1, amp (B,)."""
        a = self.audio_enc(self.norm(audio).transpose(1, 2))
        t = a.shape[-1]
        fe = self.f0_emb(f0_coarse(f0, self.f0_bins)).transpose(1, 2)
        fe = nn.functional.avg_pool1d(fe, 2)[..., :t]
        be = self.blink_emb(blink.round().long().clamp(0, 1)).transpose(1, 2)[..., :t]
        rel = amp / self.amp_ref.clamp_min(1e-3) - 1.0  # relative to the training mean: O(1) whatever the units
        ae = (rel[:, None] * self.amp_vec[None]).unsqueeze(-1).expand(-1, -1, t)
        return self.cond(torch.cat([a, fe, be, ae], 1))

    def _g_latent(self, g: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool1d(g, self.stride)

    def flow(self, z: torch.Tensor, gl: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        for f in (reversed(self.flows) if reverse else self.flows):
            z = f(z, gl, reverse=reverse)
        return z

    def decode(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        h = self.dec_in(z)
        return self.dec_out(self.dec(h, g) + h).transpose(1, 2)  # (B, T, 64)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted exp (B, T, 64), KL per latent element) through the posterior with the batch's noise."""
        g = self.condition(batch["audio"], batch["f0"], batch["blink"], batch["amp"])
        h = self.enc_in(batch["exp"].transpose(1, 2))
        stats = self.enc_out(self.enc(h, g) + h)
        mu, logs = stats.chunk(2, dim=1)
        logs = logs.clamp(-7, 3)
        z = mu + batch["eps"] * torch.exp(logs)
        gl = self._g_latent(g)
        u = self.flow(z, gl)
        logq = (-0.5 * batch["eps"] ** 2 - logs).mean()
        logp = (-0.5 * u ** 2).mean()
        return self.decode(z, g), logq - logp

    @torch.no_grad()
    def sample(self, audio: torch.Tensor, f0: torch.Tensor, blink: torch.Tensor, amp: torch.Tensor,
               temperature: float, gen: torch.Generator | None = None) -> torch.Tensor:
        """Expression (B, T, 64) from the prior: z = temperature · N(0, I) → inverse flow → decoder."""
        g = self.condition(audio, f0, blink, amp)
        gl = self._g_latent(g)
        u = torch.randn(gl.shape[0], self.latent, gl.shape[-1], generator=gen) * temperature
        return self.decode(self.flow(u, gl, reverse=True), g)


def blink_flags(ear: np.ndarray, threshold: float) -> np.ndarray:
    """1 where the eye aspect ratio is below `threshold` × its 75th percentile over the clip (T,)."""
    ref = float(np.nanpercentile(ear, 75)) if np.isfinite(ear).any() else 0.0
    return (np.nan_to_num(ear, nan=ref) < threshold * ref).astype(np.float32)


def pearson(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Pearson correlation of two flattened series (0 when either is constant)."""
    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    d = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / d) if d > 1e-12 else 0.0


@torch.no_grad()
def predict_motion(model: A2M, audio: np.ndarray, f0: np.ndarray, *, mouth_amp: float | None = None,
                   blink: np.ndarray | None = None, temperature: float = 0.2, seed: int = 0) -> np.ndarray:
    """Expression (T, 64) at 25 fps for audio features (2T, D) and f0 (2T,) Hz; mouth_amp default: training mean."""
    t = len(audio) // 2
    if t < 1:
        raise StageError("predict_motion: the audio is shorter than one video frame (640 samples at 16 kHz)")
    pad = (-t) % model.stride
    a = np.concatenate([audio[:2 * t], np.repeat(audio[2 * t - 1:2 * t], 2 * pad, 0)]) if pad else audio[:2 * t]
    f = np.concatenate([f0[:2 * t], np.zeros(2 * pad, np.float32)]) if pad else f0[:2 * t]
    bl = np.zeros(t + pad, np.float32) if blink is None else np.concatenate([blink[:t], np.zeros(pad)])
    amp = float(model.amp_ref) if mouth_amp is None else float(mouth_amp)
    gen = torch.Generator().manual_seed(seed)
    out = model.sample(torch.as_tensor(a, dtype=torch.float32)[None], torch.as_tensor(f, dtype=torch.float32)[None],
                       torch.as_tensor(bl, dtype=torch.float32)[None], torch.tensor([amp]), temperature, gen)
    return out[0, :t].numpy()


class A2MStage(Stage):
    name = "a2m"
    clip_columns = ("id_coeff", "f0")
    frame_columns = ("index", "exp", "eye_aspect_ratio", "mouth_opening")
    Params = A2MParams
    sizes = {
        "tiny": dict(steps=600, batch_size=32, lr=2e-3, lr_decay=0.5, lr_decay_every=200, window=32,
                     window_stride=4, hidden=64, kernel=5, enc_layers=2, dec_layers=2, latent=8, stride=4, flows=2,
                     flow_hidden=32, flow_layers=2, f0_bins=64, kl_ramp=100, kl_hold=100, sync_windows=4),
        # reference: Adam 5e-4, 1k warm-up, ×0.1 per 250k (floor 1e-6), 400k updates, grad-norm clip 1
        "paper": dict(steps=400_000, batch_size=256, lr=5e-4, warmup=1000, lr_decay=0.1, lr_decay_every=250_000,
                      lr_min=1e-6),
    }
    best_metric = ("val_mouth_r", True)

    def check_params(self, p: A2MParams) -> None:
        super().check_params(p)
        if p.window % p.stride or p.window < 2 * p.stride:
            raise StageError(f"config key 'training.a2m.window' ({p.window}) must be a multiple of training.a2m.stride "
                             f"({p.stride}) and at least twice it")
        if p.window < 5:
            raise StageError("config key 'training.a2m.window' must be >= 5 frames (the sync loss window)")

    def required_checkpoints(self, p: A2MParams) -> dict[str, str | None]:
        return {"syncnet": p.syncnet} if p.w_sync > 0 else {}

    def examples(self, clip: ClipArrays, p: A2MParams) -> dict[str, np.ndarray]:
        w = p.window
        exp = clip.frames["exp"]
        t = min(len(exp), clip.n_frames)
        ks = np.arange(0, t - w + 1, p.window_stride)
        blink = blink_flags(clip.frames["eye_aspect_ratio"][:t], p.blink_threshold)
        mouth = np.nan_to_num(clip.frames["mouth_opening"][:t].astype(np.float32))
        d = clip.audio.shape[1]
        if len(ks) == 0:
            return {"audio": np.zeros((0, 2 * w, d), np.float32), "f0": np.zeros((0, 2 * w), np.float32),
                    "exp": np.zeros((0, w, 64), np.float32), "id": np.zeros((0, 80), np.float32),
                    "blink": np.zeros((0, w), np.float32), "amp": np.zeros((0,), np.float32),
                    "mouth": np.zeros((0, w), np.float32)}
        return {"audio": np.stack([clip.audio[2 * k:2 * (k + w)] for k in ks]).astype(np.float32),
                "f0": np.stack([clip.f0[2 * k:2 * (k + w)] for k in ks]).astype(np.float32),
                "exp": np.stack([exp[k:k + w] for k in ks]).astype(np.float32),
                "id": np.repeat(clip.id_coeff[None].astype(np.float32), len(ks), 0),
                "blink": np.stack([blink[k:k + w] for k in ks]),
                "amp": np.array([np.percentile(mouth[k:k + w], 90) for k in ks], np.float32),
                "mouth": np.stack([mouth[k:k + w] for k in ks])}

    def build(self, p: A2MParams, info: dict[str, Any]) -> A2M:
        basis = KeypointBasis.from_dict(info["keypoints"])
        return A2M(p, info["audio_dim"], basis, info["audio_mean"], info["audio_std"], motion_scale_for(basis))

    def frozen(self, p: A2MParams, info: dict[str, Any]) -> dict[str, nn.Module]:
        if p.w_sync <= 0:
            return {}
        from training.checkpoint import load_model

        stage, sp, net, meta = load_model(p.syncnet)
        if stage.name != "syncnet":
            raise StageError(f"training.a2m.syncnet={p.syncnet} is a {stage.name} checkpoint, not a SyncNet one")
        if meta["info"]["audio"] != info["audio"]:
            raise StageError(f"the SyncNet at {p.syncnet} was trained on {meta['info']['audio']} features but this "
                             f"dataset gives {info['audio']}; train a SyncNet on the same features")
        for q in net.parameters():
            q.requires_grad_(False)
        return {"syncnet": net}

    def prepare(self, batch: dict, step: int, gen: torch.Generator, p: A2MParams) -> dict:
        b, w = batch["exp"].shape[:2]
        eps = torch.randn(b, p.latent, w // p.stride, generator=gen)
        starts = torch.randint(0, w - 5 + 1, (b, p.sync_windows), generator=gen)
        return {**batch, "eps": eps, "sync_starts": starts.float(),
                "amp_mean": batch["amp"].mean().expand(b).clone()}

    def kl_factor(self, step: int, p: A2MParams) -> float:
        cycle = p.kl_ramp + p.kl_hold
        pos = step % cycle if cycle > 0 else 0
        return p.kl_weight * (min(1.0, pos / p.kl_ramp) if p.kl_ramp > 0 else 1.0)

    def loss(self, model, batch, step, p, frozen):
        core = model.module if hasattr(model, "module") else model
        if step == 0 and float(core.amp_ref) == 0.0:
            core.amp_ref.fill_(float(batch["amp_mean"][0]))
        pred, kl = model(batch)
        exp = batch["exp"]
        w_kp = landmark_weights().to(pred)
        d = (core.kp.expression(pred) - core.kp.expression(exp)) * core.motion_scale  # (B, T, 68, 3)
        terms = {
            "kl": kl,
            "exp_mse": nn.functional.mse_loss(pred, exp),
            "lm_mse": ((d ** 2).sum(-1) * w_kp).mean() / w_kp.mean(),
            "laplacian": ((pred[:, 2:] - 2 * pred[:, 1:-1] + pred[:, :-2]) ** 2).mean(),
            "l2": (pred ** 2).mean(),
        }
        weights = {"kl": self.kl_factor(step, p), "exp_mse": p.w_exp, "lm_mse": p.w_lm, "laplacian": p.w_lap,
                   "l2": p.w_l2}
        if "syncnet" in frozen and p.w_sync > 0:
            sn = frozen["syncnet"]
            f = sn.frames
            starts = batch["sync_starts"].long()  # (B, S)
            bi = torch.arange(pred.shape[0])[:, None, None]
            fi = starts[..., None] + torch.arange(f)  # (B, S, F)
            ai = 2 * starts[..., None] + torch.arange(2 * f)
            cos = sn(batch["audio"][bi, ai].flatten(0, 1), pred[bi, fi].flatten(0, 1))
            terms["sync"] = sync_bce(cos, torch.ones_like(cos))
            weights["sync"] = p.w_sync
        total = sum(weights[k] * v for k, v in terms.items())
        return total, {k: v.item() for k, v in terms.items()}

    @torch.no_grad()
    def validate(self, model, batches, p, frozen):
        preds, trues, mses = [], [], []
        gen = torch.Generator().manual_seed(0)
        for b in batches:
            pred = model.sample(b["audio"], b["f0"], b["blink"], b["amp"], p.temperature, gen)
            preds.append(mouth_opening(model.kp(b["id"][:, None], pred)).flatten())
            trues.append(mouth_opening(model.kp(b["id"][:, None], b["exp"])).flatten())
            mses.append(float(nn.functional.mse_loss(pred, b["exp"])))
        return {"val_mouth_r": pearson(torch.cat(preds), torch.cat(trues)), "val_exp_mse": float(np.mean(mses))}


STAGE = A2MStage()
