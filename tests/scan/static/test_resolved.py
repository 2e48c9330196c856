"""Globals are judged as the objects they resolve to, not as spellings (red-team report, issue 11 §1).

Prefix rules ("every class under lightgbm", "every public name of torch.nn.functional") admitted whatever a
module happened to expose: ``lightgbm.basic.NamedTemporaryFile`` *is* ``tempfile.NamedTemporaryFile``,
``sklearn.callback._transport.Client`` *is* ``multiprocessing.connection.Client``. The resolved table built
offline from the frameworks (scripts/build-resolved-allowlist) says what each admitted name is.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import sys
import types
from pathlib import Path

import pytest

from mlwarden.core.errors import UnsafeModelError
from mlwarden.core.findings import Severity
from mlwarden.loader import restricted_loads
from mlwarden.scan.static.pickle import allowlist, rules
from mlwarden.scan.static.pickle.resolved import table
from tests.conftest import failing, rule_ids, scan_bytes


def _global_call(module: str, name: str, *args: str | int | bool) -> bytes:
    """A protocol-0 pickle: ``module.name(*args)`` (strings, ints, booleans only)."""
    out = b"c" + module.encode() + b"\n" + name.encode() + b"\n("
    for a in args:
        if isinstance(a, bool):
            out += b"I0" + (b"1" if a else b"0") + b"\n"
        elif isinstance(a, int):
            out += b"I" + str(a).encode() + b"\n"
        else:
            out += b"V" + a.encode("raw-unicode-escape") + b"\n"
    return out + b"tR."


def _named_temporary_file(module: str, folder: Path) -> bytes:
    # NamedTemporaryFile(mode, buffering, encoding, newline, suffix, prefix, dir, delete): creates folder/pwned*
    return (
        b"c"
        + module.encode()
        + b"\nNamedTemporaryFile\n(Vw+b\nI-1\nNNV\nVpwned\nV"
        + str(folder).encode()
        + b"\nI00\ntR."
    )


@pytest.fixture
def canary_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "canary"
    folder.mkdir()
    return folder


@pytest.mark.parametrize(
    ("module", "name", "home"),
    [
        ("lightgbm.basic", "NamedTemporaryFile", "tempfile.NamedTemporaryFile"),
        ("sklearn.callback._transport", "Client", "multiprocessing.connection.Client"),
        ("sklearn.callback._progressbar", "Thread", "threading.Thread"),
        ("sklearn.gaussian_process._gpc", "itemgetter", "operator.itemgetter"),
        ("sklearn.metrics._ranking", "partial", "functools.partial"),
    ],
)
def test_reexport_under_an_allowed_prefix_is_judged_as_its_home(module: str, name: str, home: str) -> None:
    pytest.importorskip(module.split(".")[0])
    assert allowlist.prefix_admits(module, name)  # the spelling alone would have been admitted
    obj = getattr(importlib.import_module(module), name)
    assert f"{obj.__module__}.{obj.__qualname__}".endswith(home.rpartition(".")[2])
    judgement = rules.judge(module, name, frozenset(), frozenset())
    assert judgement.verdict is rules.Verdict.DANGEROUS
    assert judgement.rule is not None
    assert judgement.rule.severity >= Severity.HIGH
    assert home in judgement.matched


def test_module_objects_under_a_function_module_are_not_admitted() -> None:
    # torch.nn.functional admits "every public name"; `importlib` there is the importlib module.
    judgement = rules.judge("torch.nn.functional", "importlib", frozenset(), frozenset())
    assert judgement.verdict is not rules.Verdict.ALLOWED
    assert table().resolve("torch.nn.functional.importlib").reason == "module object"


def test_reexported_tempfile_class_is_flagged_and_never_runs(tmp_path: Path, canary_dir: Path) -> None:
    pytest.importorskip("lightgbm")
    data = _named_temporary_file("lightgbm.basic", canary_dir)
    result = scan_bytes(tmp_path, data, "model.pkl")
    assert "MLW-PKL-103" in rule_ids(result)  # judged as tempfile.NamedTemporaryFile: file system
    with pytest.raises(UnsafeModelError):
        restricted_loads(data, display="model.pkl")
    assert list(canary_dir.iterdir()) == []


def test_the_same_payload_through_tempfile_itself_is_what_the_test_claims(canary_dir: Path) -> None:
    # The fixture is a working payload: unrestricted, it creates the canary (proves the test above can fail).
    import pickle

    pytest.importorskip("lightgbm")
    fh = pickle.loads(_named_temporary_file("lightgbm.basic", canary_dir))
    fh.close()
    assert [p.name[:5] for p in canary_dir.iterdir()] == ["pwned"]


def test_table_entries_are_admitted_spellings_and_resolve_to_themselves() -> None:
    t = table()
    assert t.entries
    assert t.modules
    for full, entry in list(t.entries.items())[::97]:  # a spread sample: every entry is a family spelling,
        module, _, name = full.rpartition(".")  # or a class judged by what unpickling can make it do
        kind = entry if isinstance(entry, str) else entry[0]
        assert allowlist.prefix_admits(module, name) or kind in allowlist.DATA_KINDS, full
        if kind == "alias":
            assert entry[1] != full
    excluded_homes = [v[1] for v in t.excluded.values() if len(v) > 1]
    assert "operator.itemgetter" in excluded_homes
    assert "functools.partial" in excluded_homes


@pytest.mark.parametrize("framework", ["sklearn", "torch", "pandas", "scipy", "numpy", "lightgbm", "xgboost"])
def test_table_agrees_with_the_installed_framework(framework: str) -> None:
    """Every admitted entry of an installed framework is, live, a class/function defined there or an alias."""
    fw = pytest.importorskip(framework)
    t = table()
    if t.versions.get(framework) != str(fw.__version__):
        pytest.fail(
            f"resolved table built from {framework} {t.versions.get(framework)}, installed {fw.__version__}: "
            "run scripts/build-resolved-allowlist"
        )
    checked = 0
    for full, entry in t.entries.items():
        module, _, name = full.rpartition(".")
        if module.split(".")[0] != framework:
            continue
        obj = getattr(sys.modules.get(module) or importlib.import_module(module), name)
        assert not isinstance(obj, types.ModuleType), full
        if entry == "value":
            assert not callable(obj), full
            continue
        home = f"{obj.__module__}.{getattr(obj, '__qualname__', getattr(obj, '__name__', ''))}"
        assert home == (entry[1] if isinstance(entry, list) else full), full
        if inspect.isclass(obj):
            assert not issubclass(obj, types.ModuleType)
        checked += 1
    assert checked > 20


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"cbuiltins\nbytearray\n(L51539607552L\ntR.", "bytearray(48 GiB)"),
        (b"cbuiltins\nlist\n(cbuiltins\nrange\n(L10000000000L\ntRtR.", "list(range(10**10))"),
        (b"cbuiltins\nbytes\n(I2000000000\ntR.", "bytes(2e9)"),
    ],
)
def test_resource_exhaustion_through_allowed_callables(tmp_path: Path, data: bytes, why: str) -> None:
    result = scan_bytes(tmp_path, data, "model.pkl")
    assert "MLW-PKL-117" in rule_ids(result), why
    assert failing(result)


def test_small_allocations_stay_clean(tmp_path: Path) -> None:
    assert failing(scan_bytes(tmp_path, b"cbuiltins\nbytearray\n(I1024\ntR.", "model.pkl")) == []


def test_math_functions_that_explode_on_big_integers_are_not_allowed(tmp_path: Path) -> None:
    bomb = b"cmath\ncomb\n(L1000000000L\nL500000000L\ntR."
    assert failing(scan_bytes(tmp_path, bomb, "model.pkl"))
    assert rules.judge("math", "sqrt", frozenset(), frozenset()).verdict is rules.Verdict.ALLOWED


def test_restricted_loader_refuses_a_wildcard_reexport(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A user's `[pickle] allow = ["canarypkg.*"]` admits class-like names; the loader checks what they are.
    pkg = tmp_path / "canarypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from tempfile import NamedTemporaryFile as Spool\n"
        "class Model:\n    def __init__(self, *a):\n        self.a = a\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from mlwarden.core.policy import PickleRules, Policy

    policy = Policy(pickle=PickleRules(allow=("canarypkg.*",)))
    model = restricted_loads(b"ccanarypkg\nModel\n(I1\ntR.", policy)
    assert type(model).__name__ == "Model"
    assert model.a == (1,)
    with pytest.raises(UnsafeModelError, match="tempfile"):
        restricted_loads(b"ccanarypkg\nSpool\n)R.", policy)


@pytest.mark.parametrize(
    ("module", "name"),
    [("http", "HTTPStatus"), ("re", "RegexFlag"), ("inspect", "_ParameterKind"), ("uuid", "SafeUUID")],
)
def test_stdlib_enums_are_data_whatever_their_module_does(tmp_path: Path, module: str, name: str) -> None:
    # Severity by the object's capability, not by its module's name: http.HTTPStatus is not network access.
    value = getattr(importlib.import_module(module), name)
    member = next(iter(value))
    data = pickle.dumps({"status": member}, protocol=2)
    assert failing(scan_bytes(tmp_path, data, "model.pkl")) == []
    assert restricted_loads(data)["status"] is member


@pytest.mark.parametrize(
    ("module", "name", "why"),
    [
        ("collections", "ChainMap", "data-class"),
        ("http.client", "HTTPConnection", "construction reaches"),
        ("logging", "FileHandler", "construction reaches"),
        ("threading", "Thread", "construction reaches"),
        ("asyncio.base_events", "Server", "in asyncio"),
    ],
)
def test_stdlib_classes_are_judged_by_what_unpickling_can_make_them_do(module: str, name: str, why: str) -> None:
    t = table()
    full = f"{module}.{name}"
    if why == "data-class":
        assert t.kind(full) == "data-class"
        assert rules.judge(module, name, frozenset(), frozenset()).verdict is rules.Verdict.ALLOWED
    else:
        assert t.kind(full) is None
        assert t.excluded[full][0].startswith(why)
        assert rules.judge(module, name, frozenset(), frozenset()).verdict is not rules.Verdict.ALLOWED


def test_pure_builtins_kept_as_values_are_allowed(tmp_path: Path) -> None:
    data = b"\x80\x02}X\x08\x00\x00\x00hashfxn\x94cbuiltins\nhash\ns."  # gensim Word2Vec keeps builtins.hash
    assert failing(scan_bytes(tmp_path, data, "w2v.pkl")) == []


def test_a_class_that_is_data_only_when_rebuilt_is_flagged_when_called(tmp_path: Path) -> None:
    # argparse.HelpFormatter: rebuilding it (NEWOBJ + state) runs no code of its own, but calling it runs __init__,
    # which reaches shutil.get_terminal_size. The table says so; a REDUCE of it is a finding, a NEWOBJ is not.
    entry = table().entries["argparse.HelpFormatter"]
    assert isinstance(entry, list)
    assert entry[0] == allowlist.RECONSTRUCT_ONLY
    rebuilt = b"\x80\x02cargparse\nHelpFormatter\nq\x00)\x81q\x01}q\x02X\x05\x00\x00\x00_progq\x03X\x01\x00\x00\x00xsb."
    called = b"\x80\x02cargparse\nHelpFormatter\nX\x01\x00\x00\x00x\x85R."
    assert failing(scan_bytes(tmp_path, rebuilt, "rebuilt.pkl")) == []
    assert restricted_loads(rebuilt)._prog == "x"
    assert "MLW-PKL-119" in rule_ids(scan_bytes(tmp_path, called, "called.pkl"))
    with pytest.raises(UnsafeModelError, match="MLW-PKL-119"):
        restricted_loads(called)
