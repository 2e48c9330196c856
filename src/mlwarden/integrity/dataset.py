"""Dataset manifests: which files a dataset is made of, where it came from, under which licence, signed.

A model version links to the manifests of the data it was trained on, so "was this model trained on the data
we approved?" becomes a digest comparison instead of a belief. The manifest is an in-toto Statement v1:

* one subject per file: ``{"name": "<path relative to the dataset root>", "digest": {"sha256": "<hex>"},
  "annotations": {"size": <bytes>}}`` — the same walk and digests as a model (:func:`hash_model`);
* ``predicateType`` :data:`PREDICATE_TYPE` and a predicate with ``name``, ``source``, ``license``,
  ``collected_at`` (ISO 8601), ``description``, ``file_count``, ``total_size``, ``digest`` (``{"sha256":
  ...}`` over the whole listing, see :attr:`ModelManifest.digest`), ``ignore_paths`` and ``pii_scan``
  (``{"status": "not_scanned"}`` until a data check fills it in).

Signed, it is a Sigstore bundle (:mod:`mlwarden.integrity.envelope`); unsigned (``--unsigned``), the bare
statement JSON. Reading checks the predicate against its subjects (counts, sizes, overall digest), so a
hand-edited manifest is refused even when nobody signed it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import Any

from mlwarden.core.errors import UsageError
from mlwarden.integrity.envelope import (
    MAX_BUNDLE_BYTES,
    STATEMENT_TYPE,
    decode_payload,
    parse_bundle,
    sign_statement,
    statement_problems,
    verify_statement,
)
from mlwarden.integrity.errors import VerificationError
from mlwarden.integrity.hashing import Difference, FileDigest, ModelManifest, hash_model
from mlwarden.integrity.keys import PrivateKey, PublicKey

PREDICATE_TYPE = "https://mlwarden.dev/dataset-manifest/v1"
NOT_SCANNED: Mapping[str, Any] = MappingProxyType({"status": "not_scanned"})


def iso_timestamp(value: str | date | datetime | None, what: str) -> str:
    """``value`` as ISO 8601 text (a date stays a date); None means now (UTC, whole seconds).

    Raises:
        UsageError: the text is not an ISO 8601 date or date-time.
    """
    if value is None:
        return datetime.now(UTC).isoformat(timespec="seconds")
    if isinstance(value, datetime | date):
        return value.isoformat()
    text = value.strip()
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).isoformat()
    except ValueError:
        raise UsageError(f"{what}: {value!r} is not an ISO 8601 date or date-time (e.g. 2024-05-01)") from None


@dataclass(frozen=True, slots=True)
class DatasetManifest:
    """What a dataset is made of and where it came from.

    Attributes:
        name: the dataset's name.
        source: where it came from (URL, system, vendor).
        license: SPDX id or expression, or a licence name.
        collected_at: ISO 8601 date or date-time of collection.
        files: per-file digests, sorted like a model manifest.
        description: free text.
        ignore_paths: paths left out when hashing (relative to the root); verification leaves them out too.
        is_file: the dataset is a single file.
        pii_scan: the PII-scan status (``{"status": "not_scanned"}`` until a data check fills it).
    """

    name: str
    source: str
    license: str
    collected_at: str
    files: tuple[FileDigest, ...]
    description: str = ""
    ignore_paths: tuple[str, ...] = ()
    is_file: bool = False
    pii_scan: Mapping[str, Any] = field(default_factory=lambda: NOT_SCANNED)

    @property
    def manifest(self) -> ModelManifest:
        """The files as a :class:`ModelManifest` (to diff or digest them like a model)."""
        return ModelManifest(self.name, self.files, is_file=self.is_file)

    @property
    def digest(self) -> str:
        """SHA-256 (hex) over the whole dataset (see :attr:`ModelManifest.digest`)."""
        return self.manifest.digest

    @property
    def file_count(self) -> int:
        """Number of files."""
        return len(self.files)

    @property
    def total_size(self) -> int:
        """Bytes over all files."""
        return sum(f.size for f in self.files)


def build_dataset_manifest(
    path: Path | str,
    *,
    name: str,
    source: str,
    license: str,
    collected_at: str | date | datetime | None = None,
    description: str = "",
    ignore_paths: Sequence[str | PurePath] = (),
    workers: int | None = None,
) -> DatasetManifest:
    """Hash a dataset folder (or file) into a manifest.

    Raises:
        UsageError: an empty name/source/licence, a bad ``collected_at``, or a dataset without files.
        ModelPathError: the path is missing, contains a symbolic link or a special file, or cannot be read.
    """
    for label, value in (("name", name), ("source", source), ("license", license)):
        if not value or not value.strip():
            raise UsageError(f"a dataset manifest needs a non-empty {label}")
    when = iso_timestamp(collected_at, "collected_at")
    hashed = hash_model(path, ignore_paths=ignore_paths, workers=workers)
    if not hashed.files:
        raise UsageError(f"dataset {path} has no files (after ignore paths): nothing to put in a manifest")
    ignored = tuple(p.as_posix() if isinstance(p, PurePath) else str(p) for p in ignore_paths)
    return DatasetManifest(
        name=name.strip(),
        source=source.strip(),
        license=license.strip(),
        collected_at=when,
        files=hashed.files,
        description=description,
        ignore_paths=() if hashed.is_file else ignored,
        is_file=hashed.is_file,
    )


def dataset_statement(manifest: DatasetManifest) -> dict[str, Any]:
    """The in-toto Statement v1 of ``manifest`` (what is signed, or written as is when unsigned)."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {"name": f.path, "digest": {f.algorithm: f.digest}, "annotations": {"size": f.size}} for f in manifest.files
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "name": manifest.name,
            "source": manifest.source,
            "license": manifest.license,
            "collected_at": manifest.collected_at,
            "description": manifest.description,
            "file_count": manifest.file_count,
            "total_size": manifest.total_size,
            "digest": {"sha256": manifest.digest},
            "single_file": manifest.is_file,
            "ignore_paths": list(manifest.ignore_paths),
            "pii_scan": dict(manifest.pii_scan),
        },
    }


def sign_dataset_manifest(
    manifest: DatasetManifest, private_key: PrivateKey | Path | str, *, password: bytes | None = None
) -> dict[str, Any]:
    """Sign the manifest's statement; return the Sigstore bundle (write it with ``write_bundle``).

    Raises:
        KeyFileError: the private key cannot be loaded.
    """
    return sign_statement(dataset_statement(manifest), private_key, password=password)


@dataclass(frozen=True, slots=True)
class StatementFile:
    """A statement read from a file.

    Attributes:
        statement: the in-toto statement (authenticated only when read with a key).
        signed: the file is a signed bundle (False: a bare statement written with ``--unsigned``).
        verified: its signature was checked with a key.
        sha256: SHA-256 (hex) of the file's bytes as read, by which records and BOMs point at it.
    """

    statement: dict[str, Any]
    signed: bool
    verified: bool
    sha256: str


def load_statement(
    path: Path | str, public_key: PublicKey | Path | str | None, *, predicate_type: str, what: str
) -> StatementFile:
    """Read a statement file: a signed bundle (verified when a key is given) or a bare, unsigned statement.

    Shared by dataset manifests and training records: the failure messages name the file and ``what`` it
    should have been.

    Raises:
        VerificationError: missing, truncated or malformed file; a key given for an unsigned file; a
            signature that does not verify with the key; a statement of another predicate type.
        KeyFileError: the public key cannot be loaded.
    """
    path = Path(path)
    data = _read(path, what)
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerificationError(f"{what} {path} is truncated or not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise VerificationError(f"{what} {path} is not a JSON object")
    signed = "dsseEnvelope" in document or "mediaType" in document
    try:
        if signed:
            if public_key is not None:
                statement = verify_statement(document, public_key)
            else:  # not authenticated: the caller asked to read, not to verify
                statement = decode_payload(parse_bundle(document))
        elif "_type" in document:
            if public_key is not None:
                raise VerificationError("it is unsigned (written with --unsigned): there is no signature to verify")
            problems = statement_problems(document)
            if problems:
                raise VerificationError(problems)
            statement = document
        else:
            raise VerificationError("neither a signed bundle nor an in-toto statement")
    except VerificationError as exc:
        raise VerificationError([f"{what} {path}: {p}" for p in exc.problems]) from None
    if statement.get("predicateType") != predicate_type:
        raise VerificationError(
            f"{what} {path}: its predicate type is {statement.get('predicateType')!r}, expected {predicate_type!r}"
        )
    return StatementFile(statement, signed, signed and public_key is not None, hashlib.sha256(data).hexdigest())


def _read(path: Path, what: str) -> bytes:
    """The bytes of ``path`` (at most ``MAX_BUNDLE_BYTES``); errors name the file and what it should be."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_BUNDLE_BYTES + 1)
    except FileNotFoundError:
        raise VerificationError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise VerificationError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_BUNDLE_BYTES:
        raise VerificationError(f"{what} {path} is larger than {MAX_BUNDLE_BYTES} bytes: not a manifest")
    return data


def field_of(mapping: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``mapping[key]`` checked to be of ``kind`` (bool is never taken for int)."""
    value = mapping.get(key)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise VerificationError(f"{where}: field {key!r} is missing or not {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "text", int: "an integer", bool: "true/false", dict: "an object", list: "a list", float: "a number"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def subject_files(statement: Mapping[str, Any], where: str) -> tuple[FileDigest, ...]:
    """The statement's subjects as file digests (each needs a name, a SHA-256 and a ``size`` annotation)."""
    files = []
    for i, subject in enumerate(statement["subject"]):
        name = subject.get("name")
        digest = subject["digest"].get("sha256")
        size = subject.get("annotations", {}).get("size") if isinstance(subject.get("annotations"), Mapping) else None
        if not isinstance(name, str) or not name or not isinstance(digest, str) or len(digest) != 64:
            raise VerificationError(f"{where}: subject {i} needs a name and a sha256 digest")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise VerificationError(f"{where}: subject {i} ({name}) has no valid size annotation")
        files.append(FileDigest(path=name, digest=digest.lower(), size=size))
    if len({f.path for f in files}) != len(files):
        raise VerificationError(f"{where}: a file is listed twice")
    return tuple(files)


def manifest_from_statement(statement: Mapping[str, Any], where: str) -> DatasetManifest:
    """Rebuild a :class:`DatasetManifest` from its statement, checking the predicate against the subjects.

    Raises:
        VerificationError: a missing or mistyped field, or counts/sizes/digest that contradict the subjects.
    """
    predicate = field_of(statement, "predicate", dict, where)
    files = subject_files(statement, where)
    pii = field_of(predicate, "pii_scan", dict, where)
    ignore = field_of(predicate, "ignore_paths", list, where)
    if not all(isinstance(p, str) for p in ignore):
        raise VerificationError(f"{where}: field 'ignore_paths' must list text")
    manifest = DatasetManifest(
        name=field_of(predicate, "name", str, where),
        source=field_of(predicate, "source", str, where),
        license=field_of(predicate, "license", str, where),
        collected_at=field_of(predicate, "collected_at", str, where),
        description=field_of(predicate, "description", str, where),
        files=tuple(sorted(files, key=lambda f: tuple(f.path.split("/")))),
        ignore_paths=tuple(ignore),
        is_file=field_of(predicate, "single_file", bool, where),
        pii_scan=MappingProxyType(dict(pii)),
    )
    stated = field_of(predicate, "digest", dict, where).get("sha256")
    checks = (
        ("file_count", field_of(predicate, "file_count", int, where), manifest.file_count),
        ("total_size", field_of(predicate, "total_size", int, where), manifest.total_size),
        ("digest", stated, manifest.digest),
    )
    for label, claimed, actual in checks:
        if claimed != actual:
            raise VerificationError(f"{where}: {label} says {claimed!r} but the listed files give {actual!r}")
    if manifest.is_file and manifest.file_count != 1:
        raise VerificationError(f"{where}: a single-file dataset must list exactly one file")
    return manifest


def read_dataset_manifest(path: Path | str, public_key: PublicKey | Path | str | None = None) -> DatasetManifest:
    """Read a dataset manifest written by ``mlwarden data manifest``; verify its signature when a key is given.

    Without a key a signed manifest is read but NOT authenticated: pass the key whenever the answer matters.

    Raises:
        VerificationError: the file is missing, truncated, malformed, unsigned while a key was given, signed
            by another key, altered, or not a dataset manifest.
        KeyFileError: the public key cannot be loaded.
    """
    loaded = load_statement(path, public_key, predicate_type=PREDICATE_TYPE, what="dataset manifest")
    return manifest_from_statement(loaded.statement, f"dataset manifest {path}")


def verify_dataset(
    path: Path | str, manifest: DatasetManifest, *, ignore_paths: Sequence[str | PurePath] = ()
) -> list[Difference]:
    """How the dataset at ``path`` differs from ``manifest`` now (empty when every file matches).

    The manifest's own ignore paths apply, plus ``ignore_paths`` (e.g. the manifest file kept in the folder).

    Raises:
        ModelPathError: the path is missing or cannot be hashed.
    """
    current = hash_model(path, ignore_paths=[*manifest.ignore_paths, *ignore_paths])
    return manifest.manifest.diff(current)
