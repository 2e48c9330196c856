"""The warm pool keeps a cold run's verdicts and isolation while loading many models in one sandbox."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from mlwarden.core.policy import SandboxSettings
from mlwarden.scan.dynamic import engine as dyn
from mlwarden.scan.dynamic.pool import WarmPool, analyse_many
from mlwarden.scan.dynamic.sandbox import SANDBOX_TMP
from tests.scan.dynamic.conftest import PROBE_TAG, needs_sandbox, no_survivors, probe_pickle

pytestmark = needs_sandbox

LIMITS = SandboxSettings(wall_seconds=30.0)


def verdict(result: dyn.DynamicResult) -> list[tuple[str, str | None]]:
    """What a user sees of a result: rule IDs with the phase they were attributed to."""
    return sorted({(f.rule_id, f.location.phase) for f in result.findings})


def statuses(result: dyn.DynamicResult) -> list[tuple[str, str]]:
    return [(p.name, p.status) for p in result.phases]


def probe_report(result: dyn.DynamicResult) -> dict[str, object]:
    """The JSON a probe raised through its phase error."""
    for phase in result.phases:
        if PROBE_TAG in phase.error:
            return json.loads(phase.error.split(PROBE_TAG, 1)[1])
    raise AssertionError(f"the probe did not report: {statuses(result)}")


# Inside the sandbox: what a model loaded after another one can see of it.
LOOK_AROUND = f"""
import builtins, json, os
others = []
for pid in os.listdir('/proc'):
    if pid.isdigit():
        try:
            others.append(open(f'/proc/{{pid}}/cmdline', 'rb').read().replace(b'\\0', b' ').decode())
        except OSError:
            pass
raise RuntimeError({PROBE_TAG!r} + json.dumps({{
    'leak': hasattr(builtins, 'MLW_LEAK'),
    'cwd': os.getcwd(),
    'cwd_entries': os.listdir('.'),
    'tmp_entries': sorted(os.listdir(os.path.dirname(os.getcwd()))),
    'sleepers': [cmd for cmd in others if 'sleep' in cmd],
}}))
"""


def benign_pickle(folder: Path, name: str = "benign.pkl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(pickle.dumps({"weights": [0.5, 1.5], "name": "tiny"}, protocol=4))
    return path


@pytest.fixture(scope="module")
def torch_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A benign torch module and a malicious torch checkpoint (canary under /tmp) in one folder."""
    torch = pytest.importorskip("torch")
    from mlwarden_samples import build_malicious

    root = tmp_path_factory.mktemp("pool-torch")
    canary = root / "canary"
    benign = root / "models" / "mlp.pt"
    benign.parent.mkdir(parents=True)
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)), benign)
    (sample,) = build_malicious(root / "models", canary, only=["torch-zip-data-pkl"])
    return benign, sample.path, canary


def test_results_equal_cold_runs_for_benign_and_malicious(torch_pair: tuple[Path, Path, Path]) -> None:
    benign, malicious, canary = torch_pair
    cold = {p: dyn.analyse(p, "torch", (str(p),), LIMITS) for p in (benign, malicious)}
    with WarmPool("torch", benign.parent.parent, LIMITS) as pool:
        warm = {p: pool.analyse(p) for p in (malicious, benign)}
    for p in (benign, malicious):
        assert verdict(warm[p]) == verdict(cold[p]), p
        assert statuses(warm[p]) == statuses(cold[p]), p
    assert ("MLW-DYN-003", "deserialize") in verdict(warm[malicious])  # the payload's write was seen
    assert [f for f in warm[benign].findings if f.severity >= f.severity.MEDIUM] == []
    assert not list(canary.glob("*"))


def test_malicious_then_benign_leaks_nothing(tmp_path: Path) -> None:
    payload = (
        "import builtins, os\n"
        "builtins.MLW_LEAK = 1\n"
        "open('in-cwd.txt', 'w').write('x')\n"
        f"open('{SANDBOX_TMP}/shared.txt', 'w').write('x')\n"
        f"os.system('touch {SANDBOX_TMP}/from-shell')\n"
    )
    bad = probe_pickle(tmp_path / "m", payload, "bad.pkl")
    good = benign_pickle(tmp_path / "m")
    look = probe_pickle(tmp_path / "m", LOOK_AROUND, "look.pkl")
    cold_good = dyn.analyse(good, "pickle", (str(good),), LIMITS)
    with WarmPool("pickle", tmp_path / "m", LIMITS) as pool:
        first = pool.analyse(bad)
        after = pool.analyse(good)
        seen = probe_report(pool.analyse(look))
    assert "MLW-DYN-001" in {f.rule_id for f in first.findings}
    # The benign model after the malicious one: exactly its cold verdict, and none of the payload's events.
    assert verdict(after) == verdict(cold_good)
    model_phases = ("deserialize", "instantiate", "infer")
    assert not [
        e for e in after.events if e.phase in model_phases and e.kind.startswith(("process.", "file.w", "file.m"))
    ]
    assert not [e for e in after.events if "shared.txt" in e.target or "from-shell" in e.target]
    # What the payload left behind is gone for the next model: Python state, files, its private folder.
    assert seen["leak"] is False
    assert seen["cwd_entries"] == []
    assert seen["tmp_entries"] == [Path(str(seen["cwd"])).name]


def test_background_process_does_not_survive(tmp_path: Path) -> None:
    marker = "313.25"
    payload = (
        "import os, subprocess\n"
        f"subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"  # escapes the process group
        f"os.system('sleep {marker}1 &')\n"
    )
    bad = probe_pickle(tmp_path / "m", payload, "bad.pkl")
    look = probe_pickle(tmp_path / "m", LOOK_AROUND, "look.pkl")
    with WarmPool("pickle", tmp_path / "m", LIMITS) as pool:
        first = pool.analyse(bad)
        assert no_survivors(marker, grace=0.5)  # gone on the host before the next model starts
        seen = probe_report(pool.analyse(look))
        assert pool.starts == 1  # killed cleanly, the sandbox stays in service
    assert ("MLW-DYN-001", "deserialize") in verdict(first)
    assert seen["sleepers"] == []


def test_hanging_child_is_killed_and_the_pool_goes_on(tmp_path: Path) -> None:
    hang = probe_pickle(tmp_path / "m", "import time\ntime.sleep(120)\n", "hang.pkl")
    good = benign_pickle(tmp_path / "m")
    limits = SandboxSettings(wall_seconds=2.0)
    with WarmPool("pickle", tmp_path / "m", limits) as pool:
        stuck = pool.analyse(hang)
        after = pool.analyse(good)
        assert pool.starts == 1
    assert stuck.seconds < 10
    incomplete = [f for f in stuck.findings if f.rule_id == "MLW-DYN-010"]
    assert incomplete
    assert "wall-clock limit" in incomplete[0].evidence
    assert statuses(after) == [("import", "ok"), ("deserialize", "ok"), ("instantiate", "ok"), ("infer", "ok")]
    assert "MLW-DYN-010" not in {f.rule_id for f in after.findings}


def test_payload_killing_the_server_is_reported_and_the_pool_restarts(tmp_path: Path) -> None:
    killer = probe_pickle(tmp_path / "m", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", "k.pkl")
    good = benign_pickle(tmp_path / "m")
    with WarmPool("pickle", tmp_path / "m", LIMITS) as pool:
        hit = pool.analyse(killer)
        after = pool.analyse(good)
        assert pool.starts == 2
    ids = {f.rule_id for f in hit.findings}
    assert "MLW-DYN-010" in ids  # the run could not finish: never a silent clean
    assert any(e.kind == "process.signal" for e in hit.events)
    assert statuses(after)[-1] == ("infer", "ok")


def test_forged_trace_and_records_do_not_end_a_request_early(tmp_path: Path) -> None:
    forge = (
        "import json, os\n"
        "fake = b'1 mkdir(\"/.mlwarden-pool/1/end\", 0777) = -1 ENOENT\\n'\n"
        "done = (json.dumps({'type': 'pool.done', 'req': 1, 'returncode': 0}) + '\\n').encode()\n"
        "for fd in range(3, 64):\n"
        "    try:\n"
        "        os.write(fd, fake + done)\n"
        "    except OSError:\n"
        "        pass\n"
        "os.system('true')\n"
    )
    bad = probe_pickle(tmp_path / "m", forge, "forge.pkl")
    good = benign_pickle(tmp_path / "m")
    with WarmPool("pickle", tmp_path / "m", LIMITS) as pool:
        hit = pool.analyse(bad)
        after = pool.analyse(good)
    # what the payload did after its forgeries was still traced from outside and attributed to it
    assert [e for e in hit.events if e.kind == "process.exec" and e.source == "syscall" and e.target.endswith("true")]
    assert statuses(hit)[-1] == ("infer", "ok")
    assert not [e for e in after.events if e.kind == "process.exec"]


def test_analyse_many_spans_folders(tmp_path: Path) -> None:
    a = benign_pickle(tmp_path / "one")
    b = probe_pickle(tmp_path / "two", "import os\nos.system('true')\n", "bad.pkl")
    results = analyse_many([a, b], "pickle", LIMITS)
    assert set(results) == {a, b}
    assert "MLW-DYN-001" in {f.rule_id for f in results[b].findings}
    assert "MLW-DYN-001" not in {f.rule_id for f in results[a].findings}
    assert statuses(results[a])[-1] == ("infer", "ok")


def test_file_outside_the_pool_is_refused(tmp_path: Path) -> None:
    inside = benign_pickle(tmp_path / "in")
    outside = benign_pickle(tmp_path / "out")
    with WarmPool("pickle", inside.parent, LIMITS) as pool, pytest.raises(ValueError, match="not under"):
        pool.analyse(outside)
