"""CSIM and FID-dlib: ArcFace through a stand-in ONNX in buffalo_l's place, dlib's face ResNet on real photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from evaluation.metrics import CSIM, FrechetDistance, MetricError, cosine_similarity, merge_all
from evaluation.metrics.identity import ArcFaceEmbedder, DlibFaceEmbedder, five_points, identity_embedder


@pytest.fixture(scope="module")
def photos():
    """Real photos that ship in installed packages, with dlib's 68 landmarks for every face."""
    import insightface
    from skimage import data

    from preprocessing.landmarks import make_detector

    images = Path(insightface.__file__).parent / "data" / "images"
    astronaut = data.astronaut()
    # the same person in a different picture: mirrored, rotated, shrunk, gamma, heavy JPEG
    other = np.ascontiguousarray(astronaut[:, ::-1])
    other = cv2.warpAffine(other, cv2.getRotationMatrix2D((256, 256), 10, 0.7), (512, 512),
                           borderMode=cv2.BORDER_REFLECT)
    other = (255 * (other / 255.0) ** 0.8).astype(np.uint8)
    _, buf = cv2.imencode(".jpg", other[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 40])
    other = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])
    group = np.asarray(Image.open(images / "t1.jpg").convert("RGB"))  # six different people
    det = make_detector("dlib")
    out = {}
    for key, img in (("astronaut", astronaut), ("astronaut2", other), ("group", group)):
        faces = det.detect(img)
        out[key] = (img, [f.landmarks for f in faces])
    assert len(out["astronaut"][1]) == 1 and len(out["astronaut2"][1]) == 1 and len(out["group"][1]) == 6
    return out


def test_csim_dlib_same_person_scores_higher_than_different_people(photos):
    emb = DlibFaceEmbedder()
    img, lms = photos["astronaut"]
    src = emb.embed_one(img, lms[0])
    assert src.shape == (128,) and np.linalg.norm(src) == pytest.approx(1.0)

    other = emb.embed([photos["astronaut2"][0]], [photos["astronaut2"][1][0]])
    same = CSIM.for_embedder(emb)
    same.update(src, other)
    same.update(src, src[None])  # a face with itself
    group_img, group_lms = photos["group"]
    others = emb.embed([group_img] * 6, group_lms)
    different = CSIM.for_embedder(emb)
    different.update(src, others)

    assert cosine_similarity(src, src[None])[0] == pytest.approx(1.0)
    s, d = same.compute()["CSIM-dlib"], different.compute()["CSIM-dlib"]
    assert s.name == "CSIM-dlib" and "dlib_face_recognition_resnet_model_v1" in s.model and s.higher_is_better
    per_other = cosine_similarity(src, others)
    same_pair = cosine_similarity(src, other)[0]
    assert same_pair > per_other.max() + 0.03
    assert s.value > d.value
    # without landmarks the embedder finds the face itself (same embedding up to detector/landmark agreement)
    assert emb.embed([img])[0] @ src > 0.99


def test_fid_dlib_is_named_for_its_model(photos):
    emb = DlibFaceEmbedder()
    fid = FrechetDistance.for_extractor(emb)
    assert (fid.name, fid.dim) == ("FID-dlib", 128)
    group_img, group_lms = photos["group"]
    feats = emb.embed([group_img] * 6, group_lms)
    fid.update(feats, real=True)
    fid.update(feats, real=False)
    res = fid.compute()
    assert list(res) == ["FID-dlib"] and res["FID-dlib"].value < 1e-8


def _standin_arcface(path: Path, dim: int = 8, seed: int = 0) -> np.ndarray:
    """A tiny ONNX in w600k_r50's interface (input 1x3x112x112 float, one output 1xdim): flatten + matmul."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).standard_normal((3 * 112 * 112, dim)).astype(np.float32) * 0.01
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input.1"], ["flat"], name="Flatten_0", axis=1),
         helper.make_node("MatMul", ["flat", "W"], ["683"], name="Gemm_1")],
        "standin_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, [1, dim])],
        [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return w


def test_arcface_standin_in_the_buffalo_l_folder(tmp_path, photos):
    from insightface.utils.face_align import norm_crop

    folder = tmp_path / "insightface" / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    w = _standin_arcface(folder / "w600k_r50.onnx")
    emb = identity_embedder(folder)
    assert isinstance(emb, ArcFaceEmbedder) and emb.dim == 8 and emb.csim_name == "CSIM"
    assert emb.model == "insightface buffalo_l w600k_r50.onnx"

    img, lms = photos["astronaut"]
    e = emb.embed_one(img, lms[0])
    # expected: 5 points → insightface's 112² alignment → RGB, (x − 127.5)/127.5 → the net → unit norm
    aligned_bgr = norm_crop(img[:, :, ::-1].copy(), five_points(lms[0]).astype(np.float32) - 0.5, 112)
    x = (aligned_bgr[:, :, ::-1].astype(np.float32) - 127.5) / 127.5
    ref = x.transpose(2, 0, 1).reshape(1, -1) @ w
    np.testing.assert_allclose(e, ref[0] / np.linalg.norm(ref), rtol=1e-4, atol=1e-5)

    m = CSIM.for_embedder(emb)
    m.update(e, e[None])
    assert m.compute()["CSIM"].value == pytest.approx(1.0)
    # no buffalo_l: the dlib fallback, under its own name
    fallback = identity_embedder(tmp_path / "nowhere")
    assert isinstance(fallback, DlibFaceEmbedder) and fallback.csim_name == "CSIM-dlib"
    with pytest.raises(MetricError, match="buffalo_l"):
        ArcFaceEmbedder(tmp_path / "nowhere")


def test_five_points_and_csim_merge():
    lm = np.zeros((68, 2))
    lm[36:42] = [10, 20]
    lm[42:48] = [30, 20]
    lm[30], lm[48], lm[54] = [20, 30], [12, 40], [28, 40]
    np.testing.assert_array_equal(five_points(lm), [[10, 20], [30, 20], [20, 30], [12, 40], [28, 40]])
    rng = np.random.default_rng(0)
    src, frames = rng.standard_normal(16), rng.standard_normal((30, 16))
    single = CSIM("CSIM-dlib", "dlib")
    single.update(src, frames)
    parts = []
    for chunk in np.array_split(frames, 4):
        p = CSIM("CSIM-dlib", "dlib")
        p.update(src, chunk)
        parts.append(p)
    r = single.compute()["CSIM-dlib"]
    assert merge_all(parts).compute()["CSIM-dlib"].value == pytest.approx(r.value, rel=1e-12)
    assert r.value == pytest.approx(np.mean(frames @ src / np.linalg.norm(frames, axis=1) / np.linalg.norm(src)))
    with pytest.raises(MetricError, match="do not agree"):
        single.update(src, frames[:, :8])


def test_backends_fall_back_under_their_own_names_and_say_why(tmp_path):
    import torch

    from evaluation.metrics.backends import resolve_backends
    from evaluation.metrics.inception import FIDInceptionV3, InceptionFeatures
    from evaluation.metrics.syncnet import SyncNetEmbedder, SyncNetV2

    home = tmp_path / "home"
    b = resolve_backends(home / "fid.pth", home / "buffalo_l", home / "syncnet_v2.model", home / "lpips")
    assert isinstance(b.features, DlibFaceEmbedder) and b.features.fid_name == "FID-dlib"
    assert isinstance(b.identity, DlibFaceEmbedder) and b.sync is None and b.lpips_dir is None
    assert "not found at" in b.notes["FID"] and "FID-dlib" in b.notes["FID"]
    assert "CSIM-dlib" in b.notes["CSIM"] and b.notes["LSE"].startswith("not computed")
    assert "alexnet-owt-7be5be79.pth, alex.pth" in b.notes["LPIPS"]

    class LandmarkSync:
        prefix, model = "Sync-lm", "syncnet stage"

    assert resolve_backends(landmark_sync=LandmarkSync()).notes["LSE"].startswith("SyncNet v2 weights not configured")

    (home / "buffalo_l").mkdir(parents=True)
    _standin_arcface(home / "buffalo_l" / "w600k_r50.onnx")
    torch.save(FIDInceptionV3().state_dict(), home / "fid.pth")
    torch.save(SyncNetV2().state_dict(), home / "syncnet_v2.model")
    b = resolve_backends(home / "fid.pth", home / "buffalo_l", home / "syncnet_v2.model",
                         landmark_sync=LandmarkSync())
    assert isinstance(b.features, InceptionFeatures) and b.features.fid_name == "FID"
    assert isinstance(b.identity, ArcFaceEmbedder) and b.identity.csim_name == "CSIM"
    assert isinstance(b.sync, SyncNetEmbedder) and b.sync.prefix == "LSE"  # the real weights win
    (home / "broken.pth").write_bytes(b"not a torch file")
    with pytest.raises(MetricError, match="broken.pth"):
        resolve_backends(fid_inception=home / "broken.pth")


def test_csim_dlib_separates_synthetic_identities_across_pose_and_expression():
    import torch

    from preprocessing.face3d import Face3D
    from preprocessing.synthetic import (background_image, clip_coefficients, make_identity, render_clip,
                                         speech_like_audio)
    from preprocessing.synthetic_bfm import synthetic_face_model

    torch.set_num_threads(1)
    model = synthetic_face_model(0, "bfm")
    face3d = Face3D(model)
    emb = DlibFaceEmbedder()
    embeddings = []
    for idx in range(3):
        ident = make_identity(idx, 0)
        rng = np.random.default_rng([0, idx, 0, 2])
        _, mouth = speech_like_audio(rng, 50, ident.f0_hz, ident.formants_hz)
        coeffs = clip_coefficients(rng, ident, 50, mouth, model)[::10]  # 5 frames, 0.4 s apart
        frames = np.concatenate([f for f, _, _ in render_clip(face3d, ident, coeffs, background_image(rng, 320), 320)])
        landmarks = face3d.landmarks(torch.as_tensor(coeffs), 320).numpy()  # ground truth
        embeddings.append(emb.embed(list(frames), list(landmarks)))
    for i, e in enumerate(embeddings):
        same = CSIM("CSIM-dlib")
        same.update(e[0], e[1:])  # the first frame as the source, the others as "generated"
        for j, other in enumerate(embeddings):
            if j != i:
                cross = CSIM("CSIM-dlib")
                cross.update(e[0], other)
                assert same.compute()["CSIM-dlib"].value > cross.compute()["CSIM-dlib"].value + 0.02
