"""Training records: a signed account of how a model was produced, for the reproducibility trail.

A record says which command ran with which configuration, at which git commit, in which environment
(Python, platform, installed distributions), on which datasets (their manifests' digests), with which
resulting metrics and model digest. It is an in-toto Statement v1 with ``predicateType``
:data:`PREDICATE_TYPE`; its subjects are what the record is *about*, in this order of preference:

1. the model's files (``--model PATH``), each with its SHA-256 and a ``size`` annotation;
2. the model's digest alone (``model_digest``), as the subject ``model``;
3. the datasets (each dataset's overall SHA-256, named by the dataset's name);
4. the configuration (SHA-256 of its canonical JSON), when there is nothing else.

The predicate's ``subject_kind`` says which, so a reader knows what the subjects mean. Configurations are
recorded verbatim: keep secrets (tokens, passwords) out of them, or out of the record.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import platform
import re
import shlex
import subprocess
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from mlwarden.core.errors import UsageError
from mlwarden.integrity.dataset import PREDICATE_TYPE as DATASET_PREDICATE_TYPE
from mlwarden.integrity.dataset import field_of, iso_timestamp, load_statement, manifest_from_statement, subject_files
from mlwarden.integrity.envelope import STATEMENT_TYPE, sign_statement
from mlwarden.integrity.errors import VerificationError
from mlwarden.integrity.hashing import FileDigest, ModelManifest, hash_model
from mlwarden.integrity.keys import PrivateKey, PublicKey

PREDICATE_TYPE = "https://mlwarden.dev/training-record/v1"
#: Largest configuration file read (a training config is a few KiB; this refuses a dataset passed by mistake).
MAX_CONFIG_BYTES = 1 << 20
#: Seconds ``git`` may take to report the commit before the record goes without one.
GIT_TIMEOUT = 10.0
SubjectKind = Literal["model-files", "model", "datasets", "config"]
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class DatasetLink:
    """A dataset the model was trained on, as its manifest file identifies it.

    Attributes:
        name: the dataset's name (from the manifest).
        digest: the dataset's overall SHA-256 (hex).
        manifest_name: the manifest file's name.
        manifest_sha256: SHA-256 (hex) of the manifest file's bytes.
        signed: whether the manifest file is a signed bundle.
    """

    name: str
    digest: str
    manifest_name: str
    manifest_sha256: str
    signed: bool


@dataclass(frozen=True, slots=True)
class TrainingRecord:
    """How a model was trained. Mappings are read-only views.

    Attributes:
        command: the command line, as text.
        argv: the command split into arguments (shell rules).
        config: the training configuration.
        config_file: ``(file name, SHA-256 of its bytes)`` when the configuration was read from a file.
        git_commit: the commit of the training code, when known.
        git_dirty: whether the work tree had uncommitted changes to tracked files (None: unknown).
        packages: installed distributions, normalised name -> version.
        datasets: the datasets' manifests.
        metrics: name -> value.
        model_digest: the model's SHA-256 (hex; see :attr:`ModelManifest.digest`), when known.
        model_files: the model's files, when the record was made from the model on disk.
        started_at: ISO 8601 start time, when known.
        finished_at: ISO 8601 end time, when known.
        python: the Python version that trained.
        platform: the operating system and machine.
    """

    command: str
    argv: tuple[str, ...]
    config: Mapping[str, Any]
    config_file: tuple[str, str] | None
    git_commit: str | None
    git_dirty: bool | None
    packages: Mapping[str, str]
    datasets: tuple[DatasetLink, ...]
    metrics: Mapping[str, float]
    model_digest: str | None
    model_files: tuple[FileDigest, ...] = ()
    started_at: str | None = None
    finished_at: str | None = None
    python: str = field(default_factory=platform.python_version)
    platform: str = field(default_factory=platform.platform)


def read_config(path: Path) -> tuple[dict[str, Any], str]:
    """A JSON, TOML or YAML configuration file as a JSON-able mapping, and the SHA-256 (hex) of its bytes.

    Raises:
        UsageError: missing, too large, unknown extension, unparsable, or not a mapping at the top.
    """
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml", ".yaml", ".yml"):
        raise UsageError(f"config {path}: unknown format {suffix or '(no extension)'!r}: use .json, .toml or .yaml")
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UsageError(f"config {path} is larger than {MAX_CONFIG_BYTES} bytes: is it really a configuration?")
    try:
        text = data.decode("utf-8")
        if suffix == ".json":
            parsed = json.loads(text)
        elif suffix == ".toml":
            parsed = tomllib.loads(text)
        else:
            import yaml

            parsed = yaml.safe_load(text)
    except ImportError:
        raise UsageError(f"config {path}: reading YAML needs PyYAML (pip install pyyaml)") from None
    except Exception as exc:  # noqa: BLE001 - each parser has its own error type; all mean "not parsable"
        raise UsageError(f"config {path} cannot be parsed: {type(exc).__name__}: {exc}") from None
    if not isinstance(parsed, dict):
        raise UsageError(f"config {path}: the top level must be a mapping, not {type(parsed).__name__}")
    settings = dict(json.loads(json.dumps(parsed, default=str)))  # dates and the like become text
    return settings, hashlib.sha256(data).hexdigest()


def detect_git(folder: Path | str) -> tuple[str | None, bool | None]:
    """``(HEAD commit, dirty)`` of the git work tree containing ``folder``; ``(None, None)`` when unknown.

    Never raises: no git, not a repository, no commit yet or a hung git all mean "unknown".
    """

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(  # noqa: S603 - git with fixed arguments, from PATH as the user runs it
                ["git", "-C", str(folder), *args],  # noqa: S607
                capture_output=True,
                text=True,
                timeout=GIT_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--verify", "HEAD")
    if commit is None or not _COMMIT.fullmatch(commit):
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else bool(status)


def installed_packages() -> dict[str, str]:
    """Every distribution installed in this environment, normalised name -> version."""
    from mlwarden.integrity.bom import normalise_package

    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            found.setdefault(normalise_package(name), dist.version)
    return dict(sorted(found.items()))


def _metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    out = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name.strip():
            raise UsageError("a metric needs a non-empty name")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise UsageError(f"metric {name!r}: {value!r} is not a finite number")
        out[name] = float(value)
    return out


def build_training_record(
    *,
    command: str | Sequence[str],
    config: Mapping[str, Any] | Path | str | None = None,
    git_commit: str | None = None,
    git_dir: Path | str | None = None,
    packages: Mapping[str, str] | None = None,
    dataset_manifests: Sequence[Path | str] = (),
    dataset_public_key: PublicKey | Path | str | None = None,
    metrics: Mapping[str, float] = {},
    model_path: Path | str | None = None,
    model_digest: str | None = None,
    started_at: str | date | datetime | None = None,
    finished_at: str | date | datetime | None = None,
) -> TrainingRecord:
    """Collect a training record.

    Args:
        command: the command that trained (text, split with shell rules, or an argument list).
        config: the configuration: a mapping, or the path of a JSON/TOML/YAML file (also digested).
        git_commit: the commit of the training code; detected from ``git_dir`` when None.
        git_dir: a folder inside the training code's git work tree (None: no detection).
        packages: name -> version (default: every distribution installed here).
        dataset_manifests: manifest files of the training data (``mlwarden data manifest``).
        dataset_public_key: when given, every dataset manifest must be signed with it.
        metrics: final metrics, name -> finite number.
        model_path: the trained model on disk: hashed, its files become the record's subjects.
        model_digest: the model's SHA-256 (hex) when the model is not on disk; must match ``model_path``'s.
        started_at: when training started (ISO 8601).
        finished_at: when it finished (ISO 8601; not before ``started_at``).

    Raises:
        UsageError: an empty or unparsable command, a bad config, a malformed commit/digest/metric/time.
        VerificationError: a dataset manifest is unreadable or does not verify.
        ModelPathError: the model cannot be hashed.
    """
    if isinstance(command, str):
        try:
            argv = tuple(shlex.split(command))
        except ValueError as exc:
            raise UsageError(f"command {command!r} cannot be split into arguments: {exc}") from None
        text = command.strip()
    else:
        argv = tuple(command)
        text = shlex.join(argv)
    if not argv:
        raise UsageError("a training record needs the command that trained")
    config_file = None
    if config is None:
        settings: dict[str, Any] = {}
    elif isinstance(config, Path | str):
        settings, config_sha256 = read_config(Path(config))
        config_file = (Path(config).name, config_sha256)
    else:
        settings = dict(config)
    try:
        json.dumps(settings, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"config is not JSON-serialisable: {exc}") from None
    dirty = None
    if git_commit is None and git_dir is not None:
        git_commit, dirty = detect_git(git_dir)
    elif git_commit is not None and not _COMMIT.fullmatch(git_commit.lower()):
        raise UsageError(f"git commit {git_commit!r} is not a full hex commit id (40 or 64 digits)")
    files: tuple[FileDigest, ...] = ()
    if model_path is not None:
        manifest = hash_model(model_path)
        files = manifest.files
        if model_digest is not None and model_digest.lower().removeprefix("sha256:") != manifest.digest:
            raise UsageError(f"model digest {model_digest} does not match {model_path} (sha256:{manifest.digest})")
        model_digest = manifest.digest
    elif model_digest is not None:
        model_digest = model_digest.lower().removeprefix("sha256:")
        if not _HEX64.fullmatch(model_digest):
            raise UsageError(f"model digest {model_digest!r} is not a SHA-256 (64 hex digits)")
    start = None if started_at is None else iso_timestamp(started_at, "started_at")
    end = None if finished_at is None else iso_timestamp(finished_at, "finished_at")
    if start and end and _instant(end) < _instant(start):
        raise UsageError(f"finished_at {end} is before started_at {start}")
    return TrainingRecord(
        command=text,
        argv=argv,
        config=MappingProxyType(settings),
        config_file=config_file,
        git_commit=git_commit.lower() if git_commit else None,
        git_dirty=dirty,
        packages=MappingProxyType(dict(installed_packages() if packages is None else packages)),
        datasets=tuple(_link(Path(p), dataset_public_key) for p in dataset_manifests),
        metrics=MappingProxyType(_metrics(metrics)),
        model_digest=model_digest,
        model_files=files,
        started_at=start,
        finished_at=end,
    )


def _instant(text: str) -> datetime:
    """An ISO text as a comparable instant (a date is its midnight; a time without offset is taken as UTC)."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _link(path: Path, public_key: PublicKey | Path | str | None) -> DatasetLink:
    loaded = load_statement(path, public_key, predicate_type=DATASET_PREDICATE_TYPE, what="dataset manifest")
    manifest = manifest_from_statement(loaded.statement, f"dataset manifest {path}")
    return DatasetLink(manifest.name, manifest.digest, path.name, loaded.sha256, loaded.signed)


def _subjects(record: TrainingRecord) -> tuple[SubjectKind, list[dict[str, Any]]]:
    """What the record is about (see the module docstring for the order of preference)."""
    if record.model_files:
        files = [
            {"name": f.path, "digest": {f.algorithm: f.digest}, "annotations": {"size": f.size}}
            for f in record.model_files
        ]
        return "model-files", files
    if record.model_digest:
        return "model", [{"name": "model", "digest": {"sha256": record.model_digest}}]
    if record.datasets:
        return "datasets", [{"name": d.name, "digest": {"sha256": d.digest}} for d in record.datasets]
    return "config", [{"name": "config", "digest": {"sha256": config_digest(record.config)}}]


def config_digest(config: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a configuration's canonical JSON (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(dict(config), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def training_statement(record: TrainingRecord) -> dict[str, Any]:
    """The in-toto Statement v1 of ``record`` (what is signed, or written as is when unsigned)."""
    kind, subjects = _subjects(record)
    config_file = None
    if record.config_file is not None:
        config_file = {"name": record.config_file[0], "sha256": record.config_file[1]}
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "subject_kind": kind,
            "command": record.command,
            "argv": list(record.argv),
            "config": dict(record.config),
            "config_file": config_file,
            "git": {"commit": record.git_commit, "dirty": record.git_dirty},
            "environment": {"python": record.python, "platform": record.platform, "packages": dict(record.packages)},
            "datasets": [
                {
                    "name": d.name,
                    "digest": {"sha256": d.digest},
                    "manifest": {"name": d.manifest_name, "sha256": d.manifest_sha256},
                    "signed": d.signed,
                }
                for d in record.datasets
            ],
            "metrics": dict(record.metrics),
            "model": None if record.model_digest is None else {"digest": {"sha256": record.model_digest}},
            "started_at": record.started_at,
            "finished_at": record.finished_at,
        },
    }


def sign_training_record(
    record: TrainingRecord, private_key: PrivateKey | Path | str, *, password: bytes | None = None
) -> dict[str, Any]:
    """Sign the record's statement; return the Sigstore bundle (write it with ``write_bundle``).

    Raises:
        KeyFileError: the private key cannot be loaded.
    """
    return sign_statement(training_statement(record), private_key, password=password)


def _optional_text(mapping: Mapping[str, Any], key: str, where: str) -> str | None:
    value = mapping.get(key)
    if value is not None and not isinstance(value, str):
        raise VerificationError(f"{where}: field {key!r} must be text or null")
    return value


def _sha(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise VerificationError(f"{where}: {what} is not a SHA-256 digest")
    return value


def _read_links(predicate: Mapping[str, Any], where: str) -> tuple[DatasetLink, ...]:
    links = []
    for i, item in enumerate(field_of(predicate, "datasets", list, where)):
        at = f"{where}: dataset {i}"
        if not isinstance(item, dict):
            raise VerificationError(f"{at} is not an object")
        manifest = field_of(item, "manifest", dict, at)
        links.append(
            DatasetLink(
                name=field_of(item, "name", str, at),
                digest=_sha(field_of(item, "digest", dict, at).get("sha256"), at, "digest"),
                manifest_name=field_of(manifest, "name", str, at),
                manifest_sha256=_sha(manifest.get("sha256"), at, "manifest digest"),
                signed=field_of(item, "signed", bool, at),
            )
        )
    return tuple(links)


def record_from_statement(statement: Mapping[str, Any], where: str) -> TrainingRecord:
    """Rebuild a :class:`TrainingRecord` from its statement, checking field types and the subjects.

    Raises:
        VerificationError: a missing or mistyped field, or subjects that contradict the predicate.
    """
    predicate = field_of(statement, "predicate", dict, where)
    argv = field_of(predicate, "argv", list, where)
    packages = field_of(field_of(predicate, "environment", dict, where), "packages", dict, where)
    metrics = field_of(predicate, "metrics", dict, where)
    git = field_of(predicate, "git", dict, where)
    environment = predicate["environment"]
    if not all(isinstance(a, str) for a in argv) or not all(isinstance(v, str) for v in packages.values()):
        raise VerificationError(f"{where}: argv and package versions must be text")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values()):
        raise VerificationError(f"{where}: metrics must be numbers")
    dirty = git.get("dirty")
    if dirty is not None and not isinstance(dirty, bool):
        raise VerificationError(f"{where}: git.dirty must be true, false or null")
    config_file = predicate.get("config_file")
    if config_file is not None:
        config_file = (field_of(config_file, "name", str, where), _sha(config_file.get("sha256"), where, "config"))
    model = predicate.get("model")
    model_digest = None if model is None else _sha(field_of(model, "digest", dict, where).get("sha256"), where, "model")
    record = TrainingRecord(
        command=field_of(predicate, "command", str, where),
        argv=tuple(argv),
        config=MappingProxyType(field_of(predicate, "config", dict, where)),
        config_file=config_file,
        git_commit=_optional_text(git, "commit", where),
        git_dirty=dirty,
        packages=MappingProxyType(dict(packages)),
        datasets=_read_links(predicate, where),
        metrics=MappingProxyType({k: float(v) for k, v in metrics.items()}),
        model_digest=model_digest,
        started_at=_optional_text(predicate, "started_at", where),
        finished_at=_optional_text(predicate, "finished_at", where),
        python=field_of(environment, "python", str, where),
        platform=field_of(environment, "platform", str, where),
    )
    kind = predicate.get("subject_kind")
    if kind == "model-files":
        files = subject_files(statement, where)
        record = replace(record, model_files=files)
        candidates = {ModelManifest("model", files).digest} | ({files[0].digest} if len(files) == 1 else set())
        if record.model_digest not in candidates:
            raise VerificationError(f"{where}: the model digest does not match the model files listed")
    expected = _subjects(record)
    if expected[0] != kind or expected[1] != statement.get("subject"):
        raise VerificationError(f"{where}: the subjects do not match the record (subject_kind {kind!r})")
    return record


def read_training_record(path: Path | str, public_key: PublicKey | Path | str | None = None) -> TrainingRecord:
    """Read a training record written by ``mlwarden record``; verify its signature when a key is given.

    Without a key a signed record is read but NOT authenticated: pass the key whenever the answer matters.

    Raises:
        VerificationError: the file is missing, truncated, malformed, unsigned while a key was given, signed
            by another key, altered, or not a training record.
        KeyFileError: the public key cannot be loaded.
    """
    loaded = load_statement(path, public_key, predicate_type=PREDICATE_TYPE, what="training record")
    return record_from_statement(loaded.statement, f"training record {path}")
