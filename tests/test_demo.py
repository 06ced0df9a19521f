"""The demo job end to end on the tiny preset, and SECC eye removal on the synthetic face."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.cli import main
from preprocessing.face3d import Face3D
from preprocessing.render import render_secc
from preprocessing.synthetic_bfm import EXP_LEFT_EYE_CLOSE, EXP_RIGHT_EYE_CLOSE, synthetic_face_model


def test_demo_writes_contact_sheet_marked_synthetic(tmp_path, capsys):
    out = tmp_path / "demo"
    # the demo's training stages at fewer steps than `make demo` takes (what is checked is the pipeline, not quality)
    steps = {"syncnet": 120, "a2m": 120, "i2p": 60, "motion": 60, "htbsr": 60}
    sets = ["demo.samples=2", *[f"training.{k}.steps={v}" for k, v in steps.items()]]
    assert main(["demo", "--preset", "tiny", "--out", str(out), *[a for x in sets for a in ("--set", x)]]) == 0
    printed = capsys.readouterr().out
    sheet = out / "contact_sheet.png"
    assert str(sheet) in printed and "SYNTHETIC" in printed
    img = np.asarray(Image.open(sheet))
    assert img.shape[0] > 2 * 128 and img.shape[1] > 4 * 128 and img.std() > 10
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["face_model"] == "synthetic" and meta["face_model_synthetic"] is True
    assert meta["render_size"] == 128 and meta["samples"] == 2
    assert "preset: tiny" in (out / "config.yaml").read_text()
    # the geometry part: a synthetic clip tracked and fitted, with its error against the ground truth
    overlay = out / "overlay.png"
    assert str(overlay) in printed and np.asarray(Image.open(overlay)).std() > 10
    assert meta["track_frames"] == 50 and meta["track_face_fraction"] >= 0.8
    assert meta["landmark_error_iod_vs_truth"] < 0.2 and meta["track_fit_rmse_px"] < 5
    # the process_clip part: the record's contact sheet and its masks against the ground truth
    clip_sheet = out / "clip_sheet.png"
    assert str(clip_sheet) in printed
    img = np.asarray(Image.open(clip_sheet))
    assert img.shape[0] > 4 * 192 and img.shape[1] > 7 * 192 and img.std() > 10
    assert meta["clip_frames"] == 50 and meta["clip_person_iou_vs_truth"] > 0.85
    assert meta["clip_head_iou_vs_truth"] > 0.6 and meta["clip_torso_iou_vs_truth"] > 0.6
    assert {"detect", "fit", "render", "segment", "audio"} <= set(meta["clip_stage_seconds"])
    # the preprocess part: every good clip ok, the broken file a failed row with its error, inspected
    report = meta["dataset_report"]
    n_good = len(list((out / "corpus").glob("synth*/clip*.mp4")))
    assert report["status"] == {"ok": n_good, "failed": 1}
    assert report["top_errors"][0]["error"].startswith("VideoError") and "truncated.mp4" in \
        report["top_errors"][0]["example"]
    assert str(out / "dataset_sheet.png") in printed and (out / "dataset_sheet.png").is_file()
    # the multiview part: a morphable-teacher set posed like the dataset's frames, its sheet printed
    mv = meta["views_summary"]
    assert mv["failed_samples"] == 0 and mv["rows"] == 2 * mv["samples"] > 0 and mv["face_model"] == "synthetic"
    assert meta["views_sheet"] in printed and Path(meta["views_sheet"]).is_file()
    # the 3D head: i2p on the views set, motion from it on the dataset, a head video and its sheet
    assert meta["train_i2p"]["steps"] == meta["train_motion"]["steps"] == 60
    assert meta["train_syncnet"]["steps"] == meta["train_a2m"]["steps"] == 120
    assert meta["head_video"] in printed and meta["head_sheet"] in printed and meta["head_frames"] > 0
    import cv2

    cap = cv2.VideoCapture(meta["head_video"])
    decoded = 0
    while cap.read()[0]:
        decoded += 1
    assert decoded == meta["head_frames"]
    head = np.asarray(Image.open(meta["head_sheet"]))
    assert head.shape[0] > 4 * 128 and head.shape[1] > 4 * 128 and head.std() > 10
    # HTB-SR trained over the motion run; r3p animate from the driving clip's audio, its sheet
    assert meta["train_htbsr"]["steps"] == 60
    assert meta["animate_video"] in printed and meta["animate_sheet"] in printed
    assert meta["animate"]["frames"] == 50 and meta["animate"]["audio"] and meta["animate"]["compositor"] == "htbsr"
    # r3p evaluate: the demo's trained stages beside the baselines
    ev = meta["evaluation"]
    assert ev["models"] == ["model", "static", "ground_truth"] and not ev["failed"], ev["failed"]
    assert "htbsr" in ev["model_identity"]["model"] and meta["evaluation_report"] in printed
    psnr = [r for r in ev["table"] if r["protocol"] == "self" and r["metric"] == "PSNR"][0]["values"]
    assert psnr["model"] is not None and psnr["model"] < psnr["ground_truth"]
    # the lifecycle: the demo's runs became the first champion, then r3p retrain on a second batch
    rec = meta["retrain"]
    assert rec["dataset"]["version"] == 2 and rec["dataset"]["new_clips"] == 2
    assert rec["dataset"]["reused_clips"] == n_good  # the first version's ok clips were copied, not redone
    assert rec["test_clips"] >= 1 and set(rec["new_versions"]) == {"a2m", "motion", "htbsr"}
    assert rec["champion_before"] and set(rec["challenger"]) == set(rec["champion_before"])
    passed = all(o["passed"] for o in rec["outcomes"])
    assert rec["decision"] == ("promoted" if passed else "rejected") and bool(rec["reasons"]) != passed
    assert rec["champion_after"] == (rec["challenger"] if passed else rec["champion_before"])
    by_version = {r["version"]: r for r in meta["models"]["stages"]["motion"]}
    assert "champion" in by_version[rec["champion_after"]["motion"]]["aliases"]
    assert by_version[rec["new_versions"]["motion"]]["decision"] == rec["decision"]
    psnr = next(m for m in rec["metrics"] if m["protocol"] == "self" and m["metric"] == "PSNR")
    assert psnr["challenger"] is not None and psnr["champion"] is not None
    assert rec["record_path"] in printed and "r3p models:" in printed and Path(rec["record_path"]).is_file()


def _eye_box_pixels(face3d, exp, size):
    """Pixels inside the projected right-eye landmark box (canonical pose)."""
    import torch

    from preprocessing.face3d import join_coeffs

    c = join_coeffs(exp=torch.as_tensor(exp, dtype=torch.float32)[None])
    lm = face3d.landmarks(c, size)[0].numpy()
    eye = lm[36:42]
    x0, y0 = np.floor(eye.min(0)).astype(int)
    x1, y1 = np.ceil(eye.max(0)).astype(int)
    return slice(y0, y1), slice(x0, x1)


def test_secc_removes_eyes_and_eye_closing_fills_them():
    model = synthetic_face_model(seed=0, size="small")
    face = Face3D(model)
    size = 256
    exp = np.zeros(64)
    rows, cols = _eye_box_pixels(face, exp, size)
    with_eyes = render_secc(face, np.zeros((1, 80)), exp[None], size, remove_eyes=False)[0]
    no_eyes = render_secc(face, np.zeros((1, 80)), exp[None], size, remove_eyes=True)[0]
    hole = (no_eyes[rows, cols] == -1).all(axis=-1)
    assert (with_eyes[rows, cols] > -1).any(axis=-1).all()  # eyes drawn: no background in the box
    assert hole.mean() > 0.2  # eye triangles removed: a hole in the open eye
    closed = exp.copy()
    closed[EXP_RIGHT_EYE_CLOSE] = 1.0
    shut = render_secc(face, np.zeros((1, 80)), closed[None], size, remove_eyes=True)[0]
    assert (shut[rows, cols] == -1).all(axis=-1).mean() < 0.25 * hole.mean()  # the lid covers the hole
    assert EXP_LEFT_EYE_CLOSE != EXP_RIGHT_EYE_CLOSE
