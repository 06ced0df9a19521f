"""`report.html`: one self-contained page (images inlined as data URIs, no network) for an evaluation.

Sections: what ran (data, split, clip-list hash, models, which weights each metric used), the
metric table with models side by side (best per row in bold, each value marked better/worse than
the static-source baseline), metrics not computed with their reason, failed clips, per-clip
distributions (matplotlib strip plots), and frame strips (source, driving, each model).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{_data_uri(png)}">'


def distribution_png(values: dict[str, list[float]], title: str) -> bytes:
    """A small PNG: per-clip values of each model as jittered points with the mean marked."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.2, 2.0), dpi=80)
    rng = np.random.default_rng(0)
    for i, (model, vals) in enumerate(values.items()):
        v = np.asarray(vals, dtype=float)
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=10, alpha=0.7)
        if len(v):
            ax.hlines(v.mean(), i - 0.3, i + 0.3, colors="k", linewidth=1.5)
    ax.set_xticks(range(len(values)), list(values), fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _mark(value: float | None, base: float | None, higher: bool) -> str:
    if value is None or base is None or np.isclose(value, base, rtol=1e-9, atol=1e-12):
        return ""
    better = value > base if higher else value < base
    return ' <span class="better">▲ better</span>' if better else ' <span class="worse">▼ worse</span>'


def write_report(path: str | Path, summary: dict[str, Any], results: list, merged: dict, strip_clips: int = 3) -> Path:
    """Write the report for an evaluation summary and its item results; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    models = summary["models"]
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>r3p evaluation</title><style>",
             "body{font-family:sans-serif;margin:1.5em;max-width:1200px} table{border-collapse:collapse;margin:.5em 0}",
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} th{background:#eee} td.l{text-align:left}",
             ".better{color:#17702a;font-size:80%} .worse{color:#b0261b;font-size:80%}",
             "img{margin:2px;vertical-align:top}",
             ".fail{color:#b0261b}</style></head><body>",
             "<h1>r3p evaluation</h1>",
             f"<p>data <code>{e(summary['data'])}</code>, split <b>{e(summary['split'])}</b>, {summary['clips']} clips "
             f"(clip-list hash <code>{e(summary['clip_list_hash'])}</code>), "
             f"protocols {e(', '.join(summary['protocols']))}; "
             f"{summary['items']} items ({summary['cached']} from cache, {summary['computed']} computed, "
             f"{len(summary['failed'])} failed).</p>",
             "<h2>Models</h2><table><tr><th>model</th><th>what it is</th></tr>",
             *[f"<tr><td class='l'>{e(m)}</td><td class='l'>{e(summary['model_identity'][m])}</td></tr>"
               for m in models],
             "</table><h2>Which weights ran</h2><table><tr><th>metric</th><th>model / reason</th></tr>",
             *[f"<tr><td class='l'>{e(k)}</td><td class='l'>{e(v)}</td></tr>" for k, v in summary["backends"].items()],
             "</table>",
             "<h2>Metrics</h2><p>Bold: best model per row. ▲/▼: better/worse than the static-source baseline.</p>",
             "<table><tr><th>protocol</th><th>metric</th><th>better</th>" + "".join(f"<th>{e(m)}</th>" for m in models)
             + "</tr>"]
    for r in summary["table"]:
        vals = r["values"]
        present = [v for v in vals.values() if v is not None]
        best = (max(present) if r["higher_is_better"] else min(present)) if present else None
        cells = []
        for m in models:
            v = vals.get(m)
            if v is None:
                cells.append("<td>—</td>")
                continue
            txt = f"{v:.4f}"
            if best is not None and np.isclose(v, best):
                txt = f"<b>{txt}</b>"
            mark = _mark(v, vals.get("static"), r["higher_is_better"]) if m != "static" else ""
            cells.append(f"<td>{txt}{mark}</td>")
        parts.append(f"<tr><td class='l'>{e(r['protocol'])}</td><td class='l'>{e(r['metric'])}</td>"
                     f"<td>{'higher' if r['higher_is_better'] else 'lower'}</td>{''.join(cells)}</tr>")
    parts.append("</table>")
    nc = [(p, m, f, w) for p, per in summary["not_computed"].items() for m, fams in per.items()
          for f, w in fams.items()]
    if nc or summary["protocols_skipped"]:
        parts.append("<h2>Not computed</h2><table>"
                     "<tr><th>protocol</th><th>model</th><th>metric</th><th>reason</th></tr>")
        parts += [f"<tr><td class='l'>{e(p)}</td><td class='l'>{e(m)}</td><td class='l'>{e(f)}</td>"
                  f"<td class='l'>{e(w)}</td></tr>" for p, m, f, w in nc]
        parts += [f"<tr><td class='l'>{e(p)}</td><td class='l'>all</td><td class='l'>protocol</td>"
                  f"<td class='l'>{e(w)}</td></tr>" for p, w in summary["protocols_skipped"].items()]
        parts.append("</table>")
    if summary["failed"]:
        parts.append("<h2>Failed clips</h2><ul>")
        parts += [f"<li class='fail'>{e(f['protocol'])} {e(f['clip_id'])} (source {e(f['source_clip_id'])}): "
                  f"{e(f['error'])}</li>" for f in summary["failed"]]
        parts.append("</ul>")
    ok = [r for r in results if r.error is None]
    parts.append("<h2>Per-clip distributions</h2>")
    for protocol in summary["protocols"]:
        names = sorted({n for r in ok if r.protocol == protocol for m in models for n in r.values.get(m, {})})
        if not names:
            continue
        parts.append(f"<h3>{e(protocol)}</h3><div>")
        for n in names:
            vals = {m: [r.values[m][n] for r in ok if r.protocol == protocol and n in r.values.get(m, {})]
                    for m in models}
            parts.append(_img(distribution_png(vals, f"{protocol}: {n} per clip"), f"{protocol} {n}"))
        parts.append("</div>")
    parts.append("<h2>Frame strips</h2>")
    for protocol in summary["protocols"]:
        shown = [r for r in ok if r.protocol == protocol][:strip_clips]
        for r in shown:
            parts.append(f"<h4>{e(protocol)}: clip {e(r.clip_id)} (source from {e(r.source_clip_id)})</h4><table>")
            for label in ("source", "driving", *models):
                if label in r.strips:
                    parts.append(f"<tr><td class='l'>{e(label)}</td>"
                                 f"<td class='l'>{_img(r.strips[label], label)}</td></tr>")
            parts.append("</table>")
    parts.append(f"<p>MLflow and cache: <code>{e(summary.get('cache', ''))}</code></p></body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
