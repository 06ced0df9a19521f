"""CSIM: cosine similarity of identity embeddings, source image vs each generated frame (higher is better).

The name says which model ran: `CSIM` for ArcFace (insightface buffalo_l), `CSIM-dlib` for the
offline dlib face ResNet. Mean over all frames of all clips (state: sum, count).
"""

from __future__ import annotations

import numpy as np

from .base import MeanMetric, MetricError


def cosine_similarity(source: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Cosine between one embedding (d,) and each row of (N, d); values in [-1, 1]."""
    s = np.asarray(source, dtype=np.float64).reshape(-1)
    f = np.asarray(frames, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] != s.shape[0]:
        raise MetricError(f"CSIM: source embedding {s.shape} and frame embeddings {f.shape} do not agree")
    ns, nf = np.linalg.norm(s), np.linalg.norm(f, axis=1)
    if ns == 0 or np.any(nf == 0):
        raise MetricError("CSIM: got an all-zero embedding")
    return (f @ s) / (nf * ns)


class CSIM(MeanMetric):
    """Mean cosine between the source identity embedding and each generated frame's."""

    higher_is_better = True

    def __init__(self, name: str = "CSIM", model: str = ""):
        super().__init__(name, model)

    @classmethod
    def for_embedder(cls, embedder) -> CSIM:
        """A CSIM named and labelled for the embedder that produces its inputs."""
        return cls(embedder.csim_name, embedder.model)

    def update(self, source_embedding: np.ndarray, frame_embeddings: np.ndarray) -> None:
        """Add the frames of one clip: source embedding (d,), generated frame embeddings (N, d)."""
        self._add(cosine_similarity(source_embedding, frame_embeddings))
