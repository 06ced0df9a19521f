"""The 68 keypoints of the morphable model as a small torch module (canonical pose, no camera).

Stages that compare motions by their landmarks (SyncNet's mouth encoder, A2M's landmark loss)
need the keypoints from id + exp only; the full 35k-vertex model is not needed for that, so the
job hands the workers just the keypoint rows of the bases (`KeypointBasis`, plain arrays).
Units: the model's (decimetres); x right, y up, z towards the camera.

Also the blink and mouth controls of `preprocessing.audio` in torch, for (..., 68, ≥2) landmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

N_KEYPOINTS = 68
LIPS = list(range(48, 68))
EYES = list(range(36, 48))
UPPER_LIDS = [37, 38, 43, 44]


@dataclass
class KeypointBasis:
    """Keypoint rows of a morphable model: mean (68, 3), id basis (68, 3, 80), exp basis (68, 3, 64)."""

    mean: np.ndarray
    id_base: np.ndarray
    exp_base: np.ndarray

    @classmethod
    def from_face_model(cls, model) -> "KeypointBasis":
        """Slice the keypoint rows out of a `preprocessing.face_model.FaceModel`."""
        kp = np.asarray(model.keypoints, dtype=np.int64)
        rows = (kp[:, None] * 3 + np.arange(3)).reshape(-1)
        mean = np.asarray(model.mean_shape, np.float32).reshape(-1)[rows].reshape(N_KEYPOINTS, 3)
        return cls(mean=mean, id_base=np.asarray(model.id_base, np.float32)[rows].reshape(N_KEYPOINTS, 3, -1),
                   exp_base=np.asarray(model.exp_base, np.float32)[rows].reshape(N_KEYPOINTS, 3, -1))

    def to_dict(self) -> dict[str, list]:
        """JSON/Ray-friendly form."""
        return {"mean": self.mean.tolist(), "id_base": self.id_base.tolist(), "exp_base": self.exp_base.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "KeypointBasis":
        return cls(*(np.asarray(d[k], np.float32) for k in ("mean", "id_base", "exp_base")))


class Keypoints(torch.nn.Module):
    """id (..., 80) + exp (..., 64) → canonical 68 keypoints (..., 68, 3); differentiable in both."""

    def __init__(self, basis: KeypointBasis):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(basis.mean))
        self.register_buffer("id_base", torch.as_tensor(basis.id_base))
        self.register_buffer("exp_base", torch.as_tensor(basis.exp_base))

    def forward(self, id_coeff: torch.Tensor, exp: torch.Tensor) -> torch.Tensor:
        return self.mean + self.identity(id_coeff) + self.expression(exp)

    def identity(self, id_coeff: torch.Tensor) -> torch.Tensor:
        """The identity's displacement (..., 68, 3) from the mean face."""
        return torch.einsum("kcn,...n->...kc", self.id_base, id_coeff)

    def expression(self, exp: torch.Tensor) -> torch.Tensor:
        """The expression's displacement (..., 68, 3) of the keypoints (what a motion changes)."""
        return torch.einsum("kcn,...n->...kc", self.exp_base, exp)


def mouth_opening(lm: torch.Tensor) -> torch.Tensor:
    """Mean inner-lip gap over inner mouth width for (..., 68, ≥2) landmarks, as `preprocessing.audio`."""
    xy = lm[..., :2]
    gap = sum((xy[..., a, :] - xy[..., b, :]).norm(dim=-1) for a, b in ((61, 67), (62, 66), (63, 65))) / 3
    return gap / ((xy[..., 60, :] - xy[..., 64, :]).norm(dim=-1) + 1e-9)


def eye_aspect_ratio(lm: torch.Tensor) -> torch.Tensor:
    """Mean eye aspect ratio of both eyes for (..., 68, ≥2) landmarks, as `preprocessing.audio`."""
    xy = lm[..., :2]
    out = 0.0
    for s in (36, 42):
        p = [xy[..., s + i, :] for i in range(6)]
        out = out + ((p[1] - p[5]).norm(dim=-1) + (p[2] - p[4]).norm(dim=-1)) / (2 * (p[0] - p[3]).norm(dim=-1) + 1e-9)
    return out / 2


def landmark_weights(lips: float = 5.0, eyes: float = 3.0, upper_lids: float = 20.0) -> torch.Tensor:
    """Per-keypoint weights (68,) for the landmark loss: lips and eyelids up, as the reference."""
    w = torch.ones(N_KEYPOINTS)
    w[LIPS] = lips
    w[EYES] = eyes
    w[UPPER_LIDS] = upper_lids
    return w
