"""``mlwarden bulk report``: what a results store holds, counted and ranked.

Counts by status, verdict, format and rule; the slowest artifacts; the failed and timed-out ones; and the review
list (every artifact with a finding at ``medium`` or above, worst first). Computed from the rows, so it can be run
while a bulk scan is still writing.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from mlwarden.bulk.store import ResultStore
from mlwarden.core.findings import Severity
from mlwarden.report import clean

REVIEW_AT = Severity.MEDIUM


def summarize(store: ResultStore, *, slowest: int = 10) -> dict[str, Any]:
    """The summary as JSON data."""
    rows = store.rows()
    by_format: Counter[str] = Counter()
    by_rule: Counter[str] = Counter()
    for row in rows:
        by_format.update(row["formats"] or ["(none)"])
        by_rule.update(row["rule_ids"])
    review = [r for r in rows if r["max_severity"] and Severity.parse(r["max_severity"]) >= REVIEW_AT]
    review.sort(key=lambda r: (-int(Severity.parse(r["max_severity"])), r["source"]))
    slow = sorted((r for r in rows if r["status"] == "done"), key=lambda r: -r["seconds"])[:slowest]
    return {
        "artifacts": len(rows),
        "runs": len(store.run_rows()),
        "by_status": dict(Counter(r["status"] for r in rows)),
        "by_verdict": dict(Counter(r["verdict"] for r in rows)),
        "by_format": dict(by_format.most_common()),
        "by_rule": dict(by_rule.most_common()),
        "scan_seconds": round(sum(r["seconds"] for r in rows), 3),
        "slowest": [{"source": r["source"], "seconds": r["seconds"]} for r in slow],
        "failed": [
            {"source": r["source"], "status": r["status"], "error": r["error"]} for r in rows if r["status"] != "done"
        ],
        "review": [
            {"source": r["source"], "digest": r["digest"], "max_severity": r["max_severity"], "rule_ids": r["rule_ids"]}
            for r in review
        ],
    }


def _counts(title: str, counts: dict[str, int]) -> list[str]:
    lines = [f"{title}:"]
    lines += [f"  {clean(str(k)):<40} {v}" for k, v in counts.items()] or ["  (none)"]
    return lines


def render_text(summary: dict[str, Any]) -> str:
    """The summary for people (paths from scanned stores are untrusted: control characters are escaped)."""
    lines = [f"{summary['artifacts']} artifacts in {summary['runs']} run(s), {summary['scan_seconds']} s of scanning"]
    for key, title in (("by_status", "status"), ("by_verdict", "verdict"), ("by_format", "format")):
        lines += _counts(title, summary[key])
    lines += _counts("rule", summary["by_rule"])
    lines.append("slowest:")
    lines += [f"  {s['seconds']:>9.3f} s  {clean(s['source'])}" for s in summary["slowest"]] or ["  (none)"]
    lines.append("failed / timed out:")
    lines += [f"  [{f['status']}] {clean(f['source'])}: {clean(f['error'] or '')}" for f in summary["failed"]]
    if not summary["failed"]:
        lines.append("  (none)")
    lines.append(f"review ({len(summary['review'])} at {REVIEW_AT} or above):")
    lines += [f"  {r['max_severity']:<8} {clean(r['source'])}  {', '.join(r['rule_ids'])}" for r in summary["review"]]
    return "\n".join(lines) + "\n"


def render(summary: dict[str, Any], fmt: str) -> str:
    """``text`` or ``json``."""
    return render_text(summary) if fmt == "text" else json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
