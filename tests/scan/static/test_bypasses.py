"""One regression test per known bypass of a peer scanner, citing where it was reported.

Container-level bypasses (zip flag bits, CRC, name mismatch, corrupt first member, 7z, compressed wrappers)
are in test_archives.py; opcode tricks with hand-written streams are in test_pickle.py. This file holds the
catalogue of callables that denylists missed, and the remaining opcode-level tricks. Every fixture is built
here and never unpickled.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import pytest

from mlwarden.core.findings import Severity
from tests.conftest import failing, rule_ids, scan_bytes


def _s(text: str) -> bytes:
    raw = text.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw


def _arg(value: Any) -> bytes:
    if isinstance(value, str):
        return _s(value)
    if isinstance(value, dict):
        return b"}"
    if value is None:
        return b"N"
    if isinstance(value, bool):
        return b"\x88" if value else b"\x89"
    if isinstance(value, int):
        return b"J" + value.to_bytes(4, "little", signed=True)
    if isinstance(value, list):
        return b"](" + b"".join(_arg(v) for v in value) + b"e"
    if isinstance(value, tuple):
        return b"(" + b"".join(_arg(v) for v in value) + b"t"
    raise TypeError(value)


def call(module: str, name: str, *args: Any, protocol: int = 4) -> bytes:
    """STACK_GLOBAL (protocol 4) or GLOBAL (protocol 0-style) module.name, then REDUCE with args."""
    if protocol >= 4:
        head = b"\x80\x04" + _s(module) + _s(name) + b"\x93"
    else:
        head = f"c{module}\n{name}\n".encode()
    return head + b"(" + b"".join(_arg(a) for a in args) + b"tR."


PAYLOAD = "__import__('os').system('touch /tmp/mlwarden-canary-never-created')"

# (reference, module, name, args) — callables that some peer's denylist did not name.
DENYLIST_GAPS = [
    ("GHSA-655q-fx9r-782v (picklescan, pip)", "pip", "main", (["install", "x"],)),
    (
        "GHSA-q77w-mwjj-7mqx (picklescan)",
        "asyncio.unix_events",
        "_UnixSubprocessTransport._start",
        ({}, "id", True, None, None, None, 0),
    ),
    (
        "GHSA-f7qq-56ww-84cr (picklescan, submodule of a denied package)",
        "asyncio.subprocess",
        "create_subprocess_shell",
        ("id",),
    ),
    ("GHSA-vvpj-8cmc-gx39 (picklescan)", "pkgutil", "resolve_name", ("os:system",)),
    ("GHSA-7wx9-6375-f5wh (picklescan)", "profile", "run", (PAYLOAD,)),
    ("GHSA-x696-vm39-cp64 (picklescan)", "profile", "Profile.run", ({}, PAYLOAD)),
    ("GHSA-6vqj-c2q5-j97w (picklescan)", "profile", "Profile.runctx", ({}, PAYLOAD, {}, {})),
    ("GHSA-49gj-c84q-6qm9 (picklescan)", "cProfile", "run", (PAYLOAD,)),
    ("GHSA-9w88-8rmg-7g2p (picklescan)", "cProfile", "runctx", (PAYLOAD, None, None)),
    ("GHSA-5qwp-399c-mjwf (picklescan)", "trace", "Trace.run", ({}, PAYLOAD)),
    ("GHSA-g344-hcph-8vgg (picklescan)", "trace", "Trace.runctx", ({}, PAYLOAD, {}, {})),
    ("CVE-2025-71351 (picklescan, timeit)", "timeit", "timeit", ("", PAYLOAD)),
    ("GHSA-cj3c-v495-4xqh (picklescan)", "code", "InteractiveInterpreter.runcode", ({}, PAYLOAD)),
    ("GHSA-fqq6-7vqf-w3fg (picklescan)", "doctest", "debug_script", (PAYLOAD, True)),
    ("picklescan malicious15 (bdb)", "bdb", "Bdb.run", ({}, PAYLOAD)),
    ("GHSA-wfq2-52f7-7qvj (fickling, runpy)", "runpy", "run_path", ("/tmp/x.py",)),
    ("GHSA-3vg9-h568-4w9m (picklescan, idlelib)", "idlelib.debugobj", "ObjectTreeItem.SetText", ({}, PAYLOAD)),
    ("GHSA-m869-42cg-3xwr (picklescan, idlelib)", "idlelib.run", "Executive.runcode", ({}, PAYLOAD)),
    ("GHSA-f54q-57x4-jg88 (picklescan, lib2to3)", "lib2to3.pgen2.grammar", "Grammar.loads", ({}, "x")),
    (
        "GHSA-p9w7-82w4-7q8m (picklescan, lib2to3)",
        "lib2to3.pgen2.pgen",
        "ParserGenerator.make_label",
        (None, {}, '""+' + PAYLOAD),
    ),
    ("GHSA-xp4f-hrf8-rxw7 (picklescan)", "ensurepip", "_run_pip", (PAYLOAD,)),
    ("picklescan malicious20 (venv)", "venv", "create", ("v", False, False, True, False, "$(id)")),
    ("GHSA-m273-6v24-x4m4 (picklescan, file write)", "distutils.file_util", "write_file", ("x.env", ["y"])),
    ("picklescan malicious18 (pydoc)", "pydoc", "pipepager", ("", "id")),
    ("GHSA-84r2-jw7c-4r5q / GHSA-5hvc-6wx8-mvv4 (pydoc.locate)", "pydoc", "locate", ("os.system",)),
    ("GHSA-955r-x9j8-7rhh (picklescan, _operator)", "_operator", "methodcaller", ("system", "id")),
    ("GHSA-46h3-79wf-xr6c (picklescan, _operator)", "_operator", "attrgetter", ("system",)),
    ("GHSA-4675-36f9-wf6r (picklescan, ctypes)", "ctypes", "CDLL", (None,)),
    ("GHSA-vqmv-47xg-9wpr (picklescan, pty)", "pty", "spawn", (["/bin/sh", "-c", "id"],)),
    (
        "GHSA-q5qq-mvfm-j35x (fickling, multiprocessing)",
        "multiprocessing.util",
        "spawnv_passfds",
        ("/bin/sh", ["/bin/sh", "-c", "id"], ()),
    ),
    ("GHSA-r8g5-cgf2-4m4m (picklescan, numpy.f2py)", "numpy.f2py.crackfortran", "getlincoef", (PAYLOAD, {})),
    ("CVE-2025-71365 (picklescan, numpy.f2py)", "numpy.f2py.crackfortran", "myeval", (PAYLOAD,)),
    ("picklescan malicious22 (numpy.testing)", "numpy.testing._private.utils", "runstring", (PAYLOAD, {})),
    ("GHSA-g38g-8gr9-h9xp (uuid)", "uuid", "_get_command_stdout", ("bash", "-c", "id")),
    ("GHSA-g38g-8gr9-h9xp (_osx_support)", "_osx_support", "_read_output", ("id",)),
    ("GHSA-g38g-8gr9-h9xp (_aix_support)", "_aix_support", "_read_cmd_output", ("id",)),
    ("GHSA-g38g-8gr9-h9xp (_pyrepl)", "_pyrepl.pager", "pipe_pager", ("t", "id")),
    ("GHSA-g38g-8gr9-h9xp (imaplib)", "imaplib", "IMAP4_stream", ("id",)),
    ("GHSA-g38g-8gr9-h9xp (test.support)", "test.support.script_helper", "assert_python_ok", ("-c", PAYLOAD)),
    ("GHSA-g38g-8gr9-h9xp per ModelAudit (codeop)", "codeop", "compile_command", (PAYLOAD,)),
    ("GHSA-g38g-8gr9-h9xp per ModelAudit (compileall)", "compileall", "compile_dir", ("/tmp",)),
    ("GHSA-g38g-8gr9-h9xp per ModelAudit (py_compile)", "py_compile", "compile", ("/tmp/x.py",)),
    ("GHSA-4r9r-ch6f-vxmx (torch bottleneck)", "torch.utils.bottleneck.__main__", "run_cprofile", (PAYLOAD, {})),
    ("GHSA-86cj-95qr-2p4f (torch._dynamo)", "torch._dynamo.guards", "GuardBuilder.get", ({}, PAYLOAD)),
    (
        "GHSA-f4x7-rfwp-v3xw (torch.fx)",
        "torch.fx.experimental.symbolic_shapes",
        "ShapeEnv.evaluate_guards_expression",
        ({}, PAYLOAD, []),
    ),
    ("GHSA-f745-w6jp-hpxx (torch collect_env)", "torch.utils.collect_env", "run", ("id",)),
    (
        "GHSA-h3qp-7fh3-f8h4 (torch datapipes)",
        "torch.utils.data.datapipes.utils.decoder",
        "basichandlers",
        ("pickle", "x"),
    ),
    ("GHSA-vr7h-p6mm-wpmh (torch.jit)", "torch.jit.unsupported_tensor_ops", "execWrapper", (PAYLOAD, {}, {})),
    (
        "GHSA-vv6j-3g6g-2pvj (torch config module)",
        "torch.utils._config_module",
        "ConfigModule.load_config",
        (None, "x"),
    ),
    ("picklescan malicious17 (torch._inductor)", "torch._inductor.codecache", "compile_file", ("", "", ["sh"])),
    ("modelscan #338 (mlflow)", "mlflow.projects.backend.local", "_run_entry_point", ("id", ".", "", "")),
    ("modelscan #338 (pandas reader)", "pandas.io.parsers.readers", "read_csv", ("http://127.0.0.1:9/x",)),
    ("picklescan dns_exfiltration (ssl)", "ssl", "get_server_certificate", (("127.0.0.1", 443),)),
    ("fickling test_network_protocol_ssrf (smtplib)", "smtplib", "SMTP", ("127.0.0.1", 25)),
    ("fickling test_network_protocol_ssrf (ftplib)", "ftplib", "FTP", ("127.0.0.1",)),
    ("fickling test_io_fileio", "_io", "FileIO", ("/etc/passwd",)),
    ("picklescan cloudpickle_codeinjection", "cloudpickle.cloudpickle", "_builtin_type", ("CodeType",)),
    ("GHSA-6ggj-6f2q-f7mx (fickling, subinterpreters)", "_interpreters", "run_string", (1, PAYLOAD)),
    ("GHSA-565g-hwwr-4pp3 (fickling, marshal)", "marshal", "loads", ("x",)),
]


@pytest.mark.parametrize("protocol", [0, 4])
@pytest.mark.parametrize(("ref", "module", "name", "args"), DENYLIST_GAPS, ids=[g[0] for g in DENYLIST_GAPS])
def test_callables_peers_missed_are_high_or_critical(
    tmp_path: Path, ref: str, module: str, name: str, args: tuple[Any, ...], protocol: int
) -> None:
    result = scan_bytes(tmp_path, call(module, name, *args, protocol=protocol))
    hits = [f for f in result.findings if f.detail("global") == f"{module}.{name}"]
    assert hits, (ref, [(f.rule_id, f.detail("global")) for f in result.findings])
    assert hits[0].severity >= Severity.HIGH, ref


def test_missing_memo_after_payload(tmp_path: Path) -> None:
    # picklescan data2/keyerror-exploit.pkl; modelscan PR #348: payload runs, then BINGET of an unset memo index
    # crashed the scanner into "0 issues".
    data = b"\x80\x04cos\nsystem\n" + _s("id") + b"\x85R0" + b"h\x03h\x00\x93."
    assert {"MLW-PKL-100", "MLW-PKL-120"} <= rule_ids(scan_bytes(tmp_path, data))


def test_memo_type_confusion_after_payload(tmp_path: Path) -> None:
    # picklescan data2/type-confusion-exploit.pkl: an int fetched as a STACK_GLOBAL operand.
    data = b"\x80\x04cos\nsystem\n" + _s("id") + b"\x85R0J*\x00\x00\x00\x94" + _s("os") + b"\x94h\x00h\x01\x93."
    result = scan_bytes(tmp_path, data)
    assert "MLW-PKL-100" in rule_ids(failing(result))


def test_builtins_through_numpy_and_dict_get(tmp_path: Path) -> None:
    # modelscan #89 / #330: dict.get(numpy.__builtins__, "exec").
    data = (
        b"\x80\x04"
        + _s("builtins")
        + _s("dict.get")
        + b"\x93"
        + _s("numpy")
        + _s("__builtins__")
        + b"\x93"
        + _s("exec")
        + b"\x86R"
        + _s(PAYLOAD)
        + b"\x85R."
    )
    ids = rule_ids(failing(scan_bytes(tmp_path, data)))
    assert "MLW-PKL-112" in ids


def test_import_module_with_str_join_obfuscation(tmp_path: Path) -> None:
    # modelscan #331: importlib.import_module(str.join("", ["o", "s"])) — the module name never appears whole.
    data = (
        b"\x80\x04"
        + _s("importlib")
        + _s("import_module")
        + b"\x93"
        + _s("builtins")
        + _s("str.join")
        + b"\x93"
        + _s("")
        + b"]("
        + _s("o")
        + _s("s")
        + b"e\x86R\x85R."
    )
    result = scan_bytes(tmp_path, data)
    assert "importlib.import_module" in {f.detail("global") for f in failing(result)}


def test_marshal_code_into_function_type(tmp_path: Path) -> None:
    # fickling GHSA-565g-hwwr-4pp3.
    import marshal

    code = marshal.dumps(compile("1", "<x>", "eval"))
    data = (
        b"\x80\x04"
        + _s("types")
        + _s("FunctionType")
        + b"\x93"
        + _s("marshal")
        + _s("loads")
        + b"\x93"
        + b"C"
        + bytes([len(code)])
        + code
        + b"\x85R}\x86R)R."
    )
    found = {f.detail("global") for f in failing(scan_bytes(tmp_path, data))}
    assert {"types.FunctionType", "marshal.loads"} <= found


def test_partial_of_torch_load(tmp_path: Path) -> None:
    # picklescan malicious19: functools.partial(torch.load, ..., weights_only=False) as the reducer.
    data = (
        b"\x80\x04"
        + _s("functools")
        + _s("partial")
        + b"\x93"
        + _s("torch")
        + _s("load")
        + b"\x93\x85R"
        + b"("
        + _s("torch")
        + _s("load")
        + b"\x93("
        + _s("other.bin")
        + b"t}"
        + _s("weights_only")
        + b"\x89sNtb"
        + b")R."
    )
    assert "torch.load" in {f.detail("global") for f in failing(scan_bytes(tmp_path, data))}


def test_spanned_zip_marker_prefix(tmp_path: Path) -> None:
    # google/saferpickle PR #46: a PK\x07\x08 prefix hid the zip from magic-based routing; zipfile still opens it.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", call("os", "system", "id"))
    result = scan_bytes(tmp_path, b"PK\x07\x08" + buf.getvalue())
    assert "MLW-PKL-100" in rule_ids(failing(result))


def test_pickle_under_torch_extension_with_each_protocol(tmp_path: Path) -> None:
    # CVE-2025-10155 (picklescan): a plain pickle named .bin/.pt was parsed as a torch zip and passed.
    for protocol in (0, 4):
        for name in ("model.bin", "model.pt", "model.pth", "model.ckpt", "config.json", "notes.txt"):
            result = scan_bytes(tmp_path, call("os", "system", "id", protocol=protocol), name)
            assert "MLW-PKL-100" in rule_ids(result), (protocol, name)
