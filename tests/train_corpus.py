"""A training dataset written straight from the synthetic corpus's ground truth (no video, no fitting).

`r3p preprocess` costs ~0.3 s per frame per core here, too slow for the thousands of frames the
learning tests need; this writes the same dataset layout (`run.json`, `clips/`, `frames/`, `stats/`
through `pipeline.shards.write_shard`, so the same schema and checks) with the columns the audio
stages read filled from the generator's own arrays: audio features by `preprocessing.audio` from
the generated audio, `exp`/`euler`/`trans`/`id_coeff` from the true coefficients, landmarks, eye
aspect ratio and mouth opening from the true landmarks. Image columns stay empty. The clips are
the ones `r3p synth` makes for the same seed (same random streams), audio offsets included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from pipeline import schema, shards, storage

_FACE3D: dict = {}


def clip_truth(model, seed: int, identity: int, clip: int, seconds: float, offset: int = 0) -> dict:
    """Audio, coefficients and features of one synthetic clip (as `preprocessing.synthetic.generate_clip`)."""
    from preprocessing.audio import audio_features, eye_aspect_ratio, mouth_opening
    from preprocessing.face3d import Face3D
    from preprocessing.synthetic import FPS, clip_coefficients, make_identity, shift_audio, speech_like_audio

    ident = make_identity(identity, seed)
    rng = np.random.default_rng([seed, identity, clip, 2])
    n = int(round(seconds * FPS))
    audio, mouth = speech_like_audio(rng, n, ident.f0_hz, ident.formants_hz)
    coeffs = clip_coefficients(rng, ident, n, mouth, model)
    audio = shift_audio(audio, offset)
    feats = audio_features(audio, n)
    face3d = _FACE3D.get(id(model)) or _FACE3D.setdefault(id(model), Face3D(model))
    lm = face3d.landmarks(torch.as_tensor(coeffs), 512).numpy()
    return {"speaker_id": ident.speaker_id, "audio": audio, "coeffs": coeffs, "feats": feats, "landmarks": lm,
            "ear": eye_aspect_ratio(lm), "mouth": mouth_opening(lm), "n": n, "offset": offset}


def _tables(cid: str, split: str, t: dict) -> tuple[pa.Table, pa.Table]:
    n, c, f = t["n"], t["coeffs"], t["feats"]
    values = {"clip_id": cid, "source": f"synthetic/{cid}.mp4", "rel_path": f"{cid}.mp4", "dataset": "synthetic",
              "split": split, "speaker_id": t["speaker_id"], "start_s": 0.0, "end_s": None, "status": "ok",
              "attempts": 1, "fps": 25.0, "n_frames": n, "width": 512, "height": 512,
              "crop_box": [0.0, 0.0, 512.0, 512.0], "crop_size": 512, "render_size": 512, "face_fraction": 1.0,
              "id_coeff": c[0, 0:80].tolist(), "has_audio": True, "mel": f.mel.tolist(), "f0": f.f0.tolist(),
              "voiced": f.voiced.tolist(), "rms": f.rms.tolist(), "hubert": None, "timings": [], "seconds": 0.0,
              "pipeline_version": "truth", "config_hash": "truth", "schema_version": schema.SCHEMA_VERSION,
              "synthetic_face_model": True}
    clips = pa.Table.from_pylist([{k: values.get(k) for k in schema.CLIPS_SCHEMA.names}], schema=schema.CLIPS_SCHEMA)
    nan = lambda k: [[float("nan")] * k] * n  # noqa: E731
    cols = {"clip_id": [cid] * n, "index": list(range(n)), "timestamp": (np.arange(n) / 25.0).tolist(),
            "valid": [True] * n, "landmarks": t["landmarks"].reshape(n, -1).tolist(), "exp": c[:, 80:144].tolist(),
            "euler": c[:, 224:227].tolist(), "trans": c[:, 254:257].tolist(), "eg3d_cam": nan(25),
            "fit_rmse_px": [0.0] * n, "mouth_box": nan(4), "eye_aspect_ratio": t["ear"].tolist(),
            "mouth_opening": t["mouth"].tolist()}
    arrays = [pa.array(cols[f.name], f.type) if f.name in cols else pa.nulls(n, f.type) for f in schema.FRAMES_SCHEMA]
    return clips, pa.Table.from_arrays(arrays, schema=schema.FRAMES_SCHEMA)


def write_truth_dataset(root: str | Path, model, *, splits: dict[str, list[int]], clips: int = 2,
                        seconds: float = 6.0, seed: int = 0, offsets: dict[tuple[int, int], int] | None = None,
                        status_failed: bool = False) -> shards.Layout:
    """Write OUTPUT/v001 with the given identities per split; `offsets[(identity, clip)]` = audio offset (frames)."""
    fs, path = storage.resolve(str(root))
    layout = shards.Layout(fs, path, 1)
    fs.create_dir(layout.dir, recursive=True)
    truths = {}
    for split, ids in splits.items():
        for i in ids:
            c_tables, f_tables = [], []
            for j in range(clips):
                off = (offsets or {}).get((i, j), 0)
                t = clip_truth(model, seed, i, j, seconds, off)
                cid = f"{t['speaker_id']}/clip{j:03d}"
                truths[cid] = {**t, "split": split}
                ct, ft = _tables(cid, split, t)
                if status_failed:
                    ct = ct.set_column(ct.schema.get_field_index("status"), "status", pa.array(["failed"]))
                c_tables.append(ct)
                f_tables.append(ft)
            shards.write_shard(layout, f"id{i:03d}", pa.concat_tables(c_tables), pa.concat_tables(f_tables),
                               {"clips": clips})
    shards.write_json(fs, layout.run_path, {"schema_version": schema.SCHEMA_VERSION, "config_hash": "truth",
                                            "pipeline_version": "truth"})
    layout_truth[str(Path(root).resolve())] = truths
    return layout


#: ground truth of the datasets written in this process, by root
layout_truth: dict[str, dict] = {}


#: the learning tests' corpus: 14 train speakers, 3 held-out (val) speakers, 1 held-out (test) speaker
#: whose two clips carry known audio offsets; 2 clips × 6 s each
LEARN_SPLITS = {"train": list(range(14)), "val": [14, 15, 16], "test": [17]}
LEARN_OFFSETS = {(17, 0): 3, (17, 1): -4}


def learning_dataset(base: Path) -> Path:
    """The learning corpus under `base/truth` (written once per test session; reused when present)."""
    from preprocessing.synthetic_bfm import synthetic_face_model

    root = Path(base) / "truth"
    if not (root / "v001" / "run.json").is_file():
        write_truth_dataset(root, synthetic_face_model(0, "bfm"), splits=LEARN_SPLITS, clips=2, seconds=6.0,
                            offsets=LEARN_OFFSETS)
    return root


def split_clips(root: Path, split: str, frame_columns=("index", "exp", "eye_aspect_ratio", "mouth_opening")):
    """ClipArrays of the ok clips of `split` (mel audio), as the job assembles them."""
    import pyarrow.compute as pc

    from pipeline.train import clip_arrays

    layout = shards.open_dataset(str(root))
    clips = shards.read_table(layout, "clips")
    frames = shards.read_table(layout, "frames", ["clip_id", *frame_columns])
    return clip_arrays(clips.filter(pc.equal(clips["split"], split)), frames, "mel", tuple(frame_columns))


def ray_session():
    """Start a local 2-CPU Ray on loopback for a test module (generator: yields, then shuts it down)."""
    import ray

    from pipeline.preprocess import use_loopback

    use_loopback()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def ensure_run(stage: str, root: Path, run: str, overrides: list[str] = ()) -> Path:
    """`run_train` unless the run already finished (learning tests share the SyncNet run); its final checkpoint."""
    from pipeline.config import load_config
    from pipeline.train import run_train

    final = Path(root) / "runs" / run / "final"
    if not final.is_dir():
        run_train(stage, str(root), run, load_config("tiny", overrides=list(overrides)), say=lambda s: None)
    return final
