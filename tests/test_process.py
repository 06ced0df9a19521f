"""process_clip on a synthetic talking-face clip: every field against ground truth or a reference."""

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.demo import crop_truth_masks, iou
from pipeline.process import make_processor, process_params
from preprocessing.face3d import Face3D
from preprocessing.landmarks.tracking import CropBox, TrackingError, crop_frames
from preprocessing.process import code_to_uint8, decode_image
from preprocessing.record import SEG_HEAD, SEG_TORSO
from preprocessing.render import render_secc
from preprocessing.synthetic import SynthSpec, generate_corpus
from preprocessing.synthetic_bfm import synthetic_face_model
from preprocessing.video import VideoError, encode_mp4


@pytest.fixture(scope="module")
def model():
    return synthetic_face_model(0, "bfm")


@pytest.fixture(scope="module")
def processed(model, tmp_path_factory):
    out = generate_corpus(model, SynthSpec(identities=1, clips=1, seconds=2.0, size=512, seed=5),
                          tmp_path_factory.mktemp("proc"))
    video = next(out.glob("*/clip000.mp4"))
    cfg = load_config("tiny")
    proc = make_processor(cfg, model)
    return proc, video, np.load(video.with_suffix(".npz")), proc(video)


def test_record_shapes_and_encodings(processed):
    proc, video, gt, rec = processed
    t = rec.n_frames
    assert t == 50 and rec.fps == 25.0 and rec.source == str(video) and rec.synthetic_face_model
    assert rec.render_size == 128 and rec.crop_size == 512
    for name in rec.PER_FRAME:
        assert len(getattr(rec, name)) == t, name
    assert rec.mel.shape == (2 * t, 80) and rec.f0.shape == rec.rms.shape == rec.voiced.shape == (2 * t,)
    assert rec.hubert is None  # no HuBERT folder in the isolated R3P_HOME
    assert decode_image(rec.frame_jpeg[0]).shape == (512, 512, 3)
    assert decode_image(rec.secc_png[0]).shape == decode_image(rec.pncc_png[0]).shape == (128, 128, 3)
    assert decode_image(rec.person_png[0]).shape == decode_image(rec.seg_png[0]).shape == (512, 512)
    assert decode_image(rec.background_jpeg).shape == (512, 512, 3)
    np.testing.assert_allclose(rec.timestamps, np.arange(t) / 25.0)
    for stage in ("decode", "detect", "track", "fit", "render", "segment", "plate", "composite", "audio", "total"):
        assert rec.timings[stage] >= 0.0, stage
    assert rec.timings["total"] >= sum(v for k, v in rec.timings.items() if k not in ("total", "decode_probe")) * 0.9


def test_secc_matches_the_fitted_coefficients(processed, model):
    """The stored SECC is exactly the canonical render of the fitted identity and expression."""
    _, _, _, rec = processed
    ref = render_secc(Face3D(model), rec.id_coeff[None], rec.exp[7:8], 128)[0]
    np.testing.assert_array_equal(decode_image(rec.secc_png[7]), code_to_uint8(ref))


def test_segmentation_and_plate_against_truth(processed):
    _, _, gt, rec = processed
    head_t = crop_truth_masks(gt["head_mask"], rec.crop_box, rec.crop_size)
    torso_t = crop_truth_masks(gt["torso_mask"], rec.crop_box, rec.crop_size)
    labels = np.stack([decode_image(b) for b in rec.seg_png])
    assert iou(labels > 0, head_t | torso_t) > 0.85
    assert iou(labels == SEG_HEAD, head_t) > 0.75
    assert iou(labels == SEG_TORSO, torso_t) > 0.6
    # background plate: where the background is visible in some frame it matches the true background
    truth = _crop_image(gt["background"], rec)
    plate = decode_image(rec.background_jpeg).astype(np.float32)
    seen = ~(head_t | torso_t).all(0) & _inside_video(rec)
    err = np.abs(plate - truth)[seen].mean()
    assert err < 8.0, err
    # composite: the person's pixels come from the frame, the rest from the plate
    comp = decode_image(rec.composite_jpeg[10]).astype(np.float32)
    frame = decode_image(rec.frame_jpeg[10]).astype(np.float32)
    person = decode_image(rec.person_png[10]) > 250
    assert np.abs(comp - frame)[person].mean() < 4.0
    away = decode_image(rec.person_png[10]) < 5
    assert np.abs(comp - plate)[away].mean() < 4.0


def _crop_image(img, rec):
    return crop_frames(img[None], CropBox.from_array(rec.crop_box), rec.crop_size)[0].astype(np.float32)


def _inside_video(rec):
    """Crop pixels that lie inside the source frame (the crop is padded black outside it)."""
    ones = np.full((rec.height, rec.width), 255, np.uint8)
    return crop_frames(ones[None], CropBox.from_array(rec.crop_box), rec.crop_size)[0] > 250


def test_controls_follow_the_face(processed):
    _, _, gt, rec = processed
    ok = rec.valid
    assert np.corrcoef(rec.mouth_opening[ok], gt["mouth"][ok])[0, 1] > 0.8
    assert np.corrcoef(rec.exp[ok, 0], gt["coeffs"][ok, 80])[0, 1] > 0.6
    box = rec.mouth_box[ok]
    lips = rec.landmarks[ok, 48:68]
    assert (box[:, None, 0] <= lips[..., 0]).all() and (lips[..., 0] <= box[:, None, 2]).all()
    # audio energy follows the mouth drive the synthetic voice was built from
    rms = rec.rms.reshape(-1, 2).mean(1)
    assert np.corrcoef(rms, gt["mouth"])[0, 1] > 0.5


def test_window_of_a_clip(processed):
    proc, video, gt, rec = processed
    part = proc(video, start_s=0.4, end_s=1.6)
    assert part.n_frames == 30 and part.start_s == pytest.approx(0.4)
    np.testing.assert_allclose(part.timestamps, 0.4 + np.arange(30) / 25.0)
    # audio windowed with the frames (the outermost rows see different padding)
    np.testing.assert_allclose(part.mel[2:-2], rec.mel[22:78], atol=1e-3)


def test_failures_are_typed_and_name_the_file(processed, tmp_path):
    proc = processed[0]
    blank = tmp_path / "no face.mp4"
    encode_mp4(blank, np.full((25, 128, 128, 3), 90, np.uint8), 25.0, np.zeros(16000, np.float32))
    with pytest.raises(TrackingError) as ei:
        proc(blank)
    assert "no face.mp4" in str(ei.value)
    bad = tmp_path / "text.mp4"
    bad.write_text("not a video")
    with pytest.raises(VideoError) as ei:
        proc(bad)
    assert "text.mp4" in str(ei.value)


def test_process_params_from_config():
    cfg = load_config("tiny", overrides=["output.jpeg_quality=80", "render.size=64"])
    p = process_params(cfg)
    assert p.jpeg_quality == 80 and p.render_size == 64 and p.segmenter == "colour" and p.hubert_dir is None


def test_hubert_features_when_the_model_folder_is_configured(processed, model, tmp_path):
    """A stand-in checkpoint in the asset's layout: `audio.hubert=always` puts (2T, hidden) rows in the record."""
    from test_hubert import write_checkpoint

    from pipeline.config import ConfigError

    folder = tmp_path / "hubert"
    write_checkpoint(folder, ctc=True)
    _, video, _, _ = processed
    cfg = load_config("tiny", overrides=[f"assets.hubert={folder}", "audio.hubert=always"])
    rec = make_processor(cfg, model)(video, start_s=0.0, end_s=0.8)
    assert rec.n_frames == 20 and rec.hubert.shape == (40, 32) and np.isfinite(rec.hubert).all()
    assert "hubert" in rec.timings
    with pytest.raises(ConfigError, match="no HuBERT model"):
        process_params(load_config("tiny", overrides=[f"assets.hubert={tmp_path / 'none'}", "audio.hubert=always"]))
