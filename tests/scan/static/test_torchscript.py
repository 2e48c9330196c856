"""TorchScript archives: benign scripted/traced models are clean; custom ops and file ops are reported."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from mlwarden.core.findings import Severity
from tests.conftest import failing, rule_ids, scan_bytes, scan_one

torch = pytest.importorskip("torch")


def _scripted(tmp_path: Path) -> Path:
    model = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()))
    p = tmp_path / "scripted.pt"
    torch.jit.save(model, str(p))
    return p


def test_scripted_and_traced_models_are_clean(tmp_path: Path) -> None:
    assert not failing(scan_one(_scripted(tmp_path)))
    traced = torch.jit.trace(torch.nn.Conv2d(1, 2, 3), torch.zeros(1, 1, 8, 8))
    p = tmp_path / "traced.pt"
    torch.jit.save(traced, str(p))
    result = scan_one(p)
    assert not failing(result)
    assert "pickle" in {fmt for _, fmt in result.formats}


def _with_code(tmp_path: Path, extra_line: str) -> bytes:
    src = _scripted(tmp_path).read_bytes()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(src)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith(".py") and "/code/" in f"/{info.filename}":
                helper = f"  def helper(self):\n    {extra_line}\n  def forward(".encode()
                data = data.replace(b"  def forward(", helper, 1)
            zout.writestr(info, data)
    return out.getvalue()


def test_custom_operator_namespace(tmp_path: Path) -> None:
    result = scan_bytes(tmp_path, _with_code(tmp_path, "return ops.evilns.run_shell('id')"), "m.pt")
    findings = [f for f in result.findings if f.rule_id == "MLW-TS-001"]
    assert findings  # one per patched code/ file
    assert all(f.severity is Severity.MEDIUM for f in findings)
    assert all("evilns::run_shell" in f.evidence for f in findings)
    assert all("/code/" in f.location.chain[-1] for f in findings)


def test_file_operator(tmp_path: Path) -> None:
    result = scan_bytes(tmp_path, _with_code(tmp_path, "return torch.from_file('/etc/passwd')"), "m.pt")
    assert "MLW-TS-002" in rule_ids(failing(result))
