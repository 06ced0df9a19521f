"""Lip-sync metrics as syncnet_python defines them: offset search, LSE-D (min mean distance), LSE-C
(median − min), AV offset; averaged over clips as Wav2Lip's scripts report them.

For each video window i and shift k ∈ [−vshift, vshift] the distance is ‖v_i − a_{i+k} + 1e-6‖₂,
the audio embeddings zero-padded by vshift at both ends (torch's pairwise_distance on the padded
sequence). mdist[k] is the mean over windows; LSE-D = min mdist, LSE-C = median(mdist) − min
(torch's lower median), AV offset = vshift − argmin in frames: the best match pairs video window i
with audio window i − offset, so a positive offset means the audio comes earlier than the video.

Any embedder with `prefix`, `model` and `embed(frames, audio) -> (video_emb, audio_emb)` plugs in:
SyncNet v2 gives `LSE-D` / `LSE-C`; the project's own landmark SyncNet (training stage `syncnet`)
plugs in with prefix `Sync-lm` and gives `Sync-lm-D` / `Sync-lm-C`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .base import Metric, MetricError, MetricResult

VSHIFT = 15


class SyncEmbedder(Protocol):
    """A lip-sync embedding model: per-window video and audio embeddings of one clip."""

    prefix: str  # "LSE" (SyncNet v2) or "Sync-lm" (the project's landmark SyncNet)
    model: str

    def embed(self, video: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(video_emb, audio_emb), each (windows, dim), window k covering video frames k … k+4 at 25 fps.
        `video` is what the model reads: 224² face crops (SyncNet v2) or mouth landmarks (Sync-lm)."""
        ...


@dataclass(frozen=True)
class SyncScores:
    """One clip's sync scores: min distance (LSE-D), confidence (LSE-C), AV offset (frames), mean distance per shift."""

    min_dist: float
    confidence: float
    offset: int
    mean_dists: np.ndarray  # (2·vshift + 1,), shift −vshift … +vshift


def shift_distances(video_emb: np.ndarray, audio_emb: np.ndarray, vshift: int = VSHIFT) -> np.ndarray:
    """Distances (windows, 2·vshift + 1) between each video window and the audio windows shifted by −vshift … vshift."""
    v = torch.as_tensor(np.asarray(video_emb), dtype=torch.float32)
    a = torch.as_tensor(np.asarray(audio_emb), dtype=torch.float32)
    if v.ndim != 2 or a.shape != v.shape:
        raise MetricError(f"sync: video and audio embeddings must both be (windows, dim), got {tuple(v.shape)} "
                          f"and {tuple(a.shape)}")
    if vshift < 0:
        raise MetricError(f"sync: vshift must be >= 0, got {vshift}")
    win = 2 * vshift + 1
    padded = F.pad(a, (0, 0, vshift, vshift))
    rows = [F.pairwise_distance(v[i:i + 1].expand(win, -1), padded[i:i + win]) for i in range(len(v))]
    return torch.stack(rows).numpy()


def sync_scores(video_emb: np.ndarray, audio_emb: np.ndarray, vshift: int = VSHIFT) -> SyncScores:
    """LSE-D, LSE-C and the AV offset of one clip from its per-window embeddings (syncnet_python's definitions)."""
    if len(video_emb) == 0:
        raise MetricError("sync: no windows (the clip is shorter than 6 frames)")
    d = torch.from_numpy(shift_distances(video_emb, audio_emb, vshift))
    mdist = d.mean(0)
    minval, minidx = torch.min(mdist, 0)
    conf = torch.median(mdist) - minval
    return SyncScores(float(minval), float(conf), int(vshift - int(minidx)), mdist.numpy())


class LipSync(Metric):
    """Mean over clips of min distance (`<prefix>-D`, lower is better) and confidence (`<prefix>-C`, higher)."""

    def __init__(self, prefix: str = "LSE", model: str = "", vshift: int = VSHIFT):
        self.prefix, self.model, self.vshift = prefix, model, int(vshift)
        self.sum_dist = 0.0
        self.sum_conf = 0.0
        self.sum_abs_offset = 0.0
        self.n = 0

    @classmethod
    def for_embedder(cls, embedder: SyncEmbedder, vshift: int = VSHIFT) -> LipSync:
        """Named after the embedder (`LSE` for SyncNet v2, `Sync-lm` for the landmark SyncNet)."""
        return cls(embedder.prefix, embedder.model, vshift)

    def spec(self) -> tuple:
        return (type(self).__name__, self.prefix, self.model, self.vshift)

    def update_scores(self, scores: SyncScores) -> None:
        """Add one clip's scores."""
        self.sum_dist += scores.min_dist
        self.sum_conf += scores.confidence
        self.sum_abs_offset += abs(scores.offset)
        self.n += 1

    def update(self, video_emb: np.ndarray, audio_emb: np.ndarray) -> SyncScores:
        """Add one clip from its per-window embeddings; returns that clip's scores."""
        scores = sync_scores(video_emb, audio_emb, self.vshift)
        self.update_scores(scores)
        return scores

    def _merge_state(self, other: LipSync) -> None:
        self.sum_dist += other.sum_dist
        self.sum_conf += other.sum_conf
        self.sum_abs_offset += other.sum_abs_offset
        self.n += other.n

    def compute(self) -> dict[str, MetricResult]:
        if self.n == 0:
            raise MetricError(f"{self.prefix}: compute() before any clip was added")
        extra = {"mean_abs_offset_frames": self.sum_abs_offset / self.n}
        d, c = f"{self.prefix}-D", f"{self.prefix}-C"
        return {d: MetricResult(d, self.sum_dist / self.n, False, self.n, self.model, dict(extra)),
                c: MetricResult(c, self.sum_conf / self.n, True, self.n, self.model, dict(extra))}
