"""Benchmark the colour segmenter and the head/torso split, before/after: synthetic IoUs and real photos.

"before" is the `preprocessing/segmentation` package at a git revision (default: the commit before
the face-geometry bounds, `--before REV`), imported from `git show` into a temporary folder; "after"
is the working tree's. Both run on the same inputs:

- synthetic: `r3p synth`-style clips (identities × 1 clip, 512²) with ground-truth landmarks and
  head/torso masks; the matte from the ground-truth landmarks alone and with the ground-truth face
  silhouettes (what `process_clip` passes from the fit), and two camouflaged versions (background
  painted in the person's colours: a hair-coloured band above the head, clothes-coloured curtains
  beside the head and neck). Mean and worst-frame IoU of person, head, torso.
- real: portrait photos that ship inside installed packages (matplotlib's grace_hopper, scikit-image's
  astronaut, insightface's t1 group photo with six faces) with busy backgrounds (flags, a room, other
  people). Each dlib face becomes a short clip (`--frames`, a slow zoom-in with a small pan) cut like
  the tracker's crop (3 × face width, 512²) and a wider framing (4.5 ×; `--crop-scales`). Measures,
  averaged over frames (in face sizes s, the jaw width or eye–chin / 0.8, whichever is larger):
  - `head_out`: fraction of the head mask beyond a loose allowance (more than 1.2 s above the brows,
    or 0.6 s beside the jaw ends) — nowhere a head reaches;
  - `head_top`: fraction of the crop's top row covered by the head mask;
  - `torso_out`: fraction of the torso mask more than 0.3 s above the chin line beside the neck
    (|a| > 0.6 s) or more than 2.2 s to the side — background beside the head taken for shoulders;
  - `bg_person`, `bg_head`, `bg_torso`: fraction of hand-marked background boxes (walls, flags,
    lamp; in the photos' pixels, listed in `PHOTOS`) covered by the matte / head / torso.
- the real path: the demo's synthetic clip (seed 0, as `make demo` runs it: dlib landmarks, fit;
  IoUs against ground truth) and each photo as a 1 s video (the same zoom and pan over the whole
  photo) through `process_clip` (tracking, 3DMM fit, fitted face silhouettes, segmentation, split;
  tiny preset): the fraction of the background boxes labelled head / torso, and of the top row
  labelled head.

    python benchmarks/segmentation.py [--before REV] [--identities 3] [--seconds 2] [--frames 8]
                                      [--crop-scales 3,4.5] [--pipeline-frames 25] [--json OUT]
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BEFORE = "02d20b6"  # last commit before the face-geometry bounds

# (package, file inside it, background boxes (x0, y0, x1, y1) in the photo's pixels (walls, flags, a
# lamp, a window), and per face (dlib faces sorted left to right) boxes that are background for that
# face's crop only (another person's arm))
PHOTOS = {
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg",
                     [(0, 0, 135, 340), (385, 0, 512, 300), (170, 0, 350, 15)], {}),
    "astronaut": ("skimage", "data/astronaut.png", [(0, 0, 55, 220), (150, 0, 310, 10), (305, 25, 350, 140)], {}),
    "t1": ("insightface", "data/images/t1.jpg",
           [(0, 0, 130, 230), (450, 0, 590, 200), (520, 140, 860, 215), (1060, 0, 1280, 225),
            (620, 240, 740, 380), (612, 250, 675, 370), (858, 0, 878, 200), (875, 105, 905, 175)],
           {2: [(385, 245, 450, 320)]}),
}


def photo_path(package: str, rel: str) -> Path:
    """The file `rel` inside an installed package (no network)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; pip install {package}")
    return Path(list(spec.submodule_search_locations)[0]) / rel


def load_rev(rev: str, work: Path):
    """`preprocessing/segmentation` at git revision `rev`, imported as its own package."""
    name = "seg_" + "".join(c if c.isalnum() else "_" for c in rev)
    pkg = work / name
    pkg.mkdir(parents=True, exist_ok=True)
    try:
        files = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", rev, "preprocessing/segmentation/"],
                               check=True, capture_output=True, text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"cannot read preprocessing/segmentation at git revision {rev!r} ({e}); run from a git "
                         "checkout that has it, or pass --before none to measure the working tree only") from e
    for f in files:
        if f.endswith(".py"):
            src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{f}"], check=True,
                                 capture_output=True, text=True).stdout
            (pkg / Path(f).name).write_text(src)
    sys.path.insert(0, str(work))
    return importlib.import_module(name)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (1 when both are empty)."""
    u = (a | b).sum()
    return float((a & b).sum() / u) if u else 1.0


def run_clip(seg_pkg, frames: np.ndarray, lm: np.ndarray, face_masks=None, inside=None, chunk: int = 16):
    """Matte, head and torso (n, H, W) from one package's colour segmenter and split."""
    seg = seg_pkg.make_segmenter("colour")
    seg.reset()
    person = np.concatenate([seg.segment(frames[s:s + chunk], lm[s:s + chunk],
                                         None if face_masks is None else face_masks[s:s + chunk]).person
                             for s in range(0, len(frames), chunk)])
    if inside is not None:
        person[:, ~inside] = 0.0
    heads, torsos = [], []
    for i in range(len(frames)):
        h, t = seg_pkg.split_parts(person[i], lm[i], face_mask=None if face_masks is None else face_masks[i])
        heads.append(h)
        torsos.append(t)
    return person, np.stack(heads), np.stack(torsos)


def synthetic_clips(work: Path, identities: int, seconds: float):
    """(name, frames, gt dict, GT face silhouettes) for `identities` synthetic clips at 512²."""
    import cv2
    import torch

    from preprocessing.face3d import Face3D
    from preprocessing.render import render_face
    from preprocessing.synthetic import SynthSpec, generate_corpus
    from preprocessing.synthetic_bfm import synthetic_face_model
    from preprocessing.video import load_clip

    model = synthetic_face_model(0, "bfm")
    out = work / "corpus"
    if not any(out.glob("*/clip000.npz")):
        generate_corpus(model, SynthSpec(identities=identities, clips=1, seconds=seconds, size=512, seed=5), out)
    face3d = Face3D(model)
    for npz in sorted(out.glob("*/clip000.npz")):
        gt = dict(np.load(npz))
        frames = load_clip(npz.with_suffix(".mp4")).frames()
        with torch.inference_mode():
            small = render_face(face3d, torch.as_tensor(gt["coeffs"]), 256).mask
        fm = np.stack([cv2.resize(m.astype(np.uint8), (512, 512), interpolation=cv2.INTER_NEAREST) > 0 for m in small])
        yield npz.parent.name, frames, gt, fm


def synthetic_scores(seg_pkg, frames, gt, fm) -> dict[str, dict[str, float]]:
    """IoUs (mean, worst frame) of person/head/torso against ground truth, without and with face masks."""
    lm = gt["landmarks"].astype(np.float32)
    gp = gt["head_mask"] | gt["torso_mask"]
    res = {}
    for mode, masks in (("landmarks", None), ("landmarks+face", fm)):
        person, head, torso = run_clip(seg_pkg, frames, lm, masks)
        vals = {"person": [iou(person[i] >= 0.5, gp[i]) for i in range(len(frames))],
                "head": [iou(head[i], gt["head_mask"][i]) for i in range(len(frames))],
                "torso": [iou(torso[i], gt["torso_mask"][i]) for i in range(len(frames))]}
        res[mode] = {f"{k}_mean": float(np.mean(v)) for k, v in vals.items()}
        res[mode].update({f"{k}_min": float(np.min(v)) for k, v in vals.items()})
    for kind in ("band", "curtains"):
        person, head, torso = run_clip(seg_pkg, camouflage(frames, gt, kind), lm)
        vals = {"person": [iou(person[i] >= 0.5, gp[i]) for i in range(len(frames))],
                "head": [iou(head[i], gt["head_mask"][i]) for i in range(len(frames))],
                "torso": [iou(torso[i], gt["torso_mask"][i]) for i in range(len(frames))]}
        res[kind] = {f"{k}_mean": float(np.mean(v)) for k, v in vals.items()}
        res[kind].update({f"{k}_min": float(np.min(v)) for k, v in vals.items()})
    return res


def camouflage(frames: np.ndarray, gt: dict, kind: str) -> np.ndarray:
    """The frames with background painted in the person's colours (ground truth unchanged): `band`, a
    hair-coloured band from the top edge down to the hair; `curtains`, clothes-coloured curtains
    beside the head and neck down to below the chin."""
    frames = frames.copy()
    head, torso = gt["head_mask"], gt["torso_mask"]
    person = head | torso
    rows = np.arange(frames.shape[1])[:, None]
    for i, f in enumerate(frames):
        lm = gt["landmarks"][i]
        region = np.zeros(person.shape[1:], bool)
        if kind == "band":
            colour = np.median(f[head[i] & (rows < lm[19, 1] - 10)], 0)
            ys, xs = np.nonzero(head[i])
            region[:ys.min() + 15, max(xs.min() - 40, 0):xs.max() + 40] = True
        elif kind == "curtains":
            colour = np.median(f[torso[i] & (rows > 0.88 * f.shape[0])], 0)
            c = int(lm[8, 1])
            region[c - 80:c + 60, :100] = True
            region[c - 80:c + 60, -100:] = True
        else:
            raise ValueError(f"unknown camouflage {kind!r}; use 'band' or 'curtains'")
        f[region & ~person[i]] = colour
    return frames


def photo_clips(n_frames: int, crop_scale: float = 3.0):
    """(name, frames (n, 512, 512, 3), landmarks (n, 68, 2), inside (512, 512) bool, bg boxes mask (n, 512, 512))
    for every dlib face of every photo, as a slow zoom-in with a small pan."""
    from PIL import Image

    from preprocessing.landmarks import make_detector
    from preprocessing.landmarks.tracking import CropBox, compute_crop_box, crop_frames, landmarks_to_crop

    det = make_detector("dlib")
    for name, (package, rel, boxes, per_face) in PHOTOS.items():
        img = np.asarray(Image.open(photo_path(package, rel)).convert("RGB"))
        h, w = img.shape[:2]
        white = np.full((h, w), 255, np.uint8)
        faces = sorted(det.detect(img), key=lambda f: f.box[0])
        for k, face in enumerate(faces):
            bg = np.zeros((h, w), np.uint8)
            for x0, y0, x1, y1 in boxes + per_face.get(k, []):
                bg[y0:y1, x0:x1] = 255
            base = compute_crop_box(face.landmarks[None], np.ones(1, bool), scale=crop_scale)
            frames, lms, bgs, ins = [], [], [], []
            for t in range(n_frames):
                f = t / max(n_frames - 1, 1)
                side = int(round(base.side * (1.0 - 0.06 * f)))
                dx = int(round(0.03 * base.side * np.sin(2 * np.pi * f)))
                box = CropBox(base.x0 + (base.side - side) // 2 + dx, base.y0 + (base.side - side) // 2, side)
                frames.append(crop_frames(img[None], box, 512)[0])
                lms.append(landmarks_to_crop(face.landmarks, box, 512))
                bgs.append(crop_frames(bg[..., None].repeat(3, -1)[None], box, 512)[0, ..., 0] > 127)
                ins.append(crop_frames(white[..., None].repeat(3, -1)[None], box, 512)[0, ..., 0] > 127)
            label = f"{name}#{k}@{crop_scale:g}" if len(faces) > 1 else f"{name}@{crop_scale:g}"
            yield (label, np.stack(frames), np.stack(lms).astype(np.float32),
                   np.stack(ins), np.stack(bgs))


def photo_scores(seg_pkg, frames, lm, inside, bg) -> dict[str, float]:
    """The real-photo measures (see the module doc), averaged over the clip's frames."""
    from preprocessing.segmentation.parts import head_frame

    seg = seg_pkg.make_segmenter("colour")
    seg.reset()
    person = seg.segment(frames, lm).person
    person[~inside] = 0.0
    out = {k: [] for k in ("head_out", "head_top", "torso_out", "bg_person", "bg_head", "bg_torso")}
    for i in range(len(frames)):
        head, torso = seg_pkg.split_parts(person[i], lm[i])
        hf = head_frame(lm[i])
        u = hf.size
        a, b = hf.coords(512, 512, unit=u)
        jaw = hf.points(lm[i][0:17], u)
        brow = hf.points(lm[i][17:27], u)[:, 1].min()
        beyond = (b < brow - 1.2) | (a < jaw[:, 0].min() - 0.6) | (a > jaw[:, 0].max() + 0.6)
        d = b - hf.chin / u
        off = ((d < -0.3) & (np.abs(a) > 0.6)) | (np.abs(a) > 2.2)
        out["head_out"].append(float((head & beyond).sum() / max(head.sum(), 1)))
        out["head_top"].append(float(head[0].mean()))
        out["torso_out"].append(float((torso & off).sum() / max(torso.sum(), 1)))
        box = bg[i] & inside[i]
        n = max(box.sum(), 1)
        out["bg_person"].append(float((box & (person[i] >= 0.5)).sum() / n))
        out["bg_head"].append(float((box & head).sum() / n))
        out["bg_torso"].append(float((box & torso).sum() / n))
    return {k: float(np.mean(v)) for k, v in out.items()}


def photo_video(name: str, n_frames: int, work: Path) -> tuple[Path, np.ndarray]:
    """The whole photo as a short mp4 (25 fps, a slow 6% zoom-in with a small pan) and the scene's
    background boxes warped the same way (n, H, W) bool."""
    import cv2
    from PIL import Image

    from preprocessing.video import encode_mp4

    package, rel, boxes, _ = PHOTOS[name]
    img = np.asarray(Image.open(photo_path(package, rel)).convert("RGB"))
    h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
    img = np.ascontiguousarray(img[:h, :w])
    bg = np.zeros((h, w), np.uint8)
    for x0, y0, x1, y1 in boxes:
        bg[y0:y1, x0:x1] = 255
    frames, bgs = [], []
    for t in range(n_frames):
        f = t / max(n_frames - 1, 1)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, 1.0 + 0.06 * f)
        m[0, 2] += 0.02 * w * np.sin(2 * np.pi * f)
        frames.append(cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
        bgs.append(cv2.warpAffine(bg, m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0) > 127)
    # the job needs an audio track: quiet noise
    quiet = np.random.default_rng(0).normal(0.0, 0.01, int(n_frames / 25.0 * 16000)).astype(np.float32)
    path = encode_mp4(work / f"{name}.mp4", np.stack(frames), 25.0, audio=quiet)
    return path, np.stack(bgs)


def demo_clip_scores(proc, pkgs: dict, work: Path, out: dict) -> None:
    """The demo's first synthetic clip (default config: seed 0, 3 s; dlib landmarks and the fit, as
    `make demo` runs it) through `proc`: person / head / torso IoU against ground truth, all frames pooled."""
    import preprocessing.process as process_mod
    from pipeline.config import load_config
    from pipeline.demo import crop_truth_masks
    from preprocessing.process import decode_image
    from preprocessing.record import SEG_HEAD, SEG_TORSO
    from preprocessing.synthetic import SynthSpec, generate_corpus
    from preprocessing.synthetic_bfm import synthetic_face_model

    demo = load_config(None).demo
    folder = work / "demo_corpus"
    if not any(folder.glob("*/clip000.mp4")):
        generate_corpus(synthetic_face_model(0, "bfm"), SynthSpec(identities=1, clips=1, seconds=demo.synth_seconds,
                                                                  size=512, seed=demo.seed), folder)
    video = sorted(folder.glob("*/clip000.mp4"))[0]
    gt = np.load(video.with_suffix(".npz"))
    for k, pkg in pkgs.items():
        proc.segmenter = pkg.make_segmenter("colour")
        process_mod.split_parts = pkg.split_parts
        rec = proc(video)
        head_t = crop_truth_masks(gt["head_mask"], rec.crop_box, rec.crop_size)
        torso_t = crop_truth_masks(gt["torso_mask"], rec.crop_box, rec.crop_size)
        labels = np.stack([decode_image(b) for b in rec.seg_png])
        out.setdefault("demo_clip", {})[k] = {"person": iou(labels > 0, head_t | torso_t),
                                              "head": iou(labels == SEG_HEAD, head_t),
                                              "torso": iou(labels == SEG_TORSO, torso_t)}


def pipeline_scores(pkgs: dict, n_frames: int, work: Path) -> dict:
    """Each photo as a video through `process_clip` (detect, track, fit, the fitted face silhouettes,
    segment, split; tiny preset), with each package's colour segmenter and split: the fraction of the
    background boxes labelled head / torso in the record's seg_png, and of the top row labelled head."""
    import preprocessing.process as process_mod
    from pipeline.config import load_config
    from pipeline.process import make_processor
    from preprocessing.landmarks.tracking import CropBox, crop_frames
    from preprocessing.process import decode_image
    from preprocessing.record import SEG_HEAD, SEG_TORSO

    proc = make_processor(load_config("tiny"))
    original = process_mod.split_parts
    out: dict = {}
    try:
        demo_clip_scores(proc, pkgs, work, out)
        for name in PHOTOS:
            path, bgs = photo_video(name, n_frames, work)
            for k, pkg in pkgs.items():
                proc.segmenter = pkg.make_segmenter("colour")
                process_mod.split_parts = pkg.split_parts
                rec = proc(path)
                box = CropBox.from_array(rec.crop_box)
                back = crop_frames(np.repeat(bgs[..., None].astype(np.uint8) * 255, 3, -1), box, rec.crop_size)[..., 0]
                labels = np.stack([decode_image(b) for b in rec.seg_png])
                n = max(int((back > 127).sum()), 1)
                out.setdefault(name, {})[k] = {
                    "bg_head": float(((labels == SEG_HEAD) & (back > 127)).sum() / n),
                    "bg_torso": float(((labels == SEG_TORSO) & (back > 127)).sum() / n),
                    "head_top": float((labels[:, 0] == SEG_HEAD).mean()),
                    "frames": int(rec.n_frames)}
    finally:
        process_mod.split_parts = original
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default=BEFORE, help="git revision of the 'before' segmentation package ('none': skip)")
    ap.add_argument("--identities", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--frames", type=int, default=8, help="frames per real-photo clip")
    ap.add_argument("--crop-scales", default="3,4.5", help="real-photo framings: crop side / face width")
    ap.add_argument("--pipeline-frames", type=int, default=25,
                    help="frames of each photo's video through process_clip (0: skip the real path)")
    ap.add_argument("--work", default=None, help="folder to keep the synthetic corpus in (reused)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    import preprocessing.segmentation as after

    tmp = tempfile.TemporaryDirectory()
    work = Path(args.work or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    pkgs = {"after": after}
    if args.before.lower() != "none":
        pkgs = {"before": load_rev(args.before, Path(tmp.name) / "revs"), "after": after}
    results: dict = {"before_rev": args.before, "synthetic": {}, "real": {}}
    t0 = time.perf_counter()
    print(f"synthetic clips ({args.identities} identities × {args.seconds:g} s, 512²): IoU mean / worst frame")
    for name, frames, gt, fm in synthetic_clips(work, args.identities, args.seconds):
        results["synthetic"][name] = {k: synthetic_scores(p, frames, gt, fm) for k, p in pkgs.items()}
        for mode in ("landmarks", "landmarks+face", "band", "curtains"):
            cells = []
            for k in pkgs:
                r = results["synthetic"][name][k][mode]
                cells.append(f"{k}: " + "  ".join(f"{m} {r[m + '_mean']:.3f}/{r[m + '_min']:.3f}"
                                                   for m in ("person", "head", "torso")))
            print(f"  {name} [{mode}]  " + "  |  ".join(cells))
    print(f"real photos ({args.frames}-frame clips): head_out head_top torso_out bg_person bg_head bg_torso")
    clips = (c for scale in map(float, args.crop_scales.split(",")) for c in photo_clips(args.frames, scale))
    for name, frames, lm, inside, bg in clips:
        results["real"][name] = {k: photo_scores(p, frames, lm, inside, bg) for k, p in pkgs.items()}
        for k in pkgs:
            r = results["real"][name][k]
            print(f"  {name:16s} {k:6s} " + " ".join(f"{r[m]:.3f}" for m in r))
    for scale in args.crop_scales.split(","):
        sel = [r for n, r in results["real"].items() if n.endswith(f"@{float(scale):g}")]
        for k in pkgs:
            agg = {m: float(np.mean([r[k][m] for r in sel])) for m in sel[0][k]}
            results.setdefault("real_mean", {}).setdefault(f"@{float(scale):g}", {})[k] = agg
            print(f"  {'mean @' + f'{float(scale):g}':16s} {k:6s} " + " ".join(f"{v:.3f}" for v in agg.values()))
    if args.pipeline_frames:
        print(f"real photos through process_clip ({args.pipeline_frames}-frame videos, fitted face): "
              "bg_head bg_torso head_top")
        results["pipeline"] = pipeline_scores(pkgs, args.pipeline_frames, work)
        for k, r in results["pipeline"].pop("demo_clip").items():
            print(f"  demo clip (synthetic, seed 0, dlib + fit) {k:6s} IoU person {r['person']:.3f} "
                  f"head {r['head']:.3f} torso {r['torso']:.3f}")
            results.setdefault("demo_clip", {})[k] = r
        for name, r in results["pipeline"].items():
            for k in pkgs:
                print(f"  {name:16s} {k:6s} {r[k]['bg_head']:.3f} {r[k]['bg_torso']:.3f} {r[k]['head_top']:.3f}")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
