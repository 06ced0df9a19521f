"""SyncNet v2 (syncnet_python's `S`) in plain torch, and clip embedding as its evaluation does it.

Layer names match the state dict in the user's `syncnet_v2.model` (netcnnaud / netfcaud for the
13×20 MFCC window, netcnnlip / netfclip for 5 stacked 224² frames), so it loads by name.
Clip embedding follows SyncNetInstance.evaluate: frames as BGR, raw 0–255 floats; MFCC of the
16 kHz audio on the int16 sample scale (100 frames/s, 4 per video frame at 25 fps); usable length
min(#frames, ⌊#samples/640⌋); windows start at frames 0 … length − 6 (the reference's range).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .base import MetricError
from .inception import file_digest, load_state_dict_checked, read_torch_state
from .mfcc import mfcc

SYNCNET_FILE = "syncnet_v2.model"
SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
MFCC_PER_FRAME = 4
WINDOW_FRAMES = 5
MFCC_WINDOW = 20
CROP = 224


def _conv_bn(conv: nn.Module, bn: nn.Module, inplace_relu: bool = True) -> list[nn.Module]:
    return [conv, bn, nn.ReLU(inplace=inplace_relu)]


class SyncNetV2(nn.Module):
    """SyncNet v2: `forward_aud` (N, 1, 13, 20) MFCC → (N, 1024); `forward_lip` (N, 3, 5, 224, 224) → (N, 1024)."""

    def __init__(self, embed_dim: int = 1024):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_conv_bn(nn.Conv2d(1, 64, 3, 1, 1), nn.BatchNorm2d(64)),
            nn.MaxPool2d(kernel_size=1, stride=1),
            *_conv_bn(nn.Conv2d(64, 192, 3, 1, 1), nn.BatchNorm2d(192)),
            nn.MaxPool2d(kernel_size=3, stride=(1, 2)),
            *_conv_bn(nn.Conv2d(192, 384, 3, padding=1), nn.BatchNorm2d(384)),
            *_conv_bn(nn.Conv2d(384, 256, 3, padding=1), nn.BatchNorm2d(256)),
            *_conv_bn(nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256)),
            nn.MaxPool2d(kernel_size=3, stride=2),
            *_conv_bn(nn.Conv2d(256, 512, (5, 4)), nn.BatchNorm2d(512)),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netcnnlip = nn.Sequential(
            *_conv_bn(nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2)), nn.BatchNorm3d(96)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn(nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            *_conv_bn(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_bn(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_bn(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn(nn.Conv3d(256, 512, (1, 6, 6)), nn.BatchNorm3d(512)),
        )

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        """Audio embeddings of MFCC windows (N, 1, 13, 20)."""
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        """Video embeddings of 5-frame BGR 0–255 windows (N, 3, 5, 224, 224)."""
        return self.netfclip(self.netcnnlip(x).flatten(1))


def load_syncnet(path: str | Path) -> SyncNetV2:
    """SyncNet v2 with the user's `syncnet_v2.model` weights, in eval mode."""
    net = SyncNetV2()
    load_state_dict_checked(net, read_torch_state(path, "SyncNet"), Path(path), "SyncNet v2")
    return net.eval()


CROP_SCALE = 0.4
BOX_MEDIAN = 13


def syncnet_crops(frames: np.ndarray, boxes: np.ndarray, crop_scale: float = CROP_SCALE) -> np.ndarray:
    """224² lower-biased face crops (T, 224, 224, 3) as syncnet_python's pipeline cuts them.

    `frames` (T, H, W, 3) uint8, `boxes` (T, 4) face boxes (x0, y0, x1, y1) in pixels, one per frame
    (the reference uses S3FD's full-face boxes). Half-size s = max(w, h)/2 and the centre are
    median-filtered over 13 frames (scipy's medfilt, zero-padded ends, as the reference; a track shorter
    than 13 frames, which the reference drops, uses the largest odd kernel that fits); the crop
    spans rows cy − s … cy + s(1 + 2·crop_scale) and columns cx ± s(1 + crop_scale) of the frame
    padded with grey 110, then is resized bilinearly to 224².
    """
    import cv2
    from scipy.signal import medfilt

    frames, boxes = np.asarray(frames), np.asarray(boxes, dtype=np.float64)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise MetricError(f"syncnet_crops needs RGB uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if boxes.shape != (len(frames), 4):
        raise MetricError(f"syncnet_crops needs one (x0, y0, x1, y1) box per frame: {boxes.shape} for {len(frames)} frames")
    k = min(BOX_MEDIAN, len(boxes) - (len(boxes) + 1) % 2)  # shorter tracks: the largest odd kernel that fits
    size = medfilt(np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2, k)
    cy = medfilt((boxes[:, 1] + boxes[:, 3]) / 2, k)
    cx = medfilt((boxes[:, 0] + boxes[:, 2]) / 2, k)
    out = np.empty((len(frames), CROP, CROP, 3), np.uint8)
    for i, frame in enumerate(frames):
        bs = size[i]
        if bs < 1:
            raise MetricError(f"syncnet_crops: frame {i} has an empty face box {boxes[i].tolist()}")
        pad = int(bs * (1 + 2 * crop_scale))
        padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), constant_values=110)
        my, mx = cy[i] + pad, cx[i] + pad
        face = padded[int(my - bs):int(my + bs * (1 + 2 * crop_scale)),
                      int(mx - bs * (1 + crop_scale)):int(mx + bs * (1 + crop_scale))]
        out[i] = cv2.resize(face, (CROP, CROP))
    return out


def mfcc_windows(audio: np.ndarray, n_windows: int) -> np.ndarray:
    """SyncNet's audio inputs (n_windows, 1, 13, 20): MFCC columns 4k … 4k+19 for window k."""
    cc = mfcc(audio, SAMPLE_RATE).T  # (13, T)
    need = 4 * (n_windows - 1) + MFCC_WINDOW
    if n_windows > 0 and cc.shape[1] < need:
        raise MetricError(f"audio too short for {n_windows} SyncNet windows: {cc.shape[1]} MFCC frames, need {need}")
    return np.stack([cc[None, :, MFCC_PER_FRAME * k:MFCC_PER_FRAME * k + MFCC_WINDOW] for k in range(n_windows)]) \
        if n_windows > 0 else np.zeros((0, 1, 13, MFCC_WINDOW))


class SyncNetEmbedder:
    """Clip → per-window (video, audio) SyncNet embeddings; results are named `LSE-D` / `LSE-C`."""

    prefix = "LSE"
    min_frames = 6

    def __init__(self, path: str | Path, batch_size: int = 20, device: str = "cpu"):
        self.net = load_syncnet(path).to(device)
        self.device, self.batch_size = device, int(batch_size)
        self.model = f"{Path(path).name} (sha256 {file_digest(path)})"

    @torch.no_grad()
    def embed(self, frames: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Video and audio embeddings (W, 1024) each, of 224² RGB uint8 face crops (T, 224, 224, 3) at
        25 fps and mono 16 kHz audio (float in [-1, 1] or int16)."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[1:] != (CROP, CROP, 3) or frames.dtype != np.uint8:
            raise MetricError(f"SyncNet needs RGB uint8 face crops (T, 224, 224, 3), got {frames.dtype} {frames.shape}")
        audio = np.asarray(audio)
        if audio.ndim != 1:
            raise MetricError(f"SyncNet needs mono audio (samples,), got shape {audio.shape}")
        pcm = audio.astype(np.float64) if audio.dtype == np.int16 else \
            np.round(np.clip(audio.astype(np.float64), -1.0, 1.0) * 32767.0)
        length = min(len(frames), len(pcm) // SAMPLES_PER_FRAME)
        n = length - WINDOW_FRAMES
        if n < 1:
            raise MetricError(f"clip too short for SyncNet: {len(frames)} frames and {len(pcm)} samples give "
                              f"{length} usable frames; need at least {self.min_frames}")
        video = torch.from_numpy(np.ascontiguousarray(frames[:length, :, :, ::-1])).permute(3, 0, 1, 2).float()
        aud = torch.from_numpy(mfcc_windows(pcm, n)).float()
        v_out, a_out = [], []
        for i in range(0, n, self.batch_size):
            idx = range(i, min(n, i + self.batch_size))
            v_out.append(self.net.forward_lip(torch.stack([video[:, k:k + WINDOW_FRAMES] for k in idx]).to(self.device)))
            a_out.append(self.net.forward_aud(aud[i:i + len(idx)].to(self.device)))
        return torch.cat(v_out).cpu().numpy(), torch.cat(a_out).cpu().numpy()
