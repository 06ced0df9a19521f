"""`r3p demo`: the end-to-end job on the embedded default (grows with each pipeline stage).

Now: resolve the morphable model (synthetic unless a BFM is installed), render random
identities, expressions and poses into a contact sheet (shaded, posed PNCC, canonical SECC,
depth); synthesise a small talking-face corpus; track and fit one clip and write an overlay
sheet of landmarks and the fitted mesh, with its errors against the synthetic ground truth.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.assets import resolve_face_model
from pipeline.config import R3PConfig, config_to_yaml, geometry_params
from pipeline.sheet import contact_sheet, save_png
from preprocessing.face3d import Face3D, join_coeffs, sh_light
from preprocessing.render import depth_to_uint8, render_face, render_secc, to_uint8


def random_coeffs(rng: np.random.Generator, n: int) -> torch.Tensor:
    """Plausible random coefficients: identity, texture, expression, talking-head pose, light."""
    exp = rng.normal(0.0, 0.25, (n, 64))
    exp[:, 0] = rng.uniform(0.0, 0.8, n)  # jaw open on the synthetic model (a PCA mode on a real BFM)
    exp[:, 1] = rng.uniform(-0.2, 0.8, n)
    euler = np.stack([rng.uniform(-0.25, 0.25, n), rng.uniform(-0.6, 0.6, n), rng.uniform(-0.2, 0.2, n)], 1)
    light = rng.normal(0.0, 0.15, (n, 3))  # first-order SH: a dominant direction, same for R, G, B
    gamma = sh_light(light, np.stack([rng.uniform(-0.1, 0.2, n) for _ in range(3)], axis=1))
    parts = dict(
        id=rng.normal(0.0, 1.0, (n, 80)), exp=exp, tex=rng.normal(0.0, 0.7, (n, 80)), euler=euler,
        gamma=gamma, trans=np.concatenate([rng.normal(0, 0.1, (n, 2)), rng.normal(0, 0.3, (n, 1))], 1))
    return join_coeffs(**{k: torch.as_tensor(v, dtype=torch.float32) for k, v in parts.items()})


def run_demo(cfg: R3PConfig, out_dir: Path) -> dict:
    """Render the demo contact sheet into `out_dir`; returns a summary with the output paths."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    model = resolve_face_model(cfg)
    face3d = Face3D(model)
    size, n = cfg.render.size, cfg.demo.samples
    coeffs = random_coeffs(np.random.default_rng(cfg.demo.seed), n)
    t1 = time.perf_counter()
    render = render_face(face3d, coeffs, size, remove_eyes=cfg.render.remove_eyes)
    secc = render_secc(face3d, coeffs[:, 0:80], coeffs[:, 80:144], size, remove_eyes=cfg.render.remove_eyes)
    render_s = time.perf_counter() - t1
    rows, labels = [], []
    for i in range(n):
        rows.append([to_uint8(render.shaded[i]), to_uint8(render.pncc[i], -1.0), to_uint8(secc[i], -1.0),
                     depth_to_uint8(render.depth[i])])
        yaw, pitch, roll = np.degrees(coeffs[i, 225].item()), np.degrees(coeffs[i, 224].item()), \
            np.degrees(coeffs[i, 226].item())
        labels.append(f"sample {i}\nyaw {yaw:+.0f} deg\npitch {pitch:+.0f} deg\nroll {roll:+.0f} deg\n"
                      f"jaw {coeffs[i, 80].item():.2f}")
    title = "synthetic model" if model.synthetic else "BFM"
    sheet = contact_sheet(rows, [f"shaded ({title})", "posed PNCC", "canonical SECC", "depth"], labels)
    sheet_path = save_png(sheet, out_dir / "contact_sheet.png")
    meta = {
        **model.metadata(),
        "render_size": size,
        "samples": n,
        "render_seconds": round(render_s, 3),
        "total_seconds": round(time.perf_counter() - t0, 3),
        "contact_sheet": str(sheet_path),
    }
    meta.update(geometry_demo(cfg, model, face3d, out_dir))
    meta.update(clip_demo(cfg, model, Path(meta["tracked_video"]), out_dir))
    meta.update(preprocess_demo(cfg, Path(meta["corpus"]), out_dir))
    meta.update(multiview_demo(cfg, Path(meta["dataset"]), out_dir))
    meta.update(train_demo(cfg, Path(meta["dataset"]), out_dir))
    meta.update(head_demo(cfg, Path(meta["views"]), Path(meta["dataset"]), Path(meta["corpus"]), out_dir))
    meta.update(animate_demo(cfg, Path(meta["dataset"]), Path(meta["head_source"]), Path(meta["head_driving"]),
                             out_dir))
    meta.update(evaluate_demo(cfg, Path(meta["dataset"]), out_dir, meta["train_syncnet"].get("checkpoint")))
    meta.update(retrain_demo(cfg, model, Path(meta["dataset"]), out_dir))
    meta["total_seconds"] = round(time.perf_counter() - t0, 3)
    (out_dir / "metadata.json").write_text(json.dumps(meta, indent=2))
    (out_dir / "config.yaml").write_text(config_to_yaml(cfg))
    return meta


def geometry_demo(cfg: R3PConfig, model, face3d: Face3D, out_dir: Path) -> dict:
    """Synthesise one clip, track and fit it, write the overlay; errors against ground truth."""
    from pipeline.overlay import geometry_sheet
    from preprocessing.geometry import track_and_fit
    from preprocessing.synthetic import SynthSpec, generate_corpus

    t0 = time.perf_counter()
    spec = SynthSpec(identities=cfg.demo.synth_identities, clips=1, seconds=cfg.demo.synth_seconds, size=512,
                     seed=cfg.demo.seed)
    corpus = generate_corpus(model, spec, out_dir / "corpus")
    synth_s = time.perf_counter() - t0
    video = sorted(corpus.glob("*/clip000.mp4"))[0]
    geo = track_and_fit(video, model, geometry_params(cfg))
    gt = np.load(video.with_suffix(".npz"))
    valid = geo.track.valid
    err = np.linalg.norm(geo.track.landmarks[valid] - gt["landmarks"][valid], axis=-1)
    iod = float(np.linalg.norm(gt["landmarks"][:, 36:42].mean(1) - gt["landmarks"][:, 42:48].mean(1), axis=1).mean())
    sheet = save_png(geometry_sheet(geo, face3d), out_dir / "overlay.png")
    return {
        "corpus": str(corpus), "corpus_clips": spec.identities, "corpus_seconds": round(synth_s, 2),
        "tracked_video": str(video), **{f"track_{k}": v for k, v in geo.summary().items()},
        "landmark_error_px_vs_truth": round(float(err.mean()), 2),
        "landmark_error_iod_vs_truth": round(float(err.mean()) / iod, 4),
        "overlay": str(sheet),
    }


def crop_truth_masks(masks: np.ndarray, crop_box: np.ndarray, size: int) -> np.ndarray:
    """Ground-truth masks (T, H, W) bool in video pixels → the record's aligned crop (T, size, size)."""
    from preprocessing.landmarks.tracking import CropBox, crop_frames

    return crop_frames(masks.astype(np.uint8) * 255, CropBox.from_array(crop_box), size) > 127


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter, union = np.logical_and(a, b).sum(), np.logical_or(a, b).sum()
    return float(inter / union) if union else 1.0


def clip_demo(cfg: R3PConfig, model, video: Path, out_dir: Path) -> dict:
    """Run `process_clip` on the synthetic clip; write the record's contact sheet; masks vs truth."""
    from pipeline.process import make_processor
    from pipeline.record_sheet import record_sheet
    from preprocessing.process import decode_image
    from preprocessing.record import SEG_HEAD, SEG_TORSO

    t0 = time.perf_counter()
    rec = make_processor(cfg, model)(video)
    seconds = time.perf_counter() - t0
    sheet = save_png(record_sheet(rec), out_dir / "clip_sheet.png")
    gt = np.load(video.with_suffix(".npz"))
    head_t = crop_truth_masks(gt["head_mask"], rec.crop_box, rec.crop_size)
    torso_t = crop_truth_masks(gt["torso_mask"], rec.crop_box, rec.crop_size)
    labels = np.stack([decode_image(b) for b in rec.seg_png])
    return {
        "clip_sheet": str(sheet), "clip_frames": rec.n_frames, "clip_seconds": round(seconds, 2),
        "clip_frames_per_s": round(rec.n_frames / seconds, 2),
        "clip_person_iou_vs_truth": round(iou(labels > 0, head_t | torso_t), 4),
        "clip_head_iou_vs_truth": round(iou(labels == SEG_HEAD, head_t), 4),
        "clip_torso_iou_vs_truth": round(iou(labels == SEG_TORSO, torso_t), 4),
        "clip_stage_seconds": rec.timings,
        "clip_encoded_mib": round(rec.encoded_bytes() / 2**20, 2),
    }


def multiview_demo(cfg: R3PConfig, dataset: Path, out_dir: Path) -> dict:
    """`r3p multiview` with the morphable teacher, half the views posed like the demo dataset's frames."""
    import shutil

    from pipeline.multiview import run_multiview

    views = out_dir / "views"
    shutil.rmtree(views, ignore_errors=True)  # the demo starts over; real runs resume instead
    summary = run_multiview(str(views), cfg, teacher="morphable", poses=str(dataset), say=lambda *_: None)
    return {"views": summary["dataset"], "views_summary": summary, "views_sheet": summary["sheet"]}


def preprocess_demo(cfg: R3PConfig, corpus: Path, out_dir: Path) -> dict:
    """`r3p preprocess` on the synthetic corpus plus one broken file, then `r3p inspect`."""
    import shutil

    from pipeline.inspect import inspect_dataset
    from pipeline.preprocess import run_preprocess

    good = sorted(corpus.glob("*/clip*.mp4"))
    broken = corpus / "broken" / "truncated.mp4"
    broken.parent.mkdir(exist_ok=True)
    broken.write_bytes(good[0].read_bytes()[:4096])  # the first 4 KiB of a real clip: an unreadable mp4
    dataset = out_dir / "dataset"
    shutil.rmtree(dataset, ignore_errors=True)  # the demo starts over; real runs resume instead
    t0 = time.perf_counter()
    summary = run_preprocess(str(corpus), str(dataset), cfg)
    seconds = time.perf_counter() - t0
    report = inspect_dataset(str(dataset), out_dir / "dataset_sheet.png")
    return {"dataset": str(dataset), "dataset_summary": summary, "dataset_seconds": round(seconds, 2),
            "dataset_report": report, "dataset_sheet": str(out_dir / "dataset_sheet.png")}


def evaluate_demo(cfg: R3PConfig, dataset: Path, out_dir: Path, sync_model: str | None = None) -> dict:
    """`r3p evaluate` of the demo's trained stages (`--model <dataset>/runs`: the animate pipeline) beside the
    static and ground-truth baselines, three protocols, on the demo dataset's test split,
    or on all its clips when the few demo speakers all hashed into other splits (said in the output);
    Sync-lm with the demo's landmark SyncNet when given (and no SyncNet v2 weights are installed)."""
    import shutil

    from pipeline import shards
    from pipeline.evaluate import format_table, run_evaluate

    layout = shards.open_dataset(str(dataset))
    splits = {r["split"] for r in shards.read_table(layout, "clips", ["split", "status"]).to_pylist()
              if r["status"] == "ok"}
    split = "test" if "test" in splits else "all"
    out = out_dir / "evaluation"
    shutil.rmtree(out, ignore_errors=True)  # the demo starts over; real runs reuse the cache
    if sync_model and not cfg.evaluate.sync_model:
        cfg = cfg.model_copy(deep=True)
        cfg.evaluate.sync_model = sync_model
    runs = Path(dataset).resolve() / "runs"  # the demo's trained stages, through the animate pipeline
    s = run_evaluate(str(dataset), cfg, models=[str(runs)], split=split, out=str(out), say=lambda _: None)
    return {"evaluation": s, "evaluation_split": split, "evaluation_table": format_table(s),
            "evaluation_report": s["report"]}


def train_demo(cfg: R3PConfig, dataset: Path, out_dir: Path) -> dict:
    """`r3p train` SyncNet then A2M (tiny sizes; the train split, or every ok clip when no speaker hashed into it)
    on the demo dataset, and a plot of the A2M's predicted vs true mouth opening for a held-out clip (else a
    training one, said in the output)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline import shards
    from pipeline.preprocess import ensure_ray
    from pipeline.train import clip_arrays, run_train
    from training.a2m import pearson, predict_motion
    from training.checkpoint import load_model
    from training.keypoints import mouth_opening

    layout = shards.open_dataset(str(dataset))
    clips = shards.read_table(layout, "clips")
    clips = clips.filter(pc.equal(clips["status"], "ok"))
    split = "train" if "train" in set(clips["split"].to_pylist()) else "all"  # the demo has few speakers
    tcfg = cfg.model_copy(deep=True)
    t = tcfg.training
    t.size, t.split, t.val_split, t.checkpoint_every, t.cpus_per_worker = "tiny", split, "none", 500, 0.5
    extra = t.model_extra
    extra["syncnet"] = {"steps": 300, "batch_size": 16, **extra.get("syncnet", {})}
    extra["a2m"] = {"steps": 300, "batch_size": 4, "syncnet": "demo-syncnet", **extra.get("a2m", {})}
    lines: list[str] = []
    started = ensure_ray(num_cpus=2)
    try:
        sync = run_train("syncnet", str(dataset), "demo-syncnet", tcfg, say=lines.append)
        a2m = run_train("a2m", str(dataset), "demo-a2m", tcfg, say=lines.append)
    finally:
        if started:
            import ray

            ray.shutdown()
    (out_dir / "training.log").write_text("\n".join(lines) + "\n")
    held = clips.filter(pc.is_in(clips["split"], pa.array(["val", "test"]))) if split == "train" else clips.slice(0, 0)
    which = "held-out" if held.num_rows else "training (the demo dataset has no held-out speaker)"
    clips = held if held.num_rows else clips
    frames = shards.read_table(layout, "frames", ["clip_id", "index", "exp"])
    clip = clip_arrays(clips.slice(0, 1), frames, "mel", ("index", "exp"))[0]
    _, p, model, _ = load_model(a2m["checkpoint"])
    pred = predict_motion(model, clip.audio, clip.f0, temperature=p.temperature)
    idc = torch.as_tensor(clip.id_coeff)
    true_o = mouth_opening(model.kp(idc, torch.as_tensor(clip.frames["exp"]))).numpy()
    pred_o = mouth_opening(model.kp(idc, torch.as_tensor(pred))).numpy()
    r = pearson(pred_o, true_o)
    fig, ax = plt.subplots(figsize=(8, 3), dpi=110)
    tt = np.arange(len(true_o)) / 25.0
    ax.plot(tt, true_o, label="true (fitted 3DMM)", color="black")
    ax.plot(tt, pred_o, label="A2M from the audio", color="tab:red")
    ax.set_xlabel("seconds")
    ax.set_ylabel("mouth opening")
    ax.set_title(f"{clip.clip_id} ({which}); r = {r:.2f}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plot = out_dir / "mouth_opening.png"
    fig.savefig(plot)
    plt.close(fig)
    return {"train_syncnet": sync, "train_a2m": a2m, "train_plot": str(plot), "train_plot_clip": clip.clip_id,
            "train_plot_which": which, "train_plot_r": round(r, 3), "train_log": str(out_dir / "training.log")}


def head_demo(cfg: R3PConfig, views: Path, dataset: Path, corpus: Path, out_dir: Path) -> dict:
    """The 3D head: `r3p train --stage i2p` on the demo views set, `--stage motion` on the demo dataset
    (from that i2p run), then `r3p render-head`: a source photo (a frame of one corpus clip) driven by
    another clip when the corpus has one (else the same clip, said in the output) → head.mp4, and a
    sheet of four driving frames: the driving crop, its SECC map, the render, the opacity."""
    import cv2

    from pipeline import shards
    from pipeline.render_head import HeadAnimator
    from preprocessing.video import encode_mp4

    layout = shards.open_dataset(str(dataset))
    splits = {r["split"] for r in shards.read_table(layout, "clips", ["split", "status"]).to_pylist()
              if r["status"] == "ok"}
    tcfg = cfg.model_copy(deep=True)
    t = tcfg.training
    t.size, t.val_split, t.checkpoint_every, t.cpus_per_worker = "tiny", "none", 500, 0.5
    t.split = "train" if "train" in splits else "all"
    extra = t.model_extra
    extra["i2p"] = {"steps": 150, "batch_size": 4, **extra.get("i2p", {})}
    extra["motion"] = {"steps": 150, "batch_size": 4, "i2p": str(Path(views).resolve().parent / "runs" / "demo-i2p"),
                       **extra.get("motion", {})}
    i2p, motion = _train_stages(tcfg, [("i2p", views, "demo-i2p"), ("motion", dataset, "demo-motion")], out_dir)

    clips = sorted(corpus.glob("*/clip*.mp4"))
    source_clip, driving = clips[0], (clips[1] if len(clips) > 1 else clips[0])
    which = "another clip" if driving != source_clip else "the source's own clip (the demo corpus has one)"
    cap = cv2.VideoCapture(str(source_clip))
    ok, bgr = cap.read()
    cap.release()
    if not ok:
        raise RuntimeError(f"could not read a frame of {source_clip}")
    photo = out_dir / "head_source.png"
    cv2.imwrite(str(photo), bgr)
    t0 = time.perf_counter()
    anim = HeadAnimator.from_checkpoint(motion["checkpoint"], cfg)
    src = anim.source(str(photo))
    mot = anim.drive_video(str(driving), max_frames=50)
    picks = set(np.linspace(0, len(mot) - 1, 4).round().astype(int).tolist())
    rows, labels = [], []
    size = 128

    def tile(a: np.ndarray) -> np.ndarray:
        return cv2.resize(np.ascontiguousarray(a), (size, size), interpolation=cv2.INTER_AREA if a.shape[0] > size
                          else cv2.INTER_NEAREST)

    def frames():
        for part in anim.iter_render(src, mot, 16):
            for i in range(len(part["sr"])):
                k = part["start"] + i
                if k in picks:
                    op = (np.clip(part["opacity"][i], 0, 1) * 255).astype(np.uint8)
                    rows.append([tile(part["driving"][i]), tile(part["secc"][i]), tile(part["sr"][i]), tile(op)])
                    labels.append(f"frame {k}")
            yield part["sr"]

    video = encode_mp4(out_dir / "head.mp4", frames(), mot.fps, audio=mot.audio)
    seconds = time.perf_counter() - t0
    sheet = contact_sheet(rows, ["driving frame", "driving SECC", "render (SR)", "opacity"], labels)
    sheet_path = save_png(sheet, out_dir / "head_sheet.png")
    return {"train_i2p": i2p, "train_motion": motion, "head_video": str(Path(video).resolve()),
            "head_sheet": str(sheet_path), "head_source": str(photo), "head_driving": str(driving),
            "head_driving_which": which, "head_frames": len(mot), "head_seconds": round(seconds, 2)}


def _train_stages(tcfg: R3PConfig, jobs: list[tuple[str, Path, str]], out_dir: Path) -> list[dict]:
    """`r3p train` each (stage, data, run) in order on a local Ray (started and stopped here when none runs);
    their progress lines are appended to out_dir/training.log. Returns the runs' summaries."""
    from pipeline.preprocess import ensure_ray
    from pipeline.train import run_train

    lines: list[str] = []
    started = ensure_ray(num_cpus=2)
    try:
        out = [run_train(stage, str(data), run, tcfg, say=lines.append) for stage, data, run in jobs]
    finally:
        if started:
            import ray

            ray.shutdown()
    with open(out_dir / "training.log", "a") as fh:
        fh.write("\n".join(lines) + "\n")
    return out


def animate_demo(cfg: R3PConfig, dataset: Path, photo: Path, driving: Path, out_dir: Path) -> dict:
    """`r3p train --stage htbsr` (tiny, over the demo motion run's frozen head), then `r3p animate`: the demo
    photo driven by the driving clip's *audio* through the demo A2M → animate.mp4 (composited by the htbsr run
    just trained: `--htbsr auto` finds it over demo-motion), and a sheet of driving frames beside animated frames."""
    import cv2

    from pipeline.animate import animate

    runs = Path(dataset).resolve() / "runs"
    tcfg = cfg.model_copy(deep=True)
    t = tcfg.training
    t.size, t.val_split, t.checkpoint_every, t.cpus_per_worker = "tiny", "none", 500, 0.5
    t.split = "all"
    t.model_extra["htbsr"] = {"steps": 150, "batch_size": 4, "motion": str(runs / "demo-motion"),
                              **t.model_extra.get("htbsr", {})}
    (htbsr,) = _train_stages(tcfg, [("htbsr", dataset, "demo-htbsr")], out_dir)
    out = out_dir / "animate.mp4"
    s = animate(str(runs), str(photo), str(out), audio=str(driving), cfg=cfg, a2m="demo-a2m", head="demo-motion",
                max_frames=50, progress=lambda *_: None)

    def frames(path: Path, picks: list[int]) -> list[np.ndarray]:
        cap, got, k = cv2.VideoCapture(str(path)), [], 0
        while len(got) < len(picks):
            ok, bgr = cap.read()
            if not ok:
                break
            if k in picks:
                got.append(cv2.resize(bgr[..., ::-1], (160, 160), interpolation=cv2.INTER_AREA))
            k += 1
        cap.release()
        return got

    picks = np.linspace(0, s["frames"] - 1, 4).round().astype(int).tolist()
    rows = [list(pair) for pair in zip(frames(driving, picks), frames(out, picks))]
    sheet = save_png(contact_sheet(rows, ["driving clip (its audio drives A2M)", "r3p animate"],
                                   [f"frame {k}" for k in picks[:len(rows)]]), out_dir / "animate_sheet.png")
    return {"train_htbsr": htbsr, "animate": s, "animate_video": s["out"], "animate_sheet": str(sheet)}


def _test_speaker_seed(cfg: R3PConfig, start: int) -> int:
    """The first corpus seed ≥ `start` whose first synthetic speaker hashes into the test split (the demo's few
    speakers rarely do at a 5 % test fraction; a retrain needs held-out clips to compare on)."""
    from pipeline.manifest import assign_split

    p = cfg.preprocess
    seed = start
    while assign_split(f"synth{seed:03d}_id000", p.val_fraction, p.test_fraction, p.split_salt) != "test":
        seed += 1
    return seed


def retrain_demo(cfg: R3PConfig, model, dataset: Path, out_dir: Path) -> dict:
    """The lifecycle: the demo's trained stages become the first champion (`r3p models set-alias champion
    --latest`), then `r3p retrain` on a second synthetic batch (a held-out speaker and a training one): a new
    dataset version reusing the first one's clips, a2m/motion/htbsr fine-tuned from the champion, challenger and
    champion evaluated on the test clips, the gate's decision; then `r3p models`."""
    from pipeline.lifecycle.models import describe, format_models, set_alias
    from pipeline.lifecycle.retrain import format_decision, run_retrain
    from pipeline.tracking import default_tracking_uri
    from preprocessing.synthetic import SynthSpec, generate_corpus

    root = str(Path(dataset).resolve())
    uri = default_tracking_uri(root)
    set_alias(uri, "champion", [], latest=True, root=root, note="the demo's first trained stages")
    seed = _test_speaker_seed(cfg, cfg.demo.seed + 1)
    batch = out_dir / "new_batch"
    generate_corpus(model, SynthSpec(identities=2, clips=1, seconds=cfg.demo.synth_seconds, size=512, seed=seed),
                    batch)
    rcfg = cfg.model_copy(deep=True)
    t = rcfg.training
    t.size, t.val_split, t.checkpoint_every, t.cpus_per_worker = "tiny", "none", 500, 0.5
    t.split = "all"  # the demo's few speakers: train on every ok clip (the gate still compares on test only)
    fine = {"steps": 20, "batch_size": 4}
    rcfg.retrain.fine_tune = {s: {**fine, **rcfg.retrain.fine_tune.get(s, {})} for s in ("a2m", "motion", "htbsr")}
    lines: list[str] = []
    rec = run_retrain(str(batch), root, rcfg, batch="batch2", say=lines.append)
    (out_dir / "retrain.log").write_text("\n".join(lines) + "\n")
    info = describe(uri, root)
    (out_dir / "models.txt").write_text(format_models(info) + "\n")
    return {"retrain": rec, "retrain_decision": format_decision(rec), "retrain_log": str(out_dir / "retrain.log"),
            "models": info, "models_text": format_models(info), "retrain_root": root}
