"""A2M (tiny) learns audio → expression on the synthetic corpus; its controls work; `r3p predict-motion`.

Trained through the real job (Ray Train, MLflow) on `train_corpus.learning_dataset`'s 14 train
speakers with the sync loss of the frozen SyncNet run the SyncNet tests train (trained here too when
this module runs alone); evaluated on the 3 held-out (val) speakers' full clips.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train_corpus import clip_truth, ensure_run, learning_dataset, ray_session, split_clips

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_address():
    yield from ray_session()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_address):
    torch.set_num_threads(1)
    root = learning_dataset(tmp_path_factory.getbasetemp())
    ensure_run("syncnet", root, "syncnet-tiny")
    final = ensure_run("a2m", root, "a2m-tiny", ["training.a2m.syncnet=syncnet-tiny"])
    from training.checkpoint import load_model

    return root, final, load_model(final)


def _opening(model, id_coeff, exp) -> np.ndarray:
    from training.keypoints import mouth_opening

    return mouth_opening(model.kp(torch.as_tensor(id_coeff), torch.as_tensor(exp, dtype=torch.float32))).numpy()


def _ear(model, id_coeff, exp) -> np.ndarray:
    from training.keypoints import eye_aspect_ratio

    return eye_aspect_ratio(model.kp(torch.as_tensor(id_coeff), torch.as_tensor(exp, dtype=torch.float32))).numpy()


def test_mouth_opening_correlates_on_held_out_speakers(trained):
    from training.a2m import pearson, predict_motion

    root, _, (_, p, model, meta) = trained
    assert meta["step"] == p.steps and p.w_sync > 0
    train = split_clips(root, "train")
    n = min(c.n_frames for c in train)
    mean_motion = np.mean([c.frames["exp"][:n] for c in train], axis=0)  # average training trajectory
    pred, base, true = [], [], []
    for clip in split_clips(root, "val"):
        t = clip.n_frames
        pred.append(_opening(model, clip.id_coeff, predict_motion(model, clip.audio, clip.f0, temperature=0.2)))
        base.append(_opening(model, clip.id_coeff, mean_motion[:t]))
        true.append(_opening(model, clip.id_coeff, clip.frames["exp"]))
    r = pearson(np.concatenate(pred), np.concatenate(true))
    r0 = pearson(np.concatenate(base), np.concatenate(true))
    print(f"A2M held-out mouth-opening r = {r:.3f}; mean-motion baseline r = {r0:.3f}")
    assert r >= 0.7
    assert abs(r0) < 0.2


def test_mouth_amp_is_monotone_and_blink_closes_eyes(trained):
    from training.a2m import predict_motion

    root, _, (_, p, model, _) = trained
    clip = split_clips(root, "val")[0]
    amps = [0.1, 0.2, 0.3, 0.4, 0.5]
    openings = [float(_opening(model, clip.id_coeff, predict_motion(model, clip.audio, clip.f0, mouth_amp=a)).mean())
                for a in amps]
    print("mouth_amp → mean predicted opening:", dict(zip(amps, np.round(openings, 4))))
    assert all(b > a for a, b in zip(openings, openings[1:]))
    blink = np.zeros(clip.n_frames, np.float32)
    blink[40:60] = 1.0
    exp = predict_motion(model, clip.audio, clip.f0, blink=blink)
    ear = _ear(model, clip.id_coeff, exp)
    open_ear, closed_ear = float(np.median(ear[:30])), float(ear[45:55].mean())
    print(f"eye aspect ratio: open {open_ear:.3f}, with the blink flag {closed_ear:.3f}")
    assert closed_ear < 0.5 * open_ear


def test_predict_motion_cli_matches_the_features_of_preprocessing(trained, tmp_path):
    import soundfile

    from pipeline.cli import main
    from preprocessing.synthetic_bfm import synthetic_face_model
    from training.a2m import pearson, predict_motion

    root, final, (_, p, model, _) = trained
    truth = clip_truth(synthetic_face_model(0, "bfm"), 0, 14, 0, 6.0)  # a held-out (val) clip
    wav = tmp_path / "speech.wav"
    soundfile.write(wav, truth["audio"], 16000, subtype="FLOAT")
    out = tmp_path / "motion.npz"
    assert main(["predict-motion", "--model", "a2m-tiny", "--runs", str(root / "runs"), "--audio", str(wav),
                 "--out", str(out)]) == 0
    exp = np.load(out)["exp"]
    assert exp.shape == (truth["n"], 64) and exp.dtype == np.float32
    clip = [c for c in split_clips(root, "val") if c.clip_id == f"{truth['speaker_id']}/clip000"][0]
    np.testing.assert_allclose(exp, predict_motion(model, clip.audio, clip.f0, temperature=p.temperature),
                               atol=1e-4)
    assert pearson(_opening(model, clip.id_coeff, exp), _opening(model, clip.id_coeff, clip.frames["exp"])) >= 0.7
    assert main(["predict-motion", "--model", "syncnet-tiny", "--runs", str(root / "runs"), "--audio", str(wav),
                 "--out", str(out)]) == 2  # not an A2M checkpoint: a clear error, not a crash


def test_sync_loss_of_the_frozen_syncnet_was_logged(trained):
    from mlflow.tracking import MlflowClient

    root, _, _ = trained
    c = MlflowClient(f"sqlite:///{root.resolve() / 'mlflow.db'}")
    run = c.search_runs([c.get_experiment_by_name("r3p-train").experiment_id],
                        filter_string="tags.`r3p.run` = 'a2m-tiny'")[0]
    sync = c.get_metric_history(run.info.run_id, "sync")
    assert sync and all(np.isfinite(m.value) for m in sync)
    assert c.get_metric_history(run.info.run_id, "val_mouth_r")[-1].value >= 0.7
    assert run.data.params["stage.syncnet"].endswith("syncnet-tiny/final")
