"""The data-check report as text, JSON or HTML (inline SVG charts from :mod:`mlwarden.monitor.svgplot`).

Only numbers, masked evidence and row numbers reach a report; every text is HTML-escaped; the HTML loads
nothing from anywhere.
"""

from __future__ import annotations

from html import escape
from typing import Any

from mlwarden.datacheck.model import CHECKS, CheckResult, DataCheckReport

FORMATS = ("text", "json", "html")


def _rate(r: dict[str, Any]) -> str:
    low, high = r["ci95"]
    return f"{r['count']:,}/{r['total']:,} = {100 * r['rate']:.2f} % (95 % CI {100 * low:.2f}–{100 * high:.2f} %)"


def _lines(result: CheckResult) -> list[str]:
    m = result.metrics
    if result.status != "ok":
        return [f"  {result.status}: {result.reason}"]
    if result.id == "class_balance":
        out = [f"  {k}: {_rate(v)}" for k, v in m["by_class"].items()]
        if "imbalance_ratio" in m:
            out.append(f"  imbalance ratio (largest/smallest) {m['imbalance_ratio']:.3g}")
        for k, v in m.get("max_group_rate_difference", {}).items():
            out.append(f"  class {k}: largest difference of its rate between sensitive groups {v:.3f}")
        return out
    if result.id == "duplicates":
        if "exact" not in m:
            return ["  no key columns to compare"]
        out = [f"  exact duplicate rows {_rate(m['exact']['duplicate_rows'])}",
               f"  near duplicate rows (tolerance {result.parameters['tolerance_std']} sd) "
               f"{_rate(m['near']['duplicate_rows'])}"]  # fmt: skip
        if "conflicting_label_rows" in m["exact"]:
            conflicting = _rate(m["exact"]["conflicting_label_rows"])
            groups = m["exact"]["conflicting_label_groups"]
            out.append(f"  rows in exact duplicates with conflicting labels {conflicting} ({groups} groups)")
        return out
    if result.id == "label_issues":
        out = [f"  label issues {_rate(m['issues'])}; out-of-fold accuracy {m['out_of_fold_accuracy']:.3f}"]
        out += [f"  given {p['given']} → suggested {p['suggested']}: {p['count']}" for p in m["flip_pairs"][:5]]
        return out
    if result.id == "outliers":
        return [f"  outliers {_rate(m['outliers'])} (isolation score > {m['threshold']})"]
    if result.id == "pii":
        out = [f"  {m['bytes_scanned']:,} bytes in {m['columns_scanned']} columns at {m['mb_per_second']:.1f} MB/s"]
        for column, c in m["columns"].items():
            if c["matches"]:
                found = ", ".join(f"{k} {v}" for k, v in c["matches"].items())
                examples = "; ".join(e for ex in c["examples_masked"].values() for e in ex[:1])
                out.append(f"  {column}: rows with PII {_rate(c['rows_with_pii'])}: {found} (e.g. {examples})")
        if not m["matches"]:
            out.append("  no matches")
        return out
    if result.id == "backdoor":
        return _backdoor_lines(m)
    return [f"  {k}: {v}" for k, v in m.items() if not isinstance(v, list | dict)]


def _backdoor_lines(m: Any) -> list[str]:
    target = ", ".join(str(t) for t in m.get("suspected_target", [])) or "none"
    index = m.get("neural_cleanse", {}).get("anomaly_index", {})
    out = [f"  suspected target class: {target}"]
    if index:
        top = max(index, key=index.get)
        out[0] += f" (largest Neural Cleanse anomaly index {index[top]:.2f}, class {top})"
    for name in ("activation_clustering", "spectral_signature", "either_method"):
        if isinstance(m.get(name), dict) and "flagged" in m[name]:
            out.append(f"  {name.replace('_', ' ')}: {_rate(m[name]['flagged'])}")
    return out


def render_text(report: DataCheckReport) -> str:
    """A short human summary: one block per check, numbers with their intervals."""
    d = report.dataset
    out = [
        f"data check of {d.path} ({d.format}, {d.rows:,} rows, {len(d.columns)} columns, {d.bytes:,} bytes, "
        f"sha256:{d.sha256})",
        f"seed {report.seed}, {report.seconds:.1f} s",
    ]
    for result in report.checks:
        out.append(f"{CHECKS[result.id].title} [{result.id}] — {result.rows:,} rows, {result.seconds:.2f} s")
        out += _lines(result)
    return "\n".join(out) + "\n"


def _charts(report: DataCheckReport) -> list[str]:
    from mlwarden.monitor.svgplot import bar_chart

    charts = []
    for result in report.checks:
        m = result.metrics
        if result.status != "ok":
            continue
        if result.id == "class_balance" and m["by_class"]:
            charts.append(bar_chart({"rows": [v["count"] for v in m["by_class"].values()]},
                                    title="rows per class (" + ", ".join(list(m["by_class"])[:8]) + ")",
                                    xlabel="class", ylabel="rows"))  # fmt: skip
        if result.id == "label_issues":
            classes = list(m["by_given_label"])
            charts.append(bar_chart({"issue rate": [v["rate"] for v in m["by_given_label"].values()]},
                                    title="label-issue rate by given label (" + ", ".join(classes[:8]) + ")",
                                    xlabel="class", ylabel="rate"))  # fmt: skip
        if result.id == "pii" and m["matches"]:
            kinds = list(m["matches"])
            charts.append(bar_chart({"matches": [float(v) for v in m["matches"].values()]},
                                    title="PII matches (" + ", ".join(kinds[:8]) + ")",
                                    xlabel="detector", ylabel="matches"))  # fmt: skip
    return charts


def render_html(report: DataCheckReport) -> str:
    """A self-contained HTML page: the text summary, the charts and the JSON."""
    body = "".join(f"<figure>{svg}</figure>" for svg in _charts(report))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>mlwarden data check</title>"
        "<style>body{font-family:sans-serif;margin:2em}pre{background:#f6f6f6;padding:1em;overflow:auto}"
        "figure{display:inline-block;margin:0.5em}</style></head><body>"
        f"<h1>Data check: {escape(report.dataset.path)}</h1><pre>{escape(render_text(report))}</pre>{body}"
        f"<details><summary>JSON</summary><pre>{escape(report.to_json())}</pre></details></body></html>\n"
    )


def render(report: DataCheckReport, fmt: str) -> str:
    """``text``, ``json`` or ``html``."""
    if fmt == "json":
        return report.to_json() + "\n"
    if fmt == "html":
        return render_html(report)
    return render_text(report)
