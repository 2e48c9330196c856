"""GGUF: bounded header parsing, tensor-table checks and chat-template SSTI, on files built with gguf-py."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from mlwarden.artifacts.artifact import Artifact
from mlwarden.artifacts.sniff import Format
from mlwarden.core.findings import Finding, Severity
from mlwarden.core.policy import Limits, Policy
from mlwarden.scan.context import ScanContext
from tests.conftest import failing, rule_ids, scan_bytes, scan_one
from tests.scan.static.test_template import CANARY, CHATML, LLAMA3, TOOLS

SSTI = {
    "cve_2024_34359": "{{ self.__init__.__globals__.__builtins__.__import__('os').popen('%s') }}".replace("%s", CANARY),
    "cycler": "{{ cycler.__init__.__globals__.os.popen('%s').read() }}".replace("%s", CANARY),
    "joiner": "{{ joiner.__init__.__globals__.os.popen('%s') }}".replace("%s", CANARY),
    "namespace": "{% set ns = namespace(a=1) %}{{ namespace.__init__.__globals__.os.popen('%s') }}".replace(
        "%s", CANARY
    ),
    "lipsum": "{{ lipsum.__globals__['os'].popen('%s') }}".replace("%s", CANARY),
    "attr_filter": "{{ ()|attr('__class__')|attr('__base__')|attr('__subclasses__')() }}",
    "concat": "{{ ()|attr('__cla'~'ss__') }}",
    "request": "{{ request.__class__.__mro__ }}",
    "config": "{{ config.__class__.__init__.__globals__['os'].popen('%s') }}".replace("%s", CANARY),
}


def _write(
    path: Path,
    template: str | list[dict[str, str]] | None,
    *,
    big_endian: bool = False,
    extra: dict[str, object] | None = None,
) -> Path:
    endian = gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE
    w = gguf.GGUFWriter(str(path), "llama", endianess=endian)
    w.add_block_count(1)
    w.add_context_length(2048)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["<s>", "</s>", "hello", "world"])
    w.add_token_scores([0.0, 0.0, -1.0, -2.0])
    w.add_token_types([3, 3, 1, 1])
    if template is not None:
        w.add_chat_template(template)
    for key, value in (extra or {}).items():
        if isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_array(key, value)  # type: ignore[arg-type]
    w.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones((32,), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("template", [CHATML, LLAMA3, TOOLS], ids=["chatml", "llama3", "tools"])
def test_benign_gguf_is_clean(tmp_path: Path, template: str) -> None:
    result = scan_one(_write(tmp_path / "model.gguf", template))
    assert result.formats[0][1] == "gguf"
    assert failing(result) == []
    summary = next(f for f in result.findings if f.rule_id == "MLW-GGUF-004")
    assert summary.detail("version") == 3
    assert summary.detail("tensors") == 2
    assert summary.detail("chat_templates") == ("tokenizer.chat_template",)


def test_gguf_without_template(tmp_path: Path) -> None:
    result = scan_one(_write(tmp_path / "model.gguf", None))
    assert rule_ids(result) == {"MLW-GGUF-004"}


@pytest.mark.parametrize("name", sorted(SSTI))
def test_ssti_template_is_critical(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / "model.gguf", SSTI[name])
    result = scan_one(path)
    hit = next(f for f in result.findings if f.rule_id == "MLW-TPL-001")
    assert hit.severity is Severity.CRITICAL
    assert hit.evidence.startswith("tokenizer.chat_template:")
    # The location points at the template string's length prefix inside the file.
    raw = path.read_bytes()
    assert hit.location.offset is not None
    (length,) = struct.unpack("<Q", raw[hit.location.offset : hit.location.offset + 8])
    assert raw[hit.location.offset + 8 : hit.location.offset + 8 + length].decode() == SSTI[name]


def test_big_endian_gguf(tmp_path: Path) -> None:
    result = scan_one(_write(tmp_path / "model.gguf", SSTI["cycler"], big_endian=True))
    summary = next(f for f in result.findings if f.rule_id == "MLW-GGUF-004")
    assert summary.detail("endian") == "big"
    assert "MLW-TPL-001" in rule_ids(result)
    assert "MLW-GGUF-001" not in rule_ids(result)


def test_named_chat_templates_are_all_analysed(tmp_path: Path) -> None:
    templates = [{"name": "default", "template": CHATML}, {"name": "tool_use", "template": SSTI["lipsum"]}]
    result = scan_one(_write(tmp_path / "model.gguf", templates))
    hit = next(f for f in result.findings if f.rule_id == "MLW-TPL-001")
    assert hit.detail("template") == "tokenizer.chat_template.tool_use"
    summary = next(f for f in result.findings if f.rule_id == "MLW-GGUF-004")
    assert set(summary.detail("chat_templates")) == {"tokenizer.chat_template", "tokenizer.chat_template.tool_use"}


def test_nested_arrays_are_parsed(tmp_path: Path) -> None:
    result = scan_one(
        _write(
            tmp_path / "model.gguf", CHATML, extra={"test.nested": [[1, 2], [3]], "test.strings": [["a"], ["b", "c"]]}
        )
    )
    assert failing(result) == []


# --- hand-built files (versions 1/2, corruptions gguf-py will not write) ---------------------------------


def _s(text: str, version: int = 3) -> bytes:
    data = text.encode()
    return struct.pack("<I" if version == 1 else "<Q", len(data)) + data


def _handmade(version: int, kvs: list[bytes], n_tensors: int = 0, tail: bytes = b"") -> bytes:
    count = "<I" if version == 1 else "<Q"
    return (
        b"GGUF"
        + struct.pack("<I", version)
        + struct.pack(count, n_tensors)
        + struct.pack(count, len(kvs))
        + b"".join(kvs)
        + tail
    )


def _kv_str(key: str, value: str, version: int = 3) -> bytes:
    return _s(key, version) + struct.pack("<I", 8) + _s(value, version)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_all_versions_reach_the_template(tmp_path: Path, version: int) -> None:
    data = _handmade(
        version,
        [
            _kv_str("general.architecture", "llama", version),
            _kv_str("tokenizer.chat_template", SSTI["cycler"], version),
        ],
    )
    result = scan_bytes(tmp_path, data, "model.gguf")
    assert "MLW-TPL-001" in rule_ids(result)
    assert next(f for f in result.findings if f.rule_id == "MLW-GGUF-004").detail("version") == version


def _scan(data: bytes, limits: Limits | None = None) -> list[Finding]:
    ctx = ScanContext(Policy(limits=limits or Limits()))
    ctx.descend(Artifact.from_bytes(data, ("model.gguf",), 0), Format.GGUF)
    return ctx.findings


CORRUPT = {
    "bad_version": (_handmade(7, []), 4, "unsupported GGUF version 7"),
    "huge_kv_count": (b"GGUF" + struct.pack("<IQQ", 3, 0, 2**60), 24, "metadata count"),
    "huge_tensor_count": (b"GGUF" + struct.pack("<IQQ", 3, 2**40, 0), 24, "tensor count"),
    "huge_string": (_handmade(3, [struct.pack("<Q", 2**62) + b"key" + b"\0" * 32]), 24, "length 4611686018427387904"),
    "unknown_type": (_handmade(3, [_s("a.b") + struct.pack("<I", 99) + b"\0" * 8]), 35, "unknown value type 99"),
    "huge_array": (_handmade(3, [_s("a.b") + struct.pack("<IIQ", 9, 6, 2**50)]), 39, "array of"),
    "truncated_value": (_handmade(3, [_kv_str("tokenizer.chat_template", "{{ x }}")])[:-3], 59, "left"),
    "duplicate_key": (
        _handmade(3, [_kv_str("tokenizer.chat_template", CHATML), _kv_str("tokenizer.chat_template", SSTI["cycler"])]),
        None,
        "duplicate",
    ),
    "deep_nesting": (
        _handmade(
            3,
            [
                _s("a.b")
                + struct.pack("<IIQ", 9, 9, 1)
                + struct.pack("<IQ", 9, 1)
                + struct.pack("<IQ", 9, 1)
                + struct.pack("<IQ", 9, 1)
                + b"\0" * 64
            ],
        ),
        None,
        "nested deeper",
    ),
    "bad_alignment": (_handmade(3, [_s("general.alignment") + struct.pack("<II", 4, 24)]), 0, "power of two"),
}


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_corrupt_headers(name: str) -> None:
    data, offset, fragment = CORRUPT[name]
    findings = _scan(data)
    hit = next(f for f in findings if f.rule_id == "MLW-GGUF-001")
    assert hit.severity is Severity.MEDIUM
    assert fragment in hit.evidence
    if offset is not None:
        assert hit.location.offset == offset
    assert "MLW-GGUF-004" not in rule_ids(findings)


def test_duplicate_template_key_still_analyses_first(tmp_path: Path) -> None:
    data, _, _ = CORRUPT["duplicate_key"]
    assert rule_ids(_scan(data)) == {"MLW-GGUF-001"}  # first is benign; the duplicate is the finding
    data2 = _handmade(3, [_kv_str("tokenizer.chat_template", SSTI["cycler"]), _kv_str("x.y", "z")])
    assert "MLW-TPL-001" in rule_ids(_scan(data2))


def test_corrupt_file_is_sniffed_and_fails(tmp_path: Path) -> None:
    result = scan_bytes(tmp_path, CORRUPT["huge_string"][0], "model.gguf")
    assert result.formats[0][1] == "gguf"
    assert "MLW-GGUF-001" in rule_ids(failing(result))


def _tensor(name: str, dims: list[int], ttype: int, offset: int) -> bytes:
    return (
        _s(name)
        + struct.pack("<I", len(dims))
        + struct.pack(f"<{len(dims)}Q", *dims)
        + struct.pack("<IQ", ttype, offset)
    )


def _with_tensors(tensors: list[bytes], data_len: int) -> bytes:
    head = _handmade(3, [_kv_str("general.architecture", "llama")], n_tensors=len(tensors), tail=b"".join(tensors))
    pad = (32 - len(head) % 32) % 32
    return head + b"\0" * (pad + data_len)


def test_valid_handmade_tensor_table() -> None:
    data = _with_tensors([_tensor("a", [8], 0, 0), _tensor("b", [32, 2], 8, 32)], 32 + 68)
    assert rule_ids(_scan(data)) == {"MLW-GGUF-004"}


@pytest.mark.parametrize(
    ("tensors", "data_len", "fragment"),
    [
        ([_tensor("a", [8], 0, 0), _tensor("b", [8], 0, 64)], 96, "ggml expects 32"),
        ([_tensor("a", [8], 0, 0), _tensor("a", [8], 0, 32)], 64, "duplicate tensor name 'a'"),
        ([_tensor("a", [8], 0, 0)], 16, "past the end of the file"),
        ([_tensor("q", [33], 2, 0)], 64, "not a multiple of the Q4_0 block size 32"),
    ],
)
def test_invalid_tensor_table(tensors: list[bytes], data_len: int, fragment: str) -> None:
    findings = _scan(_with_tensors(tensors, data_len))
    hit = next(f for f in findings if f.rule_id == "MLW-GGUF-002")
    assert fragment in hit.evidence
    assert hit.severity is Severity.MEDIUM


def test_too_many_dimensions() -> None:
    findings = _scan(_with_tensors([_tensor("a", [1, 1, 1, 1, 8], 0, 0)], 32))
    assert "5 dimensions" in next(f for f in findings if f.rule_id == "MLW-GGUF-001").evidence


def test_unknown_tensor_type_is_low() -> None:
    findings = _scan(_with_tensors([_tensor("a", [8], 200, 0)], 32))
    assert {(f.rule_id, f.severity) for f in findings} == {
        ("MLW-GGUF-003", Severity.LOW),
        ("MLW-GGUF-004", Severity.INFO),
    }


def test_header_limit(tmp_path: Path) -> None:
    path = _write(tmp_path / "model.gguf", CHATML)
    result = scan_one(path, Policy(limits=Limits(max_header_size=64)))
    assert rule_ids(result) == {"MLW-GEN-001"}
