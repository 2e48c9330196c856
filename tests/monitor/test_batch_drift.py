"""Batch drift (`mlwarden monitor drift`): the guard's tests over two whole tables, per feature and overall."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mlwarden.cli.main import main
from mlwarden.core.errors import UsageError
from mlwarden.monitor.batch import compare
from mlwarden.monitor.drift import DriftConfig, ks_two_sample
from mlwarden.monitor.tables import read_table


def _table(
    rng: np.random.Generator, n: int, *, shift: float = 0.0, weights: tuple[float, ...] = (0.5, 0.3, 0.2)
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "a": rng.normal(shift, 1.0, n),
            "b": rng.exponential(2.0, n),
            "c": rng.integers(0, 5, n),  # integer-valued: ties
            "colour": rng.choice(np.array(["red", "green", "blue"]), n, p=weights),
        }
    )


@pytest.fixture
def tables(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(7)
    paths = {}
    for name, frame in {
        "ref": _table(rng, 4000),
        "same": _table(rng, 3000),
        "shifted": _table(rng, 3000, shift=0.3, weights=(0.3, 0.3, 0.4)),
    }.items():
        paths[name] = tmp_path / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    return paths


@pytest.mark.parametrize(("n1", "n2"), [(50, 80), (3000, 9000), (12_000, 15_000), (20_000, 11_000)])
def test_ks_two_sample_equals_scipy(n1: int, n2: int) -> None:
    rng = np.random.default_rng(n1)
    a = np.sort(np.round(rng.normal(0, 1, n1), 2))  # rounded: ties across samples
    b = np.sort(np.round(rng.normal(0.05, 1, n2), 2))
    d, p = ks_two_sample(a, b)
    ref = stats.ks_2samp(a, b)
    assert d == pytest.approx(float(ref.statistic), abs=1e-12)
    assert p == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-300)


def test_same_distribution_is_not_drift_and_a_shift_is_found_where_it_is(tables: dict[str, Path]) -> None:
    ref = read_table(tables["ref"])
    quiet = compare(ref, read_table(tables["same"]))
    assert not quiet.drifted, [r for r in quiet.results if r.drifted]
    moved = compare(ref, read_table(tables["shifted"]))
    assert moved.drifted
    assert set(moved.drifted_features) == {"a", "colour"}
    by = {(r.test, r.feature): r for r in moved.results}
    assert by[("ks", "a")].drifted
    assert not by[("ks", "b")].drifted
    assert not by[("ks", "c")].drifted
    assert by[("chi2", "colour")].drifted
    assert by[("mmd", None)].drifted  # the joint test sees the shift of `a` too


def test_p_values_are_scipys_on_the_whole_tables_and_bonferroni_is_across_features(tables: dict[str, Path]) -> None:
    ref, cur = pd.read_csv(tables["ref"]), pd.read_csv(tables["shifted"])
    report = compare(read_table(tables["ref"]), read_table(tables["shifted"]))
    ks = {r.feature: r for r in report.results if r.test == "ks"}
    for col in ("a", "b", "c"):
        expected = stats.ks_2samp(ref[col], cur[col])
        assert ks[col].p_value == pytest.approx(float(expected.pvalue), rel=1e-9, abs=1e-300)
        assert ks[col].threshold == pytest.approx(0.05 / 3)
    levels = sorted(set(ref["colour"]))
    table = np.array([[np.sum(ref["colour"] == v) for v in levels], [np.sum(cur["colour"] == v) for v in levels]])
    chi = next(r for r in report.results if r.test == "chi2")
    assert chi.p_value == pytest.approx(float(stats.chi2_contingency(table, correction=False).pvalue), rel=1e-9)


def test_missing_values_are_tested_on_what_is_there_and_their_share_is_a_feature(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ref = pd.DataFrame({"x": rng.normal(0, 1, 2000)})
    cur = pd.DataFrame({"x": rng.normal(0, 1, 2000)})
    cur.loc[rng.choice(2000, 600, replace=False), "x"] = np.nan  # 30 % missing now, none before
    ref.to_csv(tmp_path / "r.csv", index=False)
    cur.to_csv(tmp_path / "c.csv", index=False)
    report = compare(read_table(tmp_path / "r.csv"), read_table(tmp_path / "c.csv"))
    assert report.missing["x"] == (0.0, pytest.approx(0.3))
    ks = next(r for r in report.results if r.test == "ks")
    assert "2000 reference vs 1400 current" in ks.detail
    assert not ks.drifted
    assert report.drifted_features == ["x.missing"]


def test_an_unseen_category_is_drift_and_named(tmp_path: Path) -> None:
    ref = pd.DataFrame({"country": ["fr", "de", "it"] * 400})
    cur = pd.DataFrame({"country": ["fr", "de", "it"] * 350 + ["xx"] * 150})
    ref.to_csv(tmp_path / "r.csv", index=False)
    cur.to_csv(tmp_path / "c.csv", index=False)
    report = compare(read_table(tmp_path / "r.csv"), read_table(tmp_path / "c.csv"))
    (chi,) = report.results
    assert chi.drifted
    assert "'xx'" in chi.detail
    assert "150 value(s) not among the baseline's categories" in chi.detail


def test_bad_tables_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x,y\n1,2\n3,4\n")
    (tmp_path / "b.csv").write_text("x,z\n1,2\n3,4\n")
    (tmp_path / "empty.csv").write_text("x,y\n")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(UsageError, match="only in the reference \\['y'\\], only in the current data \\['z'\\]"):
        compare(read_table(tmp_path / "a.csv"), read_table(tmp_path / "b.csv"))
    with pytest.raises(UsageError, match="no rows"):
        read_table(tmp_path / "empty.csv")
    with pytest.raises(UsageError, match="cannot read it as a table"):
        read_table(tmp_path / "bad.parquet")
    with pytest.raises(UsageError, match="more than --max-rows 1"):
        read_table(tmp_path / "a.csv", max_rows=1)
    with pytest.raises(UsageError, match="no column"):
        read_table(tmp_path / "a.csv", columns=["nope"])
    obj = np.array([{"a": 1}], dtype=object)
    np.save(tmp_path / "obj.npy", obj, allow_pickle=True)
    with pytest.raises(UsageError, match="cannot read it as a table"):
        read_table(tmp_path / "obj.npy")  # object arrays are never unpickled


def test_parquet_jsonl_and_npy_read_like_csv(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"0": rng.normal(0, 1, 300), "1": rng.normal(0, 1, 300)})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    frame.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    np.save(tmp_path / "t.npy", frame.to_numpy())
    tables = [read_table(tmp_path / f"t.{ext}") for ext in ("csv", "parquet", "jsonl", "npy")]
    for t in tables:
        assert t.rows == 300
        assert set(t.numeric) == {"0", "1"}
        np.testing.assert_allclose(t.numeric["0"], tables[0].numeric["0"])


def test_cli_exit_codes_formats_and_escaping(
    tables: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["monitor", "drift", str(tables["ref"]), str(tables["same"])]) == 0
    assert "drift: no" in capsys.readouterr().out
    assert main(["monitor", "drift", str(tables["ref"]), str(tables["shifted"]), "-f", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["drifted"]
    assert doc["drifted_features"] == ["a", "colour"]
    assert doc["share_drifted"] == 0.5
    evil = tmp_path / "evil.csv"
    pd.DataFrame({"<script>alert(1)</script>": np.arange(100.0)}).to_csv(evil, index=False)
    out = tmp_path / "r.html"
    assert main(["monitor", "drift", str(evil), str(evil), "-f", "html", "-o", str(out)]) == 0
    page = out.read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "<svg" in page
    assert "No drift detected" in page
    assert main(["monitor", "drift", str(tables["ref"]), str(tmp_path / "missing.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["monitor", "drift", str(tables["ref"]), str(tables["same"]), "--alpha", "2"]) == 2


def test_correction_and_test_choice_change_the_verdict_as_configured(tables: dict[str, Path]) -> None:
    ref, cur = read_table(tables["ref"]), read_table(tables["shifted"])
    only_psi = compare(ref, cur, DriftConfig(tests=("psi",)))
    assert {r.test for r in only_psi.results} == {"psi"}
    none = compare(ref, cur, DriftConfig(tests=("ks",), correction="none"))
    assert all(r.threshold == 0.05 for r in none.results)


def _categorical_columns(rng: np.random.Generator, n: int, *, extra: tuple[str, ...] = ()) -> np.ndarray:
    """Many categories (more than batch drift keeps), count ties, and long values equal after truncation."""
    long_a, long_b = "L" * 300 + "a", "L" * 300 + "b"  # the same first 256 characters
    common = [f"v{i}" for i in range(1_200)] + [long_a, long_b, "<missing>", *extra]
    weights = np.r_[np.full(40, 30.0), np.ones(len(common) - 40)]
    return rng.choice(np.array(common), n, p=weights / weights.sum())


def test_counted_categories_give_the_profile_and_chi2_of_the_string_path() -> None:
    from mlwarden.monitor.baseline import Baseline
    from mlwarden.monitor.batch import _baseline_config, _categorical_profile
    from mlwarden.monitor.drift import DriftDetector
    from mlwarden.monitor.tables import Table

    rng = np.random.default_rng(5)
    ref_col = _categorical_columns(rng, 30_000)
    cur_col = _categorical_columns(rng, 20_000, extra=("new-1", "new-2"))  # unseen values too
    cfg = _baseline_config(ref_col.size)
    by_strings = Baseline.from_reference({"k": ref_col}, categorical=["k"], config=cfg)
    ref_table = Table("r", ref_col.size, {}, {"k": ref_col})
    (profile,) = by_strings.features
    assert _categorical_profile("k", ref_table.value_counts("k"), ref_col.size, cfg) == profile
    assert profile.other_count > 0  # more categories than kept: the "other" bucket is exercised
    chi = DriftConfig(tests=("chi2",), min_window=2)
    detector = DriftDetector(by_strings, chi)
    counts = Table("c", cur_col.size, {}, {"k": cur_col}).value_counts("k")
    assert detector.check_counts({"k": (list(counts), list(counts.values()))}) == detector.check({"k": cur_col})


def test_csv_strings_come_dictionary_encoded_and_equal_pandas_across_blocks(tmp_path: Path) -> None:
    # ~3 MB: pyarrow reads it in several blocks, each with its own dictionary (values first seen in other orders).
    rng = np.random.default_rng(9)
    n = 120_000
    frame = pd.DataFrame(
        {
            "colour": np.r_[np.repeat(["blue", "red"], 1_000), rng.choice(["red", "green", "blue", "teal"], n - 2_000)],
            "count": rng.integers(-5, 50, n),
            "x": rng.normal(0, 1, n),
            "y": rng.normal(0, 1, n),
        }
    )
    frame.loc[rng.choice(n, 500, replace=False), "x"] = np.nan
    frame.loc[rng.choice(n, 300, replace=False), "colour"] = None
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    table = read_table(path)
    assert sorted(table.numeric) == ["count", "x", "y"]
    np.testing.assert_array_equal(table.numeric["count"], frame["count"].to_numpy(np.float64))
    np.testing.assert_array_equal(table.numeric["x"], frame["x"].to_numpy())  # NaN where missing
    expected = frame["colour"].fillna("").to_numpy(str)  # an empty CSV field of a string column is the value ""
    np.testing.assert_array_equal(table.categorical["colour"], expected)
    values, counts = np.unique(expected, return_counts=True)
    assert table.value_counts("colour") == dict(zip(values.tolist(), counts.tolist(), strict=True))
    only = read_table(path, columns=["y", "colour"])
    assert (sorted(only.numeric), sorted(only.categorical), sorted(only.codes)) == (["y"], ["colour"], ["colour"])
    frame.to_parquet(tmp_path / "t.parquet")
    assert sorted(read_table(tmp_path / "t.parquet", columns=["x"]).numeric) == ["x"]
    from_parquet = read_table(tmp_path / "t.parquet")  # there a missing string is a null: the <missing> level
    np.testing.assert_array_equal(from_parquet.categorical["colour"], frame["colour"].fillna("<missing>").to_numpy(str))
    np.testing.assert_array_equal(from_parquet.numeric["x"], table.numeric["x"])
    with pytest.raises(UsageError, match=r"no column\(s\) \['nope'\]"):
        read_table(tmp_path / "t.parquet", columns=["x", "nope"])
