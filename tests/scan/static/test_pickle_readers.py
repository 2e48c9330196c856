"""The scanner reads a pickle exactly as the loader will (red-team report, issue 11 §2 and issue 12).

Three readers must agree with CPython's C unpickler on every opcode: the static reader, the sniffing that
decides what gets analysed, and ``mlwarden.load``'s restricted unpickler. Where CPython's two unpicklers disagree
(``_pickle`` and ``pickle.py``), that alone is a finding.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import mlwarden
from mlwarden.artifacts.pickle_ops import PickleFormatError, ReadersDiffer, read_op
from mlwarden.core.errors import UnsafeModelError
from mlwarden.loader import restricted_loads
from tests.conftest import failing, rule_ids, scan_bytes

_TEXT = st.binary(min_size=0, max_size=7).map(lambda b: bytes(c for c in b if c != 10)) | st.text(
    "0123456789xXoObB_+- .eEinfaINFAL\t\x0b\x0c", max_size=8
).map(str.encode)


def _c_reading(data: bytes) -> tuple[str, object]:
    try:
        return "ok", pickle.loads(data)
    except Exception as exc:  # noqa: BLE001 - any refusal of the C unpickler counts as "refuses"
        return "error", type(exc).__name__


def _py_reading(data: bytes) -> tuple[str, object]:
    try:
        return "ok", pickle._loads(data)
    except Exception as exc:  # noqa: BLE001 - any refusal of the C unpickler counts as "refuses"
        return "error", type(exc).__name__


def _same(a: tuple[str, object], b: tuple[str, object]) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] == "error":
        return True
    x, y = a[1], b[1]
    return type(x) is type(y) and (x == y or (x != x and y != y))


@settings(max_examples=600, deadline=None)
@given(opcode=st.sampled_from([b"I", b"L", b"F"]), raw=_TEXT)
@example(opcode=b"L", raw=b"0\x00")  # found by this test: the restricted unpickler read LONG as pickle.py did
def test_text_numbers_are_read_as_the_c_unpickler_reads_them(opcode: bytes, raw: bytes) -> None:
    data = opcode + raw + b"\n."
    c, py = _c_reading(data), _py_reading(data)
    try:
        op = read_op(io.BytesIO(data), 0)
        ours: tuple[str, object] = ("ok", op.arg if op is not None else None)
        differs = op.differs if op is not None else None
    except ReadersDiffer as exc:
        ours, differs = ("error", "ReadersDiffer"), exc.message
    except PickleFormatError:
        ours, differs = ("error", "PickleFormatError"), None
    assert _same(ours, c), (data, ours, c)  # the scanner's reading is the C reading
    assert (differs is not None) == (not _same(c, py)), (data, c, py, differs)  # a differential is noticed
    if c[0] == "ok":  # and mlwarden.load's restricted unpickler loads what C loads
        assert _same(("ok", restricted_loads(data)), c)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        # An argument that runs past the end of its FRAME: _pickle reads on, pickle.py refuses.
        ("frame-overrun", b"\x80\x04\x95" + struct.pack("<Q", 3) + b"\x8c\x06abcdef."),
        # A FRAME opened inside a frame.
        ("nested-frame", b"\x80\x04\x95" + struct.pack("<Q", 12) + b"\x95" + struct.pack("<Q", 1) + b"N."),
        ("octal-int", b"I010\n."),  # _pickle: 8 (strtol base 0); pickle.py: ValueError
        ("underscore-float", b"F1_0\n."),  # _pickle: ValueError; pickle.py: 10.0
        ("space-float", b"F 1.5\n."),
        ("overflow-float", b"F1e999\n."),  # _pickle: OverflowError; pickle.py: inf
        ("bool-int", b"I 1\n."),  # _pickle: True; pickle.py: 1
    ],
)
def test_readers_that_disagree_are_a_high_finding(tmp_path: Path, name: str, data: bytes) -> None:
    result = scan_bytes(tmp_path, data, f"{name}.pkl")
    assert "MLW-PKL-122" in rule_ids(result), name
    assert failing(result)


def test_hex_int_is_read_like_the_loader_and_the_call_after_it_is_seen(tmp_path: Path) -> None:
    # CPython's unpicklers accept base prefixes (I0x1); a scanner that stops there misses what follows.
    data = b"I0x1\n0cos\nsystem\n(S'touch /nonexistent-canary'\ntR."
    assert "MLW-PKL-100" in rule_ids(scan_bytes(tmp_path, data, "hex.pkl"))


def _gadget(canary: Path) -> bytes:
    return b"cos\nsystem\n(S'touch " + str(canary).encode() + b"'\ntR."


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("long-first-argument", b"S'" + b"A" * 100_000 + b"'\n0"),  # outruns a 64 KiB sniffing window
        ("junk-before-proto", b"B" + struct.pack("<I", 4096) + b"J" * 4096 + b"0\x80\x04"),  # no PROTO at byte 0
        ("mark-then-pop", b"(0"),  # POP of a MARK: valid for both unpicklers
        ("proto-later", b"N0\x80\x02"),
    ],
)
def test_pickles_are_sniffed_by_decoding_from_byte_zero(tmp_path: Path, name: str, prefix: bytes) -> None:
    canary = tmp_path / "pwned"
    data = prefix + _gadget(canary)
    with pytest.raises(AttributeError, match="nonexistent_fn"):  # the C unpickler reads it up to the import ...
        pickle.loads(data.replace(b"cos\nsystem", b"cos\nnonexistent_fn"))
    result = scan_bytes(tmp_path, data, f"{name}.bin")
    assert "MLW-PKL-100" in rule_ids(result), name  # ... and the scanner analyses it as one
    with pytest.raises(UnsafeModelError):
        mlwarden.load(tmp_path / f"{name}.bin", "pickle", dynamic=False)
    assert not canary.exists()


def test_torch_zip_pickle_members_are_always_analysed(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    payload = b"S'" + b"A" * 100_000 + b"'\n0" + _gadget(canary)
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model/data.pkl", payload)
        zf.writestr("model/version", "3\n")
        zf.writestr("model/data/0", b"\x00" * 64)
    result = mlwarden.scan(path)
    assert "MLW-PKL-100" in {f.rule_id for f in result.findings}


def test_text_that_merely_starts_with_an_opcode_letter_is_not_a_pickle(tmp_path: Path) -> None:
    for text in (b"class Model:\n    pass\n", b"import torch\nimport numpy\n", b"Contents of the model card\n" * 5000):
        assert failing(scan_bytes(tmp_path, text, "notes.txt")) == []


def test_random_tensor_bytes_never_look_like_a_hidden_pickle() -> None:
    # Tensor storages are only analysed when they hide an import: ~1 in 5,000 random storages decodes as a few
    # valid opcodes (the old header heuristics flagged those, failing large checkpoints at random).
    import numpy as np

    from mlwarden.artifacts.pickle_ops import looks_like_pickle

    rng = np.random.default_rng(7)
    for i in range(20_000):
        dtype = (np.float32, np.float16, np.int64, np.uint8)[i % 4]
        head = (rng.standard_normal(128) * (1 if i % 2 else 0.02)).astype(dtype).tobytes()[:256]
        assert not looks_like_pickle(head), head[:32]
        assert not looks_like_pickle(head[2:]), head[:32]
    assert looks_like_pickle(b"\x80\x02cos\nsystem\nq\x00")  # a real import in a window still counts
    assert looks_like_pickle(b"\x8c\x02os\x8c\x06system\x93")
