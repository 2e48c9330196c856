"""``mlwarden model test`` through ``main``: formats, parameters, exit codes; the renderers on every test's shape."""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import mlwarden.cli.main as cli
from mlwarden.modeltest import ModelTestReport, TestResult
from mlwarden.modeltest import run as runner
from mlwarden.modeltest.model import DataRef
from mlwarden.modeltest.render import render

from .digits import split, train_mlp

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An MLP saved with torch.save, its test data as CSV (in a file name that needs escaping in HTML)."""
    root = tmp_path_factory.mktemp("cli")
    torch.save(train_mlp(steps=60), root / "mlp.pt")
    _, _, x, y = split()
    frame = pd.DataFrame(x[:200], columns=[f"p{i}" for i in range(64)])
    frame["digit"] = y[:200]
    frame.to_csv(root / "test<b>.csv", index=False)
    torch.save(train_mlp(steps=1).state_dict(), root / "weights.pt")
    return {"model": root / "mlp.pt", "data": root / "test<b>.csv", "state_dict": root / "weights.pt"}


def _args(files: dict[str, Path], *extra: str) -> list[str]:
    return ["model", "test", str(files["model"]), "--data", str(files["data"]), "--label", "digit",
            "--tests", "robustness", "--no-dynamic", "--max-rows", "100", *extra]  # fmt: skip


def test_json_report_echoes_options_and_parameters(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    argv = _args(files, "--eps", "0.05", "0.2", "--seed", "7", "--param", "robustness.max_iter=5",
                 "--param", 'robustness.attacks=["pgd"]', "-f", "json", "-o", str(out))  # fmt: skip
    assert cli.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["schema"] == "https://mlwarden.dev/model-test/v1"
    assert report["model"] == {"path": str(files["model"]), "framework": "torch", "classes": 10}
    assert report["data"]["test"]["rows"] == 200
    assert report["seed"] == 7
    (test,) = report["tests"]
    assert test["id"] == "robustness"
    assert test["status"] == "ok"
    assert test["parameters"]["max_iter"] == 5
    assert test["parameters"]["eps"] == [0.05, 0.2]
    assert test["rows"] == {"test": 100}
    (pgd,) = test["metrics"]["attacks"]
    assert pgd["attack"] == "pgd"
    assert [p["eps"] for p in pgd["points"]] == [0.05, 0.2]
    assert pgd["points"][1]["accuracy"] < test["metrics"]["clean_accuracy"]["rate"] - 0.5


def test_text_and_self_contained_html(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(_args(files, "--eps", "0.1")) == 0
    text = capsys.readouterr().out
    assert "Adversarial robustness [robustness] — ok" in text
    assert "pgd (white box)" in text
    html_path = tmp_path / "r.html"
    assert cli.main(_args(files, "--eps", "0.05", "0.1", "-f", "html", "-o", str(html_path))) == 0
    html = html_path.read_text()
    assert html.count("<svg") == 1
    assert "<polyline" in html
    assert "test&lt;b&gt;.csv" in html
    assert "test<b>" not in html
    for forbidden in ("<script", 'src="http', "href=", "@import", "url("):
        assert forbidden not in html


def test_a_test_that_cannot_run_is_named_on_stderr_and_exit_stays_0(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(runner.REGISTRY, "fairness", "mlwarden.modeltest.not_written_yet:run")
    argv = _args(files, "--eps", "0.1", "-f", "json")
    argv[argv.index("--tests") + 1] = "fairness"
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["tests"][0]["status"] == "error"
    assert "test fairness could not run" in captured.err


class _Canary:
    """Unpickling runs ``touch CANARY`` — only if the safe loader wrongly loads it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


def test_a_refused_model_exits_1_and_is_never_loaded(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    canary = tmp_path / "canary"
    model = tmp_path / "model.pkl"
    model.write_bytes(pickle.dumps(_Canary(canary)))
    argv = ["model", "test", str(model), "--data", str(files["data"]), "--label", "digit", "--no-dynamic"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "refused" in err
    assert "not loaded" in err
    assert not canary.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--data": "missing.csv"}, "does not exist"),
        ({"--label": "nope"}, "no column 'nope'"),
        ({"--eps": "2"}, "--eps: every budget must be within (0, 1]"),
        ({"--max-rows": "5"}, "--max-rows must be at least 10"),
        ({"--tests": "bogus"}, "invalid choice"),
        ({"--param": "max_iter=5"}, "expected TEST.KEY=VALUE"),
        ({"--param": "nope.max_iter=5"}, "parameters for unknown test(s) ['nope']"),
        ({"model": "state_dict"}, "a state dict has no architecture"),
        ({"-o": "/no/such/folder/r.json"}, "--output: folder /no/such/folder does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], change: dict[str, str], message: str
) -> None:
    argv = _args(files)
    for option, value in change.items():
        if option == "model":
            argv[2] = str(files[value])
        elif option in argv:
            argv[argv.index(option) + 1] = value
        else:
            argv += [option, value]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


# --- rendering every test's documented shape (and shapes it does not expect) ------------------------------------


def _png() -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), "L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _report(*results: TestResult) -> ModelTestReport:
    data = DataRef("t.csv", "ab" * 32, 100, "y", "group")
    return ModelTestReport("m.pkl", "sha256:" + "cd" * 32, "sklearn", 2, data, None, results, 0, 1.0,
                           "2026-12-05T00:00:00+00:00", "0")  # fmt: skip


def _result(id: str, metrics: dict[str, Any], status: str = "ok", reason: str = "") -> TestResult:
    return TestResult(id, {}, 0, {"test": 100}, 0.5, metrics, status, reason)


def test_every_documented_shape_renders_in_every_format() -> None:
    png = _png()
    roc = {"fpr": [0.0, 0.1, 1.0], "tpr": [0.0, 0.6, 1.0]}
    report = _report(
        _result(
            "membership",
            {
                "attacks": [
                    {
                        "attack": "loss_threshold",
                        "auc": 0.71,
                        "auc_ci95": [0.6, 0.8],
                        "tpr_at_fpr_0.001": 0.01,
                        "roc": roc,
                    }
                ],
                "max_auc": 0.71,
            },
        ),  # fmt: skip
        _result("attribute_inference", {"attack_accuracy": 0.8, "baseline_accuracy": 0.6, "advantage": 0.2}),
        _result(
            "inversion",
            {"classes": [{"class": 0, "png_base64": png}, {"class": 1, "png_base64": "<script>alert(1)</script>"}]},
        ),  # fmt: skip
        _result(
            "backdoor_probe",
            {
                "max_anomaly_index": 3.1,
                "flagged_classes": [1],
                "triggers": [{"class": 1, "png_base64": base64.b64encode(b"GIF89a").decode()}],
            },
        ),  # fmt: skip
        _result(
            "fairness",
            {
                "demographic_parity_difference": 0.3,
                "equalized_odds_difference": 0.2,
                "by_group": {
                    "a": {"accuracy": 0.9, "selection_rate": 0.6},
                    "<b>": {"accuracy": 0.7, "selection_rate": 0.3},
                },
            },
        ),  # fmt: skip
        _result("robustness", {}, "error", "could not <run>"),
    )
    text = render(report, "text")
    assert "loss_threshold: AUC 0.710 95 % CI [0.600, 0.800]" in text
    assert "advantage 0.200" in text
    assert "demographic parity difference 0.300" in text
    assert "error: could not <run>" in text
    assert json.loads(render(report, "json"))["tests"][5]["reason"] == "could not <run>"
    html = render(report, "html")
    assert html.count("data:image/png;base64,") == 1  # the real PNG; not the script, not the GIF
    assert png in html
    assert "<script" not in html
    assert "could not &lt;run&gt;" in html
    assert html.count("<svg") == 2  # the ROC curve and the fairness bars
    assert "&lt;b&gt;" in html
    assert "<b>" not in html


def test_unexpected_metrics_fall_back_to_a_generic_summary() -> None:
    report = _report(
        _result("membership", {"attacks": [{"attack": "x"}], "note": "no auc here"}),
        _result("robustness", {"clean_accuracy": 0.5, "attacks": "none"}),
        _result("fairness", {"by_group": {"a": 1}}),
    )
    text = render(report, "text")
    assert "note: no auc here" in text
    assert "clean_accuracy: 0.500" in text
    assert "<svg" not in render(report, "html")


def test_an_image_folder_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save(train_mlp(image=True, steps=60), tmp_path / "cnn.pt")
    _, _, x, y = split()
    for i in range(60):  # 8x8 grey PNGs in one folder per digit
        folder = tmp_path / "images" / str(y[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(x[i].reshape(8, 8) * 255).astype(np.uint8), "L").save(folder / f"{i}.png")
    argv = ["model", "test", str(tmp_path / "cnn.pt"), "--data", str(tmp_path / "images"), "--tests", "robustness",
            "--no-dynamic", "--eps", "0.3", "-f", "json"]  # fmt: skip
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    test = report["tests"][0]
    assert report["data"]["test"]["rows"] == 60
    assert test["parameters"]["clip_values"] == [0.0, 1.0]
    assert [a["attack"] for a in test["metrics"]["attacks"]] == ["fgsm", "pgd", "gaussian_noise", "blur"]
    assert test["metrics"]["clean_accuracy"]["rate"] > 0.85  # the labels are the folder names "0" … "9"
