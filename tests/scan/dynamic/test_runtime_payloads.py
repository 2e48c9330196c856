"""Payloads whose effect is computed at load time, so static analysis cannot resolve what they do.

Each payload is built here (never loaded on the host): module and attribute names assembled by string
arithmetic, a getattr chain through a function's ``__globals__``, marshalled code objects, functions pickled
by value with cloudpickle and dill, and a Keras Lambda layer whose bytecode writes a file. For each one the
static verdict is recorded (``record_property``) and the dynamic engine must report the *actual effect* —
the command it ran, the canary path it tried to write, the loopback address it dialled — while the host
sees none of it. (Observed static verdicts: string arithmetic -> MLW-PKL-102/110/112; getattr chain ->
MLW-PKL-102/103/110; marshal -> MLW-PKL-101; cloudpickle/dill -> MLW-PKL-105 (+102/103/112 for dill);
Keras Lambda -> MLW-KERAS-001.)
"""

from __future__ import annotations

import marshal
import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mlwarden.core.findings import Severity
from mlwarden.scan.result import FileResult
from mlwarden_samples.malicious_pickle import bbytes, call, dct, glob, lst, pkl, ustr
from tests.scan.dynamic.conftest import (
    Listener,
    assert_contained,
    dyn_hits,
    finding_text,
    needs_sandbox,
    scan_dynamic,
    scan_static,
)

pytestmark = needs_sandbox


def _concat(*parts: str) -> bytes:
    """``functools.reduce(operator.add, [parts...])``: the joined string exists only at load time."""
    return call(glob("functools", "reduce"), glob("operator", "add"), lst(*(ustr(p) for p in parts)))


def _record(record_property: Callable[[str, object], None], static: FileResult) -> list[str]:
    """Record the static verdict (see the junit XML); it must at least fail the default policy.

    Static analysis flags the constructs (getattr, __import__, marshal, a by-value function, a Lambda layer)
    but cannot say what they will do; the dynamic assertions that follow show the effect itself.
    """
    rules = sorted(f"{f.rule_id}:{f.severity}" for f in static.findings)
    record_property("static_findings", rules)
    assert max((f.severity for f in static.findings), default=None) in (Severity.HIGH, Severity.CRITICAL), rules
    return rules


def _effects(result: FileResult, canary: Path, listener: Listener | None = None) -> dict[str, list[str]]:
    """The dynamic findings naming the canary path / the listener's address, by rule."""
    out: dict[str, list[str]] = {}
    for rule_id in ("MLW-DYN-001", "MLW-DYN-002", "MLW-DYN-003"):
        needles = [str(canary)] + ([f"127.0.0.1:{listener.port}"] if listener else [])
        hits = [f for f in dyn_hits(result, rule_id) if any(n in finding_text(f) for n in needles)]
        out[rule_id] = [f"{f.location.phase}: {f.evidence[:160]}" for f in hits]
    return out


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


# --- (a) string arithmetic ----------------------------------------------------------------------------


def test_string_arithmetic_import(
    tmp_path: Path, canary_dir: Path, listener: Listener, record_property: Callable[[str, object], None]
) -> None:
    """``getattr(__import__("o"+"s"), "sys"+"tem")("touch " + canary)``: neither name is in the file."""
    canary = canary_dir / "string-arith.canary"
    body = call(
        call(
            glob("builtins", "getattr"),
            call(glob("builtins", "__import__"), _concat("o", "s")),
            _concat("sy", "st", "em"),
        ),
        _concat("to", "uch ", str(canary)),
    )
    path = _write(tmp_path, "model.pkl", pkl(body, 2))
    raw = path.read_bytes()
    assert b"os\n" not in raw
    assert b"system" not in raw

    static = scan_static(path)
    _record(record_property, static)
    result = scan_dynamic(path)

    effects = _effects(result, canary)
    exec_hits = dyn_hits(result, "MLW-DYN-001", "deserialize")
    assert any(f"touch {canary}" in finding_text(f) for f in exec_hits), effects
    assert exec_hits[0].severity is Severity.CRITICAL
    assert effects["MLW-DYN-003"], "the attempted write of the canary must be reported"
    assert_contained(canary_dir, listener)


# --- (b) getattr chain through __globals__ ------------------------------------------------------------


def test_getattr_chain_through_globals(
    tmp_path: Path, canary_dir: Path, listener: Listener, record_property: Callable[[str, object], None]
) -> None:
    """``getattr(attrgetter("__init__.__globals__")(zipfile.ZipFile)["o"+"s"], "sys"+"tem")(cmd)``."""
    canary = canary_dir / "getattr-chain.canary"
    module_globals = call(
        call(glob("operator", "attrgetter"), ustr("__init__.__globals__")), glob("zipfile", "ZipFile")
    )
    os_module = call(glob("operator", "getitem"), module_globals, _concat("o", "s"))
    body = call(call(glob("builtins", "getattr"), os_module, _concat("sys", "tem")), ustr(f"touch {canary}"))
    path = _write(tmp_path, "model.pkl", pkl(body, 2))

    static = scan_static(path)
    _record(record_property, static)
    result = scan_dynamic(path)

    assert any(f"touch {canary}" in finding_text(f) for f in dyn_hits(result, "MLW-DYN-001", "deserialize"))
    assert _effects(result, canary)["MLW-DYN-003"]
    assert_contained(canary_dir, listener)


# --- (c) marshal / code objects -----------------------------------------------------------------------


def _payload_source(canary: Path, port: int) -> str:
    return (
        "def payload(*args):\n"
        "    try:\n"
        f"        open({str(canary)!r}, 'w').write('mlwarden canary')\n"
        "    except OSError:\n"
        "        pass\n"
        "    sock = __import__('soc' + 'ket')\n"
        f"    sock.create_connection(('127.0.0.1', {port}), 2)\n"
    )


def _code_of(source: str) -> Any:
    """The code object of the one function defined in ``source`` (compiling never runs it)."""
    module = compile(source, "<payload>", "exec")
    return next(c for c in module.co_consts if hasattr(c, "co_code"))


def test_marshalled_code_object(
    tmp_path: Path, canary_dir: Path, listener: Listener, record_property: Callable[[str, object], None]
) -> None:
    """``types.FunctionType(marshal.loads(<bytes>), {})()`` — the behaviour is bytecode, not pickle globals."""
    canary = canary_dir / "marshal.canary"
    code = marshal.dumps(_code_of(_payload_source(canary, listener.port)))
    body = call(call(glob("types", "FunctionType"), call(glob("marshal", "loads"), bbytes(code)), dct()))
    path = _write(tmp_path, "model.pkl", pkl(body, 3))

    static = scan_static(path)
    _record(record_property, static)
    result = scan_dynamic(path)

    effects = _effects(result, canary, listener)
    assert [e for e in effects["MLW-DYN-003"] if e.startswith("deserialize")], effects
    net = dyn_hits(result, "MLW-DYN-002", "deserialize")
    assert any(f"127.0.0.1:{listener.port}" in finding_text(f) for f in net), effects
    # (constructing the code object itself is not a deviation: the pickle profile allows code.construct:* because
    # libraries build code objects while unpickling; the gadget is named by the pickle.global judgement instead)
    gadget = [f for f in result.findings if f.location.phase == "deserialize" and "marshal:loads" in f.evidence]
    assert gadget, [f"{f.rule_id} {f.evidence[:120]}" for f in result.findings]
    assert gadget[0].severity >= Severity.HIGH
    assert_contained(canary_dir, listener)


# --- (d) functions pickled by value: cloudpickle and dill ----------------------------------------------


class _CallOnLoad:
    """``__reduce__`` returning ``(function, ())``: unpickling calls the function."""

    def __init__(self, func: Callable[[], object]) -> None:
        self.func = func

    def __reduce__(self) -> tuple[Callable[[], object], tuple[()]]:
        return self.func, ()


def _closure_payload(canary: str, port: int) -> Callable[[], object]:
    """A nested function (so it is pickled by value) closing over the canary path and the port."""

    def payload() -> object:
        try:
            with open(canary, "w") as fh:
                fh.write("mlwarden canary")
        except OSError:
            pass
        return __import__("socket").create_connection(("127.0.0.1", port), 2)

    return payload


def _dumps_cloudpickle(obj: object) -> bytes:
    import cloudpickle

    return cloudpickle.dumps(obj)


def _dumps_dill(obj: object) -> bytes:
    import dill

    return dill.dumps(obj, recurse=True)


@pytest.mark.parametrize("dumps", [_dumps_cloudpickle, _dumps_dill], ids=["cloudpickle", "dill"])
def test_function_pickled_by_value(
    dumps: Callable[[object], bytes],
    tmp_path: Path,
    canary_dir: Path,
    listener: Listener,
    record_property: Callable[[str, object], None],
) -> None:
    canary = canary_dir / "by-value.canary"
    data = dumps(_CallOnLoad(_closure_payload(str(canary), listener.port)))
    path = _write(tmp_path, "model.pkl", data)
    assert not canary.exists()  # pickling never called the function

    static = scan_static(path)
    _record(record_property, static)
    result = scan_dynamic(path)

    assert result.framework == "pickle"
    effects = _effects(result, canary, listener)
    assert [e for e in effects["MLW-DYN-003"] if e.startswith("deserialize")], effects
    net = dyn_hits(result, "MLW-DYN-002", "deserialize")
    assert any(f"127.0.0.1:{listener.port}" in finding_text(f) for f in net), effects
    assert_contained(canary_dir, listener)


# --- (e) Keras Lambda whose bytecode writes the canary -------------------------------------------------


def _keras_lambda_model(folder: Path, canary: Path) -> Path:
    """A real ``model.save`` of a Sequential whose Lambda's function is swapped for the payload before saving.

    The model is built (and traced) with a harmless ``x * 2``; the payload lambda is only serialised, never
    called on the host.
    """
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    payload = eval(f"lambda x: (open({str(canary)!r}, 'w').write('mlwarden canary'), x)[1]")  # noqa: S307
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Lambda(lambda x: x * 2.0)])
        model.layers[-1].function = payload
        path = folder / "model.keras"
        model.save(path)
    return path


def test_keras_lambda_bytecode(
    tmp_path: Path, canary_dir: Path, listener: Listener, record_property: Callable[[str, object], None]
) -> None:
    canary = canary_dir / "keras-lambda.canary"
    folder = tmp_path / "model"
    folder.mkdir()
    path = _keras_lambda_model(folder, canary)
    assert not canary.exists()
    with zipfile.ZipFile(path) as zf:  # the path is inside marshalled bytecode, not in readable config
        config = zf.read("config.json")
    assert str(canary).encode() not in config

    static = scan_static(path)
    _record(record_property, static)
    result = scan_dynamic(path)

    assert result.framework == "keras"
    effects = _effects(result, canary)
    assert [e for e in effects["MLW-DYN-003"] if e.startswith("deserialize")], effects
    assert_contained(canary_dir, listener)
