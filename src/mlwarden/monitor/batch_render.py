"""A batch drift report as text, JSON or HTML (inline SVG from :mod:`mlwarden.monitor.svgplot`).

The HTML page loads nothing from anywhere and escapes every text: column names come from the data.
"""

from __future__ import annotations

import json
from html import escape

import numpy as np

from mlwarden.monitor.baseline import bin_index
from mlwarden.monitor.batch import BatchDriftReport

FORMATS = ("text", "json", "html")
#: Features drawn in the HTML report (the drifted ones first); the table lists them all.
MAX_PLOTS = 40


def render(report: BatchDriftReport, fmt: str) -> str:
    """The report in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2)
    if fmt == "html":
        return _html(report)
    return _text(report)


def _row(r: dict[str, object]) -> str:
    p = "" if r["p_value"] is None else f"p={r['p_value']:.3g} "
    stat = r["statistic"]
    shown = "n/a" if stat is None else f"{stat:.4g}"
    flag = "DRIFT" if r["drifted"] else "ok"
    feature = str(r["feature"] or "(all numeric)")
    return f"  {r['test']:<5} {feature:<24} stat={shown:<10} {p}threshold={r['threshold']:.3g}  {flag}"


def _text(report: BatchDriftReport) -> str:
    d = report.to_dict()
    lines = [
        f"reference {d['reference']['path']} ({d['reference']['rows']:,} rows) vs current {d['current']['path']} "
        f"({d['current']['rows']:,} rows)",
        f"drift: {'YES' if d['drifted'] else 'no'}; {len(d['drifted_features'])} of {len(report.features)} "
        f"feature(s) drifted ({100 * d['share_drifted']:.1f} %): {', '.join(d['drifted_features']) or '-'}",
        f"alpha {d['config']['alpha']} with {d['config']['correction']} across features; PSI threshold "
        f"{d['config']['psi_threshold']}; {d['seconds']:.2f} s",
    ]
    for name, m in d["missing"].items():
        lines.append(
            f"  missing values in {name}: reference {100 * m['reference']:.2f} %, current {100 * m['current']:.2f} %"
        )
    lines += [_row(r) for r in d["results"]]
    return "\n".join(lines) + "\n"


def _numeric_plot(report: BatchDriftReport, name: str) -> str:
    ref = report.reference.numeric[name]
    cur = report.current.numeric[name]
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    if ref.size < 2 or cur.size == 0:
        return ""
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, 11)[1:-1]))
    a = np.bincount(bin_index(ref, edges), minlength=edges.size + 1) / ref.size
    b = np.bincount(bin_index(cur, edges), minlength=edges.size + 1) / cur.size
    from mlwarden.monitor.svgplot import bar_chart  # HTML only (it imports xml.sax, urllib and http.client)

    return bar_chart({"reference": a.tolist(), "current": b.tolist()}, title=name,
                     xlabel="reference decile bin", ylabel="share of rows")  # fmt: skip


def _categorical_plot(report: BatchDriftReport, name: str) -> str:
    ref, cur = report.reference.categorical.get(name), report.current.categorical.get(name)
    if ref is None or cur is None:
        return ""
    values, counts = np.unique(ref, return_counts=True)
    top = [str(v) for v in values[np.argsort(-counts)][:12]]
    a = [float(np.mean(ref == v)) for v in top]
    b = [float(np.mean(cur == v)) for v in top]
    from mlwarden.monitor.svgplot import bar_chart

    return bar_chart({"reference": a, "current": b}, title=f"{name} ({', '.join(top)[:80]})",
                     xlabel="category (most frequent first)", ylabel="share of rows")  # fmt: skip


def _num(value: object, spec: str) -> str:
    return "" if not isinstance(value, float | int) else format(value, spec)


def _html(report: BatchDriftReport) -> str:
    d = report.to_dict()
    rows = "".join(
        f'<tr class="{"drift" if r["drifted"] else ""}"><td>{escape(r["test"])}</td>'
        f"<td>{escape(str(r['feature'] or '(all numeric)'))}</td>"
        f"<td>{_num(r['statistic'], '.4g')}</td><td>{_num(r['p_value'], '.3g')}</td><td>{r['threshold']:.3g}</td>"
        f"<td>{'drift' if r['drifted'] else 'ok'}</td><td>{escape(str(r['detail']))}</td></tr>"
        for r in d["results"]
    )
    order = report.drifted_features + [f for f in report.features if f not in report.drifted_features]
    plots = []
    for name in order[:MAX_PLOTS]:
        svg = _numeric_plot(report, name) if name in report.reference.numeric else _categorical_plot(report, name)
        if svg:
            plots.append(f'<div class="plot">{svg}</div>')
    verdict = "Drift detected" if d["drifted"] else "No drift detected"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mlwarden drift report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px;color:#222}}
table{{border-collapse:collapse;font-size:.85rem}}td,th{{border:1px solid #ddd;padding:.25rem .4rem;text-align:left}}
tr.drift td{{background:#fde8e8}}.plots{{display:flex;flex-wrap:wrap;gap:1rem}}.plot{{flex:1 1 480px}}</style>
</head><body><h1>{verdict}</h1>
<p>Reference <code>{escape(d["reference"]["path"])}</code> ({d["reference"]["rows"]:,} rows) vs current
<code>{escape(d["current"]["path"])}</code> ({d["current"]["rows"]:,} rows). {len(d["drifted_features"])} of
{len(report.features)} feature(s) drifted ({100 * d["share_drifted"]:.1f} %). Alpha {d["config"]["alpha"]},
{escape(d["config"]["correction"])} correction across features; PSI threshold {d["config"]["psi_threshold"]}.</p>
<h2>Distributions</h2><div class="plots">{"".join(plots)}</div>
<h2>Tests</h2><table><tr><th>test</th><th>feature</th><th>statistic</th><th>p-value</th><th>threshold</th>
<th>verdict</th><th>detail</th></tr>{rows}</table>
<p>Written by mlwarden in {d["seconds"]:.2f} s.</p></body></html>
"""
