"""Policy gates: the rules a version must pass to be approved or deployed, read from a strict TOML file.

Each rule is named after the key that switches it on (``signature_required``, ``verify_digest``...), so a
refusal tells the operator which line of the gates file stopped the transition. Evaluation never stops at the
first failure: every rule is checked and a :class:`GateResult` lists them all.

The built-in defaults fail closed: approval needs a clean static + dynamic scan by the registry itself (at
``medium``), a signature by a trusted key (none is trusted until a gates file names one) and a dataset
manifest; deployment re-hashes the stored bytes and re-verifies the signature. Example::

    [approve]
    scan_required = true
    scan_modes = ["static", "dynamic"]
    fail_on = "medium"
    scan_max_age = "30d"
    signature_required = true
    trusted_keys = ["keys/release.pub"]   # relative to this file
    dataset_manifest_required = true
    training_record_required = false
    baseline_required = false
    # model tests and data checks the registry ran (`mlwarden registry test`); every key optional, off by default
    model_test_required = true
    min_robust_accuracy = {eps = 0.05, accuracy = 0.6, attack = "pgd"}   # attack optional: worst over attacks
    max_membership_auc = 0.6
    max_demographic_parity_difference = 0.1
    max_equalized_odds_difference = 0.1
    max_backdoor_anomaly_index = 2.0
    data_check_required = true
    max_label_issue_rate = 0.05
    no_personal_data = true

    [deploy]
    verify_digest = true
    signature_required = true
    allowed_aliases = ["staging", "production"]   # empty: any alias
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from mlwarden.core.errors import MlwardenError, PolicyError
from mlwarden.core.findings import Severity
from mlwarden.core.suppressions import Suppression
from mlwarden.registry.values import AttachmentInfo, AttachmentKind, VersionInfo

__all__ = [
    "ApproveGate",
    "DeployGate",
    "Evidence",
    "GateCheck",
    "GateResult",
    "Gates",
    "RobustAccuracy",
    "evaluate_approve",
    "evaluate_deploy",
    "load_gates",
]

_STRICT = {"extra": "forbid"}
#: Where a scan report attachment came from when the registry ran the scan itself (only those count).
REGISTRY_SCAN = "registry"


@dataclass(frozen=True, slots=True)
class RobustAccuracy:
    """``min_robust_accuracy``: accuracy under attack at budget ``eps`` (a fraction of the input range).

    ``attack`` names one attack of the report (``pgd``, ``fgsm``...); ``None`` takes the worst attack measured at
    ``eps``. A budget the report did not measure fails the rule.
    """

    __pydantic_config__ = _STRICT

    eps: float
    accuracy: float
    attack: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 1:
            raise ValueError(f"min_robust_accuracy.eps must be within (0, 1], got {self.eps}")
        if not 0 <= self.accuracy <= 1:
            raise ValueError(f"min_robust_accuracy.accuracy must be within [0, 1], got {self.accuracy}")


@dataclass(frozen=True, slots=True)
class ApproveGate:
    """Rules for scanned -> approved (and for releasing a quarantined version)."""

    __pydantic_config__ = _STRICT

    scan_required: bool = True
    scan_modes: tuple[Literal["static", "dynamic"], ...] = ("static", "dynamic")
    fail_on: str = "medium"
    scan_max_age: str | None = "30d"
    signature_required: bool = True
    trusted_keys: tuple[str, ...] = ()
    dataset_manifest_required: bool = True
    training_record_required: bool = False
    baseline_required: bool = False
    # model tests and data checks run by the registry (mlwarden.registry._assess); all off by default
    model_test_required: bool = False
    min_robust_accuracy: RobustAccuracy | None = None
    max_membership_auc: float | None = None
    max_demographic_parity_difference: float | None = None
    max_equalized_odds_difference: float | None = None
    max_backdoor_anomaly_index: float | None = None
    data_check_required: bool = False
    max_label_issue_rate: float | None = None
    no_personal_data: bool = False

    def __post_init__(self) -> None:
        Severity.parse(self.fail_on)
        if self.scan_max_age is not None:
            _duration(self.scan_max_age)
        fractions = (
            ("max_membership_auc", self.max_membership_auc),
            ("max_demographic_parity_difference", self.max_demographic_parity_difference),
            ("max_equalized_odds_difference", self.max_equalized_odds_difference),
            ("max_label_issue_rate", self.max_label_issue_rate),
        )
        for name, value in fractions:
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if self.max_backdoor_anomaly_index is not None and self.max_backdoor_anomaly_index < 0:
            raise ValueError(f"max_backdoor_anomaly_index must be at least 0, got {self.max_backdoor_anomaly_index}")


@dataclass(frozen=True, slots=True)
class DeployGate:
    """Rules for approved -> deployed (and for the target of a rollback)."""

    __pydantic_config__ = _STRICT

    verify_digest: bool = True
    signature_required: bool = True
    trusted_keys: tuple[str, ...] | None = None  # None: the approve gate's
    allowed_aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Gates:
    """Both gates plus the folder trusted key paths are relative to."""

    __pydantic_config__ = _STRICT

    approve: ApproveGate = field(default_factory=ApproveGate)
    deploy: DeployGate = field(default_factory=DeployGate)
    base_dir: Path | None = None

    def trusted_key_paths(self, gate: Literal["approve", "deploy"]) -> tuple[Path, ...]:
        """The trusted public key files of ``gate``, resolved against the gates file's folder."""
        names = self.approve.trusted_keys
        if gate == "deploy" and self.deploy.trusted_keys is not None:
            names = self.deploy.trusted_keys
        base = self.base_dir or Path.cwd()
        return tuple((base / name).resolve() for name in names)


@dataclass(frozen=True, slots=True)
class GateCheck:
    """One rule's outcome: ``rule`` is the gates-file key, ``detail`` says what was found."""

    rule: str
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class GateResult:
    """Every check a gate made for one version."""

    gate: str
    checks: tuple[GateCheck, ...]

    @property
    def passed(self) -> bool:
        """Whether every check passed."""
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> tuple[GateCheck, ...]:
        """The checks that failed, in evaluation order."""
        return tuple(c for c in self.checks if not c.passed)


#: Verifies a signature: (model path, signature path, public key path) -> None, raising MlwardenError on failure.
SignatureVerifier = Callable[[Path, Path, Path], object]


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a gate looks at: the version, where its stored bytes and attachments are, and the time.

    Attributes:
        version: the version as stored.
        artifact: the stored copy of the model (a view of the blobs), what a signature and digest are checked on.
        attachment_paths: attachment id -> path of its blob.
        now: evaluation time (UTC).
        verify_signature: checks one signature with one key (default: ``mlwarden.integrity.signing.verify_model``).
        hash_artifact: re-hashes the stored copy (default: ``mlwarden.integrity.hashing.hash_model``).
        suppressions: reviewed suppressions recorded on the version; those naming its digest and not expired on
            ``now`` make the ``fail_on`` rule ignore their rule's findings (and say so).
    """

    version: VersionInfo
    artifact: Path
    attachment_paths: Mapping[int, Path]
    now: datetime
    verify_signature: SignatureVerifier | None = None
    hash_artifact: Callable[[Path], Any] | None = None
    suppressions: tuple[Suppression, ...] = ()


def load_gates(path: Path | str | None) -> Gates:
    """Read and validate a gates TOML file; ``None`` gives the built-in defaults.

    Raises:
        PolicyError: unreadable file, not TOML, an unknown key, a bad value, or a trusted key file missing.
    """
    if path is None:
        return Gates()
    import tomllib

    from pydantic import TypeAdapter, ValidationError

    source = Path(path)
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"cannot read gates file {source}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PolicyError(f"gates file {source} is not valid TOML: {exc}") from None
    if "base_dir" in data:
        raise PolicyError(f"gates file {source} is invalid: base_dir: unknown key")
    try:
        gates = TypeAdapter(Gates).validate_python({**data, "base_dir": source.resolve().parent})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise PolicyError(f"gates file {source} is invalid: {problems}") from None
    except ValueError as exc:
        raise PolicyError(f"gates file {source} is invalid: {exc}") from None
    for gate in ("approve", "deploy"):
        for key in gates.trusted_key_paths(gate):
            if not key.is_file():
                raise PolicyError(f"gates file {source}: trusted key {key} does not exist")
    return gates


def evaluate_approve(gates: Gates, evidence: Evidence) -> GateResult:
    """Check every approve rule (a release from quarantine is checked with the same rules)."""
    rules = gates.approve
    checks: list[GateCheck] = []
    if rules.scan_required:
        checks.extend(_scan_checks(rules, evidence))
    if rules.signature_required:
        checks.append(_signature_check("signature_required", gates.trusted_key_paths("approve"), evidence))
    if rules.dataset_manifest_required:
        checks.append(_present("dataset_manifest_required", AttachmentKind.DATASET_MANIFEST, evidence.version))
    if rules.training_record_required:
        checks.append(_present("training_record_required", AttachmentKind.TRAINING_RECORD, evidence.version))
    if rules.baseline_required:
        checks.append(_present("baseline_required", AttachmentKind.BASELINE, evidence.version))
    from mlwarden.registry._assess import assessment_checks  # it imports this module

    checks.extend(assessment_checks(rules, evidence))
    return GateResult("approve", tuple(checks))


def evaluate_deploy(gates: Gates, evidence: Evidence, alias: str) -> GateResult:
    """Check every deploy rule for pointing ``alias`` at the version."""
    rules = gates.deploy
    checks: list[GateCheck] = []
    if rules.allowed_aliases:
        ok = alias in rules.allowed_aliases
        allowed = ", ".join(rules.allowed_aliases)
        checks.append(GateCheck("allowed_aliases", ok, f"alias {alias!r} {'is' if ok else 'is not'} in: {allowed}"))
    if rules.verify_digest:
        checks.append(_digest_check(evidence))
    if rules.signature_required:
        checks.append(_signature_check("signature_required", gates.trusted_key_paths("deploy"), evidence))
    return GateResult("deploy", tuple(checks))


def evaluate_serving(gates: Gates, evidence: Evidence, *, signature_required: bool = True) -> GateResult:
    """Check a server's private copy of a version (``evidence.artifact``) before it loads it.

    The digest is always re-computed; the signature must verify with a deploy-trusted key unless
    ``signature_required`` is False.
    """
    checks = [_digest_check(evidence)]
    if signature_required:
        checks.append(_signature_check("signature_required", gates.trusted_key_paths("deploy"), evidence))
    return GateResult("serve", tuple(checks))


def _scan_checks(rules: ApproveGate, evidence: Evidence) -> list[GateCheck]:
    version = evidence.version
    scans = [a for a in version.attachments if a.kind == AttachmentKind.SCAN_REPORT]
    ours = [a for a in scans if a.details.get("source") == REGISTRY_SCAN and a.details.get("digest") == version.digest]
    if not ours:
        why = " (attached reports do not count)" if scans else ""
        return [GateCheck("scan_required", False, f"no scan of the stored bytes by the registry{why}: run a scan")]
    report = ours[-1]
    details = report.details
    checks = [GateCheck("scan_required", True, f"scan report #{report.id} of {report.created_at:%Y-%m-%d %H:%M}")]
    modes = set(details.get("modes", ()))
    missing = [m for m in rules.scan_modes if m not in modes]
    checks.append(
        GateCheck(
            "scan_modes",
            not missing,
            f"newest scan ran {', '.join(sorted(modes)) or 'nothing'}"
            + (f"; missing {', '.join(missing)}" if missing else ""),
        )
    )
    checks.append(_clean_check(rules, details, evidence))
    if rules.scan_max_age is not None:
        limit = _duration(rules.scan_max_age)
        age = evidence.now - report.created_at
        checks.append(
            GateCheck(
                "scan_max_age",
                age <= limit,
                f"newest scan is {_human(age)} old (limit {rules.scan_max_age})",
            )
        )
    return checks


def _clean_check(rules: ApproveGate, details: Mapping[str, Any], evidence: Evidence) -> GateCheck:
    fail_on = Severity.parse(rules.fail_on)
    counts: dict[str, int] = dict(details.get("by_severity", {}))
    errors = int(details.get("errors", 0))
    if errors:
        return GateCheck("fail_on", False, f"{errors} file(s) could not be scanned: not clean")
    notes = _apply_suppressions(counts, details, evidence, fail_on)
    failing = {name: n for name, n in counts.items() if n and Severity.parse(name) >= fail_on}
    suffix = "".join(f"; {note}" for note in notes)
    if failing:
        what = ", ".join(f"{n} {name}" for name, n in sorted(failing.items(), key=lambda kv: -Severity.parse(kv[0])))
        return GateCheck("fail_on", False, f"findings at or above {fail_on}: {what}{suffix}")
    return GateCheck("fail_on", True, f"no finding at or above {fail_on}{suffix}")


def _apply_suppressions(
    counts: dict[str, int], details: Mapping[str, Any], evidence: Evidence, fail_on: Severity
) -> list[str]:
    """Take the findings of suppressed rules out of ``counts``; return what was ignored (or not) and why.

    Only suppressions naming the version's digest count, and only until they expire. A scan report without
    per-rule counts (written before suppressions existed) cannot be split by rule: nothing is ignored.
    """
    digest = evidence.version.digest.removeprefix("sha256:")
    mine = [s for s in evidence.suppressions if s.digest == digest]
    if not mine:
        return []
    by_rule: Mapping[str, Mapping[str, int]] | None = details.get("by_rule")
    if by_rule is None:
        return ["the scan report has no per-rule counts: suppressions not applied (scan again)"]
    today = evidence.now.date()
    notes: list[str] = []
    for rule_id, per_severity in sorted(by_rule.items()):
        relevant = {name: n for name, n in per_severity.items() if n and Severity.parse(name) >= fail_on}
        if not relevant:
            continue
        live = next((s for s in mine if s.rule_id == rule_id and not s.expired(today)), None)
        if live is None:
            lapsed = [s for s in mine if s.rule_id == rule_id]
            if lapsed:
                last = max(s.expires for s in lapsed)
                notes.append(f"suppression of {rule_id} expired on {last.isoformat()}: not applied")
            continue
        for name, n in relevant.items():
            counts[name] = max(0, counts.get(name, 0) - n)
        notes.append(
            f"{sum(relevant.values())} {rule_id} finding(s) suppressed ({live.source}) by {live.reviewer} "
            f"until {live.expires.isoformat()}: {live.reason}"
        )
    return notes


def _present(rule: str, kind: AttachmentKind, version: VersionInfo) -> GateCheck:
    found: AttachmentInfo | None = version.latest(kind)
    label = kind.value.replace("_", " ")
    if found is None:
        return GateCheck(rule, False, f"no {label} attached")
    return GateCheck(rule, True, f"{label} {found.filename} (sha256:{found.digest[:12]}…)")


def _signature_check(rule: str, keys: tuple[Path, ...], evidence: Evidence) -> GateCheck:
    signature = evidence.version.latest(AttachmentKind.SIGNATURE)
    if signature is None:
        return GateCheck(rule, False, "no signature attached")
    if not keys:
        return GateCheck(rule, False, "no trusted keys configured in the gates file (trusted_keys)")
    verify = evidence.verify_signature or _default_verifier()
    bundle = evidence.attachment_paths[signature.id]
    problems: list[str] = []
    for key in keys:
        try:
            verify(evidence.artifact, bundle, key)
        except MlwardenError as exc:
            problems.append(f"{key.name}: {exc}")
            continue
        return GateCheck(rule, True, f"signature verifies with trusted key {key.name}")
    return GateCheck(rule, False, "signature does not verify with any trusted key: " + "; ".join(problems))


def _digest_check(evidence: Evidence) -> GateCheck:
    from mlwarden.integrity.hashing import diff_files, hash_model

    hasher = evidence.hash_artifact or hash_model
    expected = evidence.version.digest
    try:
        manifest = hasher(evidence.artifact)
    except MlwardenError as exc:
        return GateCheck("verify_digest", False, f"cannot re-hash the stored bytes: {exc}")
    actual = f"sha256:{manifest.digest}"
    if actual == expected:
        return GateCheck("verify_digest", True, f"stored bytes re-hashed to {expected}")
    changes = "; ".join(str(d) for d in diff_files(evidence.version.files, manifest.files)[:5])
    return GateCheck("verify_digest", False, f"stored bytes hash to {actual}, registered {expected}: {changes}")


def _default_verifier() -> SignatureVerifier:
    from mlwarden.integrity.signing import verify_model

    def verify(model: Path, signature: Path, key: Path) -> object:
        return verify_model(model, signature, key)

    return verify


def _duration(text: str) -> timedelta:
    from mlwarden.registry.auth import parse_duration
    from mlwarden.registry.errors import BadInput

    try:
        value = parse_duration(text)
    except BadInput as exc:
        raise ValueError(str(exc)) from None
    if value is None:
        raise ValueError(f"scan_max_age must be a duration such as 30d, not {text!r}")
    return value


def _human(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    if seconds >= 86400:
        return f"{seconds // 86400}d"
    if seconds >= 3600:
        return f"{seconds // 3600}h"
    return f"{max(seconds, 0) // 60}m"
