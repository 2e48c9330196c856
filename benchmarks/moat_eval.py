"""A rerunnable Moat-style evaluation: bulk-scan a local mirror of >= 1,000 labelled artifacts, score the verdicts.

The mirror is built OUTSIDE the repository (default ``/tmp/mlwarden-mirror``; nothing in it is ever committed):

* ``picklescan``, ``modelaudit``, ``realworld``: the shared corpora (``../shared/corpus/*``, labels from their
  ``labels.json``), copied byte for byte;
* ``thirdparty``: real third-party model files (``--thirdparty``, default ``/work/thirdparty``; ``SOURCES.md`` and
  ``labels.json`` there; licences vary, some "all rights reserved": used locally for measurement only);
* ``variants/{gzip,zip,targz}/<set>/...``: every labelled corpus file gzip-compressed, stored in a zip and in a
  ``.tar.gz`` (deterministic bytes: mtime 0). A variant's label is its source's label: the scanner opens these
  layers, so a payload must still be found inside them.

Then ``mlwarden bulk scan MIRROR --results DB --backend process --workers N`` (static) runs into a fresh SQLite
store, and this script reads the store back: detection rate on malicious files (verdict ``fail``: a finding at or
above the default ``fail_on``, medium), false-alarm rate on benign files, per set and per variant kind, with Wilson
95 % intervals; ``error`` rows (not scanned) are counted apart. Files labelled ``unknown`` (and the few unlabelled
companion files, e.g. joblib's ``.npy`` side files) are scanned but not scored. Optional ``--dynamic-sample N``
bulk-scans N mirror pickles (half malicious) with ``--dynamic-only`` into a second store.

Prints a table and writes ``bench-out/moat_eval.json``. Nothing asserts a target.

Run: ``.venv/bin/python benchmarks/moat_eval.py [--mirror /tmp/mlwarden-mirror] [--thirdparty /work/thirdparty]
[--workers 2] [--dynamic-sample 0]``.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import os
import platform
import random
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time
import zipfile
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
SETS = ("picklescan", "modelaudit", "realworld")
META = {"labels.json", "README.md", "SOURCES.md", "LICENSE", "LICENSE-picklescan.txt"}
VARIANTS = ("gzip", "zip", "targz")
MLWARDEN = REPO / ".venv" / "bin" / "mlwarden"
OUT = REPO / "bench-out" / "moat_eval.json"


# --- the mirror ------------------------------------------------------------------------------------------------


def _labels(root: Path) -> dict[str, str]:
    data = json.loads((root / "labels.json").read_text(encoding="utf-8"))
    return {rel: str(entry.get("label", "unknown")) for rel, entry in data.items()}


def _variant(kind: str, name: str, data: bytes) -> tuple[str, bytes]:
    if kind == "gzip":
        return name + ".gz", gzip.compress(data, mtime=0)
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
        return name + ".zip", buf.getvalue()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tf.addfile(info, io.BytesIO(data))
    return name + ".tar.gz", gzip.compress(buf.getvalue(), mtime=0)  # deterministic: no time in the gzip header


def build_mirror(mirror: Path, thirdparty: Path | None) -> dict[str, dict[str, str]]:
    """Copy the sets and write the variants; returns ``{relpath: {set, variant, label, origin}}``."""
    if mirror.exists():
        shutil.rmtree(mirror)
    mirror.mkdir(parents=True)
    manifest: dict[str, dict[str, str]] = {}
    sources = [(name, CORPUS / name) for name in SETS]
    if thirdparty is not None:
        sources.append(("thirdparty", thirdparty))
    for set_name, root in sources:
        labels = _labels(root)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            if path.name in META and rel not in labels:  # the sets' own metadata, not artifacts
                continue
            label = labels.get(rel, "unlabelled")
            dest = mirror / set_name / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            manifest[dest.relative_to(mirror).as_posix()] = {
                "set": set_name,
                "variant": "original",
                "label": label,
                "origin": rel,
            }
            if set_name == "thirdparty" or rel not in labels:
                continue
            data = path.read_bytes()
            for kind in VARIANTS:
                name, blob = _variant(kind, path.name, data)
                out = mirror / "variants" / kind / set_name / Path(rel).parent / name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(blob)
                manifest[out.relative_to(mirror).as_posix()] = {
                    "set": set_name,
                    "variant": kind,
                    "label": label,
                    "origin": rel,
                }
    return manifest


# --- running and scoring -----------------------------------------------------------------------------------------


def run_bulk(sources: list[str], db: Path, workers: int, extra: list[str]) -> tuple[float, int, str]:
    """``mlwarden bulk scan`` into a fresh store; returns (wall seconds, exit code, stderr tail)."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    cmd = [str(MLWARDEN), "bulk", "scan", *sources, "--results", str(db), "--backend", "process"]
    cmd += ["--workers", str(workers), *extra]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return time.monotonic() - t0, proc.returncode, proc.stderr[-2000:]


def read_rows(db: Path) -> list[dict[str, Any]]:
    """The newest row per source."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        rows = con.execute(
            "SELECT source, status, verdict, max_severity, rule_ids, seconds, error, size FROM bulk_results ORDER BY id"
        ).fetchall()
    finally:
        con.close()
    newest: dict[str, dict[str, Any]] = {}
    for row in rows:
        newest[row["source"]] = dict(row)
    return list(newest.values())


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k of n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _cell(rows: list[dict[str, Any]]) -> dict[str, Any]:
    mal = [r for r in rows if r["label"] == "malicious"]
    ben = [r for r in rows if r["label"] == "benign"]
    detected = sum(r["verdict"] == "fail" for r in mal)
    false_alarms = sum(r["verdict"] == "fail" for r in ben)
    return {
        "malicious": len(mal),
        "detected": detected,
        "detection_rate": detected / len(mal) if mal else None,
        "detection_ci95": wilson(detected, len(mal)),
        "malicious_errors": sum(r["verdict"] == "error" for r in mal),
        "benign": len(ben),
        "false_alarms": false_alarms,
        "false_alarm_rate": false_alarms / len(ben) if ben else None,
        "false_alarm_ci95": wilson(false_alarms, len(ben)),
        "benign_errors": sum(r["verdict"] == "error" for r in ben),
        "unscored": sum(r["label"] not in ("malicious", "benign") for r in rows),
    }


def score(rows: list[dict[str, Any]], manifest: dict[str, dict[str, str]], mirror: Path) -> dict[str, Any]:
    """Join store rows with the manifest; rates overall, per set, per variant kind and per set x kind."""
    joined = []
    for row in rows:
        rel = Path(row["source"]).resolve().relative_to(mirror.resolve()).as_posix()
        joined.append({**row, **manifest[rel], "rel": rel})
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in joined:
        groups["all"].append(r)
        groups[f"set={r['set']}"].append(r)
        groups[f"variant={r['variant']}"].append(r)
        groups[f"{r['set']}/{r['variant']}"].append(r)
    missed = sorted(r["rel"] for r in joined if r["label"] == "malicious" and r["verdict"] != "fail")
    alarms = sorted(
        (r["rel"], r["max_severity"], json.loads(r["rule_ids"]) if isinstance(r["rule_ids"], str) else r["rule_ids"])
        for r in joined
        if r["label"] == "benign" and r["verdict"] == "fail"
    )
    return {
        "groups": {k: _cell(v) for k, v in sorted(groups.items())},
        "status": dict(Counter(r["status"] for r in joined)),
        "verdicts": dict(Counter(r["verdict"] for r in joined)),
        "errors": sorted((r["rel"], r["error"]) for r in joined if r["verdict"] == "error"),
        "missed_malicious": missed,
        "false_alarms": alarms,
        "scan_seconds_sum": sum(r["seconds"] or 0.0 for r in joined),
        "joined": len(joined),
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def print_table(result: dict[str, Any]) -> None:
    """One line per group."""
    head = (
        f"{'group':30} {'mal':>5} {'det':>5} {'rate':>7} {'95% CI':>15} {'ben':>5} {'FA':>4} {'FA rate':>8} {'err':>4}"
    )
    print(head)
    print("-" * len(head))
    for name, c in result["groups"].items():
        lo, hi = c["detection_ci95"]
        ci = f"{100 * lo:.1f}-{100 * hi:.1f}" if c["malicious"] else "-"
        errors = c["malicious_errors"] + c["benign_errors"]
        print(
            f"{name:30} {c['malicious']:>5} {c['detected']:>5} {_pct(c['detection_rate']):>7} {ci:>15} "
            f"{c['benign']:>5} {c['false_alarms']:>4} {_pct(c['false_alarm_rate']):>8} {errors:>4}"
        )


def _dynamic_sample(mirror: Path, manifest: dict[str, dict[str, str]], n: int, db: Path, workers: int) -> Any:
    """Bulk-scan ``n`` original pickles (half malicious when possible) with ``--dynamic-only``: the sandboxed analysis
    alone (no static findings), scored like the static run."""
    rng = random.Random(0)
    picks: list[str] = []
    for label in ("malicious", "benign"):
        pool = sorted(
            rel
            for rel, m in manifest.items()
            if m["variant"] == "original" and m["label"] == label and rel.endswith((".pkl", ".pickle"))
        )
        picks += rng.sample(pool, min(len(pool), n // 2))
    listing = db.with_suffix(".txt")
    listing.write_text("".join(f"{mirror / rel}\n" for rel in picks), encoding="utf-8")
    wall, code, err = run_bulk([f"@{listing}"], db, workers, ["--dynamic-only"])
    rows = read_rows(db)
    return {
        "files": len(picks),
        "wall_seconds": wall,
        "exit_code": code,
        "stderr_tail": err[-500:],
        "score": score(rows, manifest, mirror),
    }


def main(argv: list[str] | None = None) -> int:
    """Build the mirror, bulk-scan it, score it, print and save."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--mirror", type=Path, default=Path("/tmp/mlwarden-mirror"))
    ap.add_argument("--thirdparty", type=Path, default=Path("/work/thirdparty"), help="folder with labels.json")
    ap.add_argument("--no-thirdparty", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dynamic-sample", type=int, default=0, metavar="N", help="also bulk-scan N pickles, dynamic only")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    mirror = args.mirror.resolve()
    if mirror == REPO or REPO in mirror.parents:
        ap.error("--mirror must be outside the repository (third-party files are never committed)")
    thirdparty = None if args.no_thirdparty else args.thirdparty
    t0 = time.monotonic()
    manifest = build_mirror(mirror, thirdparty)
    build_seconds = time.monotonic() - t0
    (mirror.parent / f"{mirror.name}-manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    total_bytes = sum((mirror / rel).stat().st_size for rel in manifest)
    print(f"mirror: {len(manifest)} artifacts, {total_bytes / 1e6:.1f} MB in {mirror} ({build_seconds:.1f} s)")
    db = mirror.parent / f"{mirror.name}-results.db"
    wall, code, err = run_bulk([str(mirror)], db, args.workers, [])
    rows = read_rows(db)
    result = score(rows, manifest, mirror)
    print(
        f"bulk scan: exit {code}, {len(rows)} rows in {wall:.1f} s ({len(rows) / wall:.1f} artifacts/s, "
        f"{total_bytes / 1e6 / wall:.2f} MB/s)"
    )
    print_table(result)
    payload: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "benchmarks/moat_eval.py", *(argv or sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "mirror": str(mirror),
        "artifacts": len(manifest),
        "bytes": total_bytes,
        "by_set_and_variant": dict(Counter(f"{m['set']}/{m['variant']}" for m in manifest.values())),
        "labels": dict(Counter(m["label"] for m in manifest.values())),
        "bulk": {
            "workers": args.workers,
            "backend": "process",
            "modes": "static",
            "wall_seconds": wall,
            "exit_code": code,
            "rows": len(rows),
            "artifacts_per_second": len(rows) / wall,
            "mb_per_second": total_bytes / 1e6 / wall,
            "stderr_tail": err[-500:],
        },
        "static": result,
    }
    if args.dynamic_sample:
        dyn = _dynamic_sample(
            mirror, manifest, args.dynamic_sample, mirror.parent / f"{mirror.name}-dyn.db", args.workers
        )
        payload["dynamic_sample"] = dyn
        print(f"\ndynamic sample: {dyn['files']} pickles in {dyn['wall_seconds']:.1f} s, exit {dyn['exit_code']}")
        print_table({"groups": {k: v for k, v in dyn["score"]["groups"].items() if k in ("all",)}})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1, default=list), encoding="utf-8")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
