"""Evidence must be about exactly the version it is attached to: checked before any attachment is stored.

A baseline, a signature, a training record or an uploaded report names the model it describes. Evidence that
names another model's digest — or none at all — is refused at attach time, so a reviewer never approves, and the
guard never enforces, a document captured on other bytes. Dataset manifests describe data, not the model, and
carry no model digest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlwarden.core.errors import MlwardenError
from mlwarden.integrity.hashing import FileDigest
from mlwarden.registry.errors import BadInput
from mlwarden.registry.values import AttachmentKind

#: The field an uploaded scan or test report must carry: the ``sha256:<hex>`` digest of the version it is about.
REPORT_DIGEST_FIELD = "model_digest"


def check_binding(
    kind: AttachmentKind,
    staged: Path,
    original: Path,
    *,
    digest: str,
    files: Sequence[FileDigest],
    is_file: bool,
) -> None:
    """Refuse (BadInput) evidence in ``staged`` that is not about the model with ``digest`` and ``files``."""
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
