"""Sign and verify in-toto statements as DSSE envelopes inside Sigstore bundles.

This is the one signature format of mlwarden: model signatures, dataset manifests, training records and
retirement certificates are all in-toto Statement v1 documents wrapped the way OpenSSF ``model_signing``
wraps its model statements, so any Sigstore-bundle tooling can read them:

```
{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
 "verificationMaterial": {"publicKey": {"hint": "<sha256 of the PEM public key>"}, "tlogEntries": []}
                      or {"x509CertificateChain": {"certificates": [{"rawBytes": "<DER, base64>"}, ...]},
                          "tlogEntries": []},
 "dsseEnvelope": {"payload": "<statement JSON, base64>", "payloadType": "application/vnd.in-toto+json",
                  "signatures": [{"sig": "<DER ECDSA signature over PAE(payloadType, payload), base64>",
                                  "keyid": ""}]}}
```

The signature covers DSSE's pre-authentication encoding (PAE), never the JSON directly, so the payload type
is signed too and nothing is parsed before it is authenticated. Keys are ECDSA P-256/P-384/P-521 with
SHA-256/384/512 (see :mod:`mlwarden.integrity.keys`). There is no transparency-log entry: these are
"traditional" key or certificate signatures, exactly like ``model_signing``'s ``key`` and ``certificate``
methods.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mlwarden.core.errors import UsageError
from mlwarden.core.files import write_atomically
from mlwarden.integrity.errors import KeyFileError, VerificationError
from mlwarden.integrity.keys import PrivateKey, PublicKey, hash_for, key_hint, load_private_key, load_public_key

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
#: Both spellings Sigstore uses for a v0.3 bundle; ``model_signing`` writes the first.
ACCEPTED_MEDIA_TYPES = frozenset({BUNDLE_MEDIA_TYPE, "application/vnd.dev.sigstore.bundle+json;version=0.3"})
#: A bundle lists one digest per file (~150 bytes each): 64 MiB is room for ~400,000 files.
MAX_BUNDLE_BYTES = 64 << 20
WRONG_KEY = "signature does not verify with this key (wrong key?)"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: ``DSSEv1 SP len(type) SP type SP len(body) SP body``.

    Lengths are ASCII decimal byte counts (https://github.com/secure-systems-lab/dsse/blob/v1.0.0/protocol.md).
    """
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def statement_problems(statement: Any) -> list[str]:
    """Why ``statement`` is not an in-toto Statement v1 (empty when it is one)."""
    if not isinstance(statement, Mapping):
        return [f"the payload is not a JSON object but {type(statement).__name__}"]
    problems = []
    if statement.get("_type") != STATEMENT_TYPE:
        problems.append(f"the statement's _type is {statement.get('_type')!r}, expected {STATEMENT_TYPE!r}")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not subjects:
        problems.append("the statement has no subject list")
    else:
        for i, subject in enumerate(subjects):
            digest = subject.get("digest") if isinstance(subject, Mapping) else None
            if not isinstance(digest, Mapping) or not digest:
                problems.append(f"subject {i} has no digest")
            elif not all(isinstance(k, str) and isinstance(v, str) and v for k, v in digest.items()):
                problems.append(f"subject {i} has a malformed digest")
            elif "name" in subject and not isinstance(subject["name"], str):
                problems.append(f"subject {i} has a non-string name")
    if not isinstance(statement.get("predicateType"), str) or not statement.get("predicateType"):
        problems.append("the statement has no predicateType")
    if "predicate" in statement and not isinstance(statement["predicate"], Mapping):
        problems.append("the statement's predicate is not a JSON object")
    return problems


def encode_statement(statement: Mapping[str, Any]) -> bytes:
    """The payload bytes for ``statement``: UTF-8 JSON, indented like ``model_signing`` writes it."""
    problems = statement_problems(statement)
    if problems:
        raise UsageError(f"cannot sign: {'; '.join(problems)}")
    ordered = {k: statement[k] for k in ("_type", "subject", "predicateType", "predicate") if k in statement}
    ordered.update({k: v for k, v in statement.items() if k not in ordered})
    try:
        return json.dumps(ordered, indent=2, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise UsageError(f"cannot sign: the statement is not JSON-serialisable: {exc}") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    """Decode standard or URL-safe base64 (protobuf JSON allows both); errors name ``what``."""
    if not isinstance(text, str) or not text:
        raise VerificationError(f"bundle is truncated/invalid: {what} is missing")
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise VerificationError(f"bundle is truncated/invalid: {what} is not valid base64") from None


def _certificate_material(certificates: Sequence[x509.Certificate]) -> dict[str, Any]:
    raw = [{"rawBytes": _b64(c.public_bytes(serialization.Encoding.DER))} for c in certificates]
    return {"x509CertificateChain": {"certificates": raw}, "tlogEntries": []}


def sign_statement(
    statement: Mapping[str, Any],
    private_key: PrivateKey | Path | str,
    *,
    password: bytes | None = None,
    certificates: Sequence[x509.Certificate] = (),
) -> dict[str, Any]:
    """Sign an in-toto statement; return the Sigstore bundle as a JSON-able dict.

    Args:
        statement: an in-toto Statement v1 (``_type``, ``subject``, ``predicateType``, ``predicate``).
        private_key: a loaded ECDSA key or the path of a PEM private key.
        password: the private key's password, when given a path to an encrypted key.
        certificates: the signing certificate first, then its chain. When given, the bundle carries them
            (``x509CertificateChain``) instead of a public-key hint; the first must hold the key's public key.

    Raises:
        KeyFileError: the key cannot be loaded, or does not match the signing certificate.
        UsageError: the statement is not an in-toto Statement v1.
    """
    key = (
        private_key if isinstance(private_key, ec.EllipticCurvePrivateKey) else load_private_key(private_key, password)
    )
    payload = encode_statement(statement)
    signature = key.sign(pae(PAYLOAD_TYPE, payload), ec.ECDSA(hash_for(key)))
    if certificates:
        if certificates[0].public_key() != key.public_key():
            raise KeyFileError("the signing certificate does not hold the public key of this private key")
        material = _certificate_material(certificates)
    else:
        material = {"publicKey": {"hint": key_hint(key.public_key())}, "tlogEntries": []}
    return {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": material,
        "dsseEnvelope": {
            "payload": _b64(payload),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": _b64(signature), "keyid": ""}],
        },
    }


@dataclass(frozen=True, slots=True)
class Envelope:
    """The parts of a bundle that verification needs, decoded but not yet trusted."""

    payload: bytes
    payload_type: str
    signatures: tuple[bytes, ...]
    key_hint: str | None
    certificates: tuple[bytes, ...]  # DER, signing certificate first


def parse_bundle(bundle: Any) -> Envelope:
    """Check a bundle's shape and decode it. Nothing here is authenticated yet.

    Raises:
        VerificationError: the bundle is malformed, of an unknown media type or without a DSSE envelope.
    """
    if not isinstance(bundle, Mapping):
        raise VerificationError("bundle is truncated/invalid: not a JSON object")
    media = bundle.get("mediaType")
    if media not in ACCEPTED_MEDIA_TYPES:
        raise VerificationError(f"bundle is truncated/invalid: media type {media!r}, expected {BUNDLE_MEDIA_TYPE!r}")
    envelope = bundle.get("dsseEnvelope")
    if not isinstance(envelope, Mapping):
        raise VerificationError("bundle is truncated/invalid: it has no dsseEnvelope (not a DSSE signature)")
    payload_type = envelope.get("payloadType")
    if payload_type != PAYLOAD_TYPE:
        raise VerificationError(
            f"wrong payload type {payload_type!r}: expected {PAYLOAD_TYPE!r} (an in-toto statement)"
        )
    raw_signatures = envelope.get("signatures")
    if not isinstance(raw_signatures, list) or not raw_signatures:
        raise VerificationError("bundle is truncated/invalid: the envelope has no signature")
    signatures = tuple(
        _unb64(s.get("sig") if isinstance(s, Mapping) else None, f"signature {i}") for i, s in enumerate(raw_signatures)
    )
    material = bundle.get("verificationMaterial")
    material = material if isinstance(material, Mapping) else {}
    public = material.get("publicKey")
    hint = public.get("hint") if isinstance(public, Mapping) else None
    chain = material.get("x509CertificateChain")
    raw_certificates: list[Any] = []
    if isinstance(chain, Mapping) and isinstance(chain.get("certificates"), list):
        raw_certificates = list(chain["certificates"])
    elif isinstance(material.get("certificate"), Mapping):  # bundle v0.3's single leaf certificate
        raw_certificates = [material["certificate"]]
    certificates = tuple(
        _unb64(c.get("rawBytes") if isinstance(c, Mapping) else None, f"certificate {i}")
        for i, c in enumerate(raw_certificates)
    )
    return Envelope(
        payload=_unb64(envelope.get("payload"), "the payload"),
        payload_type=payload_type,
        signatures=signatures,
        key_hint=hint if isinstance(hint, str) and hint else None,
        certificates=certificates,
    )


def check_signature(envelope: Envelope, key: PublicKey) -> None:
    """Raise unless one of the envelope's signatures is ``key``'s over PAE(payload type, payload)."""
    message = pae(envelope.payload_type, envelope.payload)
    for signature in envelope.signatures:
        try:
            key.verify(signature, message, ec.ECDSA(hash_for(key)))
            return
        except InvalidSignature:
            continue
    raise VerificationError(
        WRONG_KEY if envelope.key_hint is None else f"{WRONG_KEY}: the payload or signature was altered"
    )


def decode_payload(envelope: Envelope) -> dict[str, Any]:
    """The authenticated payload as an in-toto statement (call only after :func:`check_signature`)."""
    try:
        statement = json.loads(envelope.payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerificationError(f"the signed payload is not valid JSON: {exc}") from None
    problems = statement_problems(statement)
    if problems:
        raise VerificationError(problems)
    return dict(statement)


def verify_statement(bundle: Mapping[str, Any], public_key: PublicKey | Path | str) -> dict[str, Any]:
    """Verify a bundle's signature with ``public_key`` and return the signed in-toto statement.

    A bundle carrying a public-key hint must name this key; one carrying certificates is checked against
    the key alone (use :func:`mlwarden.integrity.certificates.verify_statement_certificate` to check the
    chain instead).

    Raises:
        KeyFileError: the public key cannot be loaded.
        VerificationError: malformed bundle, wrong payload type, wrong key, bad signature, or a payload that
            is not an in-toto Statement v1. ``problems`` says which.
    """
    key = public_key if isinstance(public_key, ec.EllipticCurvePublicKey) else load_public_key(public_key)
    envelope = parse_bundle(bundle)
    if envelope.key_hint is not None and envelope.key_hint != key_hint(key):
        raise VerificationError(
            f"{WRONG_KEY}: the bundle was signed by key sha256:{envelope.key_hint[:16]}…, "
            f"this key is sha256:{key_hint(key)[:16]}…"
        )
    check_signature(envelope, key)
    return decode_payload(envelope)


def write_bundle(bundle: Mapping[str, Any], path: Path | str) -> None:
    """Write ``bundle`` as compact JSON, atomically: readers never see a half-written signature.

    Raises:
        UsageError: the folder does not exist or the file cannot be written.
    """
    path = Path(path)
    text = json.dumps(bundle, separators=(",", ":"), ensure_ascii=False)
    folder = path.resolve().parent
    if not folder.is_dir():
        raise UsageError(f"cannot write signature {path}: folder {folder} does not exist")
    try:
        write_atomically(path, text)
    except OSError as exc:
        raise UsageError(f"cannot write signature {path}: {exc.strerror or exc}") from None


def read_bundle(path: Path | str) -> dict[str, Any]:
    """Read a bundle written by :func:`write_bundle` or by ``model_signing`` (JSON only, not checked).

    Raises:
        VerificationError: the file is missing, too large, truncated or not a JSON object.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BUNDLE_BYTES:
            raise VerificationError(f"{path} is not a valid signature bundle: {size} bytes (limit {MAX_BUNDLE_BYTES})")
        data = path.read_bytes()
    except FileNotFoundError:
        raise VerificationError(f"signature bundle {path} does not exist") from None
    except OSError as exc:
        raise VerificationError(f"cannot read signature bundle {path}: {exc.strerror or exc}") from None
    try:
        bundle = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise VerificationError(f"{path} is not a valid signature bundle: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise VerificationError(f"{path} is not a valid signature bundle: {exc} (truncated?)") from None
    if not isinstance(bundle, dict):
        raise VerificationError(f"{path} is not a valid signature bundle: not a JSON object")
    return bundle
