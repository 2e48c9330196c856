"""The prompt-injection screen on a public labelled set: detection rate and false-positive rate.

The set is not in the repository (it is fetched by whoever runs this): deepset/prompt-injections
(https://huggingface.co/datasets/deepset/prompt-injections, Apache-2.0), 662 prompts — 546 train and 116 test —
labelled 1 (injection) or 0 (benign), mostly English with some German. Any copy of its two Parquet files works,
e.g. the one in github.com/sinanw/llm-security-prompt-injection under ``data/raw/``.

    python benchmarks/prompt_screen.py TRAIN.parquet TEST.parquet [--classifier]

Prints, per split and overall, the share of injections the screen flags (detection, with a Wilson 95 % interval)
and the share of benign prompts it flags (false positives), at the screen's own threshold; and the same at a few
other thresholds, so the trade-off is visible. With ``--classifier`` it also trains a logistic regression on the
*first* file's prompts over the model screen's hashed character n-grams, exports it as an ONNX graph, loads it
through the LLM proxy's ``OnnxScreen`` (scanned like any model) and reports it, and the heuristic and model screens
combined, on the other files (held out). Measures and prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mlwarden.datacheck.model import wilson
from mlwarden.guard.prompt_screen import HeuristicScreen


def _rate(hit: int, total: int) -> str:
    low, high = wilson(hit, total)
    return f"{hit}/{total} = {100 * hit / max(total, 1):.1f} % (95 % CI {100 * low:.1f}–{100 * high:.1f} %)"


def _onnx_logistic(weights: np.ndarray, bias: float, path: Path) -> None:
    """``sigmoid(x @ w + b)`` as an ONNX graph: one float input [N, D], one output [N, 1]."""
    from onnx import TensorProto, helper, numpy_helper, save

    dim = weights.shape[0]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["z0"]),
            helper.make_node("Add", ["z0", "b"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["p"]),
        ],
        "prompt_screen",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", dim])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 1])],
        [
            numpy_helper.from_array(weights.reshape(dim, 1).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([bias], dtype=np.float32), "b"),
        ],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def classifier(rows: list[tuple[str, str, int, float]], train_file: str, dim: int = 4096) -> None:
    """Train on ``train_file``'s prompts, evaluate the ONNX screen on the rest (see the module docstring)."""
    import tempfile

    from sklearn.linear_model import LogisticRegression

    from mlwarden.serve.proxy.model_screen import OnnxScreen, hashed_ngrams

    train = [r for r in rows if r[0] == train_file]
    held = [r for r in rows if r[0] != train_file]
    x = np.stack([hashed_ngrams(r[1], dim) for r in train])
    model = LogisticRegression(C=10.0, max_iter=2000, class_weight="balanced").fit(x, [r[2] for r in train])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "screen.onnx"
        _onnx_logistic(model.coef_[0], float(model.intercept_[0]), path)
        screen = OnnxScreen(path)
        scores = [screen.score(r[1]) for r in held]
    attacks = [(r, s) for r, s in zip(held, scores, strict=True) if r[2] == 1]
    benign = [(r, s) for r, s in zip(held, scores, strict=True) if r[2] == 0]
    threshold = HeuristicScreen().config.threshold
    print(f"\nONNX logistic regression ({dim} hashed n-gram features), trained on {train_file} ({len(train)} prompts),")
    print(f"held out: {len(attacks)} injections, {len(benign)} benign; threshold 0.5")
    print(f"  model: detected        {_rate(sum(s >= 0.5 for _, s in attacks), len(attacks))}")
    print(f"  model: false positives {_rate(sum(s >= 0.5 for _, s in benign), len(benign))}")
    both_a = sum(s >= 0.5 or r[3] >= threshold for r, s in attacks)
    both_b = sum(s >= 0.5 or r[3] >= threshold for r, s in benign)
    print(f"  heuristic or model: detected        {_rate(both_a, len(attacks))}")
    print(f"  heuristic or model: false positives {_rate(both_b, len(benign))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="Parquet files with `text` and `label` columns")
    parser.add_argument("--classifier", action="store_true", help="also train and measure an ONNX model screen")
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
    if args.classifier:
        classifier(rows, args.files[0].name)


if __name__ == "__main__":
    main()
