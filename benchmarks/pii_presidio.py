"""The optional Presidio engine against the built-in personal-data scan, on the same texts.

Both scanners (``PresidioScan`` without a spaCy model, i.e. Presidio's pattern recognizers, and ``PiiScan``) run
over the two texts of ``benchmarks/datacheck.py`` — prose with a UK phone number in every 50th cell, and
number-heavy prose with personal data in 3.5 % of cells — in 50,000-row chunks of ``--mb`` MB. Prints MB/s of CPU
and wall time, the ratio, and the matches per type of each (the four types both know must agree); building
Presidio's analyzer is timed apart. Writes ``bench-out/pii_presidio.json``; no asserts (benchmarks are not tests).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from datacheck import dense, prose  # benchmarks/datacheck.py: run as a script, its folder is on sys.path

OUT = Path(__file__).resolve().parents[1] / "bench-out"


def timed(scan: object, notes: list[str]) -> dict[str, object]:
    """Feed ``notes`` to ``scan`` in chunks; CPU and wall seconds, MB/s and the matches per type."""
    frame = pd.DataFrame({"note": pd.Series(notes, dtype="str")})
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(notes), 50_000):
        scan.add(frame.iloc[start : start + 50_000])  # type: ignore[attr-defined]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    mb = scan.bytes / 1e6  # type: ignore[attr-defined]
    matches = scan.metrics()["matches"]  # type: ignore[attr-defined]
    return {"mb": mb, "wall_s": wall, "cpu_s": cpu, "mb_per_s_wall": mb / wall, "mb_per_s_cpu": mb / cpu,
            "matches": matches}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=0.5, help="MB of each text (Presidio runs at ~0.1 MB/s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from mlwarden.datacheck.pii_scan import PiiScan
    from mlwarden.datacheck.presidio import PresidioScan

    results: dict[str, object] = {}
    for name, make in (("prose", prose), ("dense", dense)):
        notes = make(int(args.mb * 1e6 / 75), args.seed)
        builtin = timed(PiiScan(["note"]), notes)
        presidio_scan = PresidioScan(["note"])
        presidio = timed(presidio_scan, notes)
        presidio["analyzer_build_s"] = presidio_scan.build_seconds
        ratio = builtin["mb_per_s_cpu"] / presidio["mb_per_s_cpu"]  # type: ignore[operator]
        results[name] = {"builtin": builtin, "presidio": presidio, "cpu_ratio": ratio}
        for engine, r in (("builtin", builtin), ("presidio", presidio)):
            print(f"{name:6} {engine:9} {r['mb']:.2f} MB  {r['mb_per_s_cpu']:8.3f} MB/s CPU  "
                  f"{r['mb_per_s_wall']:8.3f} MB/s wall  {r['matches']}")  # fmt: skip
        print(f"{name:6} builtin / presidio (CPU): {ratio:.0f}x; analyzer build {presidio_scan.build_seconds:.2f} s")
    OUT.mkdir(exist_ok=True)
    (OUT / "pii_presidio.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
