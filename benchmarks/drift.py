"""Batch drift: ``mlwarden monitor drift`` against Evidently and alibi-detect on the same tables, same run.

Each tool runs as its own process, imports included (that is what a user waits for), on generated
100,000-row x 20-column CSVs (18 numeric, 2 categorical): a current table without drift and one with a shift in
one numeric and one categorical column. Verdicts are compared per feature, with every tool set to the same
tests — two-sample KS for numeric columns, chi-squared for categorical ones, Bonferroni across features at
alpha 0.05 (alibi-detect's ``TabularDrift`` computes these p-values; its per-feature ``is_drift`` is not corrected,
so its p-values are compared with 0.05 / 20 here; Evidently gets ``num_method="ks"``,
``cat_method="chisquare"`` and the Bonferroni per-column threshold). mlwarden is timed twice: with those two tests
(like for like) and with its default set (KS, PSI, chi-squared and MMD).

Each run reports wall time and CPU time (user + system of the child process, ``RUSAGE_CHILDREN``): the wall
time is what a user waits for, the CPU time is what the tool costs, and on a shared 2-core machine it is also the
steadier of the two. mlwarden uses both cores (pyarrow reads in parallel, the drift modules import on a second
thread, features are tested in parallel threads); the peers mostly one.

Every tool runs once untimed first, and all run without ``PYTHONDONTWRITEBYTECODE`` (set on the development
machine), so each imports compiled bytecode as an installed package does. mlwarden sets ``OPENBLAS_NUM_THREADS=1``
for itself (unless the environment sets it): its parallelism is per feature and in pyarrow's reader.

Peers live in their own venv (``make bench-drift-setup``: Evidently 0.7.23, alibi-detect 0.13). Prints a table
and ratios; measures, never asserts.

    python benchmarks/drift.py [--rows 100000] [--peers-python .venv-drift-peers/bin/python] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
ALPHA = 0.05

EVIDENTLY = r"""
import json, sys, pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset
ref, cur, threshold = pd.read_csv(sys.argv[1]), pd.read_csv(sys.argv[2]), float(sys.argv[3])
snap = Report([DataDriftPreset(num_method="ks", cat_method="chisquare", threshold=threshold)]).run(cur, ref)
out = {}
for m in snap.dict()["metrics"]:
    name = m["metric_name"]
    if name.startswith("ValueDrift(column="):
        col = name[len("ValueDrift(column="):].split(",")[0]
        out[col] = float(m["value"]) <= threshold   # the value is the p-value for ks and chi2
print(json.dumps(out))
"""

ALIBI = r"""
import json, sys, numpy as np, pandas as pd
from alibi_detect.cd import TabularDrift
ref, cur = pd.read_csv(sys.argv[1]), pd.read_csv(sys.argv[2])
cats = [c for c in ref.columns if ref[c].dtype == object]
for c in cats:
    levels = sorted(set(ref[c]) | set(cur[c]))
    ref[c] = pd.Categorical(ref[c], categories=levels).codes
    cur[c] = pd.Categorical(cur[c], categories=levels).codes
cols = list(ref.columns)
detector = TabularDrift(ref.to_numpy(np.float64), p_val=float(sys.argv[3]), correction="bonferroni",
                        categories_per_feature={cols.index(c): None for c in cats})
res = detector.predict(cur.to_numpy(np.float64), drift_type="feature")["data"]
# Per feature, alibi-detect compares each p-value with the uncorrected p_val (its Bonferroni applies to the
# batch-level decision only): the per-feature verdict at the corrected level is p <= p_val / features.
print(json.dumps({c: bool(p <= float(sys.argv[3]) / len(cols)) for c, p in zip(cols, res["p_val"])}))
"""


def make_tables(folder: Path, rows: int) -> tuple[Path, Path, Path]:
    """Reference, current without drift, current with a shifted ``x0`` and a re-weighted ``c0``."""

    def table(seed: int, shift: bool) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        data = {f"x{i}": rng.normal(0.0, 1.0 + 0.1 * i, rows) for i in range(18)}
        if shift:
            data["x0"] = data["x0"] + 0.1
        weights = [0.3, 0.3, 0.2, 0.2] if shift else [0.4, 0.3, 0.2, 0.1]
        data["c0"] = rng.choice(np.array(["a", "b", "c", "d"]), rows, p=weights)
        data["c1"] = rng.choice(np.array(["u", "v", "w"]), rows)
        return pd.DataFrame(data)

    paths = (folder / "reference.csv", folder / "current-same.csv", folder / "current-drift.csv")
    for path, (seed, shift) in zip(paths, ((1, False), (2, False), (3, True)), strict=True):
        table(seed, shift).to_csv(path, index=False)
    return paths


Times = tuple[float, float]  # wall seconds, CPU seconds


#: Every tool runs with the same environment: this one without ``PYTHONDONTWRITEBYTECODE``, so each uses compiled
#: bytecode as an installed package does (pip compiles on install: the peers' venv has a ``.pyc`` for every module;
#: mlwarden, installed editable here, writes its own during the warm-up run).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(cmd: list[str]) -> tuple[Times, str]:
    """Wall and CPU seconds and stdout of one process (exit 0 or 1: 1 is mlwarden's "drift found")."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=ENV)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{cmd[:3]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return (seconds, cpu), proc.stdout


def mlwarden_verdicts(ref: Path, cur: Path, tests: list[str]) -> tuple[Times, dict[str, bool]]:
    cmd = [sys.executable, "-m", "mlwarden.cli.main", "monitor", "drift", str(ref), str(cur), "-f", "json",
           "--tests", *tests]  # fmt: skip
    seconds, out = timed(cmd)
    doc = json.loads(out)
    verdicts: dict[str, bool] = {}
    for r in doc["results"]:
        if r["feature"] and r["test"] in ("ks", "chi2"):
            verdicts[r["feature"]] = verdicts.get(r["feature"], False) or r["drifted"]
    return seconds, verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--peers-python", default=str(ROOT / ".venv-drift-peers" / "bin" / "python"))
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool; the median time is reported")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ref, same, drift = make_tables(Path(tmp), args.rows)
        threshold = ALPHA / 20  # Bonferroni over the 20 columns, for Evidently's per-column test
        # One untimed run of each tool first: bytecode compiled and cached, files in the page cache, for all alike.
        mlwarden_verdicts(ref, same, ["ks", "psi", "chi2", "mmd"])
        for script, arg in ((EVIDENTLY, threshold), (ALIBI, ALPHA)):
            timed([args.peers_python, "-c", script, str(ref), str(same), str(arg)])
        rows = []
        for label, cur in (("no drift", same), ("drift in x0, c0", drift)):
            times: dict[str, list[Times]] = {}
            verdicts: dict[str, dict[str, bool]] = {}
            for _ in range(args.repeat):
                t, verdicts["mlwarden"] = mlwarden_verdicts(ref, cur, ["ks", "chi2"])
                times.setdefault("mlwarden (ks, chi2)", []).append(t)
                t, _ = mlwarden_verdicts(ref, cur, ["ks", "psi", "chi2", "mmd"])
                times.setdefault("mlwarden (default: ks, psi, chi2, mmd)", []).append(t)
                for name, script, arg in (("evidently", EVIDENTLY, threshold), ("alibi-detect", ALIBI, ALPHA)):
                    t, out = timed([args.peers_python, "-c", script, str(ref), str(cur), str(arg)])
                    times.setdefault(name, []).append(t)
                    verdicts[name] = json.loads(out.strip().splitlines()[-1])
            medians = {k: (float(np.median([t[0] for t in v])), float(np.median([t[1] for t in v])))
                       for k, v in times.items()}  # fmt: skip
            agree = {
                peer: sum(verdicts[peer].get(c) == v for c, v in verdicts["mlwarden"].items())
                for peer in ("evidently", "alibi-detect")
            }
            rows.append((label, medians, agree, len(verdicts["mlwarden"]), verdicts))
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    for label, medians, agree, n, verdicts in rows:
        print(f"\n{label}: {args.rows:,} rows x 20 columns, median of {args.repeat} run(s), imports included")
        print(f"  {'':<40} {'wall':>7}   {'CPU':>7}")
        for name, (wall, cpu) in medians.items():
            print(f"  {name:<40} {wall:7.2f} s {cpu:7.2f} s")
        for name in ("mlwarden (ks, chi2)", "mlwarden (default: ks, psi, chi2, mmd)"):
            ratios = [
                f"{kind} {medians[name][i] / medians['evidently'][i]:.3f}x Evidently's, "
                f"{medians[name][i] / medians['alibi-detect'][i]:.3f}x alibi-detect's"
                for i, kind in enumerate(("wall", "CPU"))
            ]
            print(f"  {name}: {'; '.join(ratios)}")
        print(f"  drifted per mlwarden: {sorted(c for c, v in verdicts['mlwarden'].items() if v)}")
        for peer, count in agree.items():
            print(f"  same per-feature verdict as {peer}: {count}/{n}")
    print(f"\nload average at the end (1, 5, 15 min): {load}; {os.cpu_count()} CPU(s)")


if __name__ == "__main__":
    main()
