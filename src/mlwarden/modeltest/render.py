"""The model-test report as text, JSON or HTML (inline SVG charts from :mod:`mlwarden.monitor.svgplot`).

Each test has a summary of its own when its metrics have the documented shape, and a generic one (its scalar
metrics) otherwise, so a result a test adds keys to, or one with ``status: error``, never breaks the report. The
HTML is one self-contained page: every text is HTML-escaped, charts are inline SVG, images are ``data:`` URIs of
validated base64 PNGs, and nothing is loaded from anywhere.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from html import escape
from typing import Any

from mlwarden.modeltest.model import TESTS, ModelTestReport, TestResult

FORMATS = ("text", "json", "html")
#: What a renderer may hit in metrics of an unexpected shape; the generic summary is used then.
_SHAPE_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError)
_PNG = b"\x89PNG\r\n\x1a\n"


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and not isinstance(value, bool) else str(value)


def _ci(ci: Any) -> str:
    return f"[{_num(ci[0])}, {_num(ci[1])}]"


def _rate(r: Mapping[str, Any]) -> str:
    return f"{_num(r['rate'])} ({r['count']:,}/{r['total']:,}, 95 % CI {_ci(r['ci95'])})"


def _robustness(m: Mapping[str, Any]) -> list[str]:
    out = [f"  clean accuracy {_rate(m['clean_accuracy'])}"]
    for a in m["attacks"]:
        head = f"  {a['attack']} ({a['kind'].replace('_', ' ')})"
        if a["attack"] == "hopskipjump":
            head += (f", {a['rows']} rows: perturbation found for {_rate(a['adversarial_found'])}; median L∞ "
                     f"{_num(a['median_linf'], 4)}, median L2 {_num(a['median_l2'], 4)}")  # fmt: skip
        out.append(head)
        for p in a["points"]:
            where = (
                f"eps {p['eps']} (abs {_num(p['eps_abs'], 4)})" if p.get("eps") is not None else f"sigma {p['sigma']}"
            )
            out.append(f"    {where}: accuracy {_num(p['accuracy'])} 95 % CI {_ci(p['ci95'])}")
    return out


def _membership(m: Mapping[str, Any]) -> list[str]:
    out = [f"  {a['attack']}: AUC {_num(a['auc'])} 95 % CI {_ci(a['auc_ci95'])}, TPR at FPR 0.001 "
           f"{_num(a.get('tpr_at_fpr_0.001'))}" for a in m["attacks"]]  # fmt: skip
    if "max_auc" in m:
        out.append(f"  largest AUC {_num(m['max_auc'])}")
    return out


def _attribute(m: Mapping[str, Any]) -> list[str]:
    return [f"  attack accuracy {_num(m['attack_accuracy'])}, baseline (most frequent value) "
            f"{_num(m['baseline_accuracy'])}, advantage {_num(m['advantage'])}"]  # fmt: skip


def _fairness(m: Mapping[str, Any]) -> list[str]:
    out = [f"  demographic parity difference {_num(m['demographic_parity_difference'])}, equalized odds difference "
           f"{_num(m['equalized_odds_difference'])}"]  # fmt: skip
    for group, v in m.get("by_group", {}).items():
        out.append(
            f"    {group}: " + ", ".join(f"{k} {_num(x)}" for k, x in v.items() if not isinstance(x, dict | list))
        )
    return out


def _generic(m: Mapping[str, Any]) -> list[str]:
    out = []
    for key, value in m.items():
        if isinstance(value, dict | list):
            size = len(value)
            out.append(f"  {key}: {size} {'entries' if isinstance(value, list) else 'keys'}")
        else:
            out.append(f"  {key}: {_num(value)}")
    return out


_SUMMARIES: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {
    "robustness": _robustness,
    "membership": _membership,
    "attribute_inference": _attribute,
    "fairness": _fairness,
}


def _lines(result: TestResult) -> list[str]:
    if result.status != "ok":
        return [f"  {result.status}: {result.reason}"]
    summary = _SUMMARIES.get(result.id, _generic)
    try:
        return summary(result.metrics)
    except _SHAPE_ERRORS:
        return _generic(result.metrics)


def render_text(report: ModelTestReport) -> str:
    """A short human summary: one block per test, numbers with their intervals."""
    t = report.test_data
    out = [
        f"model test of {report.model_path} ({report.framework}, {report.n_classes} classes, {report.model_digest})",
        f"test data {t.path} ({t.rows:,} rows, sha256:{t.sha256})",
    ]
    if report.train_data:
        out.append(f"training data {report.train_data.path} ({report.train_data.rows:,} rows, "
                   f"sha256:{report.train_data.sha256})")  # fmt: skip
    out.append(f"seed {report.seed}, {report.seconds:.1f} s")
    for result in report.tests:
        rows = ", ".join(f"{k} {v:,}" for k, v in result.rows.items())
        title = TESTS[result.id].title if result.id in TESTS else result.id
        out.append(f"{title} [{result.id}] — {result.status}, rows: {rows}, {result.seconds:.2f} s")
        out += _lines(result)
    return "\n".join(out) + "\n"


def _png(data: Any) -> str | None:
    """A ``data:`` URI for a base64 PNG, or None when it is not one (never markup from a report)."""
    if not isinstance(data, str):
        return None
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    return "data:image/png;base64," + base64.b64encode(raw).decode("ascii") if raw.startswith(_PNG) else None


def _images(items: Any, what: str) -> str:
    cells = []
    for item in items if isinstance(items, list) else []:
        uri = _png(item.get("png_base64")) if isinstance(item, dict) else None
        if uri is not None:
            label = escape(f"{what} {item.get('class')}")
            cells.append(f"<figure><img src=\"{uri}\" alt=\"{label}\" width=\"96\"><figcaption>{label}</figcaption>"
                         "</figure>")  # fmt: skip
    return "".join(cells)


def _robustness_chart(m: Mapping[str, Any]) -> list[str]:
    from mlwarden.monitor.svgplot import line_chart

    series = {a["attack"]: [(p["eps"], p["accuracy"]) for p in a["points"] if p.get("eps") is not None]
              for a in m["attacks"]}  # fmt: skip
    clean = m["clean_accuracy"]["rate"]
    out = [line_chart({k: v for k, v in series.items() if v}, title="accuracy under attack",
                      xlabel="eps (fraction of the input range)", ylabel="accuracy",
                      hlines=[(clean, "clean accuracy")])]  # fmt: skip
    from mlwarden.monitor.svgplot import bar_chart

    for a in m["attacks"]:
        if a["attack"] == "blur":
            sigmas = ", ".join(str(p["sigma"]) for p in a["points"])
            accuracy = {"accuracy": [p["accuracy"] for p in a["points"]]}
            out.append(
                bar_chart(accuracy, title=f"accuracy under blur (sigma {sigmas})", xlabel="sigma", ylabel="accuracy")
            )
    return out


def _membership_chart(m: Mapping[str, Any]) -> list[str]:
    from mlwarden.monitor.svgplot import line_chart

    series = {a["attack"]: list(zip(a["roc"]["fpr"], a["roc"]["tpr"], strict=True)) for a in m["attacks"] if "roc" in a}
    if not series:
        return []
    series["chance"] = [(0.0, 0.0), (1.0, 1.0)]
    return [line_chart(series, title="membership inference ROC", xlabel="false positive rate",
                       ylabel="true positive rate")]  # fmt: skip


def _fairness_chart(m: Mapping[str, Any]) -> list[str]:
    from mlwarden.monitor.svgplot import bar_chart

    groups = list(m["by_group"])
    keys = [k for k in ("accuracy", "selection_rate") if all(k in m["by_group"][g] for g in groups)]
    if not groups or not keys:
        return []
    series = {k: [float(m["by_group"][g][k]) for g in groups] for k in keys}
    return [
        bar_chart(series, title="by group (" + ", ".join(map(str, groups[:8])) + ")", xlabel="group", ylabel="rate")
    ]


_CHARTS: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {
    "robustness": _robustness_chart,
    "membership": _membership_chart,
    "fairness": _fairness_chart,
}


def _figures(result: TestResult) -> str:
    if result.status != "ok":
        return ""
    m = result.metrics
    try:
        svgs = _CHARTS[result.id](m) if result.id in _CHARTS else []
    except _SHAPE_ERRORS:
        svgs = []
    body = "".join(f"<figure>{svg}</figure>" for svg in svgs)
    if result.id == "inversion":
        body += _images(m.get("classes"), "class")
    if result.id == "backdoor_probe":
        body += _images(m.get("triggers"), "trigger for class")
    return body


def render_html(report: ModelTestReport) -> str:
    """A self-contained HTML page: the text summary, the charts and images per test, and the JSON."""
    sections = []
    for result in report.tests:
        title = TESTS[result.id].title if result.id in TESTS else result.id
        text = "\n".join(_lines(result))
        sections.append(f"<section><h2>{escape(title)} <small>[{escape(result.id)}] {escape(result.status)}</small>"
                        f"</h2><pre>{escape(text)}</pre>{_figures(result)}</section>")  # fmt: skip
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>mlwarden model test</title>"
        "<style>body{font-family:sans-serif;margin:2em}pre{background:#f6f6f6;padding:1em;overflow:auto}"
        "figure{display:inline-block;margin:0.5em}img{image-rendering:pixelated}</style></head><body>"
        f"<h1>Model test: {escape(report.model_path)}</h1><pre>{escape(render_text(report))}</pre>{''.join(sections)}"
        f"<details><summary>JSON</summary><pre>{escape(report.to_json())}</pre></details></body></html>\n"
    )


def render(report: ModelTestReport, fmt: str) -> str:
    """``text``, ``json`` or ``html``."""
    if fmt == "json":
        return report.to_json() + "\n"
    if fmt == "html":
        return render_html(report)
    return render_text(report)
