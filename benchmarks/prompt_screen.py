"""The prompt-injection screen on a public labelled set: detection rate and false-positive rate.

The set is not in the repository (it is fetched by whoever runs this): deepset/prompt-injections
(https://huggingface.co/datasets/deepset/prompt-injections, Apache-2.0), 662 prompts — 546 train and 116 test —
labelled 1 (injection) or 0 (benign), mostly English with some German. Any copy of its two Parquet files works,
e.g. the one in github.com/sinanw/llm-security-prompt-injection under ``data/raw/``.

    python benchmarks/prompt_screen.py TRAIN.parquet TEST.parquet [--threshold T]

Prints, per split and overall, the share of injections the screen flags (detection, with a Wilson 95 % interval)
and the share of benign prompts it flags (false positives), at the screen's own threshold; and the same at a few
other thresholds, so the trade-off is visible. Measures and prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyarrow.parquet as pq

from mlwarden.datacheck.model import wilson
from mlwarden.guard.prompt_screen import HeuristicScreen


def _rate(hit: int, total: int) -> str:
    low, high = wilson(hit, total)
    return f"{hit}/{total} = {100 * hit / max(total, 1):.1f} % (95 % CI {100 * low:.1f}–{100 * high:.1f} %)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="Parquet files with `text` and `label` columns")
    args = parser.parse_args()
    screen = HeuristicScreen()
    rows: list[tuple[str, str, int, float]] = []
    started = time.perf_counter()
    for path in args.files:
        table = pq.read_table(path, columns=["text", "label"]).to_pylist()
        for row in table:
            result = screen.screen(str(row["text"]))
            rows.append((path.name, str(row["text"]), int(row["label"]), float(result.score)))
    seconds = time.perf_counter() - started
    threshold = screen.config.threshold
    print(f"{len(rows)} prompts screened in {seconds:.2f} s ({1000 * seconds / max(len(rows), 1):.2f} ms each)")
    for name in [*sorted({r[0] for r in rows}), "all"]:
        part = [r for r in rows if name in ("all", r[0])]
        attacks = [r for r in part if r[2] == 1]
        benign = [r for r in part if r[2] == 0]
        print(f"\n{name}: {len(attacks)} injections, {len(benign)} benign; threshold {threshold}")
        print(f"  detected         {_rate(sum(r[3] >= threshold for r in attacks), len(attacks))}")
        print(f"  false positives  {_rate(sum(r[3] >= threshold for r in benign), len(benign))}")
    print("\nall, other thresholds (detection / false positives):")
    attacks = [r for r in rows if r[2] == 1]
    benign = [r for r in rows if r[2] == 0]
    for t in (0.3, 0.5, 0.7, 0.9):
        det = sum(r[3] >= t for r in attacks) / max(len(attacks), 1)
        fp = sum(r[3] >= t for r in benign) / max(len(benign), 1)
        print(f"  {t:.1f}: {100 * det:.1f} % / {100 * fp:.1f} %")


if __name__ == "__main__":
    main()
