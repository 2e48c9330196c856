"""Evidence must be about exactly the version it is attached to: checked before any attachment is stored.

A baseline, a signature, a training record or an uploaded report names the model it describes. Evidence that
names another model's digest — or none at all — is refused at attach time, so a reviewer never approves, and the
guard never enforces, a document captured on other bytes. Dataset manifests describe data, not the model, and
carry no model digest.

A model-test report (schema :data:`MODEL_TEST_SCHEMA`) names the model's digest like a scan report. A data-check
report (schema :data:`DATA_CHECK_SCHEMA`) is about data, so it is bound through a dataset manifest attached to
the version: the data it checked (``dataset.sha256``) must be that manifest's dataset, or one file of it — the
rule :func:`mlwarden.datacheck.attach.manifest_summary` applies to a manifest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlwarden.core.errors import MlwardenError
from mlwarden.integrity.hashing import FileDigest
from mlwarden.registry.errors import BadInput
from mlwarden.registry.values import AttachmentKind

if TYPE_CHECKING:
    from mlwarden.integrity.dataset import DatasetManifest

#: The field an uploaded scan or test report must carry: the ``sha256:<hex>`` digest of the version it is about.
REPORT_DIGEST_FIELD = "model_digest"
#: ``schema`` of a model-test report (``mlwarden.modeltest.SCHEMA_ID``; the registry layer may not import it).
MODEL_TEST_SCHEMA = "https://mlwarden.dev/model-test/v1"
#: ``schema`` of a data-check report (``mlwarden.datacheck.model.SCHEMA_ID``).
DATA_CHECK_SCHEMA = "https://mlwarden.dev/data-check/v1"


def check_binding(
    kind: AttachmentKind,
    staged: Path,
    original: Path,
    *,
    digest: str,
    files: Sequence[FileDigest],
    is_file: bool,
    datasets: Sequence[DatasetManifest] = (),
) -> None:
    """Refuse (BadInput) evidence in ``staged`` that is not about the model with ``digest`` and ``files``.

    ``datasets`` are the dataset manifests attached to the version, what a data-check report must be about.
    """
    label = f"{original.name} ({kind.value.replace('_', ' ')})"
    expected = _hex(digest)
    if kind is AttachmentKind.SIGNATURE:
        _check_signature(label, staged, files, is_file)
    elif kind is AttachmentKind.TRAINING_RECORD:
        from mlwarden.integrity.record import read_training_record

        try:
            named = read_training_record(staged).model_digest
        except MlwardenError as exc:
            raise BadInput(f"{label} is not a valid training record: {exc}") from None
        _same(label, named, expected, "model_digest")
    elif kind in (AttachmentKind.BASELINE, AttachmentKind.SCAN_REPORT, AttachmentKind.TEST_REPORT):
        doc = _json_object(label, staged)
        _same(label, doc.get(REPORT_DIGEST_FIELD), expected, REPORT_DIGEST_FIELD)
    elif kind is AttachmentKind.MODEL_TEST:
        doc = _json_object(label, staged)
        _schema(label, doc, MODEL_TEST_SCHEMA)
        _same(label, doc.get(REPORT_DIGEST_FIELD), expected, REPORT_DIGEST_FIELD)
    elif kind is AttachmentKind.DATA_CHECK:
        doc = _json_object(label, staged)
        _schema(label, doc, DATA_CHECK_SCHEMA)
        dataset = doc.get("dataset")
        checked = _hex(dataset.get("sha256") if isinstance(dataset, dict) else None)
        if not checked:
            raise BadInput(f"{label} names no dataset digest (dataset.sha256): evidence must be bound to this version")
        data_scope(label, checked, datasets)


def data_scope(label: str, checked: str, datasets: Sequence[DatasetManifest]) -> str:
    """What of the attached datasets the data with SHA-256 ``checked`` is: ``dataset:NAME`` or ``file:NAME/PATH``.

    Raises:
        BadInput: no dataset manifest is attached, or the data is neither a listed dataset nor one of its files.
    """
    if not datasets:
        raise BadInput(
            f"{label}: no dataset manifest is attached to this version, so no data check can be bound to it; "
            "attach the manifest of the data first (mlwarden attach REF dataset_manifest FILE)"
        )
    for manifest in datasets:
        if checked == manifest.digest:
            return f"dataset:{manifest.name}"
        for item in manifest.files:
            if item.digest == checked:
                return f"file:{manifest.name}/{item.path}"
    names = ", ".join(f"{m.name} (sha256:{m.digest[:12]}…)" for m in datasets)
    raise BadInput(
        f"{label} is about other data (sha256:{checked}): not a dataset attached to this version nor one of its "
        f"files ({names})"
    )


def attached_datasets(paths: Iterable[Path]) -> list[DatasetManifest]:
    """The dataset manifests in ``paths`` (blobs of attachments validated when attached; unreadable ones skipped)."""
    from mlwarden.integrity.dataset import read_dataset_manifest

    manifests: list[DatasetManifest] = []
    for path in paths:
        try:
            manifests.append(read_dataset_manifest(path))
        except MlwardenError:
            continue  # fail closed: a manifest that cannot be read binds nothing
    return manifests


def _schema(label: str, doc: dict[str, Any], schema: str) -> None:
    if doc.get("schema") != schema:
        raise BadInput(f"{label}: its schema is {doc.get('schema')!r}, expected {schema!r}")


def _hex(digest: object) -> str:
    return str(digest).strip().lower().removeprefix("sha256:") if digest else ""


def _same(label: str, named: object, expected: str, field_name: str) -> None:
    if not isinstance(named, str) or not _hex(named):
        raise BadInput(f"{label} names no model digest ({field_name}): evidence must be bound to this version")
    if _hex(named) != expected:
        raise BadInput(f"{label} is about another model (sha256:{_hex(named)}), not this version (sha256:{expected})")


def _json_object(label: str, staged: Path) -> dict[str, Any]:
    try:
        with staged.open("rb") as handle:
            doc = json.load(handle)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"{label} is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise BadInput(f"{label} is not a JSON object")
    return doc


def _check_signature(label: str, staged: Path, files: Sequence[FileDigest], is_file: bool) -> None:
    """The signed statement must cover this version's files with these digests.

    The signature itself is checked by the gates against trusted keys; here only what it is about.
    """
    from mlwarden.integrity.envelope import decode_payload, parse_bundle, read_bundle
    from mlwarden.integrity.signing import parse_statement

    try:
        signed = parse_statement(decode_payload(parse_bundle(read_bundle(staged))))
    except (MlwardenError, KeyError, TypeError, ValueError) as exc:
        raise BadInput(f"{label} is not a valid model signature: {exc}") from None
    if not signed.resources:
        raise BadInput(f"{label} covers no file: evidence must be bound to this version")
    if signed.single_file != is_file:
        raise BadInput(f"{label} signs {'a single file' if signed.single_file else 'a folder'}; this version is not")
    if is_file:
        ok = len(signed.resources) == 1 and len(files) == 1 and signed.resources[0].digest == files[0].digest
    else:
        stored = {f.path: f.digest for f in files}
        ok = all(stored.get(r.path) == r.digest for r in signed.resources)
    if not ok:
        raise BadInput(f"{label} signs other bytes than this version's: evidence must be bound to this version")
