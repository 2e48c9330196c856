"""The pre-commit hooks (.pre-commit-hooks.yaml) and the GitHub Actions example, run for real on a throw-away repo.

pre-commit installs a remote hook repository from a git revision, and this checkout may not be committed to; so
the temporary repository declares the manifest's hooks as ``repo: local`` with ``language: system`` (everything
else copied from the manifest as is) and runs the ``mlwarden`` of this venv. Everything is offline: local system
hooks need no download, and pre-commit's cache lives under ``tmp_path`` (``PRE_COMMIT_HOME``).

The malicious file is a harmless canary built with the test kit: if anything unpickled it, it would create a file
under ``tmp_path``; every test that stages it checks that this file never appears.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("pre_commit")  # in the `test` extra: under CI a missing pre-commit fails the suite

from mlwarden_samples import BuildContext
from mlwarden_samples.malicious_pickle import os_system

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / ".pre-commit-hooks.yaml"
WORKFLOW = REPO / "examples" / "github-actions" / "mlwarden-scan.yml"
BIN = Path(sys.executable).parent  # this venv's bin: mlwarden's console script is installed beside python
STATIC, DYNAMIC = "mlwarden-scan", "mlwarden-scan-dynamic"
# Would fail the scan if the hook ever handed it to mlwarden (formats are identified by content, not by name).
README_SSTI = "# Models\n\n{{ cycler.__init__.__globals__.os.popen('true').read() }}\n"


def _manifest() -> dict[str, dict[str, Any]]:
    return {hook["id"]: hook for hook in yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))}


class Repo:
    """A throw-away git repository whose .pre-commit-config.yaml mirrors the manifest's hooks."""

    def __init__(self, tmp_path: Path, args: tuple[str, ...] = ()) -> None:
        self.path = tmp_path / "repo"
        self.path.mkdir()
        self.canary_dir = tmp_path / "canary"
        self.canary_dir.mkdir()
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
            "GIT_CONFIG_GLOBAL": os.devnull,  # no user or system git settings (signing, hooksPath ...)
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "test",
            "GIT_AUTHOR_EMAIL": "test@example.invalid",
            "GIT_COMMITTER_NAME": "test",
            "GIT_COMMITTER_EMAIL": "test@example.invalid",
        }
        self.env.pop("MLWARDEN_DEBUG", None)
        self.git("init", "-q", "-b", "main")
        hooks = []
        for hook in _manifest().values():
            local = {**hook, "language": "system"}
            if args:
                local["args"] = list(args)
            hooks.append(local)
        config = {"repos": [{"repo": "local", "hooks": hooks}]}
        (self.path / ".pre-commit-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        self.git("add", ".pre-commit-config.yaml")

    def run(self, *cmd: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(c) for c in cmd],
            cwd=self.path,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def git(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = self.run("git", *args)
        assert done.returncode == 0, done.stderr
        return done

    def pre_commit(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "pre_commit", *args, "--color", "never")

    def write_benign(self) -> Path:
        import numpy as np

        path = self.path / "models" / "weights.npy"
        path.parent.mkdir(exist_ok=True)
        np.save(path, np.arange(32, dtype=np.float32).reshape(4, 8))
        (self.path / "README.md").write_text(README_SSTI, encoding="utf-8")
        return path

    def write_canary(self) -> tuple[Path, Path]:
        """``os.system('touch <canary>')`` as a pickle; returns the model and the file its payload would create."""
        ctx = BuildContext(self.path, self.canary_dir)
        path = self.path / "models" / "evil.pkl"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(os_system(ctx, "pre-commit-hook"))
        return path, Path(ctx.canary("pre-commit-hook"))

    def head(self) -> str | None:
        done = self.run("git", "rev-parse", "--verify", "-q", "HEAD")
        return done.stdout.strip() if done.returncode == 0 else None


def test_the_manifest_is_valid_and_runs_the_installed_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pre_commit", "validate-manifest", str(MANIFEST)], capture_output=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken.yaml"  # the validator does reject a bad manifest
    broken.write_text(yaml.safe_dump([{k: v for k, v in h.items() if k != "entry"} for h in _manifest().values()]))
    rejected = subprocess.run(
        [sys.executable, "-m", "pre_commit", "validate-manifest", str(broken)], capture_output=True, check=False
    )
    assert rejected.returncode != 0

    hooks = _manifest()
    assert set(hooks) == {STATIC, DYNAMIC}
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["mlwarden"] == "mlwarden.cli.main:main"  # what `language: python` installs on PATH
    for hook in hooks.values():
        assert hook["entry"].split()[:2] == ["mlwarden", "scan"]
        assert hook["language"] == "python"
        assert hook["pass_filenames"] is True
        assert hook["require_serial"] is True
    assert "--static-only" in hooks[STATIC]["entry"].split()
    assert "--static-only" not in hooks[DYNAMIC]["entry"].split()
    assert hooks[DYNAMIC]["stages"] == ["manual"]
    assert "pre-commit" in hooks[STATIC]["stages"]


@pytest.mark.parametrize(
    ("name", "selected"),
    [
        ("model.pkl", True),
        ("models/net.PT", True),
        ("ckpt/epoch=3.ckpt", True),
        ("pytorch_model.bin", True),
        ("clf.joblib.xz", True),
        ("arrays.npz", True),
        ("model.safetensors", True),
        ("llm/model-Q4_K_M.gguf", True),
        ("saved_model/saved_model.pb", True),
        ("keras/model.keras", True),
        ("weights.h5", True),
        ("model.onnx", True),
        ("hub/config.json", True),
        ("tokenizer_config.json", True),
        ("chat_template.jinja", True),
        ("README.md", False),
        ("package.json", False),
        ("src/train.py", False),
        ("templates/page.jinja", False),
        ("model.pkl.txt", False),
        ("docs/myconfig.json", False),
    ],
)
def test_files_pattern_selects_model_files(name: str, selected: bool) -> None:
    # pre-commit matches `files` with re.search on the repository-relative path.
    for hook in _manifest().values():
        assert bool(re.search(hook["files"], name)) is selected
    # The workflow keeps the same files (grep -Ei; this regex means the same in POSIX ERE and in Python).
    assert bool(re.search(_workflow()["jobs"]["scan"]["env"]["MODEL_FILES"], name, re.IGNORECASE)) is selected


def test_commit_passes_a_benign_model_and_is_blocked_by_a_canary(tmp_path: Path) -> None:
    repo = Repo(tmp_path)
    installed = repo.pre_commit("install")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    repo.write_benign()
    repo.git("add", ".")
    ok = repo.run("git", "commit", "-q", "-m", "benign model")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert re.search(r"mlwarden scan \(static\)\.+Passed", ok.stdout + ok.stderr)
    first = repo.head()
    assert first is not None

    evil, canary = repo.write_canary()
    repo.git("add", str(evil))
    blocked = repo.run("git", "commit", "-q", "-m", "canary model")
    output = blocked.stdout + blocked.stderr
    assert blocked.returncode != 0
    assert re.search(r"mlwarden scan \(static\)\.+Failed", output)
    assert "exit code: 1" in output  # findings, not a usage error (2)
    assert "MLW-PKL-100" in output
    assert "models/evil.pkl" in output
    assert repo.head() == first  # nothing was committed
    assert not canary.exists()
    assert list(repo.canary_dir.iterdir()) == []


def test_only_model_files_reach_the_hook(tmp_path: Path) -> None:
    repo = Repo(tmp_path, args=("--verbose",))  # mlwarden --verbose lists every file it was given
    repo.write_benign()
    # Planted: README.md fails the scan when it is given to mlwarden directly.
    direct = repo.run(BIN / "mlwarden", "scan", "--static-only", "--no-progress", "README.md")
    assert direct.returncode == 1
    assert "MLW-TPL-001" in direct.stdout
    repo.git("add", ".")

    done = repo.pre_commit("run", "--verbose")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "models/weights.npy" in output
    assert "README.md" not in output
    assert "Files scanned          1" in output
    assert "sandboxed dynamic" not in output  # the dynamic hook runs only on demand

    skipped = repo.pre_commit("run", STATIC, "--files", "README.md")
    assert skipped.returncode == 0
    assert "(no files to check)Skipped" in skipped.stdout


def test_dynamic_hook_runs_on_demand_in_the_sandbox(tmp_path: Path) -> None:
    repo = Repo(tmp_path, args=("--verbose",))
    repo.write_benign()
    repo.git("add", ".")
    done = repo.pre_commit("run", DYNAMIC, "--hook-stage", "manual", "--verbose")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Analyses               static, dynamic" in output
    assert "models/weights.npy" in output
    assert "README.md" not in output


def test_a_reviewed_suppression_at_the_root_lets_the_commit_through(tmp_path: Path) -> None:
    repo = Repo(tmp_path)
    evil, canary = repo.write_canary()
    repo.git("add", ".")
    assert repo.pre_commit("run").returncode == 1

    digest = hashlib.sha256(evil.read_bytes()).hexdigest()
    expires = (datetime.now(UTC) + timedelta(days=30)).date().isoformat()
    added = repo.run(
        BIN / "mlwarden", "suppress", "add", "MLW-PKL-100", "--digest", digest,
        "--reason", "reviewed canary", "--reviewer", "alice", "--expires", expires,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert (repo.path / "mlwarden-suppressions.toml").is_file()
    done = repo.pre_commit("run", "--verbose")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "suppressed  by alice" in done.stdout
    assert not canary.exists()


def _workflow() -> dict[str, Any]:
    workflow: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    return workflow


def _step(workflow: dict[str, Any], name: str) -> dict[str, Any]:
    steps: list[dict[str, Any]] = workflow["jobs"]["scan"]["steps"]
    return next(s for s in steps if s.get("name") == name)


def test_workflow_uploads_sarif_even_when_the_scan_fails() -> None:
    workflow = _workflow()
    assert workflow["permissions"]["security-events"] == "write"
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert "pull_request" in triggers
    scan = _step(workflow, "Scan models")
    upload = _step(workflow, "Upload SARIF to code scanning")
    assert scan["id"] == "scan"
    assert "continue-on-error" not in scan  # a failing scan fails the job
    assert "--fail-on" in scan["run"]
    assert "--format sarif" in scan["run"]
    assert upload["uses"].startswith("github/codeql-action/upload-sarif@")
    assert "always()" in upload["if"]
    output = re.search(r"--output (\S+)", scan["run"])
    assert output is not None
    assert upload["with"]["sarif_file"] == output.group(1)
    assert f"hashFiles('{output.group(1)}')" in upload["if"]


def _run_scan_step(repo: Repo) -> subprocess.CompletedProcess[str]:
    """The workflow's scan step, as the runner would run it (bash -e), from the repository root."""
    workflow = _workflow()
    env = {**repo.env, **{k: str(v) for k, v in workflow["jobs"]["scan"]["env"].items()}}
    script = _step(workflow, "Scan models")["run"]
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", script],
        cwd=repo.path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_workflow_scan_step_writes_sarif_with_repository_relative_paths(tmp_path: Path) -> None:
    repo = Repo(tmp_path)
    repo.write_benign()
    repo.git("add", "README.md")
    nothing = _run_scan_step(repo)  # README.md (planted to fail if scanned) is the only tracked file
    assert nothing.returncode == 0, nothing.stderr
    assert "no model files to scan" in nothing.stdout
    assert not (repo.path / "mlwarden.sarif").exists()

    repo.git("add", ".")
    clean = _run_scan_step(repo)
    assert clean.returncode == 0, clean.stderr
    sarif = json.loads((repo.path / "mlwarden.sarif").read_text(encoding="utf-8"))
    assert sarif["runs"][0]["results"] == []

    evil, canary = repo.write_canary()
    repo.git("add", ".")
    failed = _run_scan_step(repo)
    assert failed.returncode == 1, failed.stderr  # fails the job ...
    run = json.loads((repo.path / "mlwarden.sarif").read_text(encoding="utf-8"))["runs"][0]  # ... with a report
    assert {r["ruleId"] for r in run["results"]} == {"MLW-PKL-100"}
    assert {r["id"] for r in run["tool"]["driver"]["rules"]} == {"MLW-PKL-100"}
    locations = [loc["physicalLocation"]["artifactLocation"] for r in run["results"] for loc in r["locations"]]
    assert locations == [{"uri": "models/evil.pkl", "uriBaseId": "%SRCROOT%"}]
    assert not canary.exists()

    # An absolute path below the working directory is written relative to it too.
    absolute = repo.run(BIN / "mlwarden", "scan", "--static-only", "--format", "sarif", str(evil.resolve()))
    assert absolute.returncode == 1
    result = json.loads(absolute.stdout)["runs"][0]["results"][0]
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "models/evil.pkl"


def test_the_configs_in_docs_are_valid_and_match_the_manifest(tmp_path: Path) -> None:
    text = (REPO / "docs" / "ci.md").read_text(encoding="utf-8")
    configs = [block for block in re.findall(r"```yaml\n(.*?)```", text, re.DOTALL) if block.startswith("repos:")]
    assert len(configs) == 2  # the remote hook and the local variant
    for n, block in enumerate(configs):
        path = tmp_path / f"config{n}.yaml"
        path.write_text(block, encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "-m", "pre_commit", "validate-config", str(path)], capture_output=True, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
    remote, local = (yaml.safe_load(block)["repos"][0] for block in configs)
    assert remote["hooks"][0]["id"] == STATIC
    manifest = _manifest()[STATIC]
    documented = local["hooks"][0]
    assert documented["id"] == STATIC
    for key in ("entry", "files", "pass_filenames", "require_serial"):
        assert documented[key] == manifest[key], key
