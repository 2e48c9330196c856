"""Pickle emulation: every way of naming and calling a callable resolves to the real one.

Fixtures are pickles written opcode by opcode (or by pickling harmless classes whose __reduce__ names a
canary payload). Nothing here is ever unpickled.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import pickle
import struct
from pathlib import Path

import pytest

from mlwarden.core.findings import Severity
from mlwarden.core.policy import Limits, PickleRules, Policy, RuleOverride
from tests.conftest import failing, rule_ids, scan_bytes, scan_one


def _str(s: str) -> bytes:
    raw = s.encode()
    return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE


def canary_cmd(tmp_path: Path) -> str:
    return f"touch {tmp_path / 'canary'}"


def test_global_reduce_resolves_call_and_arguments(tmp_path: Path) -> None:
    cmd = canary_cmd(tmp_path)
    data = b"\x80\x02cos\nsystem\nq\x00X" + struct.pack("<I", len(cmd)) + cmd.encode() + b"\x85R."
    result = scan_bytes(tmp_path, data, "model.pkl")
    [finding] = [f for f in result.findings if f.rule_id == "MLW-PKL-100"]
    assert finding.severity is Severity.CRITICAL
    assert finding.cwe == 78
    assert finding.location.offset == 2  # the GLOBAL opcode
    assert finding.evidence == f"os.system({cmd!r})"
    assert finding.detail("global") == "os.system"


def test_protocol0_text_pickle_under_a_text_name(tmp_path: Path) -> None:
    data = b"cos\nsystem\n(S'touch canary'\ntR."
    result = scan_bytes(tmp_path, data, "notes.txt")
    assert "MLW-PKL-100" in rule_ids(result)
    assert result.formats[0][1] == "pickle"


def test_stack_global_with_memoised_decoys(tmp_path: Path) -> None:
    # "os"/"system" are memoised and popped; decoys "torch"/"LongStorage" are pushed last. A scanner that
    # takes the last two strings sees torch.LongStorage; the machine (and the emulator) sees os.system.
    data = (
        b"\x80\x04"
        + _str("os")
        + b"\x94"
        + b"0"
        + _str("system")
        + b"\x94"
        + b"0"
        + _str("torch")
        + b"\x94"
        + b"0"
        + _str("LongStorage")
        + b"\x94"
        + b"0"
        + b"h\x00h\x01\x93"
        + _str("id")
        + b"\x85R."
    )
    result = scan_bytes(tmp_path, data)
    assert {f.detail("global") for f in failing(result)} == {"os.system"}


def test_stack_global_operands_at_index_zero(tmp_path: Path) -> None:
    # picklescan GHSA-9gvj-pp9x-gcfr: protocol-0 STRING operands, no PROTO, STACK_GLOBAL first.
    data = b"S'os'\nS'system'\n\x93S'ls'\n\x85R."
    result = scan_bytes(tmp_path, data)
    assert "MLW-PKL-100" in rule_ids(result)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"(S'print(1)'\ni__builtin__\nexec\n.", "builtins.exec"),  # INST (picklescan issue #13)
        (b"\x80\x04(" + _str("smtplib") + _str("SMTP") + b"\x93" + _str("127.0.0.1") + b"o0N.", "smtplib.SMTP"),
        (b"\x80\x02csubprocess\nPopen\n]q\x00X\x02\x00\x00\x00idq\x01a\x85\x81.", "subprocess.Popen"),  # NEWOBJ
        (b"\x80\x04csubprocess\nPopen\n)}\x92.", "subprocess.Popen"),  # NEWOBJ_EX
    ],
    ids=["INST", "OBJ+POP", "NEWOBJ", "NEWOBJ_EX"],
)
def test_every_call_opcode_is_seen(tmp_path: Path, data: bytes, expected: str) -> None:
    result = scan_bytes(tmp_path, data)
    assert expected in {f.detail("global") for f in failing(result)}


def test_extension_registry_callable_is_unresolved(tmp_path: Path) -> None:
    result = scan_bytes(tmp_path, b"\x80\x02\x82\x01X\x02\x00\x00\x00id\x85R.")
    [finding] = [f for f in result.findings if f.rule_id == "MLW-PKL-111"]
    assert finding.severity is Severity.HIGH
    assert "extension 1" in finding.evidence


def test_computed_stack_global_is_unresolved(tmp_path: Path) -> None:
    # module name produced by a call (str.join at load time): no static list can judge the result.
    data = (
        b"\x80\x04"
        + b"cbuiltins\nstr.join\n"
        + _str("")
        + b"]("
        + _str("o")
        + _str("s")
        + b"e\x86R"
        + _str("system")
        + b"\x93"
        + _str("id")
        + b"\x85R."
    )
    result = scan_bytes(tmp_path, data)
    ids = rule_ids(result)
    assert "MLW-PKL-111" in ids
    assert "MLW-PKL-110" in ids  # builtins.str.join itself is not on the allowlist


def test_payload_before_truncated_tail(tmp_path: Path) -> None:
    good = pickle.dumps({"w": [1.0] * 10}, protocol=2)
    data = b"\x80\x02cbuiltins\nexec\nX\x05\x00\x00\x00pass\n\x85R0" + good[2:40]  # cut mid-stream
    result = scan_bytes(tmp_path, data)
    ids = rule_ids(result)
    assert {"MLW-PKL-101", "MLW-PKL-120"} <= ids
    assert next(f for f in result.findings if f.rule_id == "MLW-PKL-101").severity is Severity.CRITICAL


def test_second_pickle_after_benign_one(tmp_path: Path) -> None:
    data = pickle.dumps(["a", "b"], protocol=4) + b"\x80\x04cposix\nsystem\nX\x02\x00\x00\x00id\x85R."
    result = scan_bytes(tmp_path, data)
    [finding] = failing(result)
    assert finding.detail("global") == "posix.system"
    assert finding.location.offset > len(pickle.dumps(["a", "b"], protocol=4))


def test_trailing_garbage_is_low(tmp_path: Path) -> None:
    result = scan_bytes(tmp_path, pickle.dumps([1, 2]) + b"\n\n\t\t")
    assert rule_ids(result) == {"MLW-PKL-121"}
    assert not failing(result)


@pytest.mark.parametrize("wrap", [gzip.compress, bz2.compress, lzma.compress], ids=["gzip", "bzip2", "xz"])
def test_compressed_pickles(tmp_path: Path, wrap) -> None:  # type: ignore[no-untyped-def]
    data = wrap(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R.")
    result = scan_bytes(tmp_path, data, "model.bin")
    [finding] = failing(result)
    assert finding.rule_id == "MLW-PKL-100"
    assert finding.location.chain[1].startswith("<")  # the decompressed layer is named in the chain


def test_unknown_global_is_medium_and_policy_can_allow_it(tmp_path: Path) -> None:
    # An installed module's function that no list knows: medium, and the policy can allow it.
    data = b"\x80\x02cemail.utils\nformatdate\n)R."
    [finding] = scan_bytes(tmp_path, data).findings
    assert (finding.rule_id, finding.severity) == ("MLW-PKL-110", Severity.MEDIUM)
    allowed = Policy(pickle=PickleRules(allow=("email.utils.formatdate",)))
    assert scan_bytes(tmp_path, data, policy=allowed).findings == ()


def test_custom_class_of_the_saving_code_has_its_own_rule(tmp_path: Path) -> None:
    # A class of the model's own (not installed) package, or of the training script: its own rule, low, and a
    # remediation that says how to allow it.
    for module in (b"mycompany.models", b"__main__"):
        data = b"\x80\x02c" + module + b"\nTinyNet\n)\x81}b."
        [finding] = scan_bytes(tmp_path, data).findings
        assert (finding.rule_id, finding.severity) == ("MLW-PKL-118", Severity.LOW)
        assert "[pickle] allow" in finding.remediation
    # Any name of the saving code that the pickle only rebuilds (NEWOBJ + BUILD), never calls: the same rule; called,
    # the same name is medium (it could be a function the training script imported).
    rebuilt = b"\x80\x02c__main__\nautoencoder\nq\x00)\x81q\x01}b."
    [finding] = scan_bytes(tmp_path, rebuilt).findings
    assert (finding.rule_id, finding.severity) == ("MLW-PKL-118", Severity.LOW)
    [finding] = scan_bytes(tmp_path, b"\x80\x02c__main__\nautoencoder\nq\x00)R.").findings
    assert (finding.rule_id, finding.severity) == ("MLW-PKL-110", Severity.MEDIUM)
    # Names of classes that run processes or connections are not "custom", wherever they come from.
    [finding] = scan_bytes(tmp_path, b"\x80\x02c__main__\nPopen\n)R.").findings
    assert finding.severity >= Severity.MEDIUM
    data = b"\x80\x02cmycompany.models\nTinyNet\n)\x81}b."
    allowed = Policy(pickle=PickleRules(allow=("mycompany.models.TinyNet",)))
    assert scan_bytes(tmp_path, data, policy=allowed).findings == ()
    prefix = Policy(pickle=PickleRules(allow=("mycompany.*",)))
    assert scan_bytes(tmp_path, data, policy=prefix).findings == ()


def test_policy_deny_and_severity_override(tmp_path: Path) -> None:
    data = pickle.dumps(__import__("collections").OrderedDict(a=1), protocol=2)
    assert not scan_bytes(tmp_path, data).findings
    denied = Policy(pickle=PickleRules(deny=("collections.OrderedDict",)))
    assert rule_ids(scan_bytes(tmp_path, data, policy=denied)) == {"MLW-PKL-114"}
    relaxed = Policy(rules={"MLW-PKL-110": RuleOverride(severity=Severity.LOW)})
    unknown = scan_bytes(tmp_path, b"\x80\x02cemail.utils\nformatdate\n)R.", policy=relaxed)
    assert [f.severity for f in unknown.findings] == [Severity.LOW]
    off = Policy(rules={"MLW-PKL-110": RuleOverride(enabled=False)})
    assert scan_bytes(tmp_path, b"\x80\x02cemail.utils\nformatdate\n)R.", policy=off).findings == ()


def test_build_on_imported_object(tmp_path: Path) -> None:
    # modelscan issue #85: BUILD sets attributes on numpy.prod (a module-level object).
    data = b"\x80\x02cnumpy\nprod\nN}X\x01\x00\x00\x00aX\x02\x00\x00\x00oss\x86b."
    result = scan_bytes(tmp_path, data)
    assert "MLW-PKL-113" in rule_ids(failing(result))


@pytest.mark.parametrize(
    ("module", "name"),
    [("pathlib", "os.system"), ("numpy", "__builtins__"), ("torch", "_utils.__dict__"), ("numpy", "prod.os.system")],
)
def test_attribute_traversal_in_names(tmp_path: Path, module: str, name: str) -> None:
    data = b"\x80\x04" + _str(module) + _str(name) + b"\x93" + _str("id") + b"\x85R."
    result = scan_bytes(tmp_path, data)
    [finding] = failing(result)
    assert finding.rule_id == "MLW-PKL-112"


def test_nested_pickle_loads_is_analysed(tmp_path: Path) -> None:
    inner = b"\x80\x02csubprocess\ncheck_output\nX\x02\x00\x00\x00id\x85R."
    data = b"\x80\x02cpickle\nloads\nC" + bytes([len(inner)]) + inner + b"\x85R."
    result = scan_bytes(tmp_path, data)
    by_rule = {f.rule_id: f for f in result.findings}
    assert by_rule["MLW-PKL-105"].detail("global") == "pickle.loads"
    inner_finding = by_rule["MLW-PKL-100"]
    assert inner_finding.location.chain[-1].startswith("<embedded @ byte")
    assert inner_finding.detail("global") == "subprocess.check_output"


def test_partial_of_safe_function_is_clean_and_of_dangerous_is_flagged(tmp_path: Path) -> None:
    safe = b"\x80\x02c_functools\npartial\nctorch.nn.functional\nrelu\n\x85R."
    assert not failing(scan_bytes(tmp_path, safe))
    bad = b"\x80\x02cfunctools\npartial\ncos\nsystem\n\x85R."
    assert "os.system" in {f.detail("global") for f in failing(scan_bytes(tmp_path, bad))}


def test_ufunc_reconstruct_is_judged_by_its_arguments(tmp_path: Path) -> None:
    ok = b"\x80\x02cnumpy._core\n_ufunc_reconstruct\nX\x05\x00\x00\x00numpyX\x05\x00\x00\x00log1p\x86R."
    assert not scan_bytes(tmp_path, ok).findings
    evil = b"\x80\x02cnumpy._core\n_ufunc_reconstruct\nX\x02\x00\x00\x00osX\x06\x00\x00\x00system\x86R."
    ids = rule_ids(failing(scan_bytes(tmp_path, evil)))
    assert {"MLW-PKL-100", "MLW-PKL-102"} <= ids


def test_recursive_memo_structures_terminate(tmp_path: Path) -> None:
    obj: list = []
    obj.append(obj)
    d: dict = {}
    d["self"] = d
    result = scan_bytes(tmp_path, pickle.dumps([obj, d] * 1000, protocol=4))
    assert result.findings == ()


def test_deeply_nested_structures_hit_the_depth_limit(tmp_path: Path) -> None:
    data = b"(" * 50_000 + b"N" + b"t" * 50_000 + b"."
    result = scan_bytes(tmp_path, data, policy=Policy(limits=Limits(max_pickle_depth=1000)))
    [finding] = result.findings
    assert (finding.rule_id, finding.detail("limit")) == ("MLW-GEN-001", "max_pickle_depth")
    assert finding.severity is Severity.MEDIUM  # a limit is never a pass


def test_opcode_limit_is_a_failing_finding(tmp_path: Path) -> None:
    data = pickle.dumps(list(range(5000)), protocol=0)
    result = scan_bytes(tmp_path, data, policy=Policy(limits=Limits(max_pickle_opcodes=100)))
    assert [f.detail("limit") for f in failing(result)] == ["max_pickle_opcodes"]


def test_huge_announced_argument_is_not_read_into_memory(tmp_path: Path) -> None:
    data = b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"x" * 300
    result = scan_bytes(tmp_path, data)
    [finding] = result.findings
    assert finding.rule_id == "MLW-PKL-120"
    assert "truncated" in finding.evidence


def test_large_bytes_argument_to_a_loader_is_followed(tmp_path: Path) -> None:
    inner = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R." + b"\x00" * (5 << 20)  # > inline limit
    data = b"\x80\x04ctorch.storage\n_load_from_bytes\nB" + struct.pack("<I", len(inner)) + inner + b"\x85R."
    result = scan_bytes(tmp_path, data)
    assert "os.system" in {f.detail("global") for f in failing(result)}


def test_benign_python_objects_are_clean(tmp_path: Path) -> None:
    import argparse
    import collections
    import datetime
    import decimal

    obj = {
        "ns": argparse.Namespace(lr=0.1, epochs=3),
        "od": collections.OrderedDict(a=1),
        "dd": collections.defaultdict(list),
        "when": datetime.datetime(2026, 1, 1),
        "dec": decimal.Decimal("1.5"),
        "set": {1, 2},
        "fs": frozenset({3}),
        "bytes": b"\x00\x01",
        "path": Path("/tmp/x"),
    }
    for proto in range(6):
        assert scan_bytes(tmp_path, pickle.dumps(obj, protocol=proto)).findings == (), proto


def test_torch_legacy_magic_sequence_with_payload_in_sys_info(tmp_path: Path) -> None:
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    proto = pickle.dumps(1001, protocol=2)
    evil = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R."
    data = magic + proto + evil + pickle.dumps({}, protocol=2) + pickle.dumps([], protocol=2) + b"\x00" * 64
    result = scan_bytes(tmp_path, data, "model.pt")
    assert [f.detail("global") for f in failing(result)] == ["os.system"]
    assert "MLW-PKL-121" not in rule_ids(result)  # raw storage bytes after 5 pickles are expected


def test_pickle_named_safetensors_is_analysed_as_pickle(tmp_path: Path) -> None:
    result = scan_bytes(tmp_path, b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R.", "model.safetensors")
    assert "MLW-PKL-100" in rule_ids(result)


def test_reduce_class_written_by_pickle_itself(tmp_path: Path) -> None:
    marker = tmp_path / "canary"

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    result = scan_bytes(tmp_path, pickle.dumps(Payload(), protocol=5))
    assert "builtins.exec" in {f.detail("global") for f in failing(result)}
    assert not marker.exists()


def test_stream_is_read_lazily(tmp_path: Path) -> None:
    # A valid pickle followed by 50 MB of zeros is analysed without reading the tail into memory.
    p = tmp_path / "big.pkl"
    with open(p, "wb") as fh:
        fh.write(pickle.dumps({"a": 1}, protocol=4))
        fh.seek(50 << 20)
        fh.write(b"\x00")
    result = scan_one(p)
    assert rule_ids(result) == {"MLW-PKL-120"} or rule_ids(result) == {"MLW-PKL-121"}


def test_never_raises_on_arbitrary_bytes(tmp_path: Path) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    prefixes = st.sampled_from([b"", b"\x80\x02", b"\x80\x04\x95", b"c", b"(", b"PK\x03\x04", b"\x93NUMPY"])

    @settings(max_examples=300, deadline=None)
    @given(prefix=prefixes, body=st.binary(max_size=200))
    def check(prefix: bytes, body: bytes) -> None:
        result = scan_bytes(tmp_path, prefix + body, "fuzz.bin")
        assert result.error is None
        assert "MLW-GEN-002" not in rule_ids(result), [f.evidence for f in result.findings]

    check()


def test_io_roundtrip_helpers_do_not_leak_between_scans(tmp_path: Path) -> None:
    a = scan_bytes(tmp_path, b"\x80\x02cos\nsystem\n.", "a.pkl")
    b = scan_bytes(tmp_path, pickle.dumps(io.BytesIO.__name__), "b.pkl")
    assert failing(a)
    assert not b.findings


def test_consecutive_pickles_limit(tmp_path: Path) -> None:
    data = b"".join(pickle.dumps(i) for i in range(20))
    assert scan_bytes(tmp_path, data, policy=Policy(limits=Limits(max_pickles_per_stream=20))).findings == ()
    result = scan_bytes(tmp_path, data, policy=Policy(limits=Limits(max_pickles_per_stream=19)))
    assert [f.detail("limit") for f in failing(result)] == ["max_pickles_per_stream"]


def test_hidden_pickle_in_trailing_data(tmp_path: Path) -> None:
    # A benign pickle, padding, then a payload no standard loader reaches but a custom one could seek to.
    data = pickle.dumps({"epoch": 3}, protocol=2) + b"\x00" * 7 + EVIL_TRAILING
    result = scan_bytes(tmp_path, data)
    [finding] = failing(result)
    assert finding.detail("global") == "os.system"
    assert "after the last pickle" in finding.evidence


EVIL_TRAILING = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R."
