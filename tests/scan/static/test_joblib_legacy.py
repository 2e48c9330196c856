"""joblib < 0.10 array wrappers (NDArrayWrapper / ZNDArrayWrapper): the file each one names is what gets checked.

Regression: every joblib 0.9 pickle was flagged HIGH (MLW-PKL-105, "nested deserialization") for importing
``joblib.numpy_pickle.NDArrayWrapper``; the risk is the sibling file joblib loads with ``allow_pickle=True``.
Fixtures write the pickle stream opcode by opcode, the way joblib 0.9 did (see the corpus files
``joblib_0.9.2_pickle_py27_np16.pkl`` and ``joblib_0.9.4.dev0_compressed_cache_size_pickle_py35_np19.gz``).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlwarden.artifacts.artifact import Artifact
from mlwarden.core.findings import Severity
from mlwarden.core.policy import Policy
from mlwarden.scan.context import ScanContext
from tests.conftest import failing, rule_ids, scan_one

np = pytest.importorskip("numpy")


@dataclass(frozen=True)
class G:
    """A global reference written as GLOBAL."""

    module: str
    name: str


def _value(v: Any, py2: bool) -> bytes:
    if isinstance(v, G):
        return b"c" + f"{v.module}\n{v.name}\n".encode()
    if v is True or v is False:
        return b"\x88" if v else b"\x89"
    if isinstance(v, int):
        return b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v)
    if isinstance(v, str):
        raw = v.encode()
        return (b"U" + bytes([len(raw)]) if py2 else b"X" + struct.pack("<I", len(raw))) + raw
    if isinstance(v, bytes):
        return b"C" + bytes([len(v)]) + v
    if isinstance(v, tuple):
        return b"(" + b"".join(_value(x, py2) for x in v) + b"t"
    raise TypeError(v)


def wrapper_pickle(
    states: list[dict[str, Any]], cls: str = "NDArrayWrapper", *, py2: bool = True, style: str = "newobj"
) -> bytes:
    """A list of joblib 0.9 wrappers: ``[NDArrayWrapper(**state), ...]`` built with NEWOBJ (protocol 2, as joblib
    0.9 wrote them) or copy_reg._reconstructor (protocols 0/1), each followed by BUILD with its state dict."""
    out = b"\x80" + bytes([2 if py2 else 3]) + b"](" if style == "newobj" else b"(lp0\n"
    klass = _value(G("joblib.numpy_pickle", cls), py2)
    for state in states:
        if style == "newobj":
            out += klass + b")\x81"
        else:
            out += b"ccopy_reg\n_reconstructor\n(" + klass + b"c__builtin__\nobject\nNtR"
        out += b"}(" + b"".join(_value(k, py2) + _value(v, py2) for k, v in state.items()) + b"ub"
        if style != "newobj":
            out += b"a"
    return out + (b"e." if style == "newobj" else b".")


def nd_state(filename: str, allow_mmap: bool = True) -> dict[str, Any]:
    return {"allow_mmap": allow_mmap, "subclass": G("numpy", "ndarray"), "filename": filename}


def zf(data: bytes) -> bytes:
    """joblib's ZF container: b"ZF" + hex length padded to 19 characters + zlib stream."""
    return b"ZF" + f"0x{len(data):x}".ljust(19).encode() + zlib.compress(data)


class Canary:
    """Pickles as ``os.makedirs(<tmp>/canary)``: harmless if it ever ran; the scanner must never run it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.makedirs, (self.path,))


def _joblib_09(folder: Path, name: str = "model.pkl") -> Path:
    """A joblib 0.9 dump of three arrays: float and int ``.npy`` siblings and an object array of strings."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{name}_01.npy", np.linspace(0, 1, 10))
    np.save(folder / f"{name}_02.npy", np.arange(7, dtype=np.int64), allow_pickle=False)
    np.save(folder / f"{name}_03.npy", np.array(["a", "b", None], dtype=object), allow_pickle=True)
    states = [nd_state(f"{name}_01.npy"), nd_state(f"{name}_02.npy"), nd_state(f"{name}_03.npy", allow_mmap=False)]
    path = folder / name
    path.write_bytes(wrapper_pickle(states))
    return path


@pytest.mark.parametrize(("py2", "style"), [(True, "newobj"), (False, "newobj"), (True, "reconstructor")])
def test_joblib_09_dump_with_its_siblings_is_clean(tmp_path: Path, py2: bool, style: str) -> None:
    folder = tmp_path / "model"
    path = _joblib_09(folder)
    states = [nd_state(f"model.pkl_0{i}.npy") for i in (1, 2, 3)]
    path.write_bytes(wrapper_pickle(states, py2=py2, style=style))
    result = scan_one(path)
    assert "MLW-PKL-105" not in rule_ids(result)
    assert failing(result) == []
    [obj] = [f for f in result.findings if f.rule_id == "MLW-NPY-002"]  # the object-array sibling was analysed
    assert obj.severity is Severity.INFO
    assert obj.location.chain == (str(path), "<joblib file model.pkl_03.npy>")


def test_compressed_zndarraywrapper_dump_is_clean(tmp_path: Path) -> None:
    data = np.arange(5, dtype=np.int64)
    (tmp_path / "model.pkl_01.npy.z").write_bytes(zf(data.tobytes()))
    state = {
        "state": (1, (5,), False),
        "init_args": (G("numpy", "ndarray"), (0,), b"b"),
        "filename": "model.pkl_01.npy.z",
    }
    path = tmp_path / "model.pkl"
    path.write_bytes(zf(wrapper_pickle([state], "ZNDArrayWrapper", py2=False)))
    result = scan_one(path)
    assert result.findings == ()


@pytest.mark.parametrize(
    ("filename", "problem"),
    [("/etc/passwd", "absolute path"), ("../../outside/x.npy", "'..' component"), ("C:\\x.npy", "absolute path")],
)
def test_name_outside_the_model_folder_is_high(tmp_path: Path, filename: str, problem: str) -> None:
    path = _joblib_09(tmp_path / "model")
    path.write_bytes(wrapper_pickle([nd_state("model.pkl_01.npy"), nd_state(filename)]))
    [hit] = failing(scan_one(path))
    assert hit.rule_id == "MLW-JOBLIB-001"
    assert hit.severity is Severity.HIGH
    assert hit.cwe == 22
    assert problem in hit.evidence
    assert hit.detail("filename") == filename


def test_symlinked_sibling_is_high(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "payload.npy"
    outside.parent.mkdir()
    np.save(outside, np.zeros(3))
    path = _joblib_09(tmp_path / "model")
    (tmp_path / "model" / "model.pkl_01.npy").unlink()
    os.symlink(outside, tmp_path / "model" / "model.pkl_01.npy")
    [hit] = failing(scan_one(path))
    assert hit.rule_id == "MLW-JOBLIB-001"
    assert "outside the model folder" in hit.evidence or "symlink" in hit.evidence


def test_missing_sibling_is_low(tmp_path: Path) -> None:
    path = _joblib_09(tmp_path / "model")
    (tmp_path / "model" / "model.pkl_02.npy").unlink()
    result = scan_one(path)
    [hit] = [f for f in result.findings if f.rule_id == "MLW-JOBLIB-002"]
    assert hit.severity is Severity.LOW
    assert "model.pkl_02.npy" in hit.evidence
    assert failing(result) == []


def test_dangerous_sibling_reports_its_own_findings(tmp_path: Path) -> None:
    path = _joblib_09(tmp_path / "model")
    canary = tmp_path / "canary"
    payload = np.empty(1, dtype=object)
    payload[0] = Canary(canary)
    np.save(tmp_path / "model" / "model.pkl_03.npy", payload, allow_pickle=True)
    bad = failing(scan_one(path))
    assert bad
    assert all(f.location.chain == (str(path), "<joblib file model.pkl_03.npy>") for f in bad)
    assert any("makedirs" in f.evidence for f in bad)
    assert max(f.severity for f in bad) >= Severity.HIGH
    assert not canary.exists()


def test_state_shadowing_read_is_medium(tmp_path: Path) -> None:
    path = _joblib_09(tmp_path / "model")
    path.write_bytes(wrapper_pickle([{**nd_state("model.pkl_01.npy"), "read": "x"}]))
    [hit] = failing(scan_one(path))
    assert hit.rule_id == "MLW-JOBLIB-003"
    assert hit.severity is Severity.MEDIUM
    assert "['read']" in hit.evidence


def test_wrapper_without_a_literal_name_is_medium(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(wrapper_pickle([{"subclass": G("numpy", "ndarray"), "allow_mmap": True}]))
    assert [f.rule_id for f in failing(scan_one(path))] == ["MLW-JOBLIB-003"]


@pytest.mark.parametrize(("filename", "expected"), [("../../etc/passwd", ["MLW-JOBLIB-001"]), ("model.pkl_01.npy", [])])
def test_in_an_archive_only_the_name_is_checked(filename: str, expected: list[str]) -> None:
    data = wrapper_pickle([nd_state(filename)])
    ctx = ScanContext(Policy())
    ctx.descend(Artifact.from_bytes(data, ("bundle.zip", "model.pkl"), 1))
    assert [f.rule_id for f in ctx.findings if f.severity >= Severity.MEDIUM] == expected
