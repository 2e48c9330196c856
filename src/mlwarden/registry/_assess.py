"""Model tests and data checks the registry runs on its stored copy, and the approve gates that read their numbers.

``mlwarden registry test`` hands :func:`assess` a list of steps (the model tests, and the data checks of the
training data); the registry layer cannot import those packages (they sit above it), so it runs what it is
given, on the path it chooses — the stored, re-hashed copy, never the caller's file. Each report is bound like an
attached one (:mod:`._evidence`), stored as JSON with ``details.source = "registry"``, optionally signed (an
in-toto statement over the report's SHA-256 in a DSSE bundle, kept in ``details.signature``) and audited with
every test's status.

The gates read the newest registry-run report of each kind; uploaded reports never count, exactly like scans.
A test or check that did not run, or whose status is not ``ok``, fails every rule that reads it (fail closed),
and a refusal names the number that failed, e.g. ``membership AUC 0.83 (loss_threshold) > 0.6``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlwarden.registry._core import Core, attempt, digest_ref, referenced, version_info, version_row, view_path
from mlwarden.registry._evidence import attached_datasets, check_binding, data_scope
from mlwarden.registry.errors import BadInput, InvalidTransition, StorageError
from mlwarden.registry.gates import REGISTRY_SCAN, GateCheck
from mlwarden.registry.models import AttachmentRow, utcnow
from mlwarden.registry.roles import Permission, Principal
from mlwarden.registry.states import State
from mlwarden.registry.values import AttachmentInfo, AttachmentKind, VersionInfo

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from mlwarden.core.policy import Policy
    from mlwarden.registry.gates import ApproveGate, Evidence

__all__ = ["PREDICATE_TYPE", "AssessInput", "AssessReport", "Step", "assess", "assessment_checks", "verify_signature"]

#: ``predicateType`` of the statement the registry signs over a report it ran.
PREDICATE_TYPE = "https://mlwarden.dev/registry-assessment/v1"
_KINDS = (AttachmentKind.MODEL_TEST, AttachmentKind.DATA_CHECK)
_ATTACHABLE = frozenset({State.RECEIVED, State.SCANNED})


@dataclass(frozen=True, slots=True)
class AssessInput:
    """What a step gets: the stored copy of the version (verified), the version, the registry's scan policy."""

    artifact: Path
    version: VersionInfo
    policy: Policy


@dataclass(frozen=True, slots=True)
class AssessReport:
    """What a step returns: a model-test or data-check report as JSON bytes."""

    kind: AttachmentKind
    content: bytes


#: One unit of work :func:`assess` runs, in order; a report that is not about the version stops the rest.
Step = Callable[[AssessInput], AssessReport]


def assess(
    core: Core, actor: Principal, ref: str, steps: Sequence[Step], signing_key: Path | None, password: bytes | None
) -> VersionInfo:
    """Run ``steps`` on the stored copy of ``ref`` and attach their reports (received or scanned versions only)."""
    from mlwarden.integrity.hashing import hash_model

    with attempt(core, actor, "test", f"model:{ref}", Permission.SCAN) as act:
        key = _load_key(signing_key, password)  # fail before running anything
        with core.database.reading() as session:
            info = version_info(session, version_row(session, ref))
        act.resolved(f"model:{info.ref}")  # an alias may resolve outside the scope
        act.from_state = act.to_state = info.state.value
        act.digests = {"artifact": info.digest}
        _check_state(info.state.value, info.ref)
        artifact = view_path(core, info)
        stored = f"sha256:{hash_model(artifact).digest}"
        if stored != info.digest:
            raise StorageError(f"the stored bytes of {info.ref} hash to {stored}, registered {info.digest}: not tested")
        datasets = attached_datasets(
            core.blobs.path(a.digest) for a in info.attachments if a.kind is AttachmentKind.DATASET_MANIFEST
        )
        given = AssessInput(artifact, info, core.policy)
        with core.blobs.staging(in_use=functools.partial(referenced, core)) as stage:
            made: list[tuple[AttachmentKind, str, Any, dict[str, Any]]] = []
            for step in steps:
                report = step(given)
                if report.kind not in _KINDS:
                    raise BadInput(f"a registry test step returned a {report.kind.value}, not a report")
                name = f"{report.kind.value.replace('_', '-')}-{info.model}-{info.version}-{len(made) + 1}.json"
                item = stage.add_bytes(report.content)
                check_binding(
                    report.kind,
                    item.temp,
                    Path(name),
                    digest=info.digest,
                    files=info.files,
                    is_file=info.is_file,
                    datasets=datasets,
                )
                details = _details(report.kind, item.temp, info, datasets)
                if key is not None:
                    details["signature"] = _sign(key, name, item.digest, info, report.kind, details)
                made.append((report.kind, name, item, details))
                act.digests[f"{report.kind.value}#{len(made)}"] = digest_ref(item.digest)
            act.details["reports"] = [
                {"kind": k.value, "sha256": i.digest, "statuses": d["statuses"], "signed": "signature" in d}
                for k, _, i, d in made
            ]

            def write(session: Session) -> VersionInfo:
                row = version_row(session, info.ref, lock=True)
                act.from_state = act.to_state = row.state
                _check_state(row.state, info.ref)
                for kind, name, item, details in made:
                    session.add(
                        AttachmentRow(
                            version_id=row.id,
                            kind=kind.value,
                            filename=name,
                            digest=item.digest,
                            size=item.size,
                            created_by=actor.username,
                            created_at=utcnow(),
                            details=details,
                        )
                    )
                session.flush()
                session.refresh(row)
                core.audit.append(session, act.event(allowed=True))
                stage.store()
                return version_info(session, row)

            with core.database.transaction() as session:
                result = write(session)
            stage.commit()
        return result


def verify_signature(report: bytes, bundle: Mapping[str, Any], public_key: Path) -> dict[str, Any]:
    """Check a registry-run report's signature (``details.signature``) with ``public_key``; return its predicate.

    Raises:
        VerificationError: a bad signature, another statement type, or a signature over other bytes.
    """
    from mlwarden.integrity.envelope import verify_statement
    from mlwarden.integrity.errors import VerificationError

    statement = verify_statement(bundle, public_key)
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise VerificationError("not a signature of a registry-run report")
    digest = hashlib.sha256(report).hexdigest()
    if [s.get("digest", {}).get("sha256") for s in statement.get("subject", [])] != [digest]:
        raise VerificationError("the signature covers other bytes than this report")
    return dict(statement["predicate"])


def _check_state(state: str, ref: str) -> None:
    if State(state) not in _ATTACHABLE:
        raise InvalidTransition(
            f"cannot test {ref}: it is {state}; reports are attached before approval only (received or scanned)"
        )


def _load_key(path: Path | None, password: bytes | None) -> Any:
    if path is None:
        return None
    from mlwarden.integrity.keys import load_private_key

    return load_private_key(path, password)


def _details(kind: AttachmentKind, staged: Path, info: VersionInfo, datasets: Sequence[Any]) -> dict[str, Any]:
    doc = json.loads(staged.read_bytes())
    entries = doc.get("tests" if kind is AttachmentKind.MODEL_TEST else "checks", [])
    details: dict[str, Any] = {
        "source": REGISTRY_SCAN,
        "digest": info.digest,
        "statuses": {str(e.get("id")): str(e.get("status")) for e in entries if isinstance(e, dict)},
    }
    if kind is AttachmentKind.DATA_CHECK:
        checked = str(doc["dataset"]["sha256"]).removeprefix("sha256:")
        details["data_sha256"] = checked
        details["scope"] = data_scope(staged.name, checked, datasets)
    return details


def _sign(key: Any, name: str, digest: str, info: VersionInfo, kind: AttachmentKind, details: Mapping[str, Any]) -> Any:
    from mlwarden.integrity.envelope import sign_statement

    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": name, "digest": {"sha256": digest}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "model": info.model,
            "version": info.version,
            "model_digest": info.digest,
            "kind": kind.value,
            "source": REGISTRY_SCAN,
            "statuses": dict(details["statuses"]),
            "signed_at": utcnow().isoformat(),
        },
    }
    return sign_statement(statement, key)


# -- gates ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Loaded:
    """The newest registry-run report of a kind, or why there is none usable."""

    label: str
    attachment: AttachmentInfo | None = None
    doc: Mapping[str, Any] | None = None
    problem: str = ""


def assessment_checks(rules: ApproveGate, evidence: Evidence) -> list[GateCheck]:
    """Every model-test and data-check rule the gates file switches on (none by default)."""
    checks: list[GateCheck] = []
    model_rules = _model_rules(rules)
    if rules.model_test_required or model_rules:
        loaded = _newest(evidence, AttachmentKind.MODEL_TEST, "model test")
        if rules.model_test_required:
            checks.append(_required("model_test_required", loaded, "tests", "run `mlwarden registry test`"))
        checks.extend(_rule(rule, loaded, "tests", item, read) for rule, item, read in model_rules)
    data_rules = _data_rules(rules)
    if rules.data_check_required or data_rules:
        loaded = _newest(evidence, AttachmentKind.DATA_CHECK, "data check")
        if rules.data_check_required:
            hint = "run `mlwarden registry test ... --train DATA`"
            checks.append(_required("data_check_required", loaded, "checks", hint))
        checks.extend(_rule(rule, loaded, "checks", item, read) for rule, item, read in data_rules)
    return checks


#: Reads one test's metrics: returns (passed, detail); raises KeyError/TypeError/ValueError when a number is missing.
_Reader = Callable[[Mapping[str, Any]], tuple[bool, str]]


def _model_rules(rules: ApproveGate) -> list[tuple[str, str, _Reader]]:
    found: list[tuple[str, str, _Reader]] = []
    if rules.min_robust_accuracy is not None:
        wanted = rules.min_robust_accuracy
        found.append(("min_robust_accuracy", "robustness", functools.partial(_robust, wanted)))
    if rules.max_membership_auc is not None:
        found.append(("max_membership_auc", "membership", functools.partial(_membership, rules.max_membership_auc)))
    for rule, metric, limit in (
        ("max_demographic_parity_difference", "demographic_parity_difference", rules.max_demographic_parity_difference),
        ("max_equalized_odds_difference", "equalized_odds_difference", rules.max_equalized_odds_difference),
    ):
        if limit is not None:
            found.append((rule, "fairness", functools.partial(_at_most, metric, metric.replace("_", " "), limit)))
    if rules.max_backdoor_anomaly_index is not None:
        read = functools.partial(
            _at_most, "max_anomaly_index", "backdoor anomaly index", rules.max_backdoor_anomaly_index
        )
        found.append(("max_backdoor_anomaly_index", "backdoor_probe", read))
    return found


def _data_rules(rules: ApproveGate) -> list[tuple[str, str, _Reader]]:
    found: list[tuple[str, str, _Reader]] = []
    if rules.max_label_issue_rate is not None:
        found.append(
            ("max_label_issue_rate", "label_issues", functools.partial(_label_issues, rules.max_label_issue_rate))
        )
    if rules.no_personal_data:
        found.append(("no_personal_data", "pii", _no_pii))
    return found


def _newest(evidence: Evidence, kind: AttachmentKind, label: str) -> _Loaded:
    version = evidence.version
    every = [a for a in version.attachments if a.kind == kind]
    ours = [a for a in every if a.details.get("source") == REGISTRY_SCAN and a.details.get("digest") == version.digest]
    if not ours:
        why = " (attached reports do not count)" if every else ""
        return _Loaded(label, problem=f"no {label} of this version by the registry{why}")
    newest = ours[-1]
    path = evidence.attachment_paths.get(newest.id)
    try:
        data = path.read_bytes() if path is not None else b""
    except OSError as exc:
        return _Loaded(label, newest, problem=f"{label} report #{newest.id} cannot be read: {exc.strerror or exc}")
    if hashlib.sha256(data).hexdigest() != newest.digest:
        return _Loaded(label, newest, problem=f"{label} report #{newest.id} is missing or altered in the blob store")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict):
        return _Loaded(label, newest, problem=f"{label} report #{newest.id} is not a JSON object")
    return _Loaded(label, newest, doc)


def _entries(loaded: _Loaded, collection: str) -> list[Mapping[str, Any]]:
    items = (loaded.doc or {}).get(collection, [])
    return [e for e in items if isinstance(e, dict)] if isinstance(items, list) else []


def _required(rule: str, loaded: _Loaded, collection: str, hint: str) -> GateCheck:
    if loaded.attachment is None or loaded.doc is None:
        return GateCheck(rule, False, f"{loaded.problem}: {hint}")
    entries = _entries(loaded, collection)
    errors = [f"{e.get('id')}: {e.get('reason') or 'no reason given'}" for e in entries if e.get("status") == "error"]
    where = f"{loaded.label} report #{loaded.attachment.id} of {loaded.attachment.created_at:%Y-%m-%d %H:%M}"
    if not entries:
        return GateCheck(rule, False, f"{where} holds no result")
    if errors:
        return GateCheck(rule, False, f"{where}: could not run (fail closed): {'; '.join(errors)}")
    statuses = ", ".join(f"{e.get('id')} {e.get('status')}" for e in entries)
    return GateCheck(rule, True, f"{where} ({statuses})")


def _rule(rule: str, loaded: _Loaded, collection: str, item: str, read: _Reader) -> GateCheck:
    if loaded.attachment is None or loaded.doc is None:
        return GateCheck(rule, False, f"{loaded.problem}: {item} is needed")
    where = f"{loaded.label} report #{loaded.attachment.id}"
    entry = next((e for e in reversed(_entries(loaded, collection)) if e.get("id") == item), None)
    if entry is None:
        return GateCheck(rule, False, f"{where} did not run {item}")
    if entry.get("status") != "ok":
        why = entry.get("reason") or "no reason given"
        return GateCheck(rule, False, f"{item} status {entry.get('status')!r} in {where}: {why} (fail closed)")
    metrics = entry.get("metrics")
    try:
        if not isinstance(metrics, dict):
            raise TypeError("no metrics")
        passed, detail = read(metrics)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        return GateCheck(rule, False, f"{item} in {where} lacks the number this rule reads ({exc}): fail closed")
    return GateCheck(rule, passed, detail)


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} is {value!r}, not a number")
    return float(value)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _at_most(metric: str, label: str, limit: float, metrics: Mapping[str, Any]) -> tuple[bool, str]:
    value = _number(metrics[metric], metric)
    return value <= limit, f"{label} {_fmt(value)} {'<=' if value <= limit else '>'} {_fmt(limit)}"


def _membership(limit: float, metrics: Mapping[str, Any]) -> tuple[bool, str]:
    auc = _number(metrics["max_auc"], "max_auc")
    attacks = [a for a in metrics.get("attacks", []) if isinstance(a, dict) and isinstance(a.get("auc"), int | float)]
    worst = max(attacks, key=lambda a: float(a["auc"]), default=None)
    name = f" ({worst.get('attack')})" if worst is not None else ""
    return auc <= limit, f"membership AUC {_fmt(auc)}{name} {'<=' if auc <= limit else '>'} {_fmt(limit)}"


def _robust(wanted: Any, metrics: Mapping[str, Any]) -> tuple[bool, str]:
    attacks = [a for a in metrics["attacks"] if isinstance(a, dict)]
    if wanted.attack is not None:
        names = sorted(str(a.get("attack")) for a in attacks)
        attacks = [a for a in attacks if a.get("attack") == wanted.attack]
        if not attacks:
            return False, f"attack {wanted.attack!r} was not run (measured: {', '.join(names) or 'none'})"
    measured: set[float] = set()
    at_eps: list[tuple[float, str]] = []
    for attack in attacks:
        for point in attack.get("points", []):
            eps = _number(point["eps"], "eps")
            measured.add(eps)
            if math.isclose(eps, wanted.eps, rel_tol=1e-6, abs_tol=1e-12):
                at_eps.append((_number(point["accuracy"], "accuracy"), str(attack.get("attack"))))
    if not at_eps:
        listed = ", ".join(_fmt(e) for e in sorted(measured)) or "none"
        return False, f"robust accuracy was not measured at eps {_fmt(wanted.eps)} (measured: {listed})"
    accuracy, name = min(at_eps)
    ok = accuracy >= wanted.accuracy
    relation = ">=" if ok else "<"
    return ok, f"robust accuracy {_fmt(accuracy)} at eps {_fmt(wanted.eps)} ({name}) {relation} {_fmt(wanted.accuracy)}"


def _label_issues(limit: float, metrics: Mapping[str, Any]) -> tuple[bool, str]:
    issues = metrics["issues"]
    rate = _number(issues["rate"], "issues.rate")
    count, total = issues.get("count"), issues.get("total")
    ci = issues.get("ci95") or []
    interval = f", 95% CI {_fmt(ci[0])}-{_fmt(ci[1])}" if len(ci) == 2 else ""
    return rate <= limit, (
        f"label issue rate {_fmt(rate)} ({count} of {total}{interval}) {'<=' if rate <= limit else '>'} {_fmt(limit)}"
    )


def _no_pii(metrics: Mapping[str, Any]) -> tuple[bool, str]:
    matches = metrics["matches"]
    if not isinstance(matches, dict):
        raise TypeError("matches is not a mapping")
    found = {str(k): int(_number(v, f"matches.{k}")) for k, v in matches.items()}
    positive = {k: n for k, n in sorted(found.items()) if n}
    if positive:
        return False, "personal data found: " + ", ".join(f"{n} {k}" for k, n in positive.items())
    return True, f"no personal data found ({len(found)} detector(s), every count zero)"
