"""Choose each metric's model from the files the user has, and say what ran and what could not.

Takes plain paths (the evaluation job resolves them from config / `R3P_HOME` with `r3p assets`'
keys: fid_inception, insightface, syncnet, lpips) and returns the loaded models plus one note per
metric family: which model runs, or why a fallback runs / the metric is left out. Nothing here
downloads anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import MetricError
from .identity import ARCFACE_FILE, ArcFaceEmbedder, DlibFaceEmbedder
from .lipsync import SyncEmbedder


@dataclass
class MetricBackends:
    """Loaded models for one evaluation, and a note per metric family on what runs."""

    features: Any  # FID/KID extractor: InceptionFeatures, or DlibFaceEmbedder (FID-dlib)
    identity: ArcFaceEmbedder | DlibFaceEmbedder
    sync: SyncEmbedder | None
    lpips_dir: Path | None
    notes: dict[str, str] = field(default_factory=dict)


def _missing(path: Path | None) -> str:
    return "not configured" if path is None else f"not found at {path}"


def resolve_backends(fid_inception: str | Path | None = None, insightface: str | Path | None = None,
                     syncnet: str | Path | None = None, lpips: str | Path | None = None,
                     landmark_sync: SyncEmbedder | None = None, device: str = "cpu") -> MetricBackends:
    """Load what exists: FID Inception else FID-dlib; ArcFace else CSIM-dlib; SyncNet v2 else the
    landmark SyncNet (Sync-lm) else no sync metric; LPIPS only with both of its files.

    A file that exists but does not load raises MetricError (a broken file is never silently replaced).
    """
    from .inception import InceptionFeatures
    from .lpips import HEADS_FILE, TRUNK_FILE
    from .syncnet import SyncNetEmbedder

    notes: dict[str, str] = {}
    fid_path = Path(fid_inception).expanduser() if fid_inception is not None else None
    if fid_path is not None and fid_path.is_file():
        features = InceptionFeatures(fid_path, device=device)
        notes["FID"] = f"FID/KID on {features.model}"
    else:
        features = DlibFaceEmbedder()
        notes["FID"] = (f"FID Inception weights {_missing(fid_path)}: FID-dlib/KID-dlib on {features.model} "
                        "(not comparable with published FID)")

    arc = Path(insightface).expanduser() if insightface is not None else None
    arc_file = None if arc is None else (arc / ARCFACE_FILE if arc.is_dir() else arc)
    if arc_file is not None and arc_file.is_file():
        identity: ArcFaceEmbedder | DlibFaceEmbedder = ArcFaceEmbedder(arc_file)
        notes["CSIM"] = f"CSIM on {identity.model}"
    else:
        identity = DlibFaceEmbedder()
        notes["CSIM"] = f"ArcFace {_missing(arc_file)}: CSIM-dlib on {identity.model}"

    sync_path = Path(syncnet).expanduser() if syncnet is not None else None
    sync: SyncEmbedder | None
    if sync_path is not None and sync_path.is_file():
        sync = SyncNetEmbedder(sync_path, device=device)
        notes["LSE"] = f"LSE-D/LSE-C on {sync.model}"
    elif landmark_sync is not None:
        if landmark_sync.prefix == "LSE":
            raise MetricError("the landmark SyncNet must not report as LSE; give it prefix 'Sync-lm'")
        sync = landmark_sync
        notes["LSE"] = f"SyncNet v2 weights {_missing(sync_path)}: {sync.prefix}-D/C on {sync.model}"
    else:
        sync = None
        notes["LSE"] = f"not computed: SyncNet v2 weights {_missing(sync_path)} and no landmark SyncNet given"

    lp = Path(lpips).expanduser() if lpips is not None else None
    lp_missing = [n for n in (TRUNK_FILE, HEADS_FILE) if lp is None or not (lp / n).is_file()]
    if not lp_missing:
        lpips_dir: Path | None = lp
        notes["LPIPS"] = f"LPIPS (AlexNet, v0.1) from {lp}"
    else:
        lpips_dir = None
        notes["LPIPS"] = f"not computed: {', '.join(lp_missing)} {_missing(lp)}"
    return MetricBackends(features, identity, sync, lpips_dir, notes)
