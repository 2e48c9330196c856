"""Bulk scanning throughput: artifacts per second with 1 and 2 workers, Ray and the process pool, static and dynamic.

Measured on ``../shared/corpus/realworld`` (every file, static) and on a dynamic subset (``--dynamic-files`` ONNX
models of that corpus, one framework, so each batch uses one warm pool), each run into a fresh SQLite store
under ``bench-out/bulk/``:

* **local**: ``scan_paths`` in this process with ``jobs=1`` (no store, no workers): the reference.
* **ray N** / **process N**: ``run_bulk`` with N workers; Ray's start-up is timed apart (``ray.init``), the scan
  wall time is from planning to the last committed row.
* cost per artifact: worker-seconds per artifact (``wall * workers / n``) and the mean scan time the workers
  report (``FileResult.duration``), so the overhead of dispatch + store is their difference.
* store: committed single-row transactions per second (``ResultStore.record``) on SQLite and, when
  ``$MLWARDEN_TEST_POSTGRES_URL`` is set, PostgreSQL: the ceiling of one coordinator.

The machine has 2 cores shared with other work: differences under ~30 % are noise. Prints a table and writes
``bench-out/bulk_scan.json``; never asserts.

Run: ``.venv/bin/python benchmarks/bulk_scan.py [--rounds 1] [--dynamic-files 12] [--skip-ray]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from mlwarden.bulk import BulkOptions, ResultStore, run_bulk
from mlwarden.bulk.sources import WorkItem
from mlwarden.bulk.worker import error_row
from mlwarden.core.policy import Policy
from mlwarden.scan.engine import expand, scan_paths

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus" / "realworld"
OUT = REPO / "bench-out" / "bulk"


def _fresh(name: str) -> ResultStore:
    OUT.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{OUT / name}.db{suffix}").unlink(missing_ok=True)
    return ResultStore.open(str(OUT / f"{name}.db"))


def _bulk(label: str, sources: list[str], options: BulkOptions, backend: Any = None) -> dict[str, Any]:
    store = _fresh(label.replace(" ", "_"))
    t0 = time.monotonic()
    stats = run_bulk(sources, store, Policy(), options, backend=backend)
    wall = time.monotonic() - t0
    rows = store.rows()
    store.dispose()
    n = len(rows)
    return {
        "label": label,
        "artifacts": n,
        "wall_s": round(wall, 3),
        "per_s": round(n / wall, 2),
        "worker_s_per_artifact": round(wall * options.workers / n, 4),
        "scan_s_per_artifact": round(statistics.fmean(r["seconds"] for r in rows), 4),
        "statuses": dict(stats.counts),
    }


def _local(label: str, files: list[Path], modes: tuple[str, ...]) -> dict[str, Any]:
    t0 = time.monotonic()
    report = scan_paths(files, Policy(), jobs=1, modes=modes)
    wall = time.monotonic() - t0
    n = len(report.files)
    return {
        "label": label,
        "artifacts": n,
        "wall_s": round(wall, 3),
        "per_s": round(n / wall, 2),
        "worker_s_per_artifact": round(wall / n, 4),
        "scan_s_per_artifact": round(statistics.fmean(r.duration for r in report.files), 4),
        "statuses": {"done": n - len(report.errors), "failed": len(report.errors)},
    }


def _store_rate(url: str, rows: int = 500) -> float:
    store = ResultStore.open(url)
    run = store.begin_run(["bench"], ("static",), "bench", 1)
    t0 = time.monotonic()
    for i in range(rows):
        row = error_row(WorkItem(f"/bench/{i}", size=i, mtime_ns=i), "failed", "bench")
        store.record({**row, "digest": f"{i:064x}", "status": "done", "verdict": "pass"}, run)
    rate = rows / (time.monotonic() - t0)
    store.dispose()
    return round(rate, 1)


def _ray_runs(static: list[str], dynamic: list[str], workers: int) -> list[dict[str, Any]]:
    import ray

    from mlwarden.bulk.backends import RayBackend

    t0 = time.monotonic()
    backend = RayBackend(workers)
    out = [{"label": f"ray init {workers}", "wall_s": round(time.monotonic() - t0, 3)}]
    try:
        out.append(_bulk(f"ray {workers} static", static, BulkOptions(workers=workers), backend))
        if dynamic:
            options = BulkOptions(workers=workers, modes=("static", "dynamic"), batch_size=len(dynamic) // 2)
            out.append(_bulk(f"ray {workers} dynamic", dynamic, options, backend))
    finally:
        ray.shutdown()
    return out


def main() -> None:
    """Run every configuration and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--dynamic-files", type=int, default=12)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--pool-workers", default="1,2,4", help="process-pool worker counts (4 oversubscribes 2 cores)")
    args = parser.parse_args()
    files = expand([CORPUS])
    static = [str(f) for f in files]
    onnx = sorted(f for f in files if f.suffix == ".onnx" and "benign" in f.parts)[: args.dynamic_files]
    dyn_dir = OUT / "dynamic-subset"
    shutil.rmtree(dyn_dir, ignore_errors=True)
    dyn_dir.mkdir(parents=True)
    for f in onnx:
        shutil.copy(f, dyn_dir / f.name)
    dynamic = [str(dyn_dir)] if args.dynamic_files else []
    results: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        results.append(_local("local static jobs=1", files, ("static",)))
        for workers in (int(w) for w in args.pool_workers.split(",")):
            results.append(_bulk(f"process {workers} static", static, BulkOptions(backend="process", workers=workers)))
        if not args.skip_ray:
            for workers in (1, 2):
                results += _ray_runs(static, dynamic, workers)
        if dynamic:
            results.append(_local("local dynamic (warm pool)", sorted(dyn_dir.iterdir()), ("static", "dynamic")))
    stores = {"sqlite": _store_rate(f"sqlite:///{OUT / 'rate.db'}")}
    if os.environ.get("MLWARDEN_TEST_POSTGRES_URL"):
        stores["postgresql"] = _store_rate(os.environ["MLWARDEN_TEST_POSTGRES_URL"])
    print(f"{'run':<26} {'n':>4} {'wall s':>8} {'art/s':>7} {'worker-s/art':>13} {'scan s/art':>11}  statuses")
    for r in results:
        if "artifacts" not in r:
            print(f"{r['label']:<26} {'':>4} {r['wall_s']:>8}")
            continue
        print(
            f"{r['label']:<26} {r['artifacts']:>4} {r['wall_s']:>8} {r['per_s']:>7} {r['worker_s_per_artifact']:>13} "
            f"{r['scan_s_per_artifact']:>11}  {r['statuses']}"
        )
    print("store commits/s (one row per transaction):", stores)
    (REPO / "bench-out" / "bulk_scan.json").write_text(json.dumps({"runs": results, "store": stores}, indent=2))


if __name__ == "__main__":
    main()
