"""The three evaluation protocols: which source drives with which clip, and which metrics apply.

- `self` (video-driven self-reenactment): source = first frame of a test clip, driving = the same
  clip; PSNR, SSIM, LPIPS, CSIM, AED, APD, FID against the true frames.
- `cross` (cross-identity reenactment): source = first frame of a clip of another speaker,
  driving = the clip; CSIM to the source, AED/APD to the driving clip, FID against the driving frames.
- `audio` (audio-driven): source = first frame of the clip + the clip's audio; FID, CSIM, LSE
  (or Sync-lm), LMD against the true mouth.

Items are pure data (ids only); the job loads the frames. Pairing is deterministic: clips sorted by
id, each takes the next clip (cyclically) whose speaker differs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

PROTOCOLS = ("self", "cross", "audio")

# metric families per protocol (result names depend on the backend: CSIM / CSIM-dlib, FID / FID-dlib, LSE / Sync-lm)
PROTOCOL_METRICS: dict[str, tuple[str, ...]] = {
    "self": ("PSNR", "SSIM", "LPIPS", "CSIM", "AED", "APD", "FID"),
    "cross": ("CSIM", "AED", "APD", "FID"),
    "audio": ("FID", "CSIM", "LSE", "LMD"),
}


class ProtocolError(ValueError):
    """A protocol cannot run on the given clips (unknown name, too few speakers); the message says why."""


@dataclass(frozen=True)
class EvalItem:
    """One (protocol, driving clip, source clip) triple; `key` names it in caches and reports."""

    protocol: str
    clip_id: str  # driving clip (its frames are the reference)
    source_clip_id: str  # clip whose first frame is the source image

    @property
    def key(self) -> str:
        """File-name-safe id of the item."""
        raw = self.clip_id if self.source_clip_id == self.clip_id else f"{self.clip_id}__from__{self.source_clip_id}"
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in raw)
        return f"{self.protocol}-{safe[:120]}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"


def parse_protocols(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """Protocol names from 'self,cross,audio' (order kept, duplicates dropped); unknown names raise."""
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown or not names:
        raise ProtocolError(f"--protocols {text!r}: unknown {unknown or 'empty list'}; "
                            f"choose from {','.join(PROTOCOLS)}")
    return list(dict.fromkeys(names))


def cross_pairs(clips: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(driving clip, source clip) for clips given as (clip_id, speaker_id): each clip, sorted by id, takes
    the next clip (cyclically) of a different speaker. Raises ProtocolError with fewer than 2 speakers."""
    ordered = sorted(clips)
    if len({s for _, s in ordered}) < 2:
        raise ProtocolError(f"cross-identity needs clips of at least 2 speakers; the split has "
                            f"{len({s for _, s in ordered})} speaker(s) in {len(ordered)} clip(s)")
    pairs = []
    for i, (cid, spk) in enumerate(ordered):
        for k in range(1, len(ordered)):
            other, ospk = ordered[(i + k) % len(ordered)]
            if ospk != spk:
                pairs.append((cid, other))
                break
    return pairs


def build_items(protocols: list[str], clips: list[tuple[str, str]]) -> tuple[list[EvalItem], dict[str, str]]:
    """Items of every protocol for clips (clip_id, speaker_id), and {protocol: reason} for protocols that cannot run."""
    items: list[EvalItem] = []
    skipped: dict[str, str] = {}
    ids = sorted(c for c, _ in clips)
    for p in protocols:
        if p == "cross":
            try:
                items += [EvalItem(p, d, s) for d, s in cross_pairs(clips)]
            except ProtocolError as exc:
                skipped[p] = str(exc)
        else:
            items += [EvalItem(p, c, c) for c in ids]
    return items, skipped


def clip_list_hash(clip_ids: list[str]) -> str:
    """SHA-256 (first 16 hex) of the sorted clip ids: names the exact test set."""
    return hashlib.sha256("\n".join(sorted(clip_ids)).encode()).hexdigest()[:16]
