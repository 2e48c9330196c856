"""Python source beside a model: parsed with ast, dangerous calls reported with line numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlwarden.artifacts.artifact import Artifact
from mlwarden.artifacts.sniff import Format
from mlwarden.core.findings import Finding, Severity
from mlwarden.core.policy import Limits, Policy
from mlwarden.scan.context import ScanContext
from tests.conftest import failing, rule_ids, scan_one

MODELING = '''"""Tiny custom model, the shape of a Hugging Face trust_remote_code modeling file."""
import math
import os
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .configuration_tiny import TinyConfig


class TinyAttention(nn.Module):
    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.scale = 1.0 / math.sqrt(config.hidden_size)
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        attn = F.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
        return attn @ v


class TinyModel(nn.Module):
    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TinyAttention(config) for _ in range(config.num_layers))
        self.cache_dir = os.path.join(os.path.expanduser("~"), ".cache")

    def load_extra(self, path: str) -> None:
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.eval()
'''


def _scan(source: str, limits: Limits | None = None) -> list[Finding]:
    ctx = ScanContext(Policy(limits=limits or Limits()))
    ctx.descend(Artifact.from_bytes(source.encode(), ("modeling_tiny.py",), 0), Format.PYTHON_SOURCE)
    return ctx.findings


def test_plain_modeling_file_is_info_only(tmp_path: Path) -> None:
    path = tmp_path / "modeling_tiny.py"
    path.write_text(MODELING)
    result = scan_one(path)
    assert result.formats[0][1] == "python-source"
    assert [(f.rule_id, f.severity) for f in result.findings] == [("MLW-SRC-004", Severity.INFO)]
    assert "torch.nn" in result.findings[0].detail("imports")


@pytest.mark.parametrize(
    ("snippet", "rule_id", "name"),
    [
        ("import os\nos.system('touch /tmp/canary')\n", "MLW-SRC-001", "os.system"),
        ("import subprocess as sp\nsp.run(['true'])\n", "MLW-SRC-001", "subprocess.run"),
        ("from os import popen\npopen('true')\n", "MLW-SRC-001", "os.popen"),
        ("import os\nos.execvp('true', ['true'])\n", "MLW-SRC-001", "os.execvp"),
        ("exec(__import__('base64').b64decode('cHJpbnQoMSk='))\n", "MLW-SRC-001", "builtins.exec"),
        ("x = eval('1+1')\n", "MLW-SRC-001", "builtins.eval"),
        ("import socket\nsocket.create_connection(('127.0.0.1', 9))\n", "MLW-SRC-001", "socket.create_connection"),
        (
            "import urllib.request\nurllib.request.urlopen('http://127.0.0.1/')\n",
            "MLW-SRC-001",
            "urllib.request.urlopen",
        ),
        ("import requests\nrequests.get('http://127.0.0.1/')\n", "MLW-SRC-001", "requests.get"),
        ("import ctypes\nctypes.CDLL('libc.so.6')\n", "MLW-SRC-001", "ctypes.CDLL"),
        ("import pickle\npickle.loads(b'')\n", "MLW-SRC-002", "pickle.loads"),
        ("import torch\ntorch.load('x.pt')\n", "MLW-SRC-002", "torch.load"),
        ("import torch\ntorch.load('x.pt', weights_only=False)\n", "MLW-SRC-002", "torch.load"),
        ("import importlib\nimportlib.import_module('os')\n", "MLW-SRC-002", "importlib.import_module"),
        ("import shutil\nshutil.rmtree('/tmp/x')\n", "MLW-SRC-002", "shutil.rmtree"),
    ],
)
def test_dangerous_calls(snippet: str, rule_id: str, name: str) -> None:
    findings = _scan("import torch.nn as nn\n\n" + snippet)
    hit = next(f for f in findings if f.rule_id == rule_id)
    assert f"{name}()" in hit.evidence
    assert hit.detail("lines")[0] >= 3
    assert hit.severity is (Severity.HIGH if rule_id == "MLW-SRC-001" else Severity.MEDIUM)


def test_import_time_versus_method_call() -> None:
    source = (
        MODELING + "\n\nclass Evil(nn.Module):\n    def forward(self, x):\n        os.system('true')\n"
        "        return x\n\nos.system('touch /tmp/canary')\n"
    )
    hit = next(f for f in _scan(source) if f.rule_id == "MLW-SRC-001")
    lines = MODELING.count("\n")
    assert hit.detail("lines") == (lines + 5, lines + 8)
    assert "(at import time)" in hit.evidence.split(";")[1]
    assert "(at import time)" not in hit.evidence.split(";")[0]


def test_method_named_eval_is_not_builtin_eval() -> None:
    assert failing_of(_scan("import torch.nn as nn\nm = nn.Linear(1, 1)\nm.eval()\nm.requests = 1\n")) == []


def failing_of(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity >= Severity.MEDIUM]


def test_syntax_error_is_low() -> None:
    findings = _scan("import os\ndef broken(:\n    pass\n")
    assert [(f.rule_id, f.severity) for f in findings] == [("MLW-SRC-003", Severity.LOW)]
    assert findings[0].evidence.startswith("line 2:")


def test_size_limit() -> None:
    assert rule_ids(_scan(MODELING, Limits(max_text_size=100))) == {"MLW-GEN-001"}


def test_malicious_file_through_engine(tmp_path: Path) -> None:
    path = tmp_path / "modeling_evil.py"
    path.write_text("import os\nimport subprocess\n\nsubprocess.Popen(['touch', '/tmp/canary'])\n")
    result = scan_one(path)
    assert result.formats[0][1] == "python-source"
    assert rule_ids(failing(result)) == {"MLW-SRC-001"}
