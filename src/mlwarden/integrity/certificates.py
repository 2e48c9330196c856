"""Verify bundles signed with a certificate: the chain up to a trusted root, then the signature.

This mirrors ``model_signing``'s ``certificate`` method: the bundle carries the signing certificate and its
intermediates (``x509CertificateChain``); the verifier supplies the roots it trusts. Because these
signatures have no trusted timestamp, the chain is checked *as of the signing certificate's notBefore*, as
``model_signing`` does: a signature made while the certificate was valid stays valid after it expires.

The chain is validated by ``cryptography``'s RFC 5280 path builder: CA certificates must be real CAs (basic
constraints, keyCertSign). The signing certificate must allow signing: key usage digitalSignature, or the
codeSigning extended key usage (the same test ``model_signing`` applies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from mlwarden.integrity.envelope import check_signature, decode_payload, parse_bundle
from mlwarden.integrity.errors import KeyFileError, VerificationError
from mlwarden.integrity.keys import CURVES, load_certificates

MAX_CHAIN_DEPTH = 8


def _describe(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string() or "(empty subject)"


def _can_sign(certificate: x509.Certificate) -> bool:
    try:
        if certificate.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            return True
    except x509.ExtensionNotFound:
        pass
    try:
        return (
            ExtendedKeyUsageOID.CODE_SIGNING
            in certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        )
    except x509.ExtensionNotFound:
        return False


def verify_chain(chain_der: Sequence[bytes], trust_roots: Sequence[x509.Certificate]) -> x509.Certificate:
    """Check that ``chain_der`` (signing certificate first) leads to one of ``trust_roots``; return the leaf.

    Raises:
        VerificationError: no certificate, a corrupt one, a chain that does not reach a trusted root, or a
            signing certificate that may not sign.
    """
    if not chain_der:
        raise VerificationError(
            "the bundle carries no certificate (it was signed with a bare key: verify it with the key)"
        )
    if not trust_roots:
        raise VerificationError("no trusted root certificate given")
    try:
        leaf, *intermediates = [x509.load_der_x509_certificate(der) for der in chain_der]
    except ValueError as exc:
        raise VerificationError(f"bundle is truncated/invalid: a certificate is corrupt: {exc}") from None
    public = leaf.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name not in CURVES.values():
        raise VerificationError(f"signing certificate {_describe(leaf)} does not hold an ECDSA P-256/384/521 key")
    builder = (
        verification.PolicyBuilder()
        .store(verification.Store(list(trust_roots)))
        .time(leaf.not_valid_before_utc)
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=verification.ExtensionPolicy.permit_all(),
        )
    )
    try:
        builder.build_client_verifier().verify(leaf, intermediates)
    except verification.VerificationError as exc:
        raise VerificationError(
            f"signing certificate {_describe(leaf)} does not chain to a trusted root: {exc}"
        ) from None
    if not _can_sign(leaf):
        raise VerificationError(
            f"signing certificate {_describe(leaf)} may not sign (needs key usage digitalSignature or the "
            "codeSigning extended key usage)"
        )
    return leaf


def verify_statement_certificate(
    bundle: Mapping[str, Any], trust_roots: Sequence[x509.Certificate | Path | str]
) -> tuple[dict[str, Any], x509.Certificate]:
    """Verify a certificate-signed bundle against trusted roots; return the statement and signing certificate.

    Raises:
        KeyFileError: a root certificate file cannot be loaded.
        VerificationError: malformed bundle, untrusted or unusable certificate, bad signature, bad payload.
    """
    roots = [r for r in trust_roots if isinstance(r, x509.Certificate)]
    roots += load_certificates([r for r in trust_roots if not isinstance(r, x509.Certificate)], "root certificate")
    if not roots and trust_roots:
        raise KeyFileError("the root certificate files hold no certificate")
    envelope = parse_bundle(bundle)
    leaf = verify_chain(envelope.certificates, roots)
    public = leaf.public_key()
    if not (isinstance(public, ec.EllipticCurvePublicKey)):  # verify_chain refused anything else
        raise RuntimeError("internal invariant broken: isinstance(public, ec.EllipticCurvePublicKey)")
    check_signature(envelope, public)
    return decode_payload(envelope), leaf
