"""HuBERT features with tiny stand-in checkpoints written in the real on-disk layout (no download)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from preprocessing.hubert import (  # noqa: E402
    HubertCheckpointError,
    HubertModelError,
    check_hubert_dir,
    load_hubert,
)

SR = 16000


def tiny_config(layers: int = 2, **kw):
    # the real front-end geometry (kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2 → 400 / 320),
    # narrower channels; layer-norm front-end and stable layer norm like hubert-large
    return transformers.HubertConfig(
        hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="layer",
        do_stable_layer_norm=True, conv_bias=True, vocab_size=12, **kw)


def write_checkpoint(path, layers: int = 2, ctc: bool = False, legacy_bin: bool = False,
                     do_normalize: bool = True, seed: int = 0):
    """Save a stand-in like facebook/hubert-large-ls960-ft; return the saved encoder (eval mode)."""
    torch.manual_seed(seed)
    cfg = tiny_config(layers)
    model = (transformers.HubertForCTC if ctc else transformers.HubertModel)(cfg).eval()
    if legacy_bin:  # the hub's pytorch_model.bin: weight_norm as weight_g / weight_v
        os.makedirs(path, exist_ok=True)
        cfg.architectures = [type(model).__name__]
        cfg.save_pretrained(path)
        sd = {k.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v"): v.clone()
              for k, v in model.state_dict().items()}
        assert any(k.endswith("weight_g") for k in sd)
        torch.save(sd, os.path.join(path, "pytorch_model.bin"))
    else:
        model.save_pretrained(path)  # model.safetensors
    transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0,
                                          do_normalize=do_normalize, return_attention_mask=True).save_pretrained(path)
    return model.hubert if ctc else model


def speech(n_frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames * 640) / SR
    a = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(t.size)
    return (a + 0.1).astype(np.float32)  # DC offset: normalisation matters


@pytest.fixture(scope="module")
def ctc_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hubert_ctc")
    ref = write_checkpoint(d, ctc=True)
    return d, ref


def _direct(ref, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return ref(torch.from_numpy(x)[None]).last_hidden_state[0].numpy()


def _norm(a):
    return (a - a.mean()) / np.sqrt(a.var() + 1e-7)


def test_ctc_checkpoint_weights_loaded_and_known_answer(ctc_dir):
    d, ref = ctc_dir
    enc = load_hubert(d)
    saved = ref.state_dict()
    loaded = enc.model.state_dict()
    assert set(loaded) == set(saved)
    for k, v in saved.items():
        assert torch.equal(loaded[k], v), k
    a = speech(10)
    x = _norm(a.astype(np.float64)).astype(np.float32)
    np.testing.assert_allclose(enc.normalise(a), x, atol=1e-5)
    want = _direct(ref, enc.normalise(a))  # 19 rows for 6400 samples
    got = enc.features(a, 10)
    assert want.shape == (19, 32)
    np.testing.assert_allclose(got[:19], want, atol=1e-5)
    np.testing.assert_array_equal(got[19], got[18])  # reference rule: last row repeated


@pytest.mark.parametrize("n_frames", [1, 2, 7, 25, 26])
@pytest.mark.parametrize("align", ["reference", "centered"])
def test_row_count_hidden_size_finite(ctc_dir, n_frames, align):
    enc = load_hubert(ctc_dir[0], align=align)
    f = enc.features(speech(n_frames, seed=n_frames), n_frames)
    assert f.shape == (2 * n_frames, 32) and f.dtype == np.float32
    assert np.isfinite(f).all()


def test_centered_alignment_known_answer(ctc_dir):
    d, ref = ctc_dir
    enc = load_hubert(d, align="centered")
    a = speech(9)
    x = np.pad(enc.normalise(a), (200, 200))
    want = _direct(ref, x)
    assert want.shape[0] == 19  # 2T + 1; the last (centred at the clip end) is dropped
    np.testing.assert_allclose(enc.features(a, 9), want[:18], atol=1e-5)


def test_zero_frames_and_bad_length(ctc_dir):
    enc = load_hubert(ctc_dir[0])
    assert enc.features(np.zeros(0, np.float32), 0).shape == (0, 32)
    with pytest.raises(ValueError, match="align"):
        enc.features(speech(3)[:-1], 3)


def test_windowed_exact_without_attention(tmp_path):
    # no transformer layers: every op is local, so windows with enough context equal one shot exactly
    write_checkpoint(tmp_path, layers=0)
    one = load_hubert(tmp_path, window_s=100.0)
    win = load_hubert(tmp_path, window_s=0.3, context_s=0.2)  # 15-row windows, 10 rows context (≥ pos-conv 8)
    a = speech(40)
    f1, fw = one.features(a, 40), win.features(a, 40)
    np.testing.assert_allclose(fw, f1, atol=1e-5)
    nocontext = load_hubert(tmp_path, window_s=0.3, context_s=0.0)
    assert np.abs(nocontext.features(a, 40) - f1).max() > 1e-3  # context is what makes it exact


def test_windowed_close_to_one_shot(ctc_dir):
    d, _ = ctc_dir
    a = speech(100)
    f1 = load_hubert(d, window_s=100.0).features(a, 100)
    fw = load_hubert(d, window_s=1.0, context_s=0.5).features(a, 100)  # 4 windows of 50 rows
    fn = load_hubert(d, window_s=1.0, context_s=0.0).features(a, 100)  # the reference's way: no context
    err_w = np.abs(fw - f1).max(1)
    err_n = np.abs(fn - f1).max(1)
    scale = np.abs(f1).max()
    assert err_w.max() < 0.03 * scale  # measured ~0.006; no context: ~0.2
    assert err_w.mean() < err_n.mean()
    cos = (fw * f1).sum(1) / (np.linalg.norm(fw, axis=1) * np.linalg.norm(f1, axis=1))
    assert cos.min() > 0.98


def test_legacy_bin_checkpoint(tmp_path):
    ref = write_checkpoint(tmp_path, ctc=True, legacy_bin=True, seed=3)
    assert not (tmp_path / "model.safetensors").exists()
    enc = load_hubert(tmp_path)
    for k, v in ref.state_dict().items():
        assert torch.equal(enc.model.state_dict()[k], v), k
    a = speech(5)
    np.testing.assert_allclose(enc.features(a, 5)[:9], _direct(ref, enc.normalise(a)), atol=1e-5)


def test_do_normalize_false(tmp_path):
    ref = write_checkpoint(tmp_path, do_normalize=False, seed=1)
    enc = load_hubert(tmp_path)
    a = speech(4)
    np.testing.assert_array_equal(enc.normalise(a), a)
    np.testing.assert_allclose(enc.features(a, 4)[:7], _direct(ref, a), atol=1e-5)


def test_missing_dir_and_files_name_path(tmp_path, ctc_dir):
    missing = tmp_path / "nowhere" / "hubert-large-ls960-ft"
    with pytest.raises(HubertModelError, match="huggingface-cli download facebook/hubert-large-ls960-ft") as e:
        load_hubert(missing)
    assert str(missing) in str(e.value) and isinstance(e.value, FileNotFoundError)
    src = ctc_dir[0]
    for drop in ("config.json", "preprocessor_config.json", "model.safetensors"):
        d = tmp_path / f"no_{drop}"
        d.mkdir()
        for f in os.listdir(src):
            if f != drop:
                (d / f).write_bytes((src / f).read_bytes())
        with pytest.raises(FileNotFoundError) as e:
            check_hubert_dir(d)
        assert str(d) in str(e.value) and drop in str(e.value)


def test_weights_not_found_under_expected_prefix(tmp_path):
    from safetensors.torch import load_file, save_file

    write_checkpoint(tmp_path, ctc=True)
    f = tmp_path / "model.safetensors"
    save_file({k.replace("hubert.", "encoder_x."): v for k, v in load_file(f).items()}, f)
    with pytest.raises(HubertCheckpointError, match="encoder weights"):  # not silently random-initialised
        load_hubert(tmp_path)


def test_wrong_model_type(tmp_path):
    transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, conv_dim=(8,) * 7,
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)).save_pretrained(tmp_path)
    transformers.Wav2Vec2FeatureExtractor().save_pretrained(tmp_path)
    with pytest.raises(HubertCheckpointError, match="model_type"):
        load_hubert(tmp_path)


def test_offline_nothing_downloaded(ctc_dir, monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants as hfc

    def boom(*a, **k):
        raise AssertionError("network access attempted")

    for mod in (huggingface_hub, transformers.utils.hub):
        for name in ("hf_hub_download", "snapshot_download", "get_hf_file_metadata", "model_info"):
            if hasattr(mod, name):
                monkeypatch.setattr(mod, name, boom)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    seen = {}
    orig = transformers.HubertModel.from_pretrained.__func__

    def spy(cls, *a, **k):
        seen["env"] = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"), hfc.HF_HUB_OFFLINE)
        seen["local_files_only"] = k.get("local_files_only")
        return orig(cls, *a, **k)

    monkeypatch.setattr(transformers.HubertModel, "from_pretrained", classmethod(spy))
    flag = hfc.HF_HUB_OFFLINE
    enc = load_hubert(ctc_dir[0])
    assert enc.features(speech(2), 2).shape == (4, 32)
    assert seen == {"env": ("1", "1", True), "local_files_only": True}
    assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ  # restored
    assert hfc.HF_HUB_OFFLINE == flag


def test_rejects_bad_options(ctc_dir):
    with pytest.raises(ValueError):
        load_hubert(ctc_dir[0], align="middle")
    with pytest.raises(ValueError):
        load_hubert(ctc_dir[0], window_s=0)
