"""Adding to the registry: register a version, attach evidence, scan the stored bytes.

Each of these stages its files in the blob store first (copied while hashed, outside any database lock), then
writes the rows and the audit event in one transaction, moving the blobs into place (fsynced) just before that
transaction commits: a row never points at missing bytes, even after a crash. A failure before the commit removes
the blobs it stored unless another row references them (see :mod:`mlwarden.registry.blobs`).

Version numbers are ``max + 1`` under a row lock on the model (PostgreSQL) or the database write lock (SQLite);
the unique ``(model_id, number)`` constraint backs it up, and a writer that loses a race (two first versions of a
new model at once) retries the whole transaction.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mlwarden.core.errors import MlwardenError
from mlwarden.integrity.hashing import FileDigest, ModelManifest
from mlwarden.registry._core import (
    WRITE_RETRIES,
    Core,
    attempt,
    digest_ref,
    referenced,
    version_info,
    version_row,
    view_path,
)
from mlwarden.registry._evidence import attached_datasets, check_binding
from mlwarden.registry.blobs import StagedFile
from mlwarden.registry.errors import BadInput, Conflict, InvalidTransition, StorageError
from mlwarden.registry.gates import REGISTRY_SCAN
from mlwarden.registry.models import AttachmentRow, ModelRow, VersionFileRow, VersionRow, utcnow
from mlwarden.registry.roles import Permission, Principal
from mlwarden.registry.states import TRANSITIONS, Action, State, check_transition
from mlwarden.registry.values import BASELINE_FORMAT, AttachmentKind, VersionInfo, check_name, check_text, parse_ref

if TYPE_CHECKING:
    from mlwarden.registry.source import ModelSource

T = TypeVar("T")
#: States evidence may be attached in: once approved it is frozen (a new approval needs a new version).
_ATTACHABLE = frozenset({State.RECEIVED.value, State.SCANNED.value})
#: Reports whose attachments record where they came from (``source``): only the registry's own runs pass gates.
_REPORTS = frozenset({AttachmentKind.SCAN_REPORT, AttachmentKind.MODEL_TEST, AttachmentKind.DATA_CHECK})
SCAN_MODES = ("static", "dynamic")
#: Largest attachment accepted (signatures, manifests, records, reports are documents, not models).
MAX_ATTACHMENT_BYTES = 64 * 1024 * 1024


def register(
    core: Core,
    actor: Principal,
    name: str,
    model_path: Path,
    *,
    signature: Path | None,
    dataset_manifests: Sequence[Path],
    training_record: Path | None,
    framework: str | None,
    description: str,
    source: ModelSource | None = None,
) -> VersionInfo:
    """Store a new version of ``name`` (state ``received``); see :meth:`Registry.register`."""
    with attempt(core, actor, "register", f"model:{name}", Permission.REGISTER) as act:
        check_name("model", name)
        check_text("description", description, multiline=True)
        check_text("framework", framework or "", max_length=100)
        for document in (signature, training_record, *dataset_manifests):
            if document is not None:
                check_text("file name", Path(document).name, max_length=255)
        act.to_state = State.RECEIVED.value
        evidence: list[tuple[AttachmentKind, Path]] = []
        if signature is not None:
            evidence.append((AttachmentKind.SIGNATURE, Path(signature)))
        evidence.extend((AttachmentKind.DATASET_MANIFEST, Path(p)) for p in dataset_manifests)
        if training_record is not None:
            evidence.append((AttachmentKind.TRAINING_RECORD, Path(training_record)))
        for _, path in evidence:
            _check_attachment_file(path)
        with core.blobs.staging(in_use=functools.partial(referenced, core)) as stage:
            manifest = stage.add_model(Path(model_path), max_bytes=core.max_artifact_bytes)
            act.digests = {"artifact": digest_ref(manifest.digest)}
            recorded = source.checked(manifest.files) if source is not None else None
            source_item = stage.add_bytes(recorded.document()) if recorded is not None else None
            if recorded is not None and source_item is not None:
                act.details = {**act.details, "source": recorded.summary()}
                act.digests["source"] = digest_ref(source_item.digest)
            staged = [(kind, path, stage.add_file(path)) for kind, path in evidence]
            datasets = [_validate(kind, item.temp, path) for kind, path, item in staged]
            for kind, path, item in staged:
                check_binding(
                    kind,
                    item.temp,
                    path,
                    digest=manifest.digest,
                    files=manifest.files,
                    is_file=manifest.is_file,
                )
            framework = framework or _guess_framework(Path(model_path), manifest)
            packages = _packages(framework)

            def write(session: Session) -> VersionInfo:
                model = session.scalar(select(ModelRow).where(ModelRow.name == name).with_for_update())
                if model is None:
                    model = ModelRow(name=name, created_by=actor.username)
                    session.add(model)
                    session.flush()
                last = session.scalar(select(func.max(VersionRow.number)).where(VersionRow.model_id == model.id))
                number = (last or 0) + 1
                act.resolved(f"model:{name}:{number}")
                bom_text = _bom(name, number, manifest, framework, packages, datasets, recorded)
                bom = stage.add_bytes(bom_text.encode("utf-8"))
                bom_slot.append(bom)
                now = utcnow()
                row = VersionRow(
                    model_id=model.id,
                    number=number,
                    state=State.RECEIVED.value,
                    digest=digest_ref(manifest.digest),
                    artifact_name=manifest.files[0].path if manifest.is_file else manifest.name,
                    is_file=manifest.is_file,
                    total_size=manifest.total_size,
                    framework=framework,
                    description=description,
                    submitted_by=actor.username,
                    created_at=now,
                    state_changed_at=now,
                )
                session.add(row)
                session.flush()
                session.add_all(
                    VersionFileRow(version_id=row.id, path=f.path, digest=f.digest, size=f.size) for f in manifest.files
                )
                for kind, path, item in [*staged, (AttachmentKind.BOM, Path(f"{name}-{number}.cdx.json"), bom)]:
                    session.add(_attachment(row.id, kind, path.name, item, actor))
                if recorded is not None and source_item is not None:
                    filename = f"{name}-{number}.source.json"
                    summary = recorded.summary()
                    session.add(_attachment(row.id, AttachmentKind.SOURCE, filename, source_item, actor, summary))
                session.flush()
                session.refresh(row)
                core.audit.append(session, act.event(allowed=True, files=len(manifest.files), framework=framework))
                stage.store()  # the bytes are in place (fsynced) before the rows pointing at them commit
                return version_info(session, row)

            bom_slot: list[StagedFile] = []

            def drop_bom() -> None:
                while bom_slot:
                    stage.drop(bom_slot.pop())

            info = _with_retries(core, write, on_retry=drop_bom)
            stage.commit()
        return info


def attach(core: Core, actor: Principal, ref: str, kind: AttachmentKind | str, path: Path) -> VersionInfo:
    """Attach a document about exactly this version's bytes, before approval only (received or scanned)."""
    with attempt(core, actor, "attach", f"model:{ref}", Permission.ATTACH) as act:
        parsed = parse_ref(ref)
        try:
            kind = AttachmentKind(kind)
        except ValueError:
            kinds = ", ".join(k.value for k in AttachmentKind if k not in (AttachmentKind.BOM, AttachmentKind.SOURCE))
            raise BadInput(f"unknown attachment kind {kind!r} (expected one of: {kinds})") from None
        if kind is AttachmentKind.BOM:
            raise BadInput("the registry writes a version's ML-BOM itself at registration; it cannot be attached")
        if kind is AttachmentKind.SOURCE:
            raise BadInput("the registry records a version's source itself at registration; it cannot be attached")
        check_text("file name", Path(path).name, max_length=255)
        act.details = {"kind": kind.value, "filename": Path(path).name}
        _check_attachment_file(Path(path))
        with core.blobs.staging(in_use=functools.partial(referenced, core)) as stage:
            item = stage.add_file(Path(path))
            _validate(kind, item.temp, Path(path))
            act.digests = {kind.value: digest_ref(item.digest)}

            def write(session: Session) -> VersionInfo:
                row = version_row(session, parsed, lock=True)
                act.resolved(f"model:{row.model.name}:{row.number}")  # an alias may resolve outside the scope
                act.from_state = act.to_state = row.state
                if row.state == State.RETIRED.value:
                    raise InvalidTransition(f"cannot attach to {row.model.name}:{row.number}: it is retired")
                if row.state not in _ATTACHABLE:
                    raise InvalidTransition(
                        f"cannot attach to {row.model.name}:{row.number}: it is {row.state} and its evidence was "
                        "frozen when it was approved; register a new version to approve other evidence"
                    )
                files = [FileDigest(path=f.path, digest=f.digest, size=f.size) for f in row.files]
                datasets = attached_datasets(
                    core.blobs.path(a.digest) for a in row.attachments if a.kind == AttachmentKind.DATASET_MANIFEST
                )
                check_binding(
                    kind, item.temp, Path(path), digest=row.digest, files=files, is_file=row.is_file, datasets=datasets
                )
                details = {"source": "attached"} if kind in _REPORTS else {}
                session.add(_attachment(row.id, kind, Path(path).name, item, actor, details))
                session.flush()
                session.refresh(row)
                core.audit.append(session, act.event(allowed=True))
                stage.store()
                return version_info(session, row)

            info = _with_retries(core, write)
            stage.commit()
        return info


def scan(core: Core, actor: Principal, ref: str, modes: Sequence[str]) -> VersionInfo:
    """Scan the stored copy with mlwarden's scanner, store the JSON report, ``received -> scanned``."""
    from mlwarden.integrity.hashing import hash_model
    from mlwarden.report import render, verdict
    from mlwarden.scan.engine import scan_paths

    with attempt(core, actor, "scan", f"model:{ref}", Permission.SCAN) as act:
        wanted = tuple(m for m in SCAN_MODES if m in set(modes))
        unknown = sorted(set(modes) - set(SCAN_MODES))
        if unknown or not wanted:
            raise BadInput(f"scan modes must be among {', '.join(SCAN_MODES)} (got {', '.join(modes) or 'none'})")
        act.details = {"modes": list(wanted)}
        with core.database.reading() as session:
            info = version_info(session, version_row(session, ref))
        act.resolved(f"model:{info.ref}")  # an alias may resolve outside the scope
        act.from_state = info.state.value
        act.to_state, act.digests = TRANSITIONS[Action.SCAN].target.value, {"artifact": info.digest}
        check_transition(Action.SCAN, info.state, info.ref)
        artifact = view_path(core, info)
        stored = f"sha256:{hash_model(artifact).digest}"
        if stored != info.digest:
            raise StorageError(
                f"the stored bytes of {info.ref} hash to {stored}, registered {info.digest}: not scanned"
            )
        report = scan_paths([artifact], core.policy, modes=wanted)
        counts = report.counts()
        by_rule: dict[str, dict[str, int]] = {}  # what the approve gate needs to honour reviewed suppressions
        for finding in report.findings:
            per_rule = by_rule.setdefault(finding.rule_id, {})
            per_rule[str(finding.severity)] = per_rule.get(str(finding.severity), 0) + 1
        details = {
            "source": REGISTRY_SCAN,
            "digest": info.digest,
            "modes": list(wanted),
            "fail_on": str(report.fail_on),
            "verdict": verdict(report),
            "by_severity": counts,
            "by_rule": by_rule,
            "errors": len(report.errors),
            "failing": len(report.failing),
            "tool_version": report.tool_version,
        }
        with core.blobs.staging(in_use=functools.partial(referenced, core)) as stage:
            item = stage.add_bytes(render(report, "json").encode("utf-8"))

            def write(session: Session) -> VersionInfo:
                row = version_row(session, info.ref, lock=True)
                act.from_state = row.state
                new_state = check_transition(Action.SCAN, State(row.state), info.ref)
                act.to_state = new_state.value
                session.add(
                    _attachment(
                        row.id,
                        AttachmentKind.SCAN_REPORT,
                        f"scan-{info.model}-{info.version}.json",
                        item,
                        actor,
                        details,
                    )
                )
                if new_state.value != row.state:
                    row.state, row.state_changed_at = new_state.value, utcnow()
                session.flush()
                session.refresh(row)
                core.audit.append(session, act.event(allowed=True, verdict=details["verdict"], by_severity=counts))
                stage.store()
                return version_info(session, row)

            result = _with_retries(core, write)
            stage.commit()
        return result


def _with_retries(core: Core, write: Callable[[Session], T], on_retry: Callable[[], object] | None = None) -> T:
    """Run ``write`` in a transaction, again when a concurrent writer made it violate a unique constraint."""
    for attempt_number in range(WRITE_RETRIES):
        try:
            with core.database.transaction() as session:
                return write(session)
        except IntegrityError as exc:
            if on_retry is not None:
                on_retry()
            if attempt_number == WRITE_RETRIES - 1:
                raise Conflict(f"a concurrent writer kept winning the race ({exc.orig}); try again") from None
    raise AssertionError("unreachable")


def _attachment(
    version_id: int,
    kind: AttachmentKind,
    filename: str,
    item: StagedFile,
    actor: Principal,
    details: Mapping[str, object] | None = None,
) -> AttachmentRow:
    return AttachmentRow(
        version_id=version_id,
        kind=kind.value,
        filename=filename[:255],
        digest=item.digest,
        size=item.size,
        created_by=actor.username,
        created_at=utcnow(),
        details=dict(details or {}),
    )


def _check_attachment_file(path: Path) -> None:
    if not path.is_file():
        raise BadInput(f"{path}: no such file" if not path.exists() else f"{path} is not a regular file")
    size = path.stat().st_size
    if size > MAX_ATTACHMENT_BYTES:
        raise BadInput(f"{path} is {size} bytes: attachments are limited to {MAX_ATTACHMENT_BYTES}")


def _validate(kind: AttachmentKind, staged: Path, original: Path) -> object:
    """Check the staged copy parses as what it claims to be; returns a DatasetRef for dataset manifests."""
    try:
        if kind is AttachmentKind.SIGNATURE:
            from mlwarden.integrity.envelope import read_bundle

            read_bundle(staged)
        elif kind is AttachmentKind.DATASET_MANIFEST:
            from mlwarden.integrity.bom import DatasetRef

            return DatasetRef.from_manifest_bundle(staged)
        elif kind is AttachmentKind.TRAINING_RECORD:
            from mlwarden.integrity.record import read_training_record

            read_training_record(staged)
        elif kind in (AttachmentKind.SCAN_REPORT, AttachmentKind.MODEL_TEST, AttachmentKind.DATA_CHECK):
            with staged.open("rb") as handle:
                json.load(handle)
        elif kind is AttachmentKind.BASELINE:
            with staged.open("rb") as handle:
                doc = json.load(handle)
            if not isinstance(doc, dict) or doc.get("format") != BASELINE_FORMAT:
                raise BadInput(f"its format is not {BASELINE_FORMAT!r}")
    except MlwardenError as exc:
        raise BadInput(f"{original} is not a valid {kind.value.replace('_', ' ')}: {exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"{original} is not a valid {kind.value.replace('_', ' ')}: not JSON ({exc})") from None
    return None


def _guess_framework(path: Path, manifest: ModelManifest) -> str | None:
    from mlwarden.integrity.bom import guess_framework

    try:
        return guess_framework(path, manifest)
    except MlwardenError:
        return None


def _packages(framework: str | None) -> dict[str, str]:
    return dict(_installed(framework)) if framework is not None else {}


@functools.lru_cache(maxsize=32)
def _installed(framework: str) -> tuple[tuple[str, str], ...]:
    """The framework's installed distributions and their closure (cached: walking metadata takes ~0.3 s)."""
    from mlwarden.integrity.bom import FRAMEWORK_PACKAGES, installed_closure

    return tuple(installed_closure(FRAMEWORK_PACKAGES.get(framework, (framework,))).items())


def _bom(
    name: str,
    number: int,
    manifest: ModelManifest,
    framework: str | None,
    packages: dict[str, str],
    datasets: list[object],
    source: ModelSource | None = None,
) -> str:
    from mlwarden.integrity.bom import DatasetRef, build_bom

    refs = [d for d in datasets if isinstance(d, DatasetRef)]
    properties = {"mlwarden:registry": f"{name}:{number}"}
    if source is not None:  # where the bytes were downloaded from (redacted) and the commit that pinned them
        summary = source.summary()
        properties["mlwarden:source"] = summary["url"]
        if summary.get("commit"):
            properties["mlwarden:source-commit"] = summary["commit"]
    return build_bom(
        name=name,
        version=str(number),
        manifest=manifest,
        framework=framework,
        packages=packages,
        datasets=refs,
        properties=properties,
    )
