"""The synthetic talking-face corpus: files, ground truth, audio-driven mouth, determinism, detectability."""

import csv
import json

import numpy as np
import pytest

from pipeline.cli import main
from preprocessing.synthetic import SAMPLES_PER_FRAME, SynthSpec, generate_corpus
from preprocessing.synthetic_bfm import synthetic_face_model
from preprocessing.video import DecordDecoder, align_audio, read_audio


def _frame_rms(audio, n_frames):
    a = align_audio(audio, n_frames)
    return np.sqrt((a.reshape(n_frames, SAMPLES_PER_FRAME) ** 2).mean(axis=1))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    spec = SynthSpec(identities=2, clips=1, seconds=4.0, size=128, seed=3, audio_offsets=(0, 4))
    generate_corpus(synthetic_face_model(0, "small"), spec, out)
    return out, spec


def test_files_manifest_and_metadata(corpus):
    out, spec = corpus
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert len(rows) == 2 and {r["speaker_id"] for r in rows} == {"synth003_id000", "synth003_id001"}
    for r in rows:
        video = out / r["path"]
        info = DecordDecoder().probe(video)
        assert info.fps == 25 and info.n_frames == 100 and (info.width, info.height) == (128, 128)
        assert info.has_audio and info.codec == "h264" and info.audio_codec == "aac"
        meta = json.loads(video.with_suffix(".json").read_text())
        assert meta["face_model"] == "synthetic" and meta["frames"] == 100
        gt = np.load(video.with_suffix(".npz"))
        assert gt["coeffs"].shape == (100, 257) and gt["landmarks"].shape == (100, 68, 2)
        assert gt["head_mask"].shape == (100, 128, 128) and gt["torso_mask"].dtype == bool
        assert not (gt["head_mask"] & gt["torso_mask"]).any()
        # every landmark lies inside the head mask of its frame
        lm = np.clip(np.floor(gt["landmarks"]).astype(int), 0, 127)
        t = np.repeat(np.arange(100), 68)
        assert gt["head_mask"][t, lm[..., 1].ravel(), lm[..., 0].ravel()].mean() > 0.98
    assert json.loads((out / "corpus.json").read_text())["clips"] == 2


def test_audio_envelope_drives_the_jaw(corpus):
    out, _ = corpus
    video = out / "synth003_id000" / "clip000.mp4"
    gt = np.load(video.with_suffix(".npz"))
    rms = _frame_rms(read_audio(video), 100)
    jaw = gt["coeffs"][:, 80]
    assert np.corrcoef(rms, jaw)[0, 1] > 0.8
    # the rendered mouth opens with the jaw: inner-lip gap (landmarks 62 / 66) in pixels
    gap = gt["landmarks"][:, 66, 1] - gt["landmarks"][:, 62, 1]
    assert np.corrcoef(gap, jaw)[0, 1] > 0.9


def test_known_audio_offset_is_the_cross_correlation_lag(corpus):
    out, _ = corpus
    video = out / "synth003_id001" / "clip000.mp4"
    meta = json.loads(video.with_suffix(".json").read_text())
    assert meta["audio_offset_frames"] == 4
    rms = _frame_rms(read_audio(video), 100)
    jaw = np.load(video.with_suffix(".npz"))["coeffs"][:, 80]
    lags = range(-8, 9)
    score = [np.corrcoef(rms[8 + k: 92 + k], jaw[8:92])[0, 1] for k in lags]
    assert list(lags)[int(np.argmax(score))] == 4


def test_deterministic(tmp_path):
    spec = SynthSpec(identities=1, clips=1, seconds=0.4, size=64, seed=5)
    model = synthetic_face_model(0, "small")
    a = np.load(generate_corpus(model, spec, tmp_path / "a") / "synth005_id000" / "clip000.npz")
    b = np.load(generate_corpus(model, spec, tmp_path / "b") / "synth005_id000" / "clip000.npz")
    for key in ("coeffs", "landmarks", "head_mask", "torso_mask", "mouth"):
        assert np.array_equal(a[key], b[key])


def test_dlib_finds_the_synthetic_faces(tmp_path):
    import dlib

    from preprocessing.landmarks import make_detector

    spec = SynthSpec(identities=1, clips=1, seconds=0.4, size=512, seed=1)
    out = generate_corpus(synthetic_face_model(0, "bfm"), spec, tmp_path)
    video = out / "synth001_id000" / "clip000.mp4"
    frames = next(DecordDecoder().iter_frames(video, chunk=10)).frames
    gt = np.load(video.with_suffix(".npz"))["landmarks"]
    det = make_detector("dlib")
    errors = []
    for k in range(len(frames)):
        faces = det.detect(frames[k])
        if faces:
            errors.append(np.linalg.norm(faces[0].landmarks - gt[k], axis=1).mean())
    assert len(errors) >= 8  # of 10 frames
    iod = np.linalg.norm(gt[:, 36:42].mean(1) - gt[:, 42:48].mean(1), axis=1).mean()
    assert np.mean(errors) < 0.12 * iod  # dlib's points agree with the ground truth to ~a tenth of the eye distance
    del dlib


def test_cli_synth(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "c"), "--identities", "1", "--clips", "1", "--seconds", "0.4",
                 "--size", "64", "--preset", "tiny"]) == 0
    assert "manifest.csv" in capsys.readouterr().out
    assert (tmp_path / "c" / "synth000_id000" / "clip000.mp4").is_file()
    assert main(["synth", str(tmp_path / "d"), "--size", "63"]) == 2
    assert "size must be even" in capsys.readouterr().err
