"""TorchScript code (``code/`` members of a ``torch.jit.save`` archive).

TorchScript is not run by CPython: ``torch.jit.load`` compiles it, and it can only call what the runtime
registers — built-in ``aten``/``prim`` operators and *custom operators* registered by native libraries that
were loaded into the process. A reference to another operator namespace means the model needs (and will
call into) such a library; a few built-ins touch the file system.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from mlwarden.core.findings import Severity, rule

if TYPE_CHECKING:
    from mlwarden.artifacts.artifact import Artifact
    from mlwarden.scan.context import ScanContext

CUSTOM_OP = rule(
    "MLW-TS-001",
    "TorchScript calls a custom operator",
    Severity.MEDIUM,
    cwe=829,
    description="The scripted code calls an operator outside PyTorch's built-in namespaces; it runs native code "
    "from a library the loading process must have loaded.",
    remediation="Check which library provides the operator and whether you trust it.",
)
FILE_OP = rule(
    "MLW-TS-002",
    "TorchScript reads or writes files",
    Severity.HIGH,
    cwe=73,
    description="The scripted code calls a built-in operator that reads or writes files when the model runs.",
    remediation="Model code should not touch the file system; inspect the archive's code/ folder.",
)

_BUILTIN_NAMESPACES = frozenset(
    {
        "aten",
        "prim",
        "quantized",
        "_quantized",
        "quantized_decomposed",
        "prepacked",
        "_caffe2",
        "profiler",
        "cuda",
        "mkldnn",
        "mkl",
        "onednn",
        "sparse",
        "_nested",
    }
)
_OPS = re.compile(r"\bops\.([A-Za-z_]\w*)\.([A-Za-z_]\w*)")
_FILE_OPS = re.compile(r"\b(?:torch\.|ops\.aten\.)(from_file|save|load)\b")
_CODE_MEMBER = re.compile(r"(^|/)code/.+\.py$")


def is_torchscript_code(artifact: Artifact) -> bool:
    """Whether the artifact is a ``code/**.py`` member of an archive (TorchScript layout)."""
    return len(artifact.chain) > 1 and bool(_CODE_MEMBER.search(artifact.chain[-1]))


def analyse_torchscript(source: str, artifact: Artifact, ctx: ScanContext) -> None:
    """Report custom-operator and file-system calls in TorchScript source."""
    custom = sorted({f"{ns}::{op}" for ns, op in _OPS.findall(source) if ns not in _BUILTIN_NAMESPACES})
    if custom:
        ctx.report(CUSTOM_OP.finding(artifact.location(), ", ".join(custom[:10]), operators=custom[:50]))
    files = sorted({m.group(0) for m in _FILE_OPS.finditer(source)})
    if files:
        ctx.report(FILE_OP.finding(artifact.location(), ", ".join(files[:10])))
