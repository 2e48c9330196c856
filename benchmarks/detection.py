"""Detection benchmark: mlwarden vs picklescan, modelscan and fickling on two labelled file sets.

Set ``picklescan-corpus`` is the shared copy of picklescan's own test data (``../shared/corpus/picklescan``,
labels from its test suite). Set ``mlwarden-samples`` is built fresh by ``python -m mlwarden_samples``
(real benign models and harmless canary payloads). A sample may be a folder (a Hugging Face style model
directory): it counts once, and a tool flags it if it flags any file in it.

Each tool scans each set in ONE subprocess (see ``_runner.py``); wall time and peak RSS are of that
process, medians of ``--rounds`` (3) interleaved rounds. ``mlwarden scan --jobs 2`` is an extra row.
Run: ``make bench`` or ``.venv/bin/python benchmarks/detection.py``. Nothing here asserts a target: it
measures and prints, and writes ``bench-out/detection.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peers import (
    MLW_PY,
    OUT,
    PEERS,
    REPO,
    TOOLS,
    Run,
    machine,
    peer_versions,
    ratio,
    require_peers,
    run_mlwarden_cli,
    run_tool,
    save,
    table,
)

CORPUS = REPO.parent / "shared" / "corpus" / "picklescan"
FIXTURES = OUT / "fixtures"
CANARY = OUT / "fixtures-canary"
CLI = "mlwarden CLI --jobs 2"


@dataclass(frozen=True)
class Sample:
    """One labelled sample: a file, or a folder scanned file by file."""

    name: str
    label: str
    files: tuple[Path, ...]


def load_set(root: Path) -> list[Sample]:
    """Read ``root/labels.json`` (``{relpath: {label, ...}}``) into samples; folders expand to files."""
    labels: dict[str, dict[str, Any]] = json.loads((root / "labels.json").read_text(encoding="utf-8"))
    out = []
    for rel, entry in sorted(labels.items()):
        if entry["label"] not in ("benign", "malicious"):
            continue
        p = root / rel
        files = tuple(sorted(f for f in p.rglob("*") if f.is_file())) if p.is_dir() else (p,)
        out.append(Sample(rel, entry["label"], files))
    return out


def build_fixtures() -> list[Sample]:
    """Rebuild the mlwarden sample corpus under ``bench-out/fixtures`` (a few seconds)."""
    shutil.rmtree(FIXTURES, ignore_errors=True)
    shutil.rmtree(CANARY, ignore_errors=True)
    subprocess.run(
        [str(MLW_PY), "-m", "mlwarden_samples", str(FIXTURES), "--canary-dir", str(CANARY)],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO / "testkit")},  # the sample builders are a test kit
    )
    return load_set(FIXTURES)


def verdicts(samples: list[Sample], run: Run) -> dict[str, dict[str, Any]]:
    """Fold per-file rows into per-sample verdicts (flagged/error if any file is; skipped if all are)."""
    by_path = {str(Path(r["path"]).resolve()): r for r in run.rows}
    out = {}
    for s in samples:
        rows = [by_path.get(str(f.resolve())) for f in s.files]
        missing = [f for f, r in zip(s.files, rows, strict=True) if r is None]
        got = [r for r in rows if r is not None]
        errors = [f"{Path(r['path']).name}: {r['error']}" for r in got if r["error"]]
        if missing:
            errors.append(f"no result for {len(missing)} file(s) (tool process died?)")
        out[s.name] = {
            "label": s.label,
            "flagged": any(r["flagged"] for r in got),
            "error": "; ".join(errors) or None,
            "skipped": bool(got) and all(r["skipped"] for r in got),
            "detail": "; ".join(r["detail"] for r in got if r["detail"])[:300],
        }
    return out


def score(v: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Counts per label: flagged, flagged-or-error (fail-closed view), errors, skipped."""
    c = {"malicious": 0, "benign": 0}
    out: dict[str, int] = {}
    for label in c:
        items = [x for x in v.values() if x["label"] == label]
        out[f"{label}_total"] = len(items)
        out[f"{label}_flagged"] = sum(x["flagged"] for x in items)
        out[f"{label}_flagged_or_error"] = sum(x["flagged"] or bool(x["error"]) for x in items)
    out["errors"] = sum(bool(x["error"]) for x in v.values())
    out["skipped"] = sum(x["skipped"] for x in v.values())
    return out


def _wrap(title: str, names: list[str]) -> str:
    if not names:
        return f"  {title}: none"
    return textwrap.fill(
        ", ".join(names), width=110, initial_indent=f"  {title} ({len(names)}): ", subsequent_indent="      "
    )


def bench_set(name: str, samples: list[Sample], rounds: int) -> dict[str, Any]:
    """Run every tool over one set, print the table and the notable samples, return raw numbers."""
    files = sorted({f for s in samples for f in s.files})
    print(
        f"\n=== {name}: {sum(s.label == 'malicious' for s in samples)} malicious + "
        f"{sum(s.label == 'benign' for s in samples)} benign samples, {len(files)} files ==="
    )
    all_runs: dict[str, list[Run]] = {name: [] for name in (*TOOLS, CLI)}
    for _ in range(rounds):  # interleaved, so that load from elsewhere hits every tool alike
        for tool in TOOLS:
            all_runs[tool].append(run_tool(tool, files))
        all_runs[CLI].append(run_mlwarden_cli(files, jobs=2))
    runs = {name: rs[-1] for name, rs in all_runs.items()}  # verdicts: the last round (they are stable)
    med = {
        name: {k: statistics.median(getattr(r, k) for r in rs) for k in ("wall", "scan_seconds", "rss_mb")}
        for name, rs in all_runs.items()
    }
    v = {tool: verdicts(samples, run) for tool, run in runs.items()}
    scores = {tool: score(x) for tool, x in v.items()}
    mlw = med["mlwarden"]
    rows = []
    for tool in runs:
        s, m = scores[tool], med[tool]
        peer = tool in PEERS
        rows.append(
            [
                tool,
                f"{s['malicious_flagged']}/{s['malicious_total']}",
                f"{s['benign_flagged']}/{s['benign_total']}",
                f"{s['malicious_flagged_or_error']}/{s['benign_flagged_or_error']}",
                s["errors"],
                s["skipped"],
                f"{m['wall']:.2f}",
                f"{m['scan_seconds']:.2f}",
                f"{m['rss_mb']:.0f}",
                ratio(mlw["wall"], m["wall"]) if peer else "",
                ratio(mlw["rss_mb"], m["rss_mb"]) if peer else "",
            ]
        )
    print(
        table(
            [
                "tool",
                "malicious flagged",
                "benign flagged",
                "fail-closed mal/ben",
                "errors",
                "skipped",
                f"wall s (median of {rounds})",
                "scan s",
                "peak RSS MiB",
                "mlw/peer wall",
                "mlw/peer RSS",
            ],
            rows,
        )
    )
    for tool, run in runs.items():
        if run.returncode not in (0, 1) or run.stderr_tail:
            print(f"  ! {tool} exited {run.returncode}: {run.stderr_tail[-300:]}")
    print("mlwarden (scan_file API):")
    for label, want, title in (("malicious", False, "missed malicious"), ("benign", True, "flagged benign")):
        for sname, x in v["mlwarden"].items():
            if x["label"] == label and x["flagged"] is want:
                print(
                    f"  {title}: {sname}"
                    + (f" -> {x['detail']}" if x["detail"] else "")
                    + (f" [error: {x['error']}]" if x["error"] else "")
                )
    caught_by_peer = [
        s
        for s, x in v["mlwarden"].items()
        if x["label"] == "malicious" and not x["flagged"] and any(v[p][s]["flagged"] for p in PEERS)
    ]
    print(_wrap("malicious missed by mlwarden but flagged by a peer", caught_by_peer))
    for tool in PEERS:
        x = v[tool]
        print(f"{tool}:")
        print(_wrap("missed malicious", [s for s, y in x.items() if y["label"] == "malicious" and not y["flagged"]]))
        print(_wrap("flagged benign", [s for s, y in x.items() if y["label"] == "benign" and y["flagged"]]))
        crashes = [f"{s} ({y['error']})" for s, y in x.items() if y["error"] and "crash:" in y["error"]]
        if crashes:
            print(_wrap("crashed (exception escaped the tool's API)", crashes))
    return {"median": med, "runs": all_runs, "scores": scores, "verdicts": v}


def main() -> int:
    """Build the fixture set, benchmark both sets, save ``bench-out/detection.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (median); verdicts are stable")
    args = parser.parse_args()
    require_peers()
    versions = peer_versions()
    print(f"detection benchmark — {machine()} — {versions}")
    results: dict[str, Any] = {"machine": machine(), "versions": versions}
    if CORPUS.joinpath("labels.json").exists():
        results["picklescan-corpus"] = bench_set("picklescan-corpus", load_set(CORPUS), args.rounds)
    else:
        print(f"skipping picklescan-corpus: {CORPUS}/labels.json not found")
    results["mlwarden-samples"] = bench_set("mlwarden-samples", build_fixtures(), args.rounds)
    leaked = sorted(p.name for p in CANARY.glob("*")) if CANARY.exists() else []
    print(
        "\ncanary check: "
        + (
            f"CANARY FILES APPEARED — something loaded a sample: {leaked}"
            if leaked
            else "no canary file appeared (no tool executed a payload)"
        )
    )
    print(f"raw numbers: {save('detection', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
