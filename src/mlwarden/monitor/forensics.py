"""Signed forensics bundles: what was served, what it was asked, what it answered, and the state of the host.

A bundle is one ``.tar.gz`` (mode 0600, renamed into place only when complete) holding JSON members — the served
version and its signature bundle, the recent requests and answers, the alerts, the monitor's state, the guard
policy, the environment (package versions; environment variable *names*, never values) and the process (pid,
argv, uptime, memory, threads, open descriptors, limits) — plus ``statement.sigstore.json``: an in-toto
Statement (predicate ``https://mlwarden.dev/forensics/v1``) whose subjects are every other member with its
SHA-256, signed (DSSE, Sigstore bundle v0.3) with the guard's ECDSA key, so a bundle shown later can be checked
to be exactly what the guard wrote (:func:`verify_bundle`, ``mlwarden forensics verify``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import resource
import socket
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from mlwarden.core.errors import MlwardenError, UsageError
from mlwarden.integrity.envelope import sign_statement, verify_statement

PREDICATE_TYPE = "https://mlwarden.dev/forensics/v1"
STATEMENT = "statement.sigstore.json"
#: Limits on what a bundle holds and on what :func:`verify_bundle` reads.
MAX_RECORDS = 10_000
MAX_ALERTS = 1_000
MAX_MEMBERS = 64
MAX_MEMBER_BYTES = 256 * 1024 * 1024
_STARTED = time.time()


class ForensicsError(MlwardenError):
    """A forensics bundle does not verify: a member changed, added or removed, a bad signature, a broken archive."""


@dataclass(frozen=True, slots=True)
class ForensicMaterial:
    """What the service hands over for a bundle (see the module docstring)."""

    model_ref: str
    model_digest: str
    signature_bundle: bytes | None
    policy: Mapping[str, Any]
    records: Sequence[Mapping[str, Any]]
    alerts: Sequence[Mapping[str, Any]]
    monitor: Mapping[str, Any] = field(default_factory=dict)


def environment() -> dict[str, Any]:
    """Interpreter, platform, installed distributions, and the *names* of the environment variables."""
    dists = sorted({f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"]})
    return {
        "python": sys.version,
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "distributions": dists,
        "environment_variable_names": sorted(os.environ),
    }


def process_info() -> dict[str, Any]:
    """The serving process: identity, arguments, uptime, memory, threads, descriptors, limits."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        fds: int | None = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = None
    limits = {}
    for name in ("RLIMIT_AS", "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_CPU"):
        if hasattr(resource, name):
            limits[name] = list(resource.getrlimit(getattr(resource, name)))
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "uid": os.getuid(),
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "started_at": _STARTED,
        "uptime_s": round(time.time() - _STARTED, 3),
        "max_rss_kib": usage.ru_maxrss,
        "user_cpu_s": usage.ru_utime,
        "system_cpu_s": usage.ru_stime,
        "threads": threading.active_count(),
        "open_fds": fds,
        "rlimits": limits,
    }


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=1, sort_keys=True, default=str).encode()


def _members(material: ForensicMaterial, now: datetime) -> dict[str, bytes]:
    records = list(material.records)[-MAX_RECORDS:]
    alerts = list(material.alerts)[-MAX_ALERTS:]
    members = {
        "manifest.json": _json(
            {
                "model": material.model_ref,
                "digest": material.model_digest,
                "created_at": now.isoformat(),
                "records": len(records),
                "records_truncated": len(material.records) > len(records),
                "alerts": len(alerts),
                "alerts_truncated": len(material.alerts) > len(alerts),
            }
        ),
        "model.json": _json({"ref": material.model_ref, "digest": material.model_digest}),
        "records.jsonl": b"".join(json.dumps(r, sort_keys=True, default=str).encode() + b"\n" for r in records),
        "alerts.json": _json(alerts),
        "monitor.json": _json(dict(material.monitor)),
        "policy.json": _json(dict(material.policy)),
        "environment.json": _json(environment()),
        "process.json": _json(process_info()),
    }
    if material.signature_bundle is not None:
        members["signature.sigstore.json"] = material.signature_bundle
    return members


def write_bundle(
    material: ForensicMaterial, out_dir: str | os.PathLike[str], signer: Any, *, now: datetime | None = None
) -> Path:
    """Write a signed bundle into ``out_dir``; returns its path.

    Raises:
        UsageError: no signer, or the folder cannot be written.
    """
    if signer is None:
        raise UsageError("a forensics bundle must be signed: give the guard a signing key (--signing-key)")
    moment = now or datetime.now(UTC)
    members = _members(material, moment)
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": n, "digest": {"sha256": hashlib.sha256(b).hexdigest()}} for n, b in members.items()],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "model": material.model_ref,
            "digest": material.model_digest,
            "created_at": moment.isoformat(),
            "alerts": [a.get("rule") for a in material.alerts][-20:],
        },
    }
    members[STATEMENT] = _json(sign_statement(statement, signer))
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{material.model_ref.replace(':', '-')}-{moment:%Y%m%dT%H%M%S}-{os.urandom(3).hex()}.tar.gz"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".forensics-", suffix=".part")
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for member, data in members.items():
                info = tarfile.TarInfo(member)
                info.size, info.mtime, info.mode = len(data), int(moment.timestamp()), 0o600
                tar.addfile(info, io.BytesIO(data))
        os.chmod(tmp, 0o600)
        target = folder / name
        os.replace(tmp, target)
    except OSError as exc:
        raise UsageError(f"cannot write a forensics bundle in {folder}: {exc.strerror or exc}") from None
    return target


@dataclass(frozen=True, slots=True)
class BundleVerification:
    """A verified bundle: its members with digests and the signed statement's predicate."""

    members: Mapping[str, str]
    predicate: Mapping[str, Any]


def read_members(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """The members of a bundle, read safely (regular files only, no paths, bounded count and size).

    Raises:
        ForensicsError: not a readable gzip tar, or a member that is not a plain file.
    """
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for info in tar:
                if not info.isfile() or "/" in info.name or info.name.startswith("."):
                    raise ForensicsError(f"{path}: unexpected member {info.name!r} (only plain top-level files)")
                if len(members) >= MAX_MEMBERS or info.size > MAX_MEMBER_BYTES:
                    raise ForensicsError(f"{path}: too many or too large members")
                if info.name in members:
                    raise ForensicsError(f"{path}: member {info.name!r} appears twice")
                handle = tar.extractfile(info)
                if not (handle is not None):
                    raise RuntimeError("internal invariant broken: handle is not None")
                members[info.name] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ForensicsError(f"{path}: not a readable bundle ({exc})") from None
    return members


def verify_bundle(path: str | os.PathLike[str], public_key: Any) -> BundleVerification:
    """Check a bundle's signature and every member against the signed statement.

    Raises:
        ForensicsError: naming the member changed, added or removed, or a bad signature or archive.
    """
    members = read_members(path)
    if STATEMENT not in members:
        raise ForensicsError(f"{path}: no {STATEMENT}: not a signed forensics bundle")
    try:
        statement = verify_statement(json.loads(members.pop(STATEMENT)), public_key)
    except (MlwardenError, ValueError) as exc:
        raise ForensicsError(f"{path}: the signature does not verify: {exc}") from None
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise ForensicsError(f"{path}: the statement is not a forensics statement")
    signed = {s["name"]: s["digest"]["sha256"] for s in statement.get("subject", [])}
    actual = {n: hashlib.sha256(b).hexdigest() for n, b in members.items()}
    for name in sorted(set(signed) | set(actual)):
        if name not in actual:
            raise ForensicsError(f"{path}: member {name} was removed")
        if name not in signed:
            raise ForensicsError(f"{path}: member {name} was added after signing")
        if signed[name] != actual[name]:
            raise ForensicsError(f"{path}: member {name} was changed (sha256 {actual[name]}, signed {signed[name]})")
    return BundleVerification(actual, statement.get("predicate", {}))
