"""SyncNet (tiny) learns lip sync on the synthetic corpus: held-out speakers, known audio offsets, MLflow.

Data: `train_corpus.learning_dataset` (ground truth written through the dataset schema; see there).
Training runs through the real job (`pipeline.train.run_train`: Ray Data + Ray Train + MLflow).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train_corpus import LEARN_OFFSETS, ensure_run, learning_dataset, ray_session, split_clips

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_address():
    yield from ray_session()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_address):
    torch.set_num_threads(1)
    root = learning_dataset(tmp_path_factory.getbasetemp())
    return root, ensure_run("syncnet", root, "syncnet-tiny")


def test_auc_on_held_out_speakers(trained):
    from training.checkpoint import load_model
    from training.syncnet import roc_auc

    root, final = trained
    _, p, model, meta = load_model(final)
    assert meta["step"] == p.steps and meta["info"]["audio"] == "mel"
    scores, labels = [], []
    with torch.no_grad():
        for clip in split_clips(root, "val"):
            exp, a = clip.frames["exp"], torch.as_tensor(clip.audio)
            ks = np.arange(10, len(exp) - p.frames - 10)
            mouth = model.mouth_embedding(torch.as_tensor(np.stack([exp[k:k + p.frames] for k in ks])))
            for s in [0, *range(-10, -2), *range(3, 11)]:  # in sync vs shifted by >= 3 frames
                win = torch.stack([a[2 * (k + s):2 * (k + s + p.frames)] for k in ks])
                scores.append((model.audio_embedding(win) * mouth).sum(-1))
                labels.append(torch.full((len(ks),), float(s == 0)))
    auc = roc_auc(torch.cat(scores), torch.cat(labels))
    print(f"SyncNet held-out ROC AUC (in sync vs shifted >= 3 frames): {auc:.4f}")
    assert auc >= 0.9


def test_known_audio_offsets_recovered(trained):
    from training.checkpoint import load_model
    from training.syncnet import offset_scores

    root, final = trained
    _, p, model, _ = load_model(final)
    clips = split_clips(root, "test")
    assert len(clips) == 2
    for clip in clips:
        j = int(clip.clip_id[-3:])
        truth = LEARN_OFFSETS[(17, j)]
        found = int(np.argmax(offset_scores(model, clip.frames["exp"], clip.audio, 10))) - 10
        print(f"{clip.clip_id}: audio offset {truth:+d} frames, found {found:+d}")
        assert abs(found - truth) <= 1
    # and the in-sync held-out clips come out at 0 ± 1
    for clip in split_clips(root, "val"):
        assert abs(int(np.argmax(offset_scores(model, clip.frames["exp"], clip.audio, 10))) - 10) <= 1


def test_mlflow_run_params_metrics_and_registered_model(trained):
    from mlflow.tracking import MlflowClient

    root, final = trained
    c = MlflowClient(f"sqlite:///{root.resolve() / 'mlflow.db'}")
    exp = c.get_experiment_by_name("r3p-train")
    runs = c.search_runs([exp.experiment_id], filter_string="tags.`r3p.run` = 'syncnet-tiny'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "syncnet-tiny"
    assert run.data.params["stage"] == "syncnet" and run.data.params["stage.width"] == "128"
    assert run.data.params["training.size"] == "tiny"
    assert {"r3p.config_hash", "r3p.dataset_version", "r3p.code_version"} <= set(run.data.tags)
    losses = c.get_metric_history(run.info.run_id, "loss")
    assert len(losses) >= 10 and losses[-1].step == 2000 and losses[-1].value < losses[0].value
    assert c.get_metric_history(run.info.run_id, "val_auc")
    assert c.get_metric_history(run.info.run_id, "lr")
    arts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "model", "dataset.json"} <= arts
    assert {a.path for a in c.list_artifacts(run.info.run_id, "model")} >= {"model/model.safetensors",
                                                                           "model/meta.json", "model/state.pt"}
    ds = run.inputs.dataset_inputs
    assert ds and ds[0].dataset.name == "truth/v001"
    versions = c.search_model_versions("name = 'r3p-syncnet'")
    assert any(v.run_id == run.info.run_id for v in versions)
