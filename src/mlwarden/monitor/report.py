"""``mlwarden monitor report``: one self-contained HTML file drawn from the monitor's history.

Sections: a summary (time span, evaluations, alerts by severity), the alerts, drift p-values over time per
feature with the significance line, each feature's distribution in the latest window against the baseline, and
the control charts (statistic and limits, alarms marked) of confidence, latency, error and flagged rates.
Plots are inline SVG (:mod:`mlwarden.monitor.svgplot`); the page loads nothing from anywhere.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, select_autoescape
from markupsafe import Markup

from mlwarden.core.errors import UsageError
from mlwarden.core.files import write_atomically
from mlwarden.monitor.history import read_history
from mlwarden.monitor.svgplot import bar_chart, line_chart

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px;color:#222}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9rem}td,th{border:1px solid #ddd;padding:.3rem .5rem;text-align:left}
.critical{color:#b00020;font-weight:600}.warning{color:#b36b00}.info{color:#555}
.plots{display:flex;flex-wrap:wrap;gap:1rem}.plot{flex:1 1 480px}.note{color:#666;font-size:.85rem}
</style></head><body>
<h1>{{ title }}</h1>
<p>{{ start }} — {{ end }} · {{ evaluations }} drift evaluation(s) · {{ alerts|length }} alert(s)
{% for sev, n in by_severity %} · <span class="{{ sev }}">{{ n }} {{ sev }}</span>{% endfor %}</p>
{% if skipped %}<p class="note">{{ skipped }} corrupt history line(s) were skipped.</p>{% endif %}
<h2>Alerts</h2>
{% if alerts %}<table><tr><th>time (UTC)</th><th>rule</th><th>kind</th><th>severity</th><th>message</th></tr>
{% for a in alerts %}<tr><td>{{ a.time }}</td><td>{{ a.rule }}</td><td>{{ a.kind }}</td>
<td class="{{ a.severity }}">{{ a.severity }}</td><td>{{ a.message }}</td></tr>{% endfor %}</table>
{% else %}<p>No alerts.</p>{% endif %}
<h2>Drift over time</h2>
{% if drift_plot %}<div class="plot">{{ drift_plot }}</div>{% else %}<p>No drift evaluation yet.</p>{% endif %}
<h2>Distributions: latest window vs baseline</h2>
{% if dist_plots %}<div class="plots">{% for p in dist_plots %}<div class="plot">{{ p }}</div>{% endfor %}</div>
{% else %}<p>No window recorded yet.</p>{% endif %}
<h2>Control charts</h2>
{% if chart_plots %}<div class="plots">{% for p in chart_plots %}<div class="plot">{{ p }}</div>{% endfor %}</div>
{% else %}<p>No chart points recorded yet.</p>{% endif %}
<p class="note">Written by mlwarden on {{ now }} from {{ source }}.</p>
</body></html>
"""


def _time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _drift_plot(records: list[dict[str, Any]]) -> Markup | None:
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    alpha = None
    t0 = records[0]["t"] if records else 0.0
    for r in records:
        alpha = r.get("alpha", alpha)
        for res in r.get("results", []):
            if res.get("p_value") is not None:
                key = f"{res['test']}:{res.get('feature') or '*'}"
                series[key].append(((r["t"] - t0) / 60, max(float(res["p_value"]), 1e-16)))
    if not series:
        return None
    lines = [(float(alpha), f"alpha {alpha}")] if alpha else []
    svg = line_chart(
        dict(sorted(series.items())),
        title="drift test p-values (raw)",
        xlabel="minutes",
        ylabel="p-value",
        log_y=True,
        hlines=lines,
    )
    return Markup(svg)  # noqa: S704 - built by svgplot, which escapes every text


def _distribution_plots(window: dict[str, Any] | None, limit: int = 24) -> list[Markup]:
    if window is None:
        return []
    return [
        Markup(  # noqa: S704 - built by svgplot, which escapes every text
            bar_chart(
                {"baseline": f["baseline"], "latest window": f["window"]},
                title=str(f["feature"]),
                xlabel="baseline quantile bin",
                ylabel="share",
            )
        )
        for f in window.get("features", [])[:limit]
    ]


def _chart_plots(records: list[dict[str, Any]]) -> list[Markup]:
    series: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        series[(r["metric"], r["chart"])].append(r)
    plots = []
    for (metric, chart), points in sorted(series.items()):
        t0 = points[0]["t"]
        xs = [(p["t"] - t0) / 60 for p in points]
        lines = {"statistic": [(x, float(p["statistic"])) for x, p in zip(xs, points, strict=True)]}
        for key in ("upper", "lower"):
            lines[key] = [(x, float(p[key])) for x, p in zip(xs, points, strict=True) if p.get(key) is not None]
        marks = [(x, float(p["statistic"])) for x, p in zip(xs, points, strict=True) if p.get("alarm")]
        svg = line_chart(lines, title=f"{metric} — {chart.upper()}", xlabel="minutes", ylabel="statistic", marks=marks)
        plots.append(Markup(svg))  # noqa: S704 - built by svgplot, which escapes every text
    return plots


def write_report(history_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Write the HTML report of the history in ``history_dir`` to ``out`` (atomically); returns ``out``.

    Raises:
        UsageError: no history there, or nothing recorded in it.
    """
    history = read_history(history_dir)
    records = history.records
    if not records:
        raise UsageError(f"the monitor history in {history_dir} holds no records yet")
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_type[str(r["type"])].append(r)
    alerts = [
        {
            "time": _time(a["t"]),
            "rule": a.get("rule", ""),
            "kind": a.get("kind", ""),
            "severity": a.get("severity", "info"),
            "message": a.get("message", ""),
        }
        for a in by_type["alert"]
    ]
    severities = Counter(a["severity"] for a in alerts)
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    html = env.from_string(_TEMPLATE).render(
        title=title or "mlwarden monitor report",
        start=_time(records[0]["t"]),
        end=_time(records[-1]["t"]),
        evaluations=len(by_type["drift"]),
        alerts=alerts,
        by_severity=sorted(severities.items(), key=lambda kv: kv[0]),
        skipped=history.skipped,
        drift_plot=_drift_plot(by_type["drift"]),
        dist_plots=_distribution_plots(by_type["window"][-1] if by_type["window"] else None),
        chart_plots=_chart_plots(by_type["chart"]),
        now=_time(datetime.now(UTC).timestamp()),
        source=str(history_dir),
    )
    target = Path(out)
    try:
        write_atomically(target, html, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target
