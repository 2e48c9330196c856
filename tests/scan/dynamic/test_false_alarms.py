"""False alarms of dynamic analysis on benign third-party models, one regression test per class, and the
infer phase's several inputs (an input-dependent branch must fire).

Classes (issue "Zero false alarms on real third-party models"):

* protocol-2 pickles with bytes (numpy arrays, old joblib files) import ``encodings.latin_1`` while unpickling;
* jinja2's own traceback rewriting when a real chat template raises compiles, renames and executes a one-line
  ``raise`` (``jinja2/debug.py:fake_traceback``);
* lazily imported helpers that are installed (or probed and missing, like ``tabulate``) in any phase;
* ``collections.namedtuple``'s exec while a scikit-learn pipeline predicts (Nystroem -> SGDOneClassSVM).

The profile judges these by capability (``import.installed``) and by named call sites (``[machinery]``), not by
the module names samples happened to import. Fixtures are built here, by generators of this file.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import pytest

from mlwarden.core.findings import Severity
from mlwarden.scan.dynamic.events import Event
from mlwarden.scan.dynamic.profiles import PROFILE_DIR, Profile, installed_module, load_profile
from tests.scan.dynamic.conftest import dyn_findings, dyn_hits, finding_text, needs_sandbox, phase_status, scan_dynamic

PY = "{python}"


def _failing(result: object) -> list[str]:
    return [
        f"{f.rule_id}[{f.location.phase}] {f.evidence[:300]}"
        for f in dyn_findings(result)  # type: ignore[arg-type]
        if f.severity >= Severity.MEDIUM
    ]


# --- the profile's capabilities and machinery, without a sandbox ------------------------------------------------


def _python(rel: str) -> str:
    """An absolute path of an installed file (as the runner reports it), for ``rel`` under site-packages/stdlib."""
    import sysconfig

    return f"{sysconfig.get_paths()['purelib']}/{rel}"


@pytest.mark.parametrize("phase", ["deserialize", "instantiate", "infer", "teardown"])
@pytest.mark.parametrize("module", ["encodings.latin_1", "encodings.cp437", "zipfile", "numpy.core.multiarray"])
def test_installed_imports_are_a_capability_in_every_phase(phase: str, module: str) -> None:
    for framework in ("pickle", "joblib", "numpy", "torch", "keras", "jinja"):
        event = Event(phase, "import", module, "audit", caller=_python("numpy/lib/format.py:read_array"))
        assert load_profile(framework).allows(event), (framework, module)


def test_an_import_nothing_installed_provides_is_a_deviation_unless_it_failed() -> None:
    profile = load_profile("keras")
    probe = Event("infer", "import", "tabulate_not_installed_here", "audit", caller=_python("keras/src/x.py:summary"))
    assert not installed_module("tabulate_not_installed_here")
    assert not profile.allows(probe)  # could be a module the model dropped into a writable folder
    assert profile.allows(probe, missing={"tabulate_not_installed_here"})  # the runner saw no finder find it
    assert profile.allows(Event("infer", "import.missing", "tabulate_not_installed_here", "audit"))


def test_sensitive_imports_need_an_installed_module_body_or_a_named_call_site() -> None:
    profile = load_profile("pickle")
    by_model = Event("deserialize", "import", "subprocess", "audit", caller="/srv/models/x.py:<module>")
    by_loader = Event("deserialize", "import", "subprocess", "audit", caller="?")
    by_library = Event("deserialize", "import", "subprocess", "audit", caller=_python("joblib/_utils.py:<module>"))
    assert not profile.allows(by_model)
    assert not profile.allows(by_loader)
    assert profile.allows(by_library)
    named = Profile("pickle", capabilities=["import.installed"], machinery=[f"import:ctypes by {PY}/gguf/x.py:load"])
    assert named.allows(Event("infer", "import", "ctypes", "audit", caller=_python("gguf/x.py:load")))
    assert not named.allows(Event("infer", "import", "ctypes", "audit", caller=_python("gguf/x.py:other")))


def test_a_profile_without_the_capability_lists_imports_literally() -> None:
    old = Profile("pickle", {"deserialize": ["import:decimal"]})
    assert old.allows(Event("deserialize", "import", "decimal", "audit"))
    assert not old.allows(Event("deserialize", "import", "fractions", "audit"))


def test_jinja_traceback_rewriting_is_machinery_and_only_there() -> None:
    profile = load_profile("jinja")
    site = _python("jinja2/debug.py:fake_traceback")
    for kind, target in (
        ("code.compile", f"<template> by {site}"),
        ("code.construct", f"<template>:top-level template code by {site}"),
        ("code.exec", f"<template>:top-level template code by {site}"),
    ):
        for phase in ("instantiate", "infer"):
            assert profile.allows(Event(phase, kind, target, "audit")), (kind, phase)
    elsewhere = _python("jinja2/debug.py:rewrite_traceback_stack")
    assert not profile.allows(Event("infer", "code.exec", f"<x>:<module> by {elsewhere}", "audit"))
    assert not profile.allows(Event("infer", "code.exec", "<string>:<module> by /srv/models/evil.py:f", "audit"))


def test_namedtuple_is_common_machinery_of_every_framework() -> None:
    import collections

    site = f"{Path(collections.__file__)}:namedtuple"
    for framework in ("pickle", "joblib", "torch", "keras", "onnx", "numpy", "jinja", "torchscript"):
        profile = load_profile(framework)
        assert profile.allows(Event("infer", "code.exec", f"<string>:<module> by {site}", "audit")), framework
    assert 'include = ["common"]' in (PROFILE_DIR / "joblib.toml").read_text()


def test_six_module_body_exec_is_machinery_but_six_exec_elsewhere_is_not() -> None:
    # python-dateutil 2.x imports six, whose module body exec()s a constant definition of raise_from: a benign
    # scikit-learn pickle whose load imports pandas -> dateutil (any environment with botocore has dateutil 2.x)
    # must not fail the sandbox for it; six.exec_ is builtins.exec, so an exec by any other site is still judged.
    six_site = _python("six.py:<module>")
    for framework in ("pickle", "joblib", "torch"):
        profile = load_profile(framework)
        assert profile.allows(Event("load", "code.exec", f"<string>:<module> by {six_site}", "audit")), framework
        assert not profile.allows(
            Event("load", "code.exec", f"<string>:<module> by {_python('six.py:exec_')}", "audit")
        )
        assert not profile.allows(
            Event("load", "code.exec", f"<string>:<module> by {_python('sitx.py:<module>')}", "audit")
        )


def test_every_machinery_entry_is_a_call_site_with_a_comment() -> None:
    for path in sorted(PROFILE_DIR.glob("*.toml")):
        text = path.read_text()
        profile = load_profile(path.stem)
        for entry in profile.machinery:
            if entry.startswith("code."):
                assert " by {python}/" in entry, (path.name, entry)
                assert ":" in entry.rpartition("/")[2], (path.name, entry)  # file *and* function
        if profile.machinery:
            block = text.split("[machinery]", 1)[1].split("[phases.", 1)[0]
            assert "    #" in block, f"{path.name}: machinery entries need a comment saying why"


# --- the classes in the sandbox ---------------------------------------------------------------------------------


@needs_sandbox
def test_a_failed_import_probe_is_reported_missing_and_not_a_deviation(tmp_path: Path) -> None:
    """An optional dependency probed and absent (Keras and ``tabulate``): the runner's last finder reports it."""
    from tests.scan.dynamic.conftest import run_probe

    result, _ = run_probe(
        tmp_path, "try:\n    import mlwarden_not_installed_xyz\nexcept ImportError:\n    pass\nimport colorsys\n"
    )
    missing = [e for e in result.events if e.kind == "import.missing"]
    assert [e.target for e in missing] == ["mlwarden_not_installed_xyz"]
    assert [f.evidence for f in result.findings if f.rule_id == "MLW-DYN-006"] == []
    imports = {e.target: e.caller for e in result.events if e.kind == "import"}
    assert "mlwarden_not_installed_xyz" in imports
    assert "colorsys" in imports  # installed: allowed by capability; the code that ran it is judged (exec)


@needs_sandbox
def test_protocol_2_pickles_with_bytes(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    joblib = pytest.importorskip("joblib")
    data = {"weights": np.arange(12, dtype="float32").reshape(3, 4), "names": [b"a\xe9", "b"]}
    plain = tmp_path / "py2.pkl"
    plain.write_bytes(pickle.dumps(data, protocol=2))  # bytes pickled as _codecs.encode(..., "latin1")
    assert b"latin1" in plain.read_bytes()
    old = tmp_path / "old.joblib"
    joblib.dump(data, old, protocol=2)
    arr = tmp_path / "objects.npy"
    obj = np.empty(2, dtype=object)
    obj[:] = [b"\x00\xff", {"k": np.ones(2)}]
    with arr.open("wb") as fh:  # what np.save writes, with the object array pickled at protocol 2 (numpy 1 / py2)
        np.lib.format.write_array_header_1_0(fh, np.lib.format.header_data_from_array_1_0(obj))
        pickle.dump(obj, fh, protocol=2)
    for path, framework in ((plain, "pickle"), (old, "joblib"), (arr, "numpy")):
        result = scan_dynamic(path)
        assert result.framework == framework
        assert _failing(result) == [], path.name
        assert set(phase_status(result).values()) == {"ok"}, (path.name, result.timeline)


@needs_sandbox
@pytest.mark.parametrize(
    ("template", "phase"),
    [
        # a real chat template's guard: raise_exception is not defined by plain Jinja, so rendering raises
        (
            "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
            "{% for m in messages %}{{ m['content'] }}{% endfor %}",
            "infer",
        ),
        ("{% for m in messages %}{{ m['content'] }}{% if m %}{% break %}{% endif %}{% endfor %}", "instantiate"),
    ],
    ids=["raises-at-render", "syntax-error"],
)
def test_chat_template_that_raises(tmp_path: Path, template: str, phase: str) -> None:
    pytest.importorskip("jinja2")
    path = tmp_path / "tokenizer_config.json"
    path.write_text(json.dumps({"chat_template": template}))
    result = scan_dynamic(path)
    assert result.framework == "jinja"
    assert _failing(result) == []
    assert phase_status(result)[phase] == "error"  # MLW-DYN-012, info: jinja2 rewrote the traceback on the way
    assert [f.rule_id for f in dyn_findings(result)] == ["MLW-DYN-012"]


@needs_sandbox
def test_sklearn_pipeline_whose_predict_defines_namedtuples(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    joblib = pytest.importorskip("joblib")
    pytest.importorskip("sklearn")
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import SGDOneClassSVM
    from sklearn.pipeline import make_pipeline

    x = np.random.default_rng(0).standard_normal((40, 3))
    model = make_pipeline(Nystroem(n_components=8, random_state=0), SGDOneClassSVM(random_state=0)).fit(x)
    path = tmp_path / "ocsvm.joblib"
    joblib.dump(model, path)
    result = scan_dynamic(path)
    assert result.framework == "joblib"
    assert _failing(result) == []
    assert set(phase_status(result).values()) == {"ok"}, result.timeline


@needs_sandbox
@pytest.mark.parametrize(
    "template",
    [
        # fails at render on an undefined name before reaching its lookups: seen in the compiled template
        "{{ request['application']['\\x5f\\x5fglobals\\x5f\\x5f']['\\x5f\\x5fbuiltins\\x5f\\x5f'] }}",
        "{{ getattr('', '__class__') }}",
        # reaches interpreter internals at run time, also through |attr
        "{{ (''|attr('__class__')).__mro__ }}",
    ],
    ids=["escaped-item", "builtin-name", "attr-filter"],
)
def test_template_reaching_for_the_interpreter_is_reported(tmp_path: Path, template: str) -> None:
    """Losing the traceback false alarm must not lose these: their lookups are observed instead."""
    pytest.importorskip("jinja2")
    path = tmp_path / "tokenizer_config.json"
    path.write_text(json.dumps({"chat_template": template}))
    result = scan_dynamic(path)
    hits = dyn_hits(result, "MLW-DYN-005")
    assert hits, [f.evidence for f in dyn_findings(result)]
    assert any("code.introspect" in finding_text(f) for f in hits)


# --- the infer phase runs several inputs ---------------------------------------------------------------------

_BRANCHY = """
import sys
import torch


class Branchy(torch.nn.Module):
    def __init__(self, canary: str) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)
        self.canary = canary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() > 0):  # never with zeros: only an input-dependent run reaches it
            x = x + torch.from_file(self.canary, True, 4).sum() * 0  # shared=True: opens O_RDWR|O_CREAT
        return self.lin(x)


torch.jit.save(torch.jit.script(Branchy(sys.argv[1])), sys.argv[2])
"""


@needs_sandbox
def test_torchscript_branch_that_fires_only_on_positive_input(tmp_path: Path, canary_dir: Path) -> None:
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    import subprocess
    import sys

    canary = canary_dir / "branch.canary"
    script = tmp_path / "make_branchy.py"  # TorchScript needs the module's source in a file
    script.write_text(_BRANCHY)
    model = tmp_path / "model" / "branchy.pt"
    model.parent.mkdir()
    subprocess.run([sys.executable, str(script), str(canary), str(model)], check=True, capture_output=True)
    assert not canary.exists()

    result = scan_dynamic(model)

    assert result.framework == "torchscript"
    assert phase_status(result)["infer"] == "ok", result.timeline
    writes = dyn_hits(result, "MLW-DYN-003", "infer")
    assert any(str(canary) in finding_text(f) for f in writes), [f.evidence for f in dyn_findings(result)]
    assert not canary.exists()  # contained: the host's folder does not exist inside


def test_infer_inputs_cover_zeros_ones_normal_large_and_ranges() -> None:
    np = pytest.importorskip("numpy")
    from mlwarden.scan.dynamic.adapters import LARGE, run_variants, variants

    xs = variants(np.zeros((1, 3), dtype="float32"), low=[0, 1, 2], high=[1, 2, 3])
    sums = [float(x.sum()) for x in xs]
    assert sums[:2] == [0.0, 3.0]
    assert any(s >= LARGE for s in sums)
    assert any(s <= -LARGE for s in sums)
    assert [0.0, 1.0, 2.0] in [x[0].tolist() for x in xs]
    assert [1.0, 2.0, 3.0] in [x[0].tolist() for x in xs]
    ids = variants(np.zeros((1, 4), dtype="int64"), high=10)
    assert all(x.dtype == np.int64 and x.min() >= 0 and x.max() < 10 for x in ids)
    assert any(x.max() == 9 for x in ids)
    seen: list[float] = []
    assert run_variants(lambda x: seen.append(float(x.sum())) or "first", xs) == "first"
    assert len(seen) == len(xs)


# --- the real-world benign corpus ----------------------------------------------------------------------------

REALWORLD = Path("/work/shared/corpus/realworld")
#: files per format label of the corpus's labels.json: the whole corpus takes over five minutes on two cores, so
#: this is a fixed subset (the first files of each format, sorted by path), at least 40 files, every format
PER_FORMAT = 4
#: plus the files that were false alarms before profiles described capabilities (templates that raise)
KNOWN = (
    "benign/llama.cpp/CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja",
    "benign/llama.cpp/fireworks-ai-llama-3-firefunction-v2.jinja",
    "benign/llama.cpp/google-gemma-2-2b-it.jinja",
)


def realworld_subset() -> list[Path]:
    """A fixed, representative subset of the real-world benign corpus: up to PER_FORMAT files of every format."""
    labels = json.loads((REALWORLD / "labels.json").read_text())
    by_format: dict[str, list[str]] = {}
    for rel, meta in sorted(labels.items()):
        if meta.get("label") == "benign" and (REALWORLD / rel).exists():
            by_format.setdefault(str(meta.get("format")), []).append(rel)
    chosen = [rel for rels in by_format.values() for rel in rels[:PER_FORMAT]]
    chosen += [rel for rel in KNOWN if rel not in chosen and (REALWORLD / rel).exists()]
    return [REALWORLD / rel for rel in chosen]


@needs_sandbox
@pytest.mark.skipif(not (REALWORLD / "labels.json").is_file(), reason="the real-world corpus is not here")
def test_realworld_benign_corpus_is_clean_in_dynamic_mode(capsys: pytest.CaptureFixture[str]) -> None:
    from mlwarden.cli.main import main

    files = realworld_subset()
    assert len(files) >= 40
    main(["scan", "--dynamic", "--no-progress", "--no-suppressions", "-f", "json", "-j", "2", *map(str, files)])
    report = json.loads(capsys.readouterr().out)
    flagged = {
        f["path"]: [f"{x['rule_id']} {x['evidence'][:200]}" for x in f["findings"]]
        for f in report["files"]
        if any(x["severity"] in ("medium", "high", "critical") for x in f["findings"])
    }
    assert flagged == {}
