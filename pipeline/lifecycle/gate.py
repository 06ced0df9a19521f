"""The promotion gate: rules over the evaluation table of a challenger and the champion on the same test clips.

A gate file (YAML):

```yaml
min_test_clips: 20                      # fewer evaluated test clips → rejected (too little evidence)
rules:                                  # every rule must hold
  - {metric: CSIM-dlib, protocol: self, max_drop: 0.01}   # at most 0.01 worse than the champion
  - {metric: FID-dlib, protocol: self, max_ratio: 1.02}   # at most 2 % worse (ratio) than the champion
  - {metric: PSNR, protocol: self, min: 18.0}             # an absolute floor (`max:` a ceiling)
improve_any:                            # at least one of these strictly better than the champion
  - {metric: PSNR, protocol: self}
```

"Worse" follows each metric's direction as the evaluation reports it (higher is better for PSNR, SSIM, CSIM,
LSE-C; lower for FID, LSE-D, AED, APD, LMD): `max_drop` d means challenger ≥ champion − d (higher-better) or
≤ champion + d (lower-better); `max_ratio` r means ≤ champion·r (lower-better) or ≥ champion / r. A metric the
evaluation did not compute for either model fails its rule, with that reason — a gate never passes on a
missing number. Without a champion (the first model) the relative rules and `improve_any` do not apply and say
so; absolute floors and `min_test_clips` still do.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class GateError(ValueError):
    """The gate file is unreadable or invalid; the message names the key and the fix."""


class MetricRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: str
    protocol: str = "self"

    @property
    def label(self) -> str:
        return f"{self.metric}@{self.protocol}"


class Rule(MetricRef):
    max_drop: float | None = Field(None, ge=0)
    max_ratio: float | None = Field(None, ge=1)
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_condition(self) -> Rule:
        if all(v is None for v in (self.max_drop, self.max_ratio, self.min, self.max)):
            raise ValueError(f"rule on {self.label} sets no condition: give max_drop, max_ratio, min or max")
        return self


class Gate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_test_clips: int = Field(1, ge=0)
    rules: list[Rule] = Field(default_factory=list)
    improve_any: list[MetricRef] = Field(default_factory=list)


DEFAULT_GATE = Gate(
    min_test_clips=1,
    rules=[Rule(metric="CSIM-dlib", protocol="self", max_drop=0.01),
           Rule(metric="FID-dlib", protocol="self", max_ratio=1.02),
           Rule(metric="PSNR", protocol="self", max_drop=0.5)],
    improve_any=[MetricRef(metric="PSNR", protocol="self"), MetricRef(metric="SSIM", protocol="self"),
                 MetricRef(metric="CSIM-dlib", protocol="self"), MetricRef(metric="FID-dlib", protocol="self")])


def load_gate(path: str | Path | None) -> Gate:
    """The gate in `path` (YAML), or the default gate when None."""
    if path is None:
        return DEFAULT_GATE
    p = Path(path)
    if not p.is_file():
        raise GateError(f"--gate {path}: no such file; write a gate YAML (see `pipeline/lifecycle/gate.py` or "
                        "infra/gate.yaml) or leave --gate out for the default gate")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
        return Gate.model_validate(raw)
    except yaml.YAMLError as exc:
        raise GateError(f"--gate {path}: not YAML ({exc})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(top level)"
        raise GateError(f"--gate {path}: {where}: {first['msg']} (keys: min_test_clips, rules[{{metric, protocol, "
                        f"max_drop|max_ratio|min|max}}], improve_any[{{metric, protocol}}])") from None


@dataclass
class Outcome:
    """One rule's check."""

    rule: str
    challenger: float | None
    champion: float | None
    passed: bool
    reason: str


@dataclass
class Decision:
    passed: bool
    outcomes: list[Outcome]
    reasons: list[str]  # why it failed (empty when it passed)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": self.reasons, "outcomes": [asdict(o) for o in self.outcomes]}


def _lookup(table: list[dict[str, Any]], ref: MetricRef, key: str) -> tuple[float | None, bool | None]:
    for row in table:
        if row["protocol"] == ref.protocol and row["metric"] == ref.metric:
            v = row["values"].get(key)
            ok = v is not None and math.isfinite(float(v))
            return (float(v) if ok else None), bool(row["higher_is_better"])
    return None, None


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.4g}"


def decide(gate: Gate, table: list[dict[str, Any]], challenger: str, champion: str | None,
           test_clips: int) -> Decision:
    """Apply `gate` to the evaluation `table` (rows of `r3p evaluate`: protocol, metric, higher_is_better,
    values {model key: value}) for the model keys `challenger` and `champion` (None: no champion yet)."""
    outcomes: list[Outcome] = []
    ok = test_clips >= gate.min_test_clips
    outcomes.append(Outcome(f"test clips ≥ {gate.min_test_clips}", float(test_clips), None, ok,
                            f"{test_clips} test clip(s) evaluated"))
    for r in gate.rules:
        new, higher = _lookup(table, r, challenger)
        old = _lookup(table, r, champion)[0] if champion else None
        if higher is None or new is None:
            outcomes.append(Outcome(r.label, new, old, False, f"{r.label} was not computed for the challenger"))
            continue
        sign = 1.0 if higher else -1.0
        checks: list[tuple[bool, str]] = []
        if r.min is not None:
            checks.append((new >= r.min, f"{_fmt(new)} ≥ {r.min:g}"))
        if r.max is not None:
            checks.append((new <= r.max, f"{_fmt(new)} ≤ {r.max:g}"))
        relative = r.max_drop is not None or r.max_ratio is not None
        if relative and champion is None:
            checks.append((True, "no champion yet: the relative condition does not apply"))
        elif relative and old is None:
            checks.append((False, f"{r.label} was not computed for the champion"))
        elif relative:
            if r.max_drop is not None:
                bound = old - sign * r.max_drop
                checks.append(((new - bound) * sign >= 0,
                               f"{_fmt(new)} {'≥' if higher else '≤'} champion {_fmt(old)} "
                               f"{'−' if higher else '+'} {r.max_drop:g} = {_fmt(bound)}"))
            if r.max_ratio is not None:
                bound = old / r.max_ratio if higher else old * r.max_ratio
                checks.append(((new - bound) * sign >= 0,
                               f"{_fmt(new)} {'≥' if higher else '≤'} champion {_fmt(old)} "
                               f"{'/' if higher else '×'} {r.max_ratio:g} = {_fmt(bound)}"))
        passed = all(c for c, _ in checks)
        outcomes.append(Outcome(r.label, new, old, passed, "; ".join(t for _, t in checks)))
    if gate.improve_any:
        labels = ", ".join(m.label for m in gate.improve_any)
        if champion is None:
            outcomes.append(Outcome(f"one of {labels} better", None, None, True, "no champion yet"))
        else:
            better = []
            for m in gate.improve_any:
                new, higher = _lookup(table, m, challenger)
                old = _lookup(table, m, champion)[0]
                if new is not None and old is not None and (new - old) * (1 if higher else -1) > 0:
                    better.append(f"{m.label} {_fmt(old)} → {_fmt(new)}")
            outcomes.append(Outcome(f"one of {labels} better", None, None, bool(better),
                                    "better: " + "; ".join(better) if better else "none is strictly better"))
    reasons = [f"{o.rule}: {o.reason}" for o in outcomes if not o.passed]
    return Decision(passed=not reasons, outcomes=outcomes, reasons=reasons)
