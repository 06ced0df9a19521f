"""Evaluation metrics with mergeable state (update / merge / compute), one module per metric.

See `base.py` for the API. Result names say which model ran: FID/KID/CSIM with the real weights,
FID-dlib/KID-dlib/CSIM-dlib on the offline dlib face ResNet, LSE-D/C with SyncNet v2 and
Sync-lm-D/C with the project's landmark SyncNet. LPIPS (`lpips.py`) needs the user's AlexNet and
v0.1 head files and is left out of the results without them. Networks live in their own modules
(`inception.py`, `syncnet.py`, `identity.py`, `lpips.py`) and load only from given paths.
"""

from .base import MeanMetric, Metric, MetricError, MetricResult, merge_all
from .csim import CSIM, cosine_similarity
from .frechet import FrechetDistance, frechet_distance
from .image import PSNR, SSIM, psnr, ssim
from .kid import KernelDistance, polynomial_mmd2
from .lipsync import LipSync, SyncScores, sync_scores
from .lmd import LMD, mouth_distance
from .pose import AED, APD, expression_and_angles

__all__ = [
    "AED", "APD", "CSIM", "LMD", "PSNR", "SSIM", "FrechetDistance", "KernelDistance", "LipSync", "MeanMetric",
    "Metric", "MetricError", "MetricResult", "SyncScores", "cosine_similarity", "expression_and_angles",
    "frechet_distance", "merge_all", "mouth_distance", "polynomial_mmd2", "psnr", "ssim", "sync_scores",
]
