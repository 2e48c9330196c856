"""The protobuf wire reader and the ONNX / SavedModel sniffer."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlwarden.artifacts.artifact import Artifact
from mlwarden.artifacts.protobuf import (
    I32,
    I64,
    LEN,
    VARINT,
    ProtobufError,
    WireReader,
    decode_varint,
    sniff_protobuf_model,
)
from mlwarden.artifacts.sniff import Format, sniff

# --- a tiny encoder (shared with test_savedmodel / test_onnx) ------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def fv(number: int, value: int) -> bytes:
    """A varint field."""
    return tag(number, VARINT) + varint(value)


def fb(number: int, payload: bytes | str) -> bytes:
    """A length-delimited field (string, bytes or sub-message)."""
    data = payload.encode() if isinstance(payload, str) else payload
    return tag(number, LEN) + varint(len(data)) + data


def f64(number: int, value: int) -> bytes:
    return tag(number, I64) + value.to_bytes(8, "little")


def f32(number: int, value: int) -> bytes:
    return tag(number, I32) + value.to_bytes(4, "little")


class CountingReader(io.RawIOBase):
    """A seekable file wrapper that counts the bytes actually read."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.fh.seek(offset, whence)

    def tell(self) -> int:
        return self.fh.tell()

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        data = self.fh.read(n)
        self.read_bytes += len(data)
        return data


# --- reader ------------------------------------------------------------------------------------------


def test_varint_round_trip() -> None:
    for n in (0, 1, 127, 128, 300, 2**32, 2**63 - 1, 2**64 - 1):
        assert decode_varint(varint(n), 0) == (n, len(varint(n)))


@pytest.mark.parametrize("as_stream", [False, True])
def test_fields_of_every_wire_type(as_stream: bool) -> None:
    inner = fb(1, "node") + fv(2, 7)
    data = fv(1, 300) + fb(2, "hello") + f64(3, 2**40) + f32(4, 0xDEADBEEF) + fb(5, inner)
    source = io.BytesIO(data) if as_stream else data
    reader = WireReader(source)
    fields = list(reader.fields())
    assert [(f.number, f.wire_type) for f in fields] == [(1, VARINT), (2, LEN), (3, I64), (4, I32), (5, LEN)]
    assert fields[0].value == 300
    assert reader.read(fields[1], 100) == b"hello"
    assert reader.text(fields[1], 3) == "hel…"
    assert fields[2].value == 2**40
    assert fields[3].value == 0xDEADBEEF
    assert fields[-1].end == len(data)
    sub = list(reader.message(fields[-1]))
    assert [(f.number, f.value) for f in sub] == [(1, 4), (2, 7)]
    assert reader.text(sub[0]) == "node"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (tag(1, 3) + tag(1, 4), "groups are not supported"),
        (tag(1, 6) + b"\x00", "invalid wire type 6"),
        (tag(1, 7) + b"\x00", "invalid wire type 7"),
        (b"\x00\x01", "invalid field number 0"),
        (tag(1, VARINT) + b"\xff\xff", "truncated varint"),
        (tag(1, VARINT) + b"\xff" * 11, "varint longer than 10 bytes"),
        (tag(1, LEN) + varint(50) + b"abc", "runs past the end"),
        (tag(1, I64) + b"\x00\x00", "truncated fixed-width value"),
    ],
)
def test_malformed_input_raises_protobuf_error(data: bytes, message: str) -> None:
    with pytest.raises(ProtobufError, match=message):
        list(WireReader(data).fields())


def test_sub_message_cannot_run_past_its_parent() -> None:
    inner = fb(1, "x" * 10)
    data = fb(2, inner[:-3]) + b"zzz"  # the parent claims 3 bytes less than the child needs
    reader = WireReader(data)
    parent = next(reader.fields())
    with pytest.raises(ProtobufError, match="runs past the end of its message"):
        list(reader.message(parent))


def test_expected_wire_type_is_enforced() -> None:
    reader = WireReader(fv(1, 5))
    field = next(reader.fields())
    with pytest.raises(ProtobufError, match="wire type 0, expected 2"):
        reader.read(field, 10)


def test_large_payloads_are_skipped_not_read(tmp_path: Path) -> None:
    """A 1 GiB length-delimited field (sparse on disk) is walked past with a few kilobytes of reads."""
    big = 1 << 30
    path = tmp_path / "big.bin"
    with open(path, "wb") as fh:
        fh.write(fv(1, 8) + tag(7, LEN) + varint(big))
        fh.seek(big - 1, io.SEEK_CUR)
        fh.write(b"\x00")
        fh.write(fb(2, "after"))
    with open(path, "rb") as raw:
        counting = CountingReader(raw)  # type: ignore[arg-type]
        reader = WireReader(counting)  # type: ignore[arg-type]
        fields = list(reader.fields())
        assert [f.number for f in fields] == [1, 7, 2]
        assert fields[1].value == big
        assert reader.text(fields[2]) == "after"
    assert counting.read_bytes < 256 * 1024


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_reader_on_arbitrary_bytes_only_raises_protobuf_error(data: bytes) -> None:
    reader = WireReader(data)
    try:
        for field in reader.fields():
            if field.wire_type == LEN:
                try:
                    list(reader.message(field))
                except ProtobufError:
                    pass
    except ProtobufError:
        pass


# --- sniffing ----------------------------------------------------------------------------------------


def _onnx_bytes() -> bytes:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["X"], ["Y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])],
    )
    return bytes(helper.make_model(graph, producer_name="mlwarden-test").SerializeToString())


def _saved_model_bytes() -> bytes:
    node = fb(1, "x") + fb(2, "Placeholder")
    graph_def = fb(1, node)
    meta_graph = fb(1, fb(4, "serve")) + fb(2, graph_def)
    return fv(1, 1) + fb(2, meta_graph)


def _artifact(data: bytes) -> Artifact:
    return Artifact.from_bytes(data, ("sample",), 0)


def test_sniffs_real_onnx_model() -> None:
    data = _onnx_bytes()
    assert sniff_protobuf_model(_artifact(data)) is Format.ONNX
    assert sniff(_artifact(data)) is Format.ONNX


def test_sniffs_saved_model() -> None:
    assert sniff_protobuf_model(_artifact(_saved_model_bytes())) is Format.SAVEDMODEL
    assert sniff(_artifact(_saved_model_bytes())) is Format.SAVEDMODEL


def test_truncated_models_are_still_claimed() -> None:
    """A cut-off model must reach its handler (to be reported malformed), not pass as unknown content."""
    onnx_data = _onnx_bytes()
    assert sniff_protobuf_model(_artifact(onnx_data[: len(onnx_data) - 5])) is Format.ONNX
    sm = _saved_model_bytes()
    assert sniff_protobuf_model(_artifact(sm[:-4])) is Format.SAVEDMODEL


@pytest.mark.parametrize(
    "data",
    [
        b"hello world, this is plain text\n" * 10,
        fb(2, "only a string field"),  # well formed, but neither schema
        fv(1, 7) + fb(3, "producer"),  # ModelProto-like fields without a graph
        fv(1, 1) + fv(2, 5),  # SavedModel numbers with the wrong wire type (fingerprint.pb shape)
        fb(1, fb(2, "x")),  # keras_metadata.pb shape (nodes = 1, repeated message)
    ],
)
def test_rejects_other_protobufs_and_text(data: bytes) -> None:
    assert sniff_protobuf_model(_artifact(data)) is None


def test_rejects_random_binary() -> None:
    rng = random.Random(1234)
    claimed = 0
    for _ in range(2000):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(2, 400)))
        claimed += sniff_protobuf_model(_artifact(data)) is not None
    assert claimed == 0


def test_sniff_huge_model_reads_little(tmp_path: Path) -> None:
    """Sniffing seeks over a 1 GiB graph field instead of reading it."""
    big = 1 << 30
    graph_start = fb(1, fb(4, "Relu"))  # a first GraphProto field: node
    path = tmp_path / "model.onnx"
    with open(path, "wb") as fh:
        fh.write(fv(1, 8) + fb(2, "exporter") + tag(7, LEN) + varint(big) + graph_start)
        fh.seek(big - len(graph_start) - 1, io.SEEK_CUR)
        fh.write(b"\x00")
        fh.write(fb(8, fb(1, "") + fv(2, 17)))
    assert os.path.getsize(path) > big
    assert sniff(Artifact.from_path(path)) is Format.ONNX


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_sniff_never_raises(data: bytes) -> None:
    assert sniff_protobuf_model(_artifact(data)) in (None, Format.ONNX, Format.SAVEDMODEL)
