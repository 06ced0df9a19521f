"""`r3p inspect OUTPUT`: what a preprocessed dataset holds, and a contact sheet of random frames.

Counts by split and status, the most common errors (with one example message each), frames,
bytes, and a PNG of random ok frames: the aligned crop, PNCC, SECC, person matte, head/torso
labels and the composite over the background plate.
"""

from __future__ import annotations

import io
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from pipeline import shards
from pipeline.schema import STATUS_FAILED, STATUS_OK

SHEET_COLUMNS = (("frame_jpeg", "frame"), ("pncc_png", "PNCC"), ("secc_png", "SECC"), ("person_png", "person"),
                 ("seg_png", "head/torso"), ("composite_jpeg", "composite"))
TILE = 128


def _tile(data: bytes, column: str) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    if column == "seg_png":  # labels 0/1/2 → visible greys
        img = Image.fromarray((np.asarray(img.convert("L"), np.uint16) * 120).clip(0, 255).astype(np.uint8))
    return np.asarray(img.convert("RGB").resize((TILE, TILE), Image.BILINEAR))


def inspect_dataset(location: str, sheet_path: str | Path | None = None, samples: int = 6, seed: int = 0,
                    top_errors: int = 5) -> dict[str, Any]:
    """Report on the dataset at OUTPUT (latest version) or OUTPUT/vNNN; writes the contact sheet PNG."""
    from pipeline.sheet import contact_sheet, save_png

    layout = shards.open_dataset(location)
    stats = shards.published(layout)
    run = shards.read_json(layout.fs, layout.run_path)
    clips = shards.read_table(layout, "clips", ["clip_id", "rel_path", "split", "status", "error", "error_type",
                                                "error_reason", "n_frames", "synthetic_face_model"])
    rows = clips.to_pylist()
    by_split = Counter((r["split"], r["status"]) for r in rows)
    kinds = Counter()
    example: dict[str, str] = {}
    for r in rows:
        if r["status"] == STATUS_FAILED:
            k = f"{r['error_type']}" + (f" ({r['error_reason']})" if r["error_reason"] else "")
            kinds[k] += 1
            example.setdefault(k, r["error"])
    report: dict[str, Any] = {
        "dataset": layout.uri, "version": layout.version, "config_hash": run.get("config_hash"),
        "shards": len(set(pq.read_table(layout.manifest_path, filesystem=layout.fs, columns=["shard_id"])
                          ["shard_id"].to_pylist())),
        "shards_published": len(stats), "clips": len(rows),
        "status": dict(Counter(r["status"] for r in rows)),
        "by_split": {sp: {st: n for (s2, st), n in sorted(by_split.items()) if s2 == sp}
                     for sp in sorted({s for s, _ in by_split})},
        "frames": sum(r["n_frames"] or 0 for r in rows),
        "bytes": sum(s.get("bytes_clips", 0) + s.get("bytes_frames", 0) for s in stats.values()),
        "synthetic_face_model": any(r["synthetic_face_model"] for r in rows if r["status"] == STATUS_OK),
        "top_errors": [{"error": k, "count": n, "example": example[k]} for k, n in kinds.most_common(top_errors)],
        "contact_sheet": None,
    }
    ok_shards = sorted(s for s, st in stats.items() if st.get("ok", 0) > 0)
    if ok_shards and samples > 0:
        rng = random.Random(seed)
        picked = []
        for shard_id in rng.sample(ok_shards, min(len(ok_shards), samples)):
            f = pq.read_table(layout.shard_path("frames", shard_id), filesystem=layout.fs,
                              columns=["clip_id", "index"] + [c for c, _ in SHEET_COLUMNS])
            picked += [(shard_id, f.slice(i, 1)) for i in rng.sample(range(f.num_rows), min(f.num_rows, 2))]
        picked = rng.sample(picked, min(samples, len(picked)))
        tiles, labels = [], []
        for shard_id, row in picked:
            r = row.to_pylist()[0]
            tiles.append([_tile(r[c], c) for c, _ in SHEET_COLUMNS])
            labels.append(f"{r['clip_id'][:12]}\nframe {r['index']}\n{shard_id}")
        out = Path(sheet_path) if sheet_path else None
        if out is None:
            out = Path(layout.dir) / "inspect.png" if layout.uri == layout.dir else Path("inspect.png")
        save_png(contact_sheet(tiles, [n for _, n in SHEET_COLUMNS], labels), out)
        report["contact_sheet"] = str(out.resolve())
    return report


def format_report(r: dict[str, Any]) -> str:
    lines = [f"dataset {r['dataset']} (version {r['version']}, config {r['config_hash']}): {r['clips']} clips, "
             f"{r['frames']} frames, {r['bytes'] / 2**20:.1f} MiB, {r['shards_published']}/{r['shards']} shards "
             f"published" + (" (synthetic face model)" if r["synthetic_face_model"] else "")]
    for split, counts in r["by_split"].items():
        lines.append(f"  {split:<6} " + ", ".join(f"{st} {n}" for st, n in counts.items()))
    if r["top_errors"]:
        lines.append("most common errors:")
        for e in r["top_errors"]:
            lines.append(f"  {e['count']:>5} x {e['error']}  e.g. {e['example'][:200]}")
    if r["contact_sheet"]:
        lines.append(f"contact sheet: {r['contact_sheet']}")
    return "\n".join(lines)

