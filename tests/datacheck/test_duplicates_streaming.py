"""Duplicates with conflicting labels are found exactly; results do not depend on the chunk size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlwarden.datacheck import CheckOptions, check_dataset

from .builders import flipped_classification


def test_duplicates_and_conflicting_labels_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = pd.DataFrame(rng.normal(size=(200, 5)), columns=list("abcde"))
    base["label"] = rng.integers(0, 2, 200)
    base["id"] = [f"row-{i:06d}-{rng.integers(10**9)}" for i in range(200)]  # identifiers differ between copies
    extra = [base.iloc[5].copy(), base.iloc[7].copy(), base.iloc[9].copy(), base.iloc[9].copy(), base.iloc[10].copy()]
    extra[1]["label"] = 1 - extra[1]["label"]  # copy of row 7 with the other label
    extra[3]["label"] = 1 - extra[3]["label"]  # one of two copies of row 9 with the other label
    extra[4]["a"] += 1e-12  # a near, not exact, copy of row 10
    for i, row in enumerate(extra):
        row["id"] = f"copy-{i}"
    frame = pd.concat([base, pd.DataFrame(extra)], ignore_index=True)
    frame.to_csv(tmp_path / "d.csv", index=False)
    result = check_dataset(tmp_path / "d.csv", CheckOptions(label="label", checks=("duplicates",))).check("duplicates")
    exact = result.metrics["exact"]
    assert exact["duplicate_rows"]["count"] == 4
    assert exact["groups"] == 3
    assert exact["conflicting_label_groups"] == 2
    assert exact["conflicting_label_rows"]["count"] == 5
    assert result.metrics["near_only_rows"]["count"] == 1
    conflicting = sorted(s["rows"] for s in result.samples if s["conflicting"])
    assert conflicting == [[7, 201], [9, 202, 203]]
    assert "id" not in result.metrics["key_columns"]


def _numbers(report: Any) -> list[dict[str, Any]]:
    out = []
    for check in report.to_dict()["checks"]:
        check.pop("seconds")
        check["metrics"].pop("mb_per_second", None)
        out.append(check)
    return out


def test_streaming_small_chunks_give_the_same_report(tmp_path: Path) -> None:
    frame, _ = flipped_classification(n=3000, seed=11)
    frame["note"] = [
        f"call +44 20 7946 {i:04d} now" if i % 50 == 0 else "nothing to see here today" for i in range(3000)
    ]
    frame["city"] = np.random.default_rng(1).choice(["Oslo", "Lima"], 3000)
    frame = pd.concat([frame, frame.iloc[:30]], ignore_index=True)
    frame.to_csv(tmp_path / "d.csv", index=False)
    options = {"label": "label", "max_model_rows": 1500}
    big = check_dataset(tmp_path / "d.csv", CheckOptions(chunk_rows=50_000, **options))  # type: ignore[arg-type]
    small = check_dataset(tmp_path / "d.csv", CheckOptions(chunk_rows=257, **options))  # type: ignore[arg-type]
    assert big.dataset.rows == 3030 > 257
    assert _numbers(big) == _numbers(small)
    assert big.check("pii").metrics["matches"] == {"phone": 61}
    assert big.check("duplicates").metrics["exact"]["duplicate_rows"]["count"] == 30
    assert big.check("label_issues").rows == 1500


def test_other_formats(tmp_path: Path) -> None:
    frame, _ = flipped_classification(n=600, seed=2)
    frame["note"] = [
        f"mail person{i}@example.org soon please" if i % 4 == 0 else "no contact given here" for i in range(600)
    ]
    frame.to_parquet(tmp_path / "d.parquet")
    frame.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    numeric = frame.drop(columns=["note"])
    np.save(tmp_path / "d.npy", numeric.to_numpy())
    np.savez(tmp_path / "d.npz", X=numeric.drop(columns=["label"]).to_numpy(), y=numeric["label"].to_numpy())
    checks = ("pii", "class_balance", "duplicates")
    for name in ("d.parquet", "d.jsonl"):
        report = check_dataset(tmp_path / name, CheckOptions(label="label", checks=checks))
        assert report.dataset.rows == 600
        assert report.check("pii").metrics["matches"] == {"email": 150}
    npy = check_dataset(tmp_path / "d.npy", CheckOptions(label="12", checks=checks))
    npz = check_dataset(tmp_path / "d.npz", CheckOptions(label="y", checks=checks))
    assert npy.check("class_balance").metrics["classes"] == npz.check("class_balance").metrics["classes"] == 2


def test_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, level in (("cat", 40), ("dog", 200)):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(30):
            pixels = np.clip(rng.normal(level, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "img" / cls / f"{i}.png")
    Image.open(tmp_path / "img" / "cat" / "3.png").save(tmp_path / "img" / "dog" / "copy-of-cat-3.png")
    report = check_dataset(tmp_path / "img", CheckOptions(folds=3))
    assert report.dataset.rows == 61
    dup = report.check("duplicates")
    assert dup.metrics["exact"]["conflicting_label_groups"] == 1
    assert report.check("label_issues").metrics["issues"]["count"] >= 1
