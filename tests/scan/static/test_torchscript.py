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


# --- the code is parsed, not matched by regular expressions: spellings that resolve to the same name ----------

RESOLVED_FILE_OPS = {
    "spaces": "return torch . save(x, '/tmp/x')",
    "alias": "t = torch\n    f = t.save\n    return f(x, '/tmp/x')",
    "getattr_constant": "return getattr(torch, 'save')(x, '/tmp/x')",
    "ops_alias": "o = torch.ops.aten\n    return o.from_file('/etc/passwd')",
    "tuple_alias": "a, b = torch.add, torch\n    return b.load('/tmp/x')",
}


@pytest.mark.parametrize("name", sorted(RESOLVED_FILE_OPS))
def test_file_operator_spellings(tmp_path: Path, name: str) -> None:
    code = RESOLVED_FILE_OPS[name].replace("(x,", "(self,")
    result = scan_bytes(tmp_path, _with_code(tmp_path, code), "m.pt")
    hits = [f for f in result.findings if f.rule_id == "MLW-TS-002"]
    assert hits, result.findings
    assert all(f.severity is Severity.HIGH for f in hits)


@pytest.mark.parametrize(
    "code",
    [
        "return ops . evilns . run_shell('id')",
        "o = torch.ops.evilns\n    return o.run_shell('id')",
        "return getattr(torch.ops, 'evilns').run_shell('id')",
    ],
)
def test_custom_operator_spellings(tmp_path: Path, code: str) -> None:
    result = scan_bytes(tmp_path, _with_code(tmp_path, code), "m.pt")
    hits = [f for f in result.findings if f.rule_id == "MLW-TS-001"]
    assert hits
    assert all("evilns::run_shell" in f.evidence for f in hits)


@pytest.mark.parametrize(
    "code",
    [
        "name = 'sa' + 've'\n    return getattr(torch, name)(self, '/tmp/x')",
        "return self.__class__",
        "return torch.__dict__",
        "return __import__('os').system('id')",
        "return eval('1')",
        "g = getattr\n    return g(torch, 'lo' + 'ad')('/tmp/x')",
    ],
)
def test_dynamic_lookups_are_high(tmp_path: Path, code: str) -> None:
    result = scan_bytes(tmp_path, _with_code(tmp_path, code), "m.pt")
    hits = [f for f in result.findings if f.rule_id == "MLW-TS-004"]
    assert hits, result.findings
    assert all(f.severity is Severity.HIGH for f in hits)


def test_unparseable_code_member_is_reported(tmp_path: Path) -> None:
    result = scan_bytes(tmp_path, _with_code(tmp_path, "return torch.save(self, '/tmp/x'"), "m.pt")
    hits = [f for f in result.findings if f.rule_id == "MLW-TS-003"]
    assert hits
    assert all(f.severity is Severity.MEDIUM and "line" in f.evidence for f in hits)
    assert failing(result)


def test_richer_scripted_models_are_clean(tmp_path: Path) -> None:
    """Code torch.jit.save writes uses getattr(self, "0"), torch.__isnot__, __annotations__, ops.prim..."""

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seq = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
            self.attn = torch.nn.MultiheadAttention(4, 2)
            self.lstm = torch.nn.LSTM(4, 4)
            self.norm = torch.nn.BatchNorm1d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.seq(x)
            a, _ = self.attn(y.unsqueeze(1), y.unsqueeze(1), y.unsqueeze(1))
            h, _ = self.lstm(y.unsqueeze(1))
            return self.norm(y) + a.squeeze(1) + h.squeeze(1)

    p = tmp_path / "block.pt"
    torch.jit.save(torch.jit.script(Block()), str(p))
    result = scan_one(p)
    assert not failing(result)
    assert not {"MLW-TS-001", "MLW-TS-002", "MLW-TS-003", "MLW-TS-004"} & rule_ids(result)


def test_rules_are_in_the_catalogue() -> None:
    from mlwarden.core.findings import catalogue
    from mlwarden.scan.static import torchscript

    assert {"MLW-TS-001", "MLW-TS-002", "MLW-TS-003", "MLW-TS-004"} <= set(catalogue())
    assert torchscript.UNPARSEABLE.severity is Severity.MEDIUM
    assert torchscript.DYNAMIC.severity is Severity.HIGH
