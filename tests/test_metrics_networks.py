"""FID Inception-v3 and SyncNet v2: layer tables as published, output shapes, loading stand-in weights files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation.metrics import MetricError
from evaluation.metrics.inception import FIDInceptionV3, InceptionFeatures, load_fid_inception
from evaluation.metrics.syncnet import SyncNetEmbedder, SyncNetV2, load_syncnet

torch.set_num_threads(1)  # the machine is shared; one thread avoids oversubscription


def inception_conv_table() -> dict[str, tuple[int, int, int, int]]:
    """Every BasicConv2d of torchvision's Inception3 (no aux head): name -> (cout, cin, kh, kw)."""
    t = {"Conv2d_1a_3x3": (32, 3, 3, 3), "Conv2d_2a_3x3": (32, 32, 3, 3), "Conv2d_2b_3x3": (64, 32, 3, 3),
         "Conv2d_3b_1x1": (80, 64, 1, 1), "Conv2d_4a_3x3": (192, 80, 3, 3)}
    for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        t.update({f"{name}.branch1x1": (64, cin, 1, 1), f"{name}.branch5x5_1": (48, cin, 1, 1),
                  f"{name}.branch5x5_2": (64, 48, 5, 5), f"{name}.branch3x3dbl_1": (64, cin, 1, 1),
                  f"{name}.branch3x3dbl_2": (96, 64, 3, 3), f"{name}.branch3x3dbl_3": (96, 96, 3, 3),
                  f"{name}.branch_pool": (pool, cin, 1, 1)})
    t.update({"Mixed_6a.branch3x3": (384, 288, 3, 3), "Mixed_6a.branch3x3dbl_1": (64, 288, 1, 1),
              "Mixed_6a.branch3x3dbl_2": (96, 64, 3, 3), "Mixed_6a.branch3x3dbl_3": (96, 96, 3, 3)})
    for name, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        t.update({f"{name}.branch1x1": (192, 768, 1, 1), f"{name}.branch7x7_1": (c, 768, 1, 1),
                  f"{name}.branch7x7_2": (c, c, 1, 7), f"{name}.branch7x7_3": (192, c, 7, 1),
                  f"{name}.branch7x7dbl_1": (c, 768, 1, 1), f"{name}.branch7x7dbl_2": (c, c, 7, 1),
                  f"{name}.branch7x7dbl_3": (c, c, 1, 7), f"{name}.branch7x7dbl_4": (c, c, 7, 1),
                  f"{name}.branch7x7dbl_5": (192, c, 1, 7), f"{name}.branch_pool": (192, 768, 1, 1)})
    t.update({"Mixed_7a.branch3x3_1": (192, 768, 1, 1), "Mixed_7a.branch3x3_2": (320, 192, 3, 3),
              "Mixed_7a.branch7x7x3_1": (192, 768, 1, 1), "Mixed_7a.branch7x7x3_2": (192, 192, 1, 7),
              "Mixed_7a.branch7x7x3_3": (192, 192, 7, 1), "Mixed_7a.branch7x7x3_4": (192, 192, 3, 3)})
    for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        t.update({f"{name}.branch1x1": (320, cin, 1, 1), f"{name}.branch3x3_1": (384, cin, 1, 1),
                  f"{name}.branch3x3_2a": (384, 384, 1, 3), f"{name}.branch3x3_2b": (384, 384, 3, 1),
                  f"{name}.branch3x3dbl_1": (448, cin, 1, 1), f"{name}.branch3x3dbl_2": (384, 448, 3, 3),
                  f"{name}.branch3x3dbl_3a": (384, 384, 1, 3), f"{name}.branch3x3dbl_3b": (384, 384, 3, 1),
                  f"{name}.branch_pool": (192, cin, 1, 1)})
    return t


def test_inception_state_dict_matches_the_pytorch_fid_layer_table():
    expected = {"fc.weight": (1008, 2048), "fc.bias": (1008,)}
    for name, shape in inception_conv_table().items():
        expected[f"{name}.conv.weight"] = shape
        for p in ("weight", "bias", "running_mean", "running_var"):
            expected[f"{name}.bn.{p}"] = (shape[0],)
    net = FIDInceptionV3()
    got = {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert got == expected
    assert len(inception_conv_table()) == 94
    # torchvision's inception_v3 has 27,161,264 parameters; minus the aux head (3,326,696), plus 8 classes
    assert sum(p.numel() for p in net.parameters()) == 27_161_264 - 3_326_696 + 8 * 2048 + 8
    assert all(m.eps == 1e-3 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not any(m.bias is not None for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def _randomise_bn(net: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def test_inception_loads_a_standin_weights_file_and_extracts_2048_features(tmp_path):
    torch.manual_seed(0)
    net = FIDInceptionV3().eval()
    _randomise_bn(net, 0)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 80, 3), dtype=np.uint8)
    extractor = InceptionFeatures(path, batch_size=1)
    feats = extractor(frames)
    assert feats.shape == (2, 2048) and feats.dtype == np.float64
    assert np.all(feats >= 0)  # average of ReLU outputs
    with torch.no_grad():
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
        # the reference resizes to 299 bilinearly inside the net: resizing first gives the same features
        x299 = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        direct = net(x299).double().numpy()
    np.testing.assert_allclose(feats, direct, rtol=1e-4, atol=1e-6)
    assert extractor.model.startswith("pt_inception-2015-12-05-6726825d.pth (sha256 ")
    assert (extractor.fid_name, extractor.kid_name) == ("FID", "KID")


def test_inception_rejects_a_wrong_file_naming_it(tmp_path):
    state = FIDInceptionV3().state_dict()
    del state["Mixed_7c.branch_pool.conv.weight"]
    state["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(MetricError, match=r"bad\.pth.*Mixed_7c\.branch_pool\.conv\.weight.*extra\.weight"):
        load_fid_inception(bad)
    with pytest.raises(MetricError, match="not found.*r3p assets"):
        load_fid_inception(tmp_path / "missing.pth")


SYNCNET_TABLE = {  # syncnet_python SyncNetModel.S: Sequential index -> weight shape
    "netcnnaud.0": (64, 1, 3, 3), "netcnnaud.4": (192, 64, 3, 3), "netcnnaud.8": (384, 192, 3, 3),
    "netcnnaud.11": (256, 384, 3, 3), "netcnnaud.14": (256, 256, 3, 3), "netcnnaud.18": (512, 256, 5, 4),
    "netfcaud.0": (512, 512), "netfcaud.3": (1024, 512), "netfclip.0": (512, 512), "netfclip.3": (1024, 512),
    "netcnnlip.0": (96, 3, 5, 7, 7), "netcnnlip.4": (256, 96, 1, 5, 5), "netcnnlip.8": (256, 256, 1, 3, 3),
    "netcnnlip.11": (256, 256, 1, 3, 3), "netcnnlip.14": (256, 256, 1, 3, 3), "netcnnlip.18": (512, 256, 1, 6, 6),
}
SYNCNET_BN = {"netcnnaud.1": 64, "netcnnaud.5": 192, "netcnnaud.9": 384, "netcnnaud.12": 256, "netcnnaud.15": 256,
              "netcnnaud.19": 512, "netfcaud.1": 512, "netfclip.1": 512, "netcnnlip.1": 96, "netcnnlip.5": 256,
              "netcnnlip.9": 256, "netcnnlip.12": 256, "netcnnlip.15": 256, "netcnnlip.19": 512}


def syncnet_state(seed: int = 0) -> tuple[SyncNetV2, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    net = SyncNetV2().eval()
    _randomise_bn(net, seed)
    return net, {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_syncnet_state_dict_matches_syncnet_v2_and_output_shapes():
    expected = {}
    for name, shape in SYNCNET_TABLE.items():
        expected[f"{name}.weight"], expected[f"{name}.bias"] = shape, (shape[0],)
    for name, c in SYNCNET_BN.items():
        for p in ("weight", "bias", "running_mean", "running_var"):
            expected[f"{name}.{p}"] = (c,)
    net, state = syncnet_state()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    with torch.no_grad():
        assert net.forward_aud(torch.randn(2, 1, 13, 20)).shape == (2, 1024)
        assert net.forward_lip(torch.randn(2, 3, 5, 224, 224)).shape == (2, 1024)
        assert net.netcnnaud(torch.randn(1, 1, 13, 20)).shape == (1, 512, 1, 1)
        assert net.netcnnlip(torch.randn(1, 3, 5, 224, 224)).shape == (1, 512, 1, 1, 1)


class _Probe(torch.nn.Module):
    """Stands in for the network: window k's 'embedding' is what went in, so the windowing is visible."""

    def forward_lip(self, x):  # (N, 3, 5, 224, 224) -> first frame's top-left pixel (3 channels) + frame-5 pixel
        return torch.cat([x[:, :, 0, 0, 0], x[:, :, 4, 0, 0]], 1)

    def forward_aud(self, x):  # (N, 1, 13, 20) -> first and last MFCC columns
        return torch.cat([x[:, 0, :, 0], x[:, 0, :, 19]], 1)


def test_syncnet_embedder_windows_frames_and_mfcc_like_the_reference(tmp_path):
    import python_speech_features

    _, state = syncnet_state()
    path = tmp_path / "syncnet_v2.model"
    torch.save(state, path)
    emb = SyncNetEmbedder(path)
    assert emb.prefix == "LSE" and emb.model.startswith("syncnet_v2.model (sha256 ")
    for k in ("netcnnlip.0.weight", "netcnnaud.19.running_var"):
        assert torch.equal(emb.net.state_dict()[k], state[k])

    rng = np.random.default_rng(0)
    t = 12
    frames = rng.integers(0, 256, (t, 224, 224, 3), dtype=np.uint8)
    audio = (rng.standard_normal(t * 640 + 100) * 2000).astype(np.int16)
    emb.net = _Probe()
    video_emb, audio_emb = emb.embed(frames, audio)
    n = t - 5  # the reference's windows: range(0, min_length - 5)
    assert video_emb.shape == (n, 6) and audio_emb.shape == (n, 26)
    for k in range(n):
        np.testing.assert_array_equal(video_emb[k, :3], frames[k, 0, 0, ::-1])  # BGR, raw 0-255
        np.testing.assert_array_equal(video_emb[k, 3:], frames[k + 4, 0, 0, ::-1])
    ref = python_speech_features.mfcc(audio, 16000)  # (100 per second, 13)
    np.testing.assert_allclose(audio_emb[:, :13], ref[4 * np.arange(n)], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(audio_emb[:, 13:], ref[4 * np.arange(n) + 19], rtol=1e-5, atol=1e-4)
    # float audio in [-1, 1] is put on the int16 scale first
    _, audio_emb_f = emb.embed(frames, audio.astype(np.float32) / 32767.0)
    np.testing.assert_allclose(audio_emb_f, audio_emb, rtol=1e-4, atol=1e-3)
    with pytest.raises(MetricError, match="too short"):
        emb.embed(frames[:5], audio)
    with pytest.raises(MetricError, match=r"\(T, 224, 224, 3\)"):
        emb.embed(frames[:, :100], audio)


def test_syncnet_loads_by_name_and_refuses_other_files(tmp_path):
    net, state = syncnet_state(1)
    good = tmp_path / "syncnet_v2.model"
    torch.save(state, good)
    loaded = load_syncnet(good)
    x = torch.randn(2, 1, 13, 20)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_aud(x), net.forward_aud(x))
    bad = tmp_path / "other.model"
    torch.save({"netcnnaud.0.weight": torch.zeros(64, 1, 5, 5)}, bad)
    with pytest.raises(MetricError, match="other.model.*shape mismatches"):
        load_syncnet(bad)


def test_syncnet_crops_cut_the_reference_lower_face_region():
    from evaluation.metrics.syncnet import syncnet_crops

    h, w, t = 200, 220, 15
    yy, xx = np.mgrid[0:h, 0:w]
    frame = np.stack([xx, yy, np.full_like(xx, 7)], -1).astype(np.uint8)  # R = x, G = y
    frames = np.repeat(frame[None], t, 0)
    boxes = np.tile([70.0, 40.0, 130.0, 120.0], (t, 1))  # centre (100, 80), half-size 40
    boxes[7] = [0.0, 0.0, 219.0, 199.0]  # one bad detection: removed by the 13-frame median
    crops = syncnet_crops(frames, boxes)
    assert crops.shape == (t, 224, 224, 3) and crops.dtype == np.uint8
    np.testing.assert_array_equal(crops[7], crops[0])
    # rows cy − s … cy + 1.8·s = 40 … 152, columns cx ± 1.4·s = 44 … 156, scaled to 224
    c = crops[0].astype(int)
    assert abs(c[0, 0, 0] - 44) <= 1 and abs(c[0, 0, 1] - 40) <= 1
    assert abs(c[-1, -1, 0] - 155) <= 1 and abs(c[-1, -1, 1] - 151) <= 1
    assert np.all(c[..., 2] == 7)
    # near the border the frame is padded with grey 110
    edge = syncnet_crops(frames[:1], np.array([[0.0, 150.0, 40.0, 199.0]]))[0]
    assert np.all(edge[-1, :, 2] == 110) and np.all(edge[:, 0, 2] == 110)
    with pytest.raises(MetricError, match="one \\(x0, y0, x1, y1\\) box per frame"):
        syncnet_crops(frames, boxes[:3])
