"""HuBERT audio features at 50 Hz: Real3D-Portrait's audio-to-motion input.

The reference (Real3D-Portrait / GeneFace++ `get_hubert_from_16k_speech`) runs
`facebook/hubert-large-ls960-ft` (a HubertForCTC checkpoint; only its `hubert.` encoder part is used)
on the whole clip, normalised by the checkpoint's `Wav2Vec2FeatureExtractor`, and keeps
`last_hidden_state` (1024-d). Its conv front-end is one big conv of receptive field 400 samples and
stride 320 (20 ms), so N samples give floor((N − 400) / 320) + 1 rows.

Nothing here downloads: `load_hubert` reads a local folder (default `$R3P_HOME/hubert/hubert-large-ls960-ft`)
with `local_files_only=True` and HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set while loading.

Row count — exactly 2 · n_frames rows for n_frames · 640 samples (audio aligned by
`preprocessing.video.align_audio`; rows 2k, 2k+1 belong to video frame k), by one of two rules:

- ``align="reference"`` (default, what the pretrained Real3D-Portrait models saw): the normalised audio
  is not padded; row j comes from samples [320 j, 320 j + 400) (centred at j · 20 ms + 12.5 ms);
  640 T samples give 2T − 1 rows and the last row is repeated once. Rows 0 … 2T − 2 equal the
  reference's output for the same clip (up to its window seams, see below).
- ``align="centered"``: the normalised audio is zero-padded by 200 samples on both sides, so row j is
  centred at j · 20 ms like `preprocessing.audio`'s log-mel; that gives 2T + 1 rows and the last
  one (centred at the clip's end) is dropped.

Long audio runs in bounded windows: output rows are produced `window_s` seconds at a time, each window
run with `context_s` seconds of extra audio on both sides whose rows are discarded. The conv
front-end is local (for ``feat_extract_norm="layer"`` checkpoints such as hubert-large; "group" ones
normalise over the whole window), so windowing only changes what self-attention sees beyond the
context; the reference instead cuts 20 s windows with no context. Memory is bounded by
window + 2 · context seconds of input.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from preprocessing.audio import HOP, SAMPLE_RATE, _check_audio

log = logging.getLogger(__name__)

HUBERT_RELPATH = "hubert/hubert-large-ls960-ft"  # under R3P_HOME
HUBERT_REPO = "facebook/hubert-large-ls960-ft"
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
ALIGNS = ("reference", "centered")


class HubertModelError(FileNotFoundError):
    """The HuBERT folder or one of its files is missing; the message says how to obtain it."""


class HubertCheckpointError(ValueError):
    """The folder's files are there but are not a usable HuBERT checkpoint."""


def default_hubert_dir(home: str | os.PathLike | None = None) -> Path:
    """`$R3P_HOME/hubert/hubert-large-ls960-ft` (R3P_HOME defaults to ~/.r3p)."""
    root = Path(home) if home is not None else Path(os.environ.get("R3P_HOME", "~/.r3p"))
    return root.expanduser() / HUBERT_RELPATH


def _obtain_hint(path: Path) -> str:
    return (f"on a machine with internet run `huggingface-cli download {HUBERT_REPO} --local-dir {path}` "
            f"(or `hf download {HUBERT_REPO} --local-dir {path}`), then copy that folder to {path}; it needs "
            f"{CONFIG_FILE}, {PREPROCESSOR_FILE} and {' or '.join(WEIGHT_FILES)}")


def check_hubert_dir(model_dir: str | os.PathLike) -> Path:
    """Return the folder if it holds config, preprocessor config and weights; else `HubertModelError`."""
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise HubertModelError(f"HuBERT model folder not found: {path}; {_obtain_hint(path)}")
    missing = [f for f in (CONFIG_FILE, PREPROCESSOR_FILE) if not (path / f).is_file()]
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if missing:
        raise HubertModelError(f"HuBERT model folder {path} lacks {', '.join(missing)}; {_obtain_hint(path)}")
    return path


@contextlib.contextmanager
def _offline():
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE on (env and huggingface_hub's cached flag), then restored."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved_env = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    import huggingface_hub.constants as hf_constants  # reads the env once, at import

    saved_flag = getattr(hf_constants, "HF_HUB_OFFLINE", None)
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = saved_flag
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet_transformers():
    """No progress bars or load reports while loading (the load is checked explicitly instead)."""
    from transformers.utils import logging as tlog

    verbosity, bars = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(verbosity)
        if bars:
            tlog.enable_progress_bar()


def _frontend_geometry(config) -> tuple[int, int]:
    """(receptive field, stride) in samples of the conv feature encoder; (400, 320) for HuBERT."""
    field, stride = 1, 1
    for k, s in zip(config.conv_kernel, config.conv_stride):
        field += (k - 1) * stride
        stride *= s
    return field, stride


class HubertEncoder:
    """A loaded HuBERT encoder; `features(audio, n_frames)` gives (2 · n_frames, hidden) float32."""

    def __init__(self, model, feature_extractor, device: str | torch.device = "cpu", dtype=torch.float32,
                 window_s: float = 20.0, context_s: float = 2.0, align: str = "reference"):
        if align not in ALIGNS:
            raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")
        if window_s <= 0 or context_s < 0:
            raise ValueError(f"window_s must be > 0 and context_s >= 0, got {window_s}, {context_s}")
        fe_rate = getattr(feature_extractor, "sampling_rate", SAMPLE_RATE)
        if fe_rate != SAMPLE_RATE:
            raise HubertCheckpointError(f"feature extractor expects {fe_rate} Hz audio, not {SAMPLE_RATE} Hz")
        self.field, self.stride = _frontend_geometry(model.config)
        if self.stride != HOP:
            raise HubertCheckpointError(f"conv front-end stride is {self.stride} samples, need {HOP} (50 Hz)")
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.device = torch.device(device)
        self.dtype = dtype
        self.align = align
        self.window_rows = max(1, round(window_s * SAMPLE_RATE / HOP))
        self.context_rows = max(0, round(context_s * SAMPLE_RATE / HOP))

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def normalise(self, audio: np.ndarray) -> np.ndarray:
        """The checkpoint's input normalisation (zero mean / unit variance iff `do_normalize`)."""
        a = np.asarray(audio, dtype=np.float32).reshape(-1)
        if a.size == 0:
            return a
        out = self.feature_extractor(a, sampling_rate=SAMPLE_RATE, return_tensors="np").input_values
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def n_rows(self, n_samples: int) -> int:
        """Rows the conv front-end yields for `n_samples` input samples (0 if shorter than its field)."""
        return 0 if n_samples < self.field else (n_samples - self.field) // self.stride + 1

    @torch.inference_mode()
    def encode(self, x: np.ndarray) -> np.ndarray:
        """last_hidden_state rows for already normalised (and padded) input, computed in windows.

        Output rows [r0, r1) of each window come from a run over rows [r0 − C, r1 + C) (clipped to the
        clip), i.e. samples [320 (r0 − C), 320 (r1 + C − 1) + 400); the context rows are dropped.
        """
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        rows = self.n_rows(x.size)
        out = np.empty((rows, self.hidden_size), dtype=np.float32)
        for r0 in range(0, rows, self.window_rows):
            r1 = min(rows, r0 + self.window_rows)
            a, b = max(0, r0 - self.context_rows), min(rows, r1 + self.context_rows)
            seg = torch.from_numpy(x[a * self.stride:(b - 1) * self.stride + self.field])
            hidden = self.model(seg[None].to(self.device, self.dtype)).last_hidden_state[0]
            if hidden.shape[0] != b - a:  # the front-end arithmetic above is wrong for this config
                raise HubertCheckpointError(f"model gave {hidden.shape[0]} rows for {seg.numel()} samples, "
                                            f"expected {b - a}")
            out[r0:r1] = hidden[r0 - a:r1 - a].float().cpu().numpy()
        return out

    def features(self, audio: np.ndarray, n_frames: int, fps: float = 25.0,
                 sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """(2 · n_frames, hidden) float32 HuBERT features of aligned 16 kHz audio (n_frames · 640 samples).

        Row count rule per `align` (module docstring): "reference" repeats the last of the 2T − 1 rows
        of the unpadded audio; "centered" zero-pads 200 samples each side and drops the last of 2T + 1.
        """
        a = _check_audio(audio, n_frames, fps, sample_rate)
        rows = 2 * n_frames
        if rows == 0:
            return np.zeros((0, self.hidden_size), dtype=np.float32)
        x = self.normalise(a)
        if self.align == "centered":
            pad = self.field // 2
            x = np.pad(x, (pad, pad))
        h = self.encode(x)
        if h.shape[0] >= rows:
            return np.ascontiguousarray(h[:rows])
        if h.shape[0] == 0:  # cannot happen for 640-sample frames and HuBERT's 400-sample field
            raise HubertCheckpointError(f"{x.size} samples are shorter than the {self.field}-sample front-end")
        return np.concatenate([h, np.repeat(h[-1:], rows - h.shape[0], axis=0)])


def load_hubert(model_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, *, window_s: float = 20.0, context_s: float = 2.0,
                align: str = "reference") -> HubertEncoder:
    """Load `HubertModel` + `Wav2Vec2FeatureExtractor` from a local folder; nothing is downloaded.

    `model_dir` defaults to `$R3P_HOME/hubert/hubert-large-ls960-ft`. A HubertForCTC checkpoint (the
    -ft model, keys prefixed "hubert.") loads its encoder part; the CTC head is ignored. Raises
    `HubertModelError` (a FileNotFoundError) naming the folder when it or a file is missing, and
    `HubertCheckpointError` when the checkpoint is not HuBERT or any encoder weight is absent (which
    would otherwise silently leave it randomly initialised).
    """
    path = check_hubert_dir(model_dir if model_dir is not None else default_hubert_dir())
    try:
        model_type = json.loads((path / CONFIG_FILE).read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise HubertCheckpointError(f"cannot read {path / CONFIG_FILE}: {e}") from e
    if model_type != "hubert":
        raise HubertCheckpointError(f"{path / CONFIG_FILE} has model_type {model_type!r}, expected 'hubert'")
    with _offline():
        from transformers import HubertModel, Wav2Vec2FeatureExtractor

        with _quiet_transformers():
            feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(str(path), local_files_only=True)
            model, info = HubertModel.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
    # masked_spec_embed is only used for SpecAugment masking in training
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.endswith("masked_spec_embed"))
    bad = missing + sorted(str(k) for k in info.get("mismatched_keys", ()))
    if bad or info.get("error_msgs"):
        raise HubertCheckpointError(f"{path} does not hold all HuBERT encoder weights (missing/mismatched: "
                                    f"{bad[:8]}{' …' if len(bad) > 8 else ''}; errors: {info.get('error_msgs')})")
    if info.get("unexpected_keys"):
        log.debug("HuBERT: ignored %d checkpoint tensors (e.g. the CTC head)", len(info["unexpected_keys"]))
    model = model.to(device=device, dtype=dtype).eval()
    return HubertEncoder(model, feature_extractor, device=device, dtype=dtype, window_s=window_s,
                         context_s=context_s, align=align)
