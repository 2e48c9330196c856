"""Many-small-files benchmark: 200 small benign models scanned by mlwarden and each peer.

The directory (generated once with the real libraries, seeded, cached in ``bench-out/small_models``)
holds 50 plain-data pickles (protocols 2-5), 30 scikit-learn estimator pickles, 60 PyTorch zip state
dicts and 60 ``.npy`` arrays. Here per-process start-up and per-file overhead dominate, not I/O.

Each tool scans the whole directory in one subprocess, five rounds with tools interleaved; medians
of wall time and peak RSS are printed with the ratios mlwarden/peer, plus ``mlwarden scan --jobs 2``.
All files are benign, so every *flagged* file is a false positive (listed).

Run: ``.venv/bin/python benchmarks/small_models.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peers import (
    MLW_PY,
    OUT,
    PEERS,
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

DIR = OUT / "small_models"
STAMP = DIR / ".complete-v1"
COUNTS = {"pickle": 50, "sklearn": 30, "torch": 60, "npy": 60}

_GENERATE = textwrap.dedent("""
    import pickle, sys
    from pathlib import Path
    import numpy as np, torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier
    out, counts = Path(sys.argv[1]), dict(kv.split("=") for kv in sys.argv[2:])
    rng = np.random.default_rng(7)
    torch.manual_seed(7)
    for i in range(int(counts["pickle"])):
        obj = {"name": f"model-{i}", "version": i, "weights": rng.standard_normal(16 + i).tolist(),
               "vocab": {f"tok{j}": j for j in range(20 + i)}, "shape": (i, i + 1)}
        (out / f"data_{i:03d}.pkl").write_bytes(pickle.dumps(obj, protocol=2 + i % 4))
    X, y = rng.standard_normal((60, 4)), rng.integers(0, 2, 60)
    for i in range(int(counts["sklearn"])):
        est = (LogisticRegression(C=1.0 + i) if i % 2 else DecisionTreeClassifier(max_depth=2 + i % 4))
        (out / f"sklearn_{i:03d}.pkl").write_bytes(pickle.dumps(est.fit(X, y), protocol=4 + i % 2))
    for i in range(int(counts["torch"])):
        width = 8 + 4 * (i % 16)
        net = torch.nn.Sequential(torch.nn.Linear(16, width), torch.nn.ReLU(), torch.nn.Linear(width, 4))
        torch.save(net.state_dict(), out / f"state_{i:03d}.pt")
    for i in range(int(counts["npy"])):
        arr = rng.standard_normal((8 + i, 1 + i % 8)).astype("float32" if i % 2 else "float64")
        np.save(out / f"array_{i:03d}.npy", arr)
""")


def ensure_models() -> list[Path]:
    """Generate the 200 models once (real numpy / scikit-learn / torch, seeded)."""
    if not STAMP.exists():
        DIR.mkdir(parents=True, exist_ok=True)
        print(f"generating {sum(COUNTS.values())} small models in {DIR} (once; cached) ...", flush=True)
        subprocess.run([str(MLW_PY), "-c", _GENERATE, str(DIR), *(f"{k}={v}" for k, v in COUNTS.items())], check=True)
        STAMP.touch()
    return sorted(p for p in DIR.iterdir() if p.is_file() and not p.name.startswith("."))


def main() -> int:
    """Scan the directory ``--rounds`` times per tool (interleaved) and print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    require_peers()
    versions = peer_versions()
    files = ensure_models()
    print(
        f"\n=== small models: {len(files)} files, {sum(f.stat().st_size for f in files) / 2**20:.1f} MiB "
        f"— {machine()} — {versions} ==="
    )
    names = (*TOOLS, "mlwarden CLI --jobs 2")
    runs: dict[str, list[Run]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for tool in TOOLS:
            runs[tool].append(run_tool(tool, files))
        runs["mlwarden CLI --jobs 2"].append(run_mlwarden_cli(files, jobs=2))
    med = {
        n: {
            "wall": statistics.median(r.wall for r in rs),
            "rss": statistics.median(r.rss_mb for r in rs),
            "scan": statistics.median(r.scan_seconds for r in rs),
        }
        for n, rs in runs.items()
    }
    m = med["mlwarden"]
    rows = []
    for name in names:
        last = runs[name][-1]
        flagged = [Path(r["path"]).name for r in last.rows if r["flagged"]]
        errors = [Path(r["path"]).name for r in last.rows if r["error"]]
        skipped = sum(bool(r["skipped"]) for r in last.rows)
        peer = name in PEERS
        rows.append(
            [
                name,
                f"{len(flagged)}/{len(files)}",
                len(errors),
                skipped,
                f"{med[name]['wall']:.2f}",
                f"{med[name]['scan']:.2f}",
                f"{med[name]['rss']:.0f}",
                ratio(m["wall"], med[name]["wall"]) if peer else "",
                ratio(m["rss"], med[name]["rss"]) if peer else "",
            ]
        )
    print(
        table(
            [
                "tool",
                "flagged (all benign)",
                "errors",
                "skipped",
                "wall s (median)",
                "scan s",
                "peak RSS MiB",
                "mlw/peer wall",
                "mlw/peer RSS",
            ],
            rows,
        )
    )
    for name in names:
        last = runs[name][-1]
        fps = sorted({(Path(r["path"]).name.split("_")[0], r["detail"]) for r in last.rows if r["flagged"]})
        errs = [f"{Path(r['path']).name}: {r['error']}" for r in last.rows if r["error"]]
        if fps:
            kinds = sorted({k for k, _ in fps})
            print(
                f"  {name} flags {sum(r['flagged'] for r in last.rows)} benign files, kind(s) {kinds}, "
                f"e.g. {fps[0][1][:150]!r}"
            )
        if errs:
            print(f"  {name} errors ({len(errs)}), e.g. {errs[0][:200]}")
        if last.returncode not in (0, 1):
            print(f"  ! {name} exited {last.returncode}: {last.stderr_tail[-300:]}")
    payload: dict[str, Any] = {
        "machine": machine(),
        "versions": versions,
        "dir": str(DIR),
        "files": len(files),
        "counts": COUNTS,
        "rounds": args.rounds,
        "median": med,
        "runs": runs,
    }
    print(f"raw numbers: {save('small_models', payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
