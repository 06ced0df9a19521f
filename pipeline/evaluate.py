"""`r3p evaluate`: the evaluation job — protocols × models on a dataset split, Ray Data actors, MLflow, report.

Items (protocol, driving clip, source clip; `evaluation.protocols`) go through Ray Data to actors
that load the metric networks once (`resolve_backends`) and the generators; for one item each
actor reads the clips' rows (`pipeline.shards`), generates with every model, and returns one
fresh metric state per (model, metric) plus per-clip values and small frame strips. The driver
writes each item's result to the evaluation's cache (`OUT/cache/<backends signature>/<item>.pkl`,
so a re-run computes only what is missing), merges the states per (protocol, model) — equal to a
single pass, see `single_pass` — logs a parent MLflow run with one nested run per protocol, and
writes `report.html`. A clip that fails is listed with its error; the others still count.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from evaluation.generators import BASELINES, GenerationInput, Geometry, load_generator
from evaluation.protocols import PROTOCOL_METRICS, EvalItem, build_items, clip_list_hash, parse_protocols
from pipeline import shards
from pipeline.config import R3PConfig

FRAME_COLUMNS = ["clip_id", "index", "timestamp", "valid", "frame_jpeg", "landmarks", "exp", "euler", "trans",
                 "eg3d_cam"]
AUDIO_COLUMNS = ("mel", "f0", "rms", "hubert")
CACHE_FORMAT = 1


class EvaluateError(RuntimeError):
    """The evaluation cannot start (no clips in the split, unknown model); the message says what to do."""


# ------------------------------------------------------------------------------------------------
# reading one clip


@dataclass
class ClipData:
    """The first valid frames of one clip: RGB frames, their geometry, and the clip's audio features."""

    clip_id: str
    frames: np.ndarray  # (T, H, W, 3) uint8
    geometry: Geometry
    audio: dict[str, np.ndarray]
    index: np.ndarray  # frame index in the clip of each row (audio features have 2 rows per frame index)
    timestamps: np.ndarray  # seconds in the source video of each row
    source: str | None  # the video the clip was cut from (its waveform feeds SyncNet v2)


def _shard_files(layout: shards.Layout, table: str) -> list[str]:
    return [layout.shard_path(table, s) for s in sorted(shards.published(layout))]


def load_clip(layout: shards.Layout, clip_id: str, max_frames: int, min_frames: int = 2) -> ClipData:
    """Frames (valid, with finite landmarks, first `max_frames`), geometry and audio features of `clip_id`."""
    from preprocessing.process import decode_image

    parts = [pq.read_table(p, filesystem=layout.fs, columns=FRAME_COLUMNS, filters=[("clip_id", "=", clip_id)])
             for p in _shard_files(layout, "frames")]
    t = pa.concat_tables(parts) if parts else pa.table({})
    if t.num_rows == 0:
        raise ValueError(f"clip {clip_id}: no frame rows in {layout.uri}")
    t = t.sort_by("index")
    lm = np.asarray(t["landmarks"].to_pylist(), dtype=np.float64).reshape(-1, 68, 2)
    ok = np.asarray(t["valid"].to_pylist(), dtype=bool) & np.isfinite(lm).all(axis=(1, 2))
    idx = np.flatnonzero(ok)[:max_frames]
    if len(idx) < min_frames:
        raise ValueError(f"clip {clip_id}: {len(idx)} valid frame(s) with landmarks; at least {min_frames} needed")
    jpegs = t["frame_jpeg"].to_pylist()
    frames = np.stack([decode_image(jpegs[i]) for i in idx])
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"clip {clip_id}: frames decode to {frames.shape}, expected RGB (T, H, W, 3)")
    exp = np.asarray(t["exp"].to_pylist(), dtype=np.float64)[idx]
    euler = np.asarray(t["euler"].to_pylist(), dtype=np.float64)[idx]
    trans = np.asarray(t["trans"].to_pylist(), dtype=np.float64)[idx]
    cams = np.asarray(t["eg3d_cam"].to_pylist(), dtype=np.float64)[idx]
    audio: dict[str, np.ndarray] = {}
    cparts = [pq.read_table(p, filesystem=layout.fs, columns=["clip_id", "source", *AUDIO_COLUMNS],
                            filters=[("clip_id", "=", clip_id)]) for p in _shard_files(layout, "clips")]
    crow = pa.concat_tables(cparts).to_pylist() if cparts else []
    if crow:
        for k in AUDIO_COLUMNS:
            if crow[0][k] is not None:
                audio[k] = np.asarray(crow[0][k], dtype=np.float32)
    index = np.asarray(t["index"].to_pylist(), dtype=np.int64)[idx]
    stamps = np.asarray(t["timestamp"].to_pylist(), dtype=np.float64)[idx]
    return ClipData(clip_id, frames, Geometry(lm[idx], exp, euler, trans, cams), audio, index, stamps,
                    crow[0]["source"] if crow else None)


class LandmarkSyncEmbedder:
    """Sync-lm: the project's landmark SyncNet (an `r3p train --stage syncnet` checkpoint) as a SyncEmbedder.

    video = expression coefficients (T, 64) of the frames, audio = the clip's features (2T, D) of the kind
    the checkpoint was trained on; window k covers frames k … k+F-1 and audio rows 2k … 2(k+F)-1."""

    prefix = "Sync-lm"

    def __init__(self, checkpoint: str):
        from training.checkpoint import load_model

        stage, params, net, meta = load_model(checkpoint)
        if stage.name != "syncnet":
            raise ValueError(f"evaluate.sync_model: {checkpoint} is a {stage.name} checkpoint; give a syncnet one")
        self.net, self.frames, self.audio_kind = net, int(params.frames), str(meta["info"].get("audio", "mel"))
        self.model = f"landmark SyncNet {Path(checkpoint).parent.name}/{Path(checkpoint).name} step {meta.get('step')}"

    def embed(self, video: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mouth embeddings, audio embeddings), each (windows, dim)."""
        import torch

        f = self.frames
        t = min(len(video), len(audio) // 2)
        if t < f:
            raise ValueError(f"Sync-lm: {t} frames are fewer than one {f}-frame window")
        ks = range(t - f + 1)
        with torch.no_grad():
            e = torch.as_tensor(np.stack([video[k:k + f] for k in ks]), dtype=torch.float32)
            a = torch.as_tensor(np.stack([audio[2 * k:2 * (k + f)] for k in ks]), dtype=torch.float32)
            return self.net.mouth_embedding(e).numpy(), self.net.audio_embedding(a).numpy()


# ------------------------------------------------------------------------------------------------
# scoring one item (what an actor does)


@dataclass
class ItemResult:
    """One item's outcome: per model, metric states / per-clip values / reasons a metric did not run."""

    key: str
    protocol: str
    clip_id: str
    source_clip_id: str
    states: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> family -> Metric
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> result name -> per-clip value
    not_computed: dict[str, dict[str, str]] = field(default_factory=dict)  # model -> family -> reason
    strips: dict[str, bytes] = field(default_factory=dict)  # "source"/"driving"/model -> PNG of a frame row
    frames: int = 0
    seconds: float = 0.0
    error: str | None = None


def _strip_png(frames: np.ndarray, n: int, height: int = 96) -> bytes:
    """PNG of `n` evenly spaced frames side by side, each scaled to `height` pixels."""
    from PIL import Image

    idx = np.linspace(0, len(frames) - 1, n).round().astype(int)
    tiles = [Image.fromarray(frames[i]).resize((height * frames.shape[2] // frames.shape[1], height),
                                               Image.BILINEAR) for i in idx]
    strip = Image.new("RGB", (sum(t.width for t in tiles), height))
    x = 0
    for t in tiles:
        strip.paste(t, (x, 0))
        x += t.width
    buf = io.BytesIO()
    strip.save(buf, format="PNG")
    return buf.getvalue()


class ItemScorer:
    """Holds the metric backends and generators (loaded once) and scores items; an embedding cache skips
    repeated frames (a static source embeds once)."""

    def __init__(self, layout_uri: str, models: list[str], backend_paths: dict[str, str | None], max_frames: int,
                 strip_frames: int = 4, threads: int = 1, sync_checkpoint: str | None = None,
                 model_paths: dict[str, str] | None = None, cfg_json: str | None = None):
        import torch

        from evaluation.metrics.backends import resolve_backends

        torch.set_num_threads(max(1, threads))
        self.layout = shards.open_dataset(layout_uri)
        self.models = list(models)
        self.generators = build_generators(self.models, model_paths or {}, cfg_json)
        lm_sync = LandmarkSyncEmbedder(sync_checkpoint) if sync_checkpoint else None
        self.backends = resolve_backends(**backend_paths, landmark_sync=lm_sync)
        self.max_frames, self.strip_frames = max_frames, strip_frames
        self._lpips = None
        if self.backends.lpips_dir is not None:
            from evaluation.metrics.lpips import LPIPS

            self._lpips = LPIPS(self.backends.lpips_dir)
        self._emb: dict[bytes, np.ndarray] = {}
        self._audio, self._audio_key = np.zeros(0, np.float32), None

    # -- embeddings with a content cache
    def _cached(self, tag: str, fn: Callable[[np.ndarray, np.ndarray | None], np.ndarray], frames: np.ndarray,
                landmarks: np.ndarray | None) -> np.ndarray:
        out = []
        for i, f in enumerate(frames):
            lm = None if landmarks is None else landmarks[i]
            h = hashlib.sha1(tag.encode() + f.tobytes() + (b"" if lm is None else lm.tobytes())).digest()
            if h not in self._emb:
                if len(self._emb) > 20000:
                    self._emb.clear()
                self._emb[h] = fn(f, lm)
            out.append(self._emb[h])
        return np.stack(out)

    def identity(self, frames: np.ndarray, landmarks: np.ndarray | None) -> np.ndarray:
        """Identity embeddings (N, d) of RGB frames (landmarks (N, 68, 2) when known)."""
        emb = self.backends.identity
        return self._cached("id:" + emb.model, lambda f, lm: emb.embed_one(f, lm), frames, landmarks)

    def features(self, frames: np.ndarray, landmarks: np.ndarray | None) -> np.ndarray:
        """FID features (N, d): Inception pool features, or the dlib embeddings of FID-dlib."""
        ext = self.backends.features
        if hasattr(ext, "embed_one"):
            return self._cached("id:" + ext.model, lambda f, lm: ext.embed_one(f, lm), frames, landmarks)
        return self._cached("fid:" + ext.model, lambda f, lm: ext(f[None])[0], frames, None)

    def __call__(self, item: EvalItem) -> ItemResult:
        """Generate with every model and fill one fresh metric state per (model, metric family)."""
        t0 = time.perf_counter()
        res = ItemResult(item.key, item.protocol, item.clip_id, item.source_clip_id)
        try:
            drive = load_clip(self.layout, item.clip_id, self.max_frames)
            src = drive if item.source_clip_id == item.clip_id else load_clip(self.layout, item.source_clip_id, 1, 1)
            res.frames = len(drive.frames)
            inp = GenerationInput(src.frames[0], src.geometry.take(np.array([0])), drive.frames, drive.geometry,
                                  drive.audio, "audio" if item.protocol == "audio" else "video", drive.index)
            res.strips["source"] = _strip_png(src.frames[:1], 1)
            res.strips["driving"] = _strip_png(drive.frames, self.strip_frames)
            for name, gen in self.generators.items():
                out = gen(inp)
                if out.frames.shape != drive.frames.shape or out.frames.dtype != np.uint8:
                    raise ValueError(f"model {name} returned frames {out.frames.dtype} {out.frames.shape}; expected "
                                     f"uint8 {drive.frames.shape}")
                res.strips[name] = _strip_png(out.frames, self.strip_frames)
                self._score(item.protocol, name, inp, drive, out, res)
        except Exception as exc:  # noqa: BLE001 - a failing clip is listed with its error, never fatal
            res.error = f"{type(exc).__name__}: {exc}"
            res.states, res.values = {}, {}
        res.seconds = time.perf_counter() - t0
        return res

    def _score(self, protocol: str, model: str, inp: GenerationInput, drive: ClipData, out, res: ItemResult) -> None:
        from evaluation.metrics import AED, APD, LMD, PSNR, SSIM, CSIM, FrechetDistance

        states: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        gen_lm = self._face_landmarks(inp, drive, out)
        why = getattr(self.generators.get(model), "refit_error", None)
        no_geo = (f"the model's frames have no fitted geometry: {why}" if why else
                  "the model's frames carry no fitted geometry (the driving geometry the model was asked to follow is "
                  "not used in its place)")
        for fam in PROTOCOL_METRICS[protocol]:
            if fam == "PSNR":
                m = PSNR()
                m.update(out.frames, drive.frames)
            elif fam == "SSIM":
                m = SSIM()
                m.update(out.frames, drive.frames)
            elif fam == "LPIPS":
                if self._lpips is None:
                    skipped[fam] = self.backends.notes.get("LPIPS", "no LPIPS weights")
                    continue
                m = _fresh_lpips(self._lpips)
                m.update(out.frames, drive.frames)
            elif fam == "CSIM":
                m = CSIM.for_embedder(self.backends.identity)
                m.update(self.identity(inp.source_frame[None], inp.source_geometry.landmarks)[0],
                         self.identity(out.frames, gen_lm))
            elif fam in ("AED", "APD"):
                if out.geometry is None:
                    skipped[fam] = no_geo
                    continue
                m = AED() if fam == "AED" else APD()
                m.update(out.geometry.exp if fam == "AED" else out.geometry.euler,
                         drive.geometry.exp if fam == "AED" else drive.geometry.euler)
            elif fam == "LMD":
                if out.geometry is None:
                    skipped[fam] = no_geo
                    continue
                m = LMD()
                m.update(out.geometry.landmarks, drive.geometry.landmarks)
            elif fam == "FID":
                m = FrechetDistance.for_extractor(self.backends.features)
                m.update(self.features(drive.frames, drive.geometry.landmarks), real=True)
                m.update(self.features(out.frames, gen_lm), real=False)
            elif fam == "LSE":
                why = self._sync_blocker(out, drive)
                if why:
                    skipped[fam] = why
                    continue
                from evaluation.metrics import LipSync

                sync = self.backends.sync
                m = LipSync.for_embedder(sync)
                run = longest_run(drive.index)  # lip sync reads consecutive frames
                try:
                    if isinstance(sync, LandmarkSyncEmbedder):
                        i0 = int(drive.index[run.start])
                        audio = drive.audio[sync.audio_kind][2 * i0:2 * (i0 + run.stop - run.start)]
                        m.update(*sync.embed(out.geometry.exp[run], audio))
                    else:  # SyncNet v2: whole aligned face crops at 224² (Wav2Lip's LRS mode) + the source waveform
                        m.update(*sync.embed(_resize(out.frames[run], 224), self._waveform(drive, run)))
                except Exception as exc:  # noqa: BLE001 - the other metrics of the clip still count
                    skipped[fam] = f"failed on this clip: {type(exc).__name__}: {exc}"
                    continue
            else:  # pragma: no cover - PROTOCOL_METRICS names only the families above
                raise ValueError(f"unknown metric family {fam}")
            states[fam] = m
            if fam != "FID":  # a per-clip FID of ~50 frames means little; FID is over all frames
                for name, r in m.compute().items():
                    res.values.setdefault(model, {})[name] = r.value
        res.states[model] = states
        if skipped:
            res.not_computed[model] = skipped


    @staticmethod
    def _face_landmarks(inp: GenerationInput, drive: ClipData, out) -> np.ndarray | None:
        """Where the face is in the generated frames, for the identity/FID embedders: the generator's own geometry;
        for a trained model (no geometry), where it was asked to put the face — the driving frames' landmarks
        (video: the head follows the driving pose in the crop) or the source's (audio: the source pose), so a
        frame whose face the detector cannot find still gets embedded (and scores low) instead of failing."""
        if out.geometry is not None or len(out.frames) != len(drive.frames):
            return None if out.geometry is None else out.geometry.landmarks
        if inp.mode == "video":
            return drive.geometry.landmarks
        return np.repeat(inp.source_geometry.landmarks[:1], len(out.frames), 0)

    def _sync_blocker(self, out, drive: ClipData) -> str | None:
        """Why the sync metric cannot run on this item (None when it can)."""
        sync = self.backends.sync
        if sync is None:
            return self.backends.notes["LSE"]
        run = longest_run(drive.index)
        if run.stop - run.start < 6:
            return (f"lip sync needs >= 6 consecutive valid frames; the clip's longest run of scored frames is "
                    f"{run.stop - run.start}")
        if not isinstance(sync, LandmarkSyncEmbedder):
            if not drive.source or not Path(drive.source).is_file():
                return f"LSE needs the clip's waveform; its source video {drive.source!r} is not a local file here"
            return None
        if out.geometry is None:
            return "Sync-lm reads the generated frames' expression; the model's frames carry no fitted geometry"
        if sync.audio_kind not in drive.audio:
            return f"Sync-lm was trained on {sync.audio_kind} features; this dataset has none for the clip"
        return None

    def _waveform(self, drive: ClipData, run: slice) -> np.ndarray:
        """16 kHz mono samples of the frames `run` (640 per frame from the run's first timestamp)."""
        from preprocessing.video import read_audio

        if self._audio_key != drive.source:
            self._audio, self._audio_key = read_audio(drive.source), drive.source
        s0 = int(round(drive.timestamps[run.start] * 16000))
        return self._audio[s0:s0 + 640 * (run.stop - run.start)]


def longest_run(index: np.ndarray) -> slice:
    """Rows of the longest run of consecutive frame indices (the first one on ties)."""
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(index)]])
    k = int(np.argmax(stops - starts))
    return slice(int(starts[k]), int(stops[k]))


def _resize(frames: np.ndarray, size: int) -> np.ndarray:
    """Frames (T, H, W, 3) resized to size² (bilinear)."""
    import cv2

    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_LINEAR) for f in frames])


def _fresh_lpips(template):
    """An empty LPIPS state sharing the template's loaded network."""
    import copy

    m = copy.copy(template)
    m.total, m.total_sq, m.n = 0.0, 0.0, 0
    return m


class _ResultUnpickler(pickle.Unpickler):
    """Unpickles ItemResults only: r3p's evaluation classes, numpy arrays and plain containers; any other
    global (e.g. os.system in a tampered cache file) is refused before anything runs."""

    _NUMPY = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
              ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
              ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
              ("numpy._core.numeric", "_frombuffer"), ("collections", "OrderedDict"), ("builtins", "set"),
              ("builtins", "frozenset"), ("builtins", "complex")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._NUMPY or module in ("numpy.dtypes",) or module.startswith("evaluation.") \
                or module == __name__:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"evaluation cache: refusing to load {module}.{name}")


def dump_result(result: ItemResult) -> bytes:
    """An ItemResult as bytes (the per-item cache file and the actors' payload)."""
    return pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)


def load_result(data: bytes) -> ItemResult:
    """Bytes of `dump_result` back, through `_ResultUnpickler` (nothing but evaluation state is built)."""
    out = _ResultUnpickler(io.BytesIO(data)).load()
    if not isinstance(out, ItemResult):
        raise pickle.UnpicklingError(f"evaluation cache: expected an ItemResult, got {type(out).__name__}")
    return out


class EvalOperator:
    """Ray Data operator: loads the scorer once; a batch of items in, pickled ItemResults out."""

    def __init__(self, layout_uri: str, models: list[str], backend_paths: dict[str, str | None], max_frames: int,
                 strip_frames: int, threads: int, sync_checkpoint: str | None,
                 model_paths: dict[str, str] | None = None, cfg_json: str | None = None):
        self.scorer = ItemScorer(layout_uri, models, backend_paths, max_frames, strip_frames, threads, sync_checkpoint,
                                 model_paths, cfg_json)

    def __call__(self, batch: pa.Table) -> pa.Table:
        keys, payloads = [], []
        for row in batch.to_pylist():
            res = self.scorer(EvalItem(row["protocol"], row["clip_id"], row["source_clip_id"]))
            keys.append(res.key)
            payloads.append(dump_result(res))
        return pa.table({"key": pa.array(keys, pa.string()), "payload": pa.array(payloads, pa.binary())})


# ------------------------------------------------------------------------------------------------
# merging


def merge_results(results: list[ItemResult], models: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """{protocol: {model: {result name: MetricResult}}} from item states merged in key order, plus reasons
    under the pseudo-model key '_not_computed' ({model: {family: reason}})."""
    from evaluation.metrics import MetricError, merge_all

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for protocol in sorted({r.protocol for r in results}):
        rs = sorted((r for r in results if r.protocol == protocol and r.error is None), key=lambda r: r.key)
        table: dict[str, dict[str, Any]] = {m: {} for m in models}
        reasons: dict[str, dict[str, str]] = {m: {} for m in models}
        for model in models:
            fams = sorted({f for r in rs for f in r.states.get(model, {})})
            for fam in fams:
                parts = [r.states[model][fam] for r in rs if fam in r.states.get(model, {})]
                try:
                    table[model].update(merge_all(parts).compute())
                except MetricError as exc:
                    reasons[model][fam] = str(exc)
            for r in rs:
                for fam, why in r.not_computed.get(model, {}).items():
                    reasons[model].setdefault(fam, why)
        out[protocol] = {**table, "_not_computed": reasons}
    return out


def single_pass(scorer: ItemScorer, items: list[EvalItem]) -> dict[str, dict[str, dict[str, Any]]]:
    """Reference: one metric object per (protocol, model, family) updated item after item in this process."""
    results = [scorer(it) for it in items]
    merged: dict[str, dict[str, dict[str, Any]]] = {}
    for protocol in sorted({r.protocol for r in results}):
        merged[protocol] = {}
        for model in scorer.models:
            totals: dict[str, Any] = {}
            for r in sorted(results, key=lambda r: r.key):
                if r.protocol != protocol or r.error:
                    continue
                for fam, st in r.states.get(model, {}).items():
                    if fam in totals:
                        totals[fam]._merge_state(st)  # the same fold as one object updated clip after clip
                    else:
                        totals[fam] = st
            merged[protocol][model] = {k: v for st in totals.values() for k, v in st.compute().items()}
    return merged


# ------------------------------------------------------------------------------------------------
# the job


def _backend_paths(cfg: R3PConfig) -> dict[str, str | None]:
    from pipeline.assets import asset_path

    return {k: str(asset_path(k, cfg.home, cfg.assets)) for k in ("fid_inception", "insightface", "syncnet", "lpips")}


def sync_checkpoint(cfg: R3PConfig, layout: shards.Layout) -> str | None:
    """The landmark SyncNet checkpoint folder of `evaluate.sync_model` (run name under the runs folder, or a folder)."""
    if not cfg.evaluate.sync_model:
        return None
    from pipeline.train import TrainError, resolve_checkpoint, storage_root

    try:
        return resolve_checkpoint(cfg.evaluate.sync_model, storage_root(cfg, layout))
    except TrainError as exc:
        raise EvaluateError(f"evaluate.sync_model: {exc}") from None


def _checkpoints(gen: Any) -> list[str]:
    """The checkpoint folders behind a trained generator (motion, a2m, htbsr), for the cache signature."""
    anim = getattr(gen, "anim", None)
    if anim is None:
        return []
    out = [anim.head.checkpoint]
    out += [m.checkpoint for m in (anim.a2m, anim.htbsr) if m is not None]
    return [str(c) for c in out if c]


def _signature(models: list[str], paths: dict[str, str | None], max_frames: int) -> str:
    """Cache folder name: what makes a cached item result reusable (models, weight files and sizes, frames)."""
    files: dict[str, Any] = {}
    for k, p in sorted(paths.items()):  # a missing file counts as absent wherever it was looked for
        q = Path(p) if p else None
        if q is not None and q.is_file():
            files[k] = [p, q.stat().st_size, q.stat().st_mtime_ns]
        elif q is not None and q.is_dir():
            files[k] = [p, sorted((f.name, f.stat().st_size) for f in q.iterdir() if f.is_file())]
        else:
            files[k] = None
    raw = json.dumps({"format": CACHE_FORMAT, "models": sorted(models), "files": files, "max_frames": max_frames},
                     sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def _select_clips(layout: shards.Layout, split: str, limit: int | None) -> list[tuple[str, str]]:
    clips = shards.read_table(layout, "clips", columns=["clip_id", "split", "speaker_id", "status"])
    ok = clips.filter(pc.equal(clips["status"], "ok"))
    sel = ok if split == "all" else ok.filter(pc.equal(ok["split"], split))
    if sel.num_rows == 0:
        counts = {s: int(pc.sum(pc.equal(ok["split"], s)).as_py() or 0) for s in ("train", "val", "test")}
        raise EvaluateError(f"{layout.uri} has no usable clips in split {split!r} (ok clips per split: {counts}); "
                            "choose another with --split (train|val|test|all)")
    rows = sorted(zip(sel["clip_id"].to_pylist(), [s or c for s, c in zip(sel["speaker_id"].to_pylist(),
                                                                         sel["clip_id"].to_pylist())]))
    return rows[:limit] if limit else rows


def model_keys(specs: list[str]) -> dict[str, str]:
    """{table key: model} for the requested models: a baseline keys as itself; a trained model (a runs / run
    folder) by its folder name ("model" for a folder named runs; characters MLflow accepts in a metric name),
    made unique."""
    import re

    out: dict[str, str] = {}
    for m in specs:
        if m in BASELINES:
            out[m] = m
            continue
        name = Path(m).resolve().name
        base = "model" if name in ("runs", "") else re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        key, k = base, 2
        while key in out or key in BASELINES:
            key, k = f"{base}-{k}", k + 1
        out[key] = m
    return out


def build_generators(models: list[str], model_paths: dict[str, str], cfg_json: str | None) -> dict[str, Any]:
    """{key: Generator}: the baselines by name, the trained models (`model_paths`: key → folder) through the animate
    pipeline (`pipeline.animate_generator`) under the job's config (`cfg_json`, else the default)."""
    gens: dict[str, Any] = {}
    cfg = None
    for m in models:
        if m in model_paths:
            from pipeline.animate_generator import AnimateGenerator
            from pipeline.config import load_config

            cfg = cfg or (R3PConfig.model_validate_json(cfg_json) if cfg_json else load_config())
            gens[m] = AnimateGenerator(model_paths[m], cfg)
        else:
            gens[m] = load_generator(m)
    return gens


def _run_items(items: list[EvalItem], layout_uri: str, models: list[str], paths: dict[str, str | None], cfg: R3PConfig,
               address: str | None, use_ray: bool, sync_checkpoint: str | None,
               model_paths: dict[str, str] | None = None) -> list[ItemResult]:
    ec = cfg.evaluate
    if not use_ray:
        scorer = ItemScorer(layout_uri, models, paths, ec.max_frames, ec.strip_frames, ec.threads, sync_checkpoint,
                            model_paths, cfg.model_dump_json())
        return [scorer(it) for it in items]
    import ray

    from pipeline.preprocess import ensure_ray

    started = ensure_ray(address)
    try:
        return _run_on_ray(items, layout_uri, models, paths, cfg, sync_checkpoint, model_paths)
    finally:
        if started:  # a Ray this job started is shut down (in-process callers: tests, the demo)
            ray.shutdown()


def _run_on_ray(items: list[EvalItem], layout_uri: str, models: list[str], paths: dict[str, str | None],
                cfg: R3PConfig, sync_checkpoint: str | None, model_paths: dict[str, str] | None = None
                ) -> list[ItemResult]:
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from pipeline.preprocess import _actor_count

    ec = cfg.evaluate
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = False
    rows = [{"protocol": it.protocol, "clip_id": it.clip_id, "source_clip_id": it.source_clip_id} for it in items]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    n = _actor_count(min(ec.actors, len(rows)), ec.actor_num_cpus, ec.actor_num_gpus)
    remote: dict[str, Any] = {"num_cpus": ec.actor_num_cpus}
    if ec.actor_num_gpus:
        remote["num_gpus"] = ec.actor_num_gpus
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = ds.map_batches(EvalOperator, fn_constructor_kwargs={
            "layout_uri": layout_uri, "models": models, "backend_paths": paths, "max_frames": ec.max_frames,
            "strip_frames": ec.strip_frames, "threads": ec.threads, "sync_checkpoint": sync_checkpoint,
            "model_paths": model_paths or {}, "cfg_json": cfg.model_dump_json()},
            batch_size=1, batch_format="pyarrow", compute=ActorPoolStrategy(size=n), **remote)
    results = []
    for batch in out.iter_batches(batch_size=None, batch_format="pyarrow"):
        results += [load_result(p) for p in batch["payload"].to_pylist()]
    return results


def run_evaluate(data: str, cfg: R3PConfig, *, models: list[str] | None = None, protocols: str | None = None,
                 split: str | None = None, limit: int | None = None, tracking_uri: str | None = None,
                 out: str | None = None, address: str | None = None, use_ray: bool = True,
                 say: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate models (baselines always included) on DATA's split under the protocols; returns the summary."""
    t0 = time.perf_counter()
    ec = cfg.evaluate
    split = split or ec.split
    wanted = list(dict.fromkeys([*(models or ec.models), *BASELINES]))
    has_champion = any(m == "champion" or (m not in BASELINES and Path(m).name == "champion") for m in wanted)
    if ec.champion_baseline and not has_champion:  # the current champion joins the baselines when there is one
        from pipeline.lifecycle.registry import ModelRegistry
        from pipeline.tracking import default_tracking_uri

        try:
            uri = tracking_uri or ec.tracking_uri or default_tracking_uri(
                shards.open_dataset(data, check_schema=False).root)
            if ModelRegistry(uri).by_alias("champion").get("motion"):
                wanted.append("champion")
        except FileNotFoundError:  # no dataset there: said below, after the models are checked
            pass
        except Exception as exc:  # noqa: BLE001 - an unreadable registry only loses the champion column
            say(f"r3p evaluate: no champion column ({exc})")
    if "champion" in wanted:  # the registry's champion, laid out as a runs folder named champion
        from pipeline.lifecycle.registry import ModelRegistry, RegistryError
        from pipeline.tracking import default_tracking_uri

        uri = tracking_uri or ec.tracking_uri or default_tracking_uri(shards.open_dataset(data, check_schema=False).root)
        try:
            champ = str(ModelRegistry(uri).materialise_alias("champion"))
        except RegistryError as exc:
            raise EvaluateError(f"--model champion: {exc}") from None
        wanted[wanted.index("champion")] = champ
    keys = model_keys(wanted)
    names = list(keys)
    model_paths = {k: m for k, m in keys.items() if m not in BASELINES}
    # every model loads here first: an unknown name or an unusable runs folder fails before any work
    gens = build_generators(names, model_paths, cfg.model_dump_json())
    weights = {f"model:{k}:{Path(c).parent.name}/{Path(c).name}": str(Path(c) / "model.safetensors")
               for k in model_paths for c in _checkpoints(gens[k])}
    plist = parse_protocols(protocols or ec.protocols)
    layout = shards.open_dataset(data)
    clips = _select_clips(layout, split, limit or ec.limit)
    items, skipped = build_items(plist, clips)
    paths = _backend_paths(cfg)
    sync_ckpt = sync_checkpoint(cfg, layout)
    sig = _signature([f"{k}={m}" for k, m in keys.items()],
                     {**paths, **weights, "sync_model": sync_ckpt and str(Path(sync_ckpt) / "model.safetensors")},
                     ec.max_frames)
    list_hash = clip_list_hash([c for c, _ in clips])
    out_dir = Path(out) if out else Path(layout.dir) / "evaluations" / f"{split}-{list_hash}"
    cache = out_dir / "cache" / sig
    cache.mkdir(parents=True, exist_ok=True)
    cached: dict[str, ItemResult] = {}
    for it in items:
        f = cache / f"{it.key}.pkl"
        if f.is_file():
            cached[it.key] = load_result(f.read_bytes())
    todo = [it for it in items if it.key not in cached]
    say(f"r3p evaluate: {len(clips)} clips ({split}), protocols {','.join(plist)}, models {','.join(names)}: "
        f"{len(items)} items, {len(cached)} cached, {len(todo)} to compute")
    t1 = time.perf_counter()
    fresh = _run_items(todo, layout.uri, names, paths, cfg, address, use_ray, sync_ckpt, model_paths) if todo else []
    compute_s = time.perf_counter() - t1
    for r in fresh:
        if r.error is None:  # failures are retried on the next run
            tmp = cache / f".{r.key}.pkl.tmp"
            tmp.write_bytes(dump_result(r))
            os.replace(tmp, cache / f"{r.key}.pkl")
    results = sorted([*cached.values(), *fresh], key=lambda r: r.key)
    merged = merge_results(results, names)
    from evaluation.metrics.backends import resolve_backends

    notes = resolve_backends(**paths, landmark_sync=LandmarkSyncEmbedder(sync_ckpt) if sync_ckpt else None).notes
    failed = [{"item": r.key, "protocol": r.protocol, "clip_id": r.clip_id, "source_clip_id": r.source_clip_id,
               "error": r.error} for r in results if r.error]
    ok_fresh = [r for r in fresh if r.error is None]
    summary: dict[str, Any] = {
        "data": layout.uri, "split": split, "clips": len(clips), "clip_list_hash": list_hash,
        "protocols": plist, "protocols_skipped": skipped, "models": names,
        "model_identity": {m: gens[m].identity for m in names}, "model_paths": model_paths, "backends": notes,
        "items": len(items), "cached": len(cached), "computed": len(fresh), "failed": failed,
        "compute_seconds": round(compute_s, 2),
        "seconds_per_item": round(sum(r.seconds for r in ok_fresh) / len(ok_fresh), 3) if ok_fresh else None,
        "table": table_rows(merged, names), "not_computed": {p: v["_not_computed"] for p, v in merged.items()},
        "out": str(out_dir), "cache": str(cache),
    }
    from evaluation.report import write_report

    report = write_report(out_dir / "report.html", summary, results, merged, cfg.evaluate.strip_clips)
    summary["report"] = str(report)
    summary.update(log_mlflow(summary, merged, layout, tracking_uri or ec.tracking_uri, ec.experiment))
    summary["total_seconds"] = round(time.perf_counter() - t0, 2)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def table_rows(merged: dict[str, dict[str, dict[str, Any]]], models: list[str]) -> list[dict[str, Any]]:
    """Flat metric table: one row per (protocol, result name) with each model's value (None when absent)."""
    rows = []
    for protocol, per in merged.items():
        names: dict[str, Any] = {}
        for m in models:
            for name, r in per.get(m, {}).items():
                names.setdefault(name, r)
        for name, r in names.items():
            rows.append({"protocol": protocol, "metric": name, "higher_is_better": r.higher_is_better, "model": r.model,
                         "values": {m: (per[m][name].value if name in per.get(m, {}) else None) for m in models}})
    return rows


def format_table(summary: dict[str, Any]) -> str:
    """The metric table as aligned text (models side by side), then what did not run."""
    models = summary["models"]
    head = f"{'protocol':<8} {'metric':<12} " + " ".join(f"{m:>14}" for m in models) + "  better"
    lines = [head, "-" * len(head)]
    for r in summary["table"]:
        vals = " ".join(f"{v:>14.4f}" if v is not None else f"{'—':>14}" for v in r["values"].values())
        lines.append(f"{r['protocol']:<8} {r['metric']:<12} {vals}  {'higher' if r['higher_is_better'] else 'lower'}")
    for p, per in summary["not_computed"].items():
        for fam, why in sorted({(f, w) for m in per.values() for f, w in m.items()}):
            lines.append(f"{p:<8} {fam:<12} {why if why.startswith('not computed') else 'not computed: ' + why}")
    for p, why in summary["protocols_skipped"].items():
        lines.append(f"{p:<8} (protocol skipped) {why}")
    for f in summary["failed"]:
        lines.append(f"FAILED {f['item']}: {f['error']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# MLflow


def log_mlflow(summary: dict[str, Any], merged: dict[str, dict[str, dict[str, Any]]], layout: shards.Layout,
               tracking_uri: str | None, experiment: str) -> dict[str, Any]:
    """A parent run (models, dataset input, clip-list hash, report) with one nested run per protocol."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from pipeline import tracking

    uri = tracking_uri or tracking.default_tracking_uri(layout.root)
    art = str(Path(layout.root) / "mlartifacts") if "://" not in layout.root else None
    eid = tracking.experiment_id(uri, experiment, art)
    c = MlflowClient(uri)
    now = int(time.time() * 1000)
    parent = c.create_run(eid, run_name=f"eval-{summary['split']}-{summary['clip_list_hash']}", tags={
        "r3p.kind": "evaluation", "r3p.models": ",".join(summary["models"]),
        "r3p.clip_list_hash": summary["clip_list_hash"], "r3p.code_version": tracking.code_version()})
    pid = parent.info.run_id
    params = {"split": summary["split"], "clips": summary["clips"], "protocols": ",".join(summary["protocols"]),
              "clip_list_hash": summary["clip_list_hash"], "data": summary["data"],
              **{f"model.{m}": v for m, v in summary["model_identity"].items()},
              **{f"backend.{k}": v for k, v in summary["backends"].items()}}
    c.log_batch(pid, params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())])
    digest = tracking.dataset_digest(shards.published(layout), shards.read_json(layout.fs, layout.run_path))
    _log_dataset(c, pid, layout, digest, summary)
    c.log_dict(pid, {k: v for k, v in summary.items() if k != "table"} | {"table": summary["table"]}, "summary.json")
    c.log_artifact(pid, summary["report"])
    child_ids = {}
    for protocol, per in merged.items():
        child = c.create_run(eid, run_name=f"{protocol}", tags={"mlflow.parentRunId": pid, "r3p.protocol": protocol})
        cid = child.info.run_id
        child_ids[protocol] = cid
        metrics = [Metric(f"{m}.{name}", float(r.value), now, 0) for m in summary["models"]
                   for name, r in per.get(m, {}).items()]
        if metrics:
            c.log_batch(cid, metrics=metrics)
        reasons = per["_not_computed"]
        for m, fams in reasons.items():
            for fam, why in fams.items():
                c.set_tag(cid, f"not_computed.{m}.{fam}", why[:5000])
        c.set_tag(cid, "r3p.failed_items", str(sum(1 for f in summary["failed"] if f["protocol"] == protocol)))
        c.set_terminated(cid)
    for protocol, why in summary["protocols_skipped"].items():
        child = c.create_run(eid, run_name=protocol, tags={"mlflow.parentRunId": pid, "r3p.protocol": protocol,
                                                           "not_computed.protocol": why[:5000]})
        child_ids[protocol] = child.info.run_id
        c.set_terminated(child.info.run_id, status="FAILED")
    c.set_terminated(pid)
    return {"mlflow_tracking_uri": uri, "mlflow_run_id": pid, "mlflow_protocol_runs": child_ids}


def _log_dataset(c, run_id: str, layout: shards.Layout, digest: str, summary: dict[str, Any]) -> None:
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    try:
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local source
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(layout.uri)
    except Exception:  # noqa: BLE001 - an unresolvable location is still recorded by name
        from mlflow.data.http_dataset_source import HTTPDatasetSource

        source = HTTPDatasetSource(url=str(layout.uri))
    ds = MetaDataset(source=source, name=f"{Path(layout.root).name}/v{layout.version:03d}", digest=digest)
    c.log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), tags=[
        InputTag("mlflow.data.context", "evaluation"), InputTag("split", summary["split"]),
        InputTag("clips", str(summary["clips"])), InputTag("clip_list_hash", summary["clip_list_hash"])])])
