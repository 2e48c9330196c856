"""What CI relies on: a skipped security test fails under CI, and the wheel ships no payload builders."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run_pytest(tmp_path: Path, body: str, ci: bool) -> int:
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tmp_path / "test_probe.py").write_text(body)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode


@pytest.mark.parametrize("ci", [False, True])
def test_a_skip_fails_under_ci_unless_it_says_it_is_optional(tmp_path: Path, ci: bool) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    skipping = 'import pytest\n\ndef test_x():\n    pytest.skip("the sandbox is missing")\n'
    optional = 'import pytest\n\ndef test_x():\n    pytest.skip("optional: onnxruntime is installed")\n'
    assert _run_pytest(tmp_path / "a", skipping, ci) == (1 if ci else 0)
    assert _run_pytest(tmp_path / "b", optional, ci) == 0


def test_the_installed_package_ships_no_sample_builders() -> None:
    # The pickle assembler and the command-running canaries are a test kit (testkit/), not part of mlwarden.
    assert importlib.util.find_spec("mlwarden.samples") is None
    assert not (REPO / "src" / "mlwarden" / "samples").exists()
    assert importlib.util.find_spec("mlwarden_samples") is not None  # the tests still find it
