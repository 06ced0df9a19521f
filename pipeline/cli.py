"""The `r3p` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from pipeline.config import PRESETS, ConfigError, R3PConfig, config_to_yaml, load_config


def _config_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("configuration")
    g.add_argument("--config", metavar="FILE", help="YAML configuration file")
    g.add_argument("--preset", choices=PRESETS, help="named preset: tiny (CPU/tests) or paper (published sizes)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key, e.g. --set render.size=256 (repeatable)")
    return p


def _cfg(args: argparse.Namespace) -> R3PConfig:
    return load_config(args.preset, args.config, args.overrides)


def cmd_assets(args: argparse.Namespace) -> int:
    from pipeline.assets import asset_table, format_table, rows_as_dicts

    cfg = _cfg(args)
    rows = asset_table(cfg.home, cfg.assets)
    if args.json:
        print(json.dumps({"r3p_home": str(cfg.home), "assets": rows_as_dicts(rows)}, indent=2))
    else:
        print(f"R3P_HOME = {cfg.home}\n")
        print(format_table(rows))
    return 0


def cmd_convert_bfm(args: argparse.Namespace) -> int:
    from preprocessing.bfm09 import convert_bfm09
    from preprocessing.face_model import load_face_model

    out = convert_bfm09(Path(args.dir), Path(args.out) if args.out else None)
    model = load_face_model(out)
    print(f"wrote {out} ({model.n_vertices} vertices, {model.n_faces} faces)")
    return 0


def cmd_synth_bfm(args: argparse.Namespace) -> int:
    from preprocessing.synthetic_bfm import synthetic_bfm_arrays, write_bfm_mat

    size = int(args.size) if str(args.size).isdigit() else args.size
    path = write_bfm_mat(Path(args.out), synthetic_bfm_arrays(seed=args.seed, size=size))
    print(f"wrote synthetic morphable model {path} (seed {args.seed}, size {size})")
    return 0


def cmd_convert_eg3d(args: argparse.Namespace) -> int:
    from pipeline.eg3d_convert import UnsafePickleError, convert_eg3d

    try:
        weights, arch = convert_eg3d(Path(args.pkl), Path(args.out) if args.out else None)
    except (UnsafePickleError, ValueError) as exc:
        print(f"r3p assets convert-eg3d: error: {exc}", file=sys.stderr)
        return 2
    meta = json.loads(arch.read_text())
    print(f"wrote {weights} ({meta['n_parameters']:,} values in {meta['n_tensors']} tensors) and {arch}; "
          "nothing from the pickle was executed")
    return 0


def cmd_multiview(args: argparse.Namespace) -> int:
    from pipeline.multiview import MultiviewError, run_multiview

    try:
        run_multiview(args.output, _cfg(args), teacher=args.teacher, samples=args.samples, views=args.views,
                      poses=args.poses, force=args.force, address=args.address)
    except MultiviewError as exc:
        print(f"r3p multiview: error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    import time

    from pipeline.assets import resolve_face_model
    from preprocessing.synthetic import SynthSpec, generate_corpus

    try:
        offsets = tuple(int(x) for x in str(args.audio_offsets).split(","))
        spec = SynthSpec(identities=args.identities, clips=args.clips, seconds=args.seconds, size=args.size,
                         seed=args.seed, audio_offsets=offsets)
    except ValueError as exc:
        raise ConfigError(f"r3p synth: {exc}") from None
    model = resolve_face_model(_cfg(args))
    t0 = time.perf_counter()
    total = spec.identities * spec.clips
    done = []

    def progress(row: dict) -> None:
        done.append(row)
        print(f"[{len(done)}/{total}] {row['path']} ({row['frames']} frames, audio offset "
              f"{row['audio_offset_frames']} frames)", flush=True)

    out = generate_corpus(model, spec, Path(args.out), progress=progress)
    frames = sum(r["frames"] for r in done)
    secs = time.perf_counter() - t0
    print(f"synthetic corpus: {len(done)} clips, {frames} frames in {secs:.1f} s ({frames / secs:.1f} frames/s); "
          f"face model: {'synthetic' if model.synthetic else 'BFM'}")
    print(f"output: {out.resolve()} (manifest.csv, <speaker>/clipNNN.mp4 + .npz ground truth + .json)")
    return 0


def cmd_track(args: argparse.Namespace) -> int:
    from pipeline.assets import resolve_face_model
    from pipeline.config import geometry_params
    from pipeline.overlay import geometry_sheet
    from pipeline.sheet import save_png
    from preprocessing.face3d import Face3D
    from preprocessing.geometry import track_and_fit

    cfg = _cfg(args)
    params = geometry_params(cfg)
    model = resolve_face_model(cfg)
    geo = track_and_fit(Path(args.video), model, params)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    fit, track = geo.fit, geo.track
    np.savez_compressed(out / "geometry.npz", landmarks=track.landmarks, valid=track.valid, observed=track.observed,
                        crop_box=track.crop.as_array(), crop_landmarks=track.crop_landmarks, coeffs=fit.coeffs(),
                        eg3d_cam=fit.eg3d_cam, rmse_px=fit.rmse_px)
    sheet = save_png(geometry_sheet(geo, Face3D(model)), out / "overlay.png")
    summary = {**geo.summary(), **model.metadata(), "video": str(Path(args.video).resolve())}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{args.video}: {summary['frames']} frames, face in {100 * summary['face_fraction']:.0f}%, "
          f"fit RMSE {summary['fit_rmse_px']:.2f} px at {geo.crop_size}², detect {summary['seconds_detect']:.1f} s, "
          f"fit {summary['seconds_fit']:.2f} s")
    print(f"geometry: {out / 'geometry.npz'}\noverlay: {sheet}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    print(config_to_yaml(_cfg(args)), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    cfg = _cfg(args)
    meta = run_demo(cfg, Path(args.out))
    kind = "SYNTHETIC morphable model (no BFM installed; see `r3p assets`)" if meta["face_model_synthetic"] \
        else f"BFM {meta['face_model_source']}"
    print(f"face model: {kind}, {meta['n_vertices']} vertices, {meta['n_faces']} faces")
    print(f"rendered {meta['samples']} faces at {meta['render_size']}² in {meta['render_seconds']:.2f} s "
          f"(total {meta['total_seconds']:.1f} s)")
    print(f"contact sheet: {meta['contact_sheet']}")
    print(f"synthetic corpus: {meta['corpus']} ({meta['corpus_clips']} clips in {meta['corpus_seconds']:.1f} s)")
    print(f"tracked + fitted {meta['tracked_video']}: face in {100 * meta['track_face_fraction']:.0f}% of "
          f"{meta['track_frames']} frames, landmark error vs ground truth {meta['landmark_error_px_vs_truth']:.1f} px "
          f"({meta['landmark_error_iod_vs_truth']:.2f} of the eye distance), fit RMSE {meta['track_fit_rmse_px']:.2f} px")
    print(f"overlay: {meta['overlay']}")
    print(f"process_clip: {meta['clip_frames']} frames in {meta['clip_seconds']:.1f} s "
          f"({meta['clip_frames_per_s']:.1f} frames/s); masks vs ground truth IoU person "
          f"{meta['clip_person_iou_vs_truth']:.2f}, head {meta['clip_head_iou_vs_truth']:.2f}, "
          f"torso {meta['clip_torso_iou_vs_truth']:.2f}")
    print(f"clip sheet: {meta['clip_sheet']}")
    rep = meta["dataset_report"]
    print(f"dataset (r3p preprocess on the corpus + one broken file): {meta['dataset']} — "
          f"{rep['status']} in {meta['dataset_seconds']:.0f} s; errors: "
          + (", ".join(f"{e['error']} x{e['count']}" for e in rep["top_errors"]) or "none"))
    print(f"dataset sheet (r3p inspect): {meta['dataset_sheet']}")
    mv = meta["views_summary"]
    print(f"multi-view set (r3p multiview, morphable teacher, poses from the dataset): {meta['views']} — "
          f"{mv['samples']} samples, {mv['rows']} views, {mv['failed_samples']} failed, in {mv['wall_s']:.0f} s")
    print(f"multi-view sheet: {meta['views_sheet']}")
    for key in ("train_syncnet", "train_a2m"):
        t = meta[key]
        print(f"r3p train {t['stage']} (tiny) on the demo dataset: {t['steps']} steps in {t['fit_seconds']:.0f} s; "
              f"MLflow run {t['mlflow_run_id']} ({t['mlflow_tracking_uri']}); checkpoint: {t['checkpoint']}")
    print(f"predicted vs true mouth opening, {meta['train_plot_which']} clip {meta['train_plot_clip']} "
          f"(r = {meta['train_plot_r']:.2f}): {meta['train_plot']}")
    for key, on in (("train_i2p", "the multi-view set"), ("train_motion", "the demo dataset")):
        t = meta[key]
        print(f"r3p train {t['stage']} (tiny) on {on}: {t['steps']} steps in {t['fit_seconds']:.0f} s; "
              f"MLflow run {t['mlflow_run_id']}; checkpoint: {t['checkpoint']}")
    print(f"r3p render-head: {meta['head_source']} driven by {meta['head_driving_which']} ({meta['head_frames']} "
          f"frames in {meta['head_seconds']:.0f} s): {meta['head_video']}")
    print(f"head sheet (driving frame, its SECC, render, opacity): {meta['head_sheet']}")
    t = meta["train_htbsr"]
    print(f"r3p train htbsr (tiny) on the demo dataset: {t['steps']} steps in {t['fit_seconds']:.0f} s; "
          f"MLflow run {t['mlflow_run_id']}; checkpoint: {t['checkpoint']}")
    a = meta["animate"]
    print(f"r3p animate (the photo + the driving clip's audio through A2M; {a['compositor']} compositor): {a['frames']} "
          f"frames at {a['size']}² in {a['seconds']['total']:.0f} s: {meta['animate_video']}")
    print(f"animate sheet (driving frames beside animated frames): {meta['animate_sheet']}")
    ev = meta["evaluation"]
    print(f"evaluation (r3p evaluate, split {meta['evaluation_split']}, {ev['clips']} clips, {ev['items']} items in "
          f"{ev['total_seconds']:.0f} s; {ev['seconds_per_item'] or 0:.1f} s per item):")
    print(meta["evaluation_table"])
    print(f"evaluation report: {meta['evaluation_report']}")
    print(f"r3p retrain on a second synthetic batch (ROOT {meta['retrain_root']}; log {meta['retrain_log']}):")
    print(meta["retrain_decision"])
    print("r3p models:")
    print(meta["models_text"])
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from pipeline.manifest import ManifestError
    from pipeline.preprocess import PreprocessConflict, PreprocessError, run_preprocess

    cfg = _cfg(args)
    try:
        summary = run_preprocess(args.input, args.output, cfg, address=args.address, retry_failed=args.retry_failed,
                                 force=args.force)
    except (ManifestError, PreprocessConflict, PreprocessError) as exc:
        print(f"r3p preprocess: error: {exc}", file=sys.stderr)
        return 2
    return 0 if summary["complete"] else 1


def cmd_inspect(args: argparse.Namespace) -> int:
    from pipeline.inspect import format_report, inspect_dataset
    from pipeline.multiview import format_views_report, inspect_views, is_views_dataset

    if is_views_dataset(args.output):
        report = inspect_views(args.output, args.sheet, samples=args.samples)
        print(json.dumps(report, indent=2) if args.json else format_views_report(report))
        return 0
    report = inspect_dataset(args.output, args.sheet, samples=args.samples, seed=args.seed)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.shards import SchemaVersionError
    from pipeline.train import TrainError, run_train

    cfg = _cfg(args)
    try:
        run_train(args.stage, args.data, args.run, cfg, address=args.address, from_checkpoint=args.from_checkpoint,
                  tracking_uri=args.tracking_uri)
    except (TrainError, SchemaVersionError) as exc:
        print(f"r3p train: error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from evaluation.generators import GeneratorNotAvailable
    from evaluation.protocols import ProtocolError
    from pipeline.evaluate import EvaluateError, format_table, run_evaluate
    from pipeline.shards import SchemaVersionError

    cfg = _cfg(args)
    try:
        s = run_evaluate(args.data, cfg, models=args.model.split(",") if args.model else None,
                         protocols=args.protocols, split=args.split, limit=args.limit,
                         tracking_uri=args.tracking_uri, out=args.out, address=args.address)
    except (EvaluateError, GeneratorNotAvailable, ProtocolError, SchemaVersionError, FileNotFoundError) as exc:
        print(f"r3p evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(s))
    print(f"report: {s['report']}")
    print(f"MLflow: {s['mlflow_tracking_uri']} run {s['mlflow_run_id']}")
    return 0


def cmd_predict_motion(args: argparse.Namespace) -> int:
    from pipeline.predict import predict_motion_file

    summary = predict_motion_file(_cfg(args), args.model, args.audio, args.out, runs=args.runs,
                                  mouth_amp=args.mouth_amp, temperature=args.temperature, seed=args.seed)
    print(f"motion: {summary['frames']} frames at 25 fps ({summary['seconds']:.2f} s of audio, {summary['audio']} "
          f"features) from {summary['checkpoint']} -> {summary['out']}")
    return 0


def cmd_render_head(args: argparse.Namespace) -> int:
    from pipeline.render_head import RenderHeadError, format_summary, render_head

    try:
        summary = render_head(args.model, args.source, args.out, motion=args.motion, video=args.video, cfg=_cfg(args),
                              runs=args.runs, audio=args.audio, max_frames=args.max_frames, chunk=args.chunk,
                              mux_audio=not args.no_audio, cache_dir=args.cache)
    except RenderHeadError as exc:
        print(f"r3p render-head: error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


def _registry_uri(args: argparse.Namespace, cfg) -> str:
    """The tracking store of --tracking-uri, else of --root (sqlite:///ROOT/mlflow.db), else training.tracking_uri."""
    from pipeline.tracking import default_tracking_uri

    uri = getattr(args, "tracking_uri", None) or (default_tracking_uri(args.root) if getattr(args, "root", None)
                                                   else cfg.training.tracking_uri)
    if not uri:
        raise ConfigError("say which model registry: --root ROOT (its sqlite:///ROOT/mlflow.db) or --tracking-uri URI")
    return uri


def cmd_animate(args: argparse.Namespace) -> int:
    from pipeline.animate import AnimateError, animate, format_summary
    from pipeline.lifecycle.registry import ModelRegistry, RegistryError

    if args.model == "champion":
        try:
            args.model = str(ModelRegistry(_registry_uri(args, _cfg(args))).materialise_alias("champion"))
        except RegistryError as exc:
            print(f"r3p animate: error: --model champion: {exc}", file=sys.stderr)
            return 2
        print(f"r3p animate: champion = {args.model}")
    try:
        summary = animate(args.model, args.source, args.out, audio=args.audio, video=args.video, bg=args.bg,
                          pose=args.pose,
                          cfg=_cfg(args), a2m=args.a2m, head=args.head, htbsr=args.htbsr, mouth_amp=args.mouth_amp,
                          temperature=args.temperature, blink=args.blink, max_frames=args.max_frames,
                          size=args.size, chunk=args.chunk, seed=args.seed)
    except AnimateError as exc:
        print(f"r3p animate: error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from pipeline.lifecycle.gate import GateError
    from pipeline.lifecycle.lock import LockHeld
    from pipeline.lifecycle.registry import RegistryError
    from pipeline.lifecycle.retrain import RetrainError, run_retrain
    from pipeline.preprocess import PreprocessError
    from pipeline.train import TrainError

    try:
        rec = run_retrain(args.new, args.root, _cfg(args), stages=args.stages, gate=args.gate,
                          tracking_uri=args.tracking_uri, address=args.address, batch=args.batch)
    except LockHeld as exc:
        print(f"r3p retrain: refused: {exc}", file=sys.stderr)
        return 3
    except (RetrainError, GateError, RegistryError, TrainError, PreprocessError) as exc:
        print(f"r3p retrain: error: {exc}", file=sys.stderr)
        return 2
    return 0 if rec["decision"] == "promoted" else 1


def cmd_models(args: argparse.Namespace) -> int:
    from pipeline.lifecycle.models import describe, format_models, set_alias
    from pipeline.lifecycle.registry import RegistryError

    uri = _registry_uri(args, _cfg(args))
    try:
        if args.models_command == "set-alias":
            out = set_alias(uri, args.alias, args.versions, latest=args.latest, root=args.root, note=args.note)
            print(f"r3p models: {args.alias} -> " + ", ".join(f"{s} v{v}" for s, v in sorted(out["versions"].items()))
                  + (f" (record {out['record_path']})" if out.get("record_path") else ""))
            return 0
        info = describe(uri, args.root)
    except RegistryError as exc:
        print(f"r3p models: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2, default=str) if args.json else format_models(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    cfgp = _config_parent()
    parser = argparse.ArgumentParser(
        prog="r3p", description="r3p: data and training pipeline for one-shot 3D talking portraits.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("assets", parents=[cfgp], help="list external assets (found/missing, what they enable)",
                       description="List every external asset r3p can use, with its status and how to obtain it.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_assets)
    asub = p.add_subparsers(dest="assets_command", metavar="ACTION")
    c = asub.add_parser("convert-bfm", help="build BFM_model_front.mat from the BFM09 originals",
                        description="Build BFM_model_front.mat (Deep3DFaceRecon layout) from 01_MorphableModel.mat, "
                                    "Exp_Pca.bin, std_exp.txt, BFM_front_idx.mat, BFM_exp_idx.mat, "
                                    "facemodel_info.mat in DIR (the transferBFM09 recipe).")
    c.add_argument("dir", metavar="DIR", help="folder holding the originals")
    c.add_argument("--out", help="output file (default DIR/BFM_model_front.mat)")
    c.set_defaults(func=cmd_convert_bfm)
    s = asub.add_parser("synth-bfm", help="write the synthetic morphable model in the BFM layout",
                        description="Write the deterministic synthetic morphable model as a .mat in the "
                                    "BFM_model_front layout (marked synthetic).")
    s.add_argument("out", metavar="OUT", help="output .mat path")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", default="bfm", help="'bfm' (35,709 vertices), 'small', or a vertex count")
    s.set_defaults(func=cmd_synth_bfm)
    e = asub.add_parser("convert-eg3d", help="convert the official EG3D pickle to safetensors + JSON (safely)",
                        description="Read the EG3D network snapshot (e.g. ffhqrebalanced512-128.pkl) with a "
                                    "restricted unpickler that executes nothing from the file, check the generator "
                                    "against r3p's plain-torch EG3D, and write OUT.safetensors + OUT.json.")
    e.add_argument("pkl", metavar="FILE.pkl", help="the EG3D checkpoint")
    e.add_argument("--out", help="output path without suffix (default: beside FILE.pkl, same stem)")
    e.set_defaults(func=cmd_convert_eg3d)

    p = sub.add_parser("multiview", parents=[cfgp], help="teacher heads rendered from several cameras -> Parquet views",
                       description="Sample heads from a teacher (morphable: the 3DMM, any machine; eg3d: the converted "
                                   "FFHQ checkpoint) and render each from --views cameras into OUTPUT/vNNN/views/ "
                                   "(Ray Data, resumable shards, views_sheet.png).")
    p.add_argument("output", metavar="OUTPUT")
    p.add_argument("--teacher", choices=["morphable", "eg3d"], help="default: multiview.teacher")
    p.add_argument("--samples", type=int, help="default: multiview.samples")
    p.add_argument("--views", type=int, help="default: multiview.views")
    p.add_argument("--poses", metavar="DATASET", help="a preprocessed dataset: views take its frames' cameras "
                   "with probability multiview.real_pose_fraction")
    p.add_argument("--force", action="store_true", help="write a new version even if the latest differs")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.set_defaults(func=cmd_multiview)

    p = sub.add_parser("synth", parents=[cfgp], help="generate a synthetic talking-face corpus with ground truth",
                       description="Render a deterministic synthetic talking-face corpus (H.264 + AAC mp4 at "
                                   "25 fps) with per-frame ground truth beside each clip.")
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--identities", type=int, default=2)
    p.add_argument("--clips", type=int, default=2, help="clips per identity")
    p.add_argument("--seconds", type=float, default=4.0, help="clip length")
    p.add_argument("--size", type=int, default=512, help="frame size in pixels (square)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--audio-offsets", default="0", metavar="K[,K...]",
                   help="audio shift in frames per clip, cycled (e.g. 0,0,3 for sync tests)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("track", parents=[cfgp], help="track the face and fit the 3DMM on one video",
                       description="Decode VIDEO, track its main face, fit the 3DMM, and write geometry.npz, "
                                   "summary.json and an overlay contact sheet into --out.")
    p.add_argument("video", metavar="VIDEO")
    p.add_argument("--out", default="out/track", help="output folder (default out/track)")
    p.set_defaults(func=cmd_track)

    p = sub.add_parser("config", parents=[cfgp], help="print the resolved configuration",
                       description="Print the configuration after presets, file and --set overrides.")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("demo", parents=[cfgp], help="run the demo job end to end on the synthetic default",
                       description="Run the end-to-end demo on the embedded default and print where outputs are.")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("preprocess", parents=[cfgp], help="corpus -> sharded Parquet (clips, frames) on Ray",
                       description="Process every clip of INPUT (a folder of videos, or a CSV/JSONL/Parquet manifest "
                                   "with a 'path' column and optional speaker_id, clip_start, clip_end, dataset) into "
                                   "OUTPUT/vNNN/{clips,frames}/<shard>.parquet on Ray Data. Local paths or URIs "
                                   "(s3://...). Re-running resumes: published shards are skipped.")
    p.add_argument("input", metavar="INPUT", help="folder of videos or manifest file (path or URI)")
    p.add_argument("output", metavar="OUTPUT", help="dataset folder (path or URI)")
    p.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--retry-failed", action="store_true", help="process the failed clips of published shards again")
    p.add_argument("--force", action="store_true",
                   help="config or inputs changed: start over in a new version folder instead of stopping")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("inspect", parents=[cfgp], help="counts, common errors and a contact sheet of a dataset",
                       description="Report counts by split and status, the most common errors, and write a "
                                   "contact sheet of random frames with their PNCC and masks.")
    p.add_argument("output", metavar="OUTPUT", help="dataset folder (latest version) or OUTPUT/vNNN")
    p.add_argument("--sheet", help="contact sheet PNG (default OUTPUT/vNNN/inspect.png)")
    p.add_argument("--samples", type=int, default=6, help="random frames in the contact sheet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("train", parents=[cfgp], help="train a stage (syncnet, a2m) on a dataset version with Ray Train",
                       description="Train one stage on DATA (a dataset folder or OUTPUT/vNNN) with Ray Train; "
                                   "checkpoints under <dataset root>/runs/RUN, metrics and the registered model in "
                                   "MLflow. Re-running the same command resumes the run from its last checkpoint.")
    p.add_argument("--stage", required=True, help="stage name (syncnet, a2m)")
    p.add_argument("--data", required=True, metavar="DATASET", help="dataset folder (latest version) or OUTPUT/vNNN")
    p.add_argument("--run", required=True, metavar="NAME", help="run name (Ray Train run and MLflow run)")
    p.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--from-checkpoint", metavar="RUN_OR_PATH", help="initialise the weights from this checkpoint")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///<dataset root>/mlflow.db)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", parents=[cfgp], help="metrics of models and baselines on a dataset split "
                       "(self, cross, audio protocols) on Ray, logged to MLflow, with report.html",
                       description="Evaluate on DATA's split: the static-source and ground-truth baselines always, "
                                   "side by side with --model; per-clip results cached under --out (a re-run "
                                   "computes only what is missing); MLflow parent run + one nested run per protocol.")
    p.add_argument("--data", required=True, metavar="DATASET", help="dataset folder (latest version) or OUTPUT/vNNN")
    p.add_argument("--model", help="comma-separated models beside the baselines (static, ground_truth, always run): "
                                   "a runs folder of `r3p train` or a run folder, generated by the animate pipeline")
    p.add_argument("--split", choices=["train", "val", "test", "all"], help="clips evaluated (default evaluate.split)")
    p.add_argument("--protocols", help="comma-separated: self,cross,audio (default evaluate.protocols)")
    p.add_argument("--limit", type=int, help="only the first N clips (sorted by id)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///<dataset root>/mlflow.db)")
    p.add_argument("--out", help="evaluation folder (default <dataset version>/evaluations/<split>-<clip list hash>)")
    p.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict-motion", parents=[cfgp], help="audio -> expression sequence with a trained A2M",
                       description="Compute the audio features of AUDIO (any file ffmpeg reads) with the "
                                   "preprocessing code and write the A2M's expression sequence (T, 64) at 25 fps.")
    p.add_argument("--model", required=True, metavar="RUN_OR_PATH", help="A2M run name or checkpoint folder")
    p.add_argument("--runs", help="runs folder for a run name (default: training.storage_path)")
    p.add_argument("--audio", required=True, help="audio or video file")
    p.add_argument("--mouth-amp", type=float, help="mouth amplitude control (default: the training mean)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="motion.npz", help="output .npz (exp (T, 64), fps)")
    p.set_defaults(func=cmd_predict_motion)

    p = sub.add_parser("render-head", parents=[cfgp], help="source photo + motion (.npz or driving video) -> "
                       "head-only talking mp4 with a trained motion model",
                       description="Preprocess SOURCE (one photo) as preprocessing does, compute its tri-plane "
                                   "once, and render the motion model's head for every frame of --motion "
                                   "(an `r3p predict-motion` .npz) or --video (a driving video's fitted expression "
                                   "and pose), streamed to OUT.mp4 at the model's image size, on black.")
    p.add_argument("--model", required=True, metavar="RUN_OR_PATH", help="motion run name or checkpoint folder")
    p.add_argument("--runs", help="runs folder for a run name (default: training.storage_path)")
    p.add_argument("--source", required=True, metavar="IMG", help="source photo (PNG/JPEG) of one face")
    p.add_argument("--motion", metavar="NPZ", help="expression sequence: exp (T, 64), fps[, eg3d_cam (T, 25)]")
    p.add_argument("--video", metavar="MP4", help="driving video (its expression and head pose drive the source)")
    p.add_argument("--audio", help="audio file muxed into the output (default: the driving video's audio)")
    p.add_argument("--no-audio", action="store_true", help="never mux audio")
    p.add_argument("--max-frames", type=int, metavar="N", help="render at most N frames")
    p.add_argument("--chunk", type=int, default=16, help="frames rendered at a time")
    p.add_argument("--cache", metavar="DIR", help="on-disk cache of processed sources and their planes")
    p.add_argument("--out", required=True, metavar="OUT.mp4", help="output video")
    p.set_defaults(func=cmd_render_head)

    p = sub.add_parser("animate", parents=[cfgp], help="source photo + audio or driving video -> talking-portrait "
                       "mp4 (A2M + motion model + HTB-SR or static-torso compositing)",
                       description="Preprocess SOURCE (one photo: crop, fit, segment, inpainted torso, background "
                                   "plate; I2P once), drive it with --audio (A2M expressions, the source's head "
                                   "pose) or --video (its fitted expressions and pose), render the head per chunk, "
                                   "fuse it with the source's torso (warped by a trained htbsr run, or static) "
                                   "and the background (its plate or --bg) and "
                                   "stream an H.264 mp4 at 25 fps with the audio muxed, at the source's crop size "
                                   "(tracking.crop_size) or --size.")
    p.add_argument("--source", required=True, metavar="IMG_OR_MP4",
                   help="source photo (PNG/JPEG) of one face, or a video (its first frame)")
    p.add_argument("--audio", metavar="WAV", help="driving speech (any file ffmpeg reads)")
    p.add_argument("--video", metavar="MP4", help="driving video (its expressions, pose and audio)")
    p.add_argument("--bg", metavar="IMG", help="background image (centre-cropped, resized; default: the source's plate)")
    p.add_argument("--pose", metavar="MP4", help="head pose from this video (fitted; its first frame aligned to the "
                                                 "source's pose; default: the driving video's pose, or the source's)")
    p.add_argument("--model", metavar="DIR", help="runs folder of `r3p train` (the latest finished run of each "
                                                  "stage is used) or one run/checkpoint folder "
                                                  "(default: training.storage_path)")
    p.add_argument("--a2m", metavar="RUN", help="a2m run (name under --model, or folder)")
    p.add_argument("--head", metavar="RUN", help="motion-stage run (name under --model, or folder)")
    p.add_argument("--htbsr", metavar="auto|none|RUN", default="auto",
                   help="compositor: an htbsr run (name under --model, or folder; implies its motion run), 'auto' "
                        "(default: the latest htbsr run over the chosen motion run, else the static-torso "
                        "compositor) or 'none' (static torso)")
    p.add_argument("--mouth-amp", type=float, help="A2M mouth amplitude control (default: the training mean)")
    p.add_argument("--temperature", type=float, default=0.2, help="A2M sampling temperature")
    p.add_argument("--blink", choices=["none", "period"], default="none",
                   help="A2M blinks: none, or a blink every 4 s (audio only)")
    p.add_argument("--seed", type=int, default=0, help="A2M sampling seed")
    p.add_argument("--max-frames", type=int, metavar="N", help="at most N frames")
    p.add_argument("--size", type=int, metavar="PX", help="output side in pixels (even; default: the crop size)")
    p.add_argument("--chunk", type=int, default=16, help="frames rendered at a time")
    p.add_argument("--out", required=True, metavar="OUT.mp4", help="output video")
    p.add_argument("--tracking-uri", help="model registry for --model champion (default training.tracking_uri)")
    p.add_argument("--root", help="retrain ROOT whose registry (sqlite:///ROOT/mlflow.db) --model champion reads")
    p.set_defaults(func=cmd_animate)

    p = sub.add_parser("retrain", parents=[cfgp], help="new data -> fine-tune from the champion -> evaluate -> gate",
                       description="Fold new videos into a new dataset version under ROOT (earlier clips reused), "
                                   "fine-tune each stage from the champion, evaluate challenger and champion on "
                                   "the same test clips, and move the champion alias only when the gate passes. "
                                   "Resumable (the same command continues), one at a time per ROOT (lock file). "
                                   "Exit status: 0 promoted, 1 rejected, 2 error, 3 another retrain runs.")
    p.add_argument("--new", required=True, metavar="INPUT", help="the new videos: folder or manifest file")
    p.add_argument("--root", required=True, metavar="ROOT", help="the dataset root (versions vNNN, runs/, "
                                                                 "mlflow.db, decisions/)")
    p.add_argument("--stages", help="comma-separated stages to fine-tune (default retrain.stages: a2m,motion,htbsr)")
    p.add_argument("--gate", metavar="FILE", help="gate YAML (default retrain.gate, else the built-in gate)")
    p.add_argument("--tracking-uri", help="MLflow tracking + registry (default sqlite:///ROOT/mlflow.db)")
    p.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--batch", help="name of the new batch (its clips' path prefix; default batch-<hash>)")
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("models", parents=[cfgp], help="the model registry: versions, aliases, decisions",
                       description="List each stage's registered versions with their aliases (champion, previous, "
                                   "rejected), runs, dataset versions and the retrain decisions; or set an alias.")
    p.add_argument("--root", help="retrain ROOT (registry sqlite:///ROOT/mlflow.db, decisions in ROOT/decisions)")
    p.add_argument("--tracking-uri", help="MLflow tracking + registry URI (overrides --root's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models, models_command=None)
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    a = msub.add_parser("set-alias", help="point an alias at versions (bootstrap a champion, roll back)",
                        description="Point ALIAS at the given versions (STAGE=VERSION …) or, with --latest, at the "
                                    "latest version of every stage; recorded like a retrain decision.")
    a.add_argument("alias", choices=["champion", "previous", "rejected"])
    a.add_argument("versions", nargs="*", metavar="STAGE=VERSION")
    a.add_argument("--latest", action="store_true", help="the latest registered version of every stage")
    a.add_argument("--note", default="", help="why (kept in the record)")
    a.add_argument("--root", default=argparse.SUPPRESS, help="as for `r3p models`")
    a.add_argument("--tracking-uri", default=argparse.SUPPRESS, help="as for `r3p models`")
    return parser


def main(argv: list[str] | None = None) -> int:
    from preprocessing.face_model import FaceModelError  # importing preprocessing sets r3p's numba cache folder
    from preprocessing.landmarks.tracking import TrackingError
    from preprocessing.video import VideoError
    from pipeline.shards import SchemaVersionError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FaceModelError, FileNotFoundError, VideoError, TrackingError, SchemaVersionError) as exc:
        print(f"r3p {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
