"""Sign models and verify them, with bundles interchangeable with OpenSSF ``model_signing`` 1.x.

The signed statement is exactly what ``model_signing`` writes for its default (file-by-file, SHA-256)
serialization, so either tool verifies the other's signatures:

```
{"_type": "https://in-toto.io/Statement/v1",
 "subject": [{"name": "<model folder or file name>", "digest": {"sha256": "<root digest>"}}],
 "predicateType": "https://model_signing/signature/v1.0",
 "predicate": {"serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": false,
                                 "ignore_paths": [".git", ".gitattributes", ".github", ".gitignore", ...]},
               "resources": [{"name": "<relative path, '.' for a single file>", "algorithm": "sha256",
                              "digest": "<hex>"}, ...]}}
```

* ``resources`` are sorted by path component by component; the root digest is SHA-256 over the raw
  (binary) file digests concatenated in that order. It does not bind paths: the per-file list does.
* ``ignore_paths`` records every path left out when signing (git paths, the user's, the signature file when it
  sits inside the model), relative to the model root. A verifier leaves them out too, as ``model_signing``
  does; they are signed, so nobody can widen them.
* ``model_signing``'s name for a single-file model's only resource is ``.``; mlwarden's manifests use the
  file's name and translate both ways.

Verification checks the signature before it trusts a byte of the statement, then hashes the model afresh
and names every difference: ``file added``, ``file removed``, ``file changed``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from mlwarden.core.errors import UsageError
from mlwarden.integrity.envelope import STATEMENT_TYPE, read_bundle, sign_statement, verify_statement, write_bundle
from mlwarden.integrity.errors import KeyFileError, VerificationError
from mlwarden.integrity.hashing import (
    GIT_PATHS,
    ModelManifest,
    diff_files,
    hash_model,
    normalise_ignore_paths,
    path_key,
)
from mlwarden.integrity.keys import key_hint, load_certificates, load_private_key, load_public_key

PREDICATE_TYPE = "https://model_signing/signature/v1.0"
SINGLE_FILE_RESOURCE = "."


@dataclass(frozen=True, slots=True)
class SignedResource:
    """One file as listed in a signature (``path`` as mlwarden names it; see the module docstring)."""

    path: str
    algorithm: str
    digest: str


@dataclass(frozen=True, slots=True)
class SignedModel:
    """What a verified model signature says."""

    name: str
    root_digest: str  # sha256 hex over the resource digests (model_signing's subject digest)
    resources: tuple[SignedResource, ...]
    ignore_paths: tuple[str, ...]
    single_file: bool


@dataclass(frozen=True, slots=True)
class Verification:
    """A successful verification: what was checked and who signed it."""

    manifest: ModelManifest  # the model as hashed just now
    signed: SignedModel
    signer: str  # "key sha256:<hint>" or the signing certificate's subject


def root_digest(manifest: ModelManifest) -> str:
    """``model_signing``'s subject digest: SHA-256 over the raw file digests in path order."""
    hasher = hashlib.sha256()
    for entry in sorted(manifest.files, key=lambda f: path_key(f.path)):
        hasher.update(bytes.fromhex(entry.digest))
    return hasher.hexdigest()


def build_statement(manifest: ModelManifest, ignore_paths: Sequence[str] = ()) -> dict[str, Any]:
    """The in-toto statement ``model_signing`` would write for ``manifest`` (see the module docstring)."""
    resources = [
        {
            "name": SINGLE_FILE_RESOURCE if manifest.is_file else entry.path,
            "algorithm": entry.algorithm,
            "digest": entry.digest,
        }
        for entry in sorted(manifest.files, key=lambda f: path_key(f.path))
    ]
    serialization: dict[str, Any] = {"method": "files", "hash_type": "sha256", "allow_symlinks": False}
    if ignore_paths:
        serialization["ignore_paths"] = sorted(set(ignore_paths))
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": manifest.name, "digest": {"sha256": root_digest(manifest)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {"serialization": serialization, "resources": resources},
    }


def parse_statement(statement: Mapping[str, Any]) -> SignedModel:
    """Read a verified model statement, checking it is one mlwarden can verify and is self-consistent.

    Raises:
        VerificationError: another predicate, a serialization other than SHA-256 per file, malformed
            resources, or a root digest that does not match the resources.
    """
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise VerificationError(
            f"not a model signature: predicate type {statement.get('predicateType')!r}, expected {PREDICATE_TYPE!r}"
        )
    subjects = statement["subject"]
    if len(subjects) != 1 or not isinstance(subjects[0].get("digest", {}).get("sha256"), str):
        raise VerificationError("malformed model signature: expected one subject with a sha256 digest")
    predicate = statement.get("predicate") or {}
    serialization = predicate.get("serialization")
    if not isinstance(serialization, Mapping):
        raise VerificationError("malformed model signature: the predicate has no serialization")
    method, hash_type = serialization.get("method"), serialization.get("hash_type")
    if (method, hash_type) != ("files", "sha256"):
        raise VerificationError(
            f"unsupported model signature: serialization {method!r} with {hash_type!r} "
            "(mlwarden verifies the default: 'files' with 'sha256')"
        )
    ignore = serialization.get("ignore_paths", [])
    raw = predicate.get("resources")
    if not isinstance(ignore, list) or not all(isinstance(p, str) for p in ignore) or not isinstance(raw, list):
        raise VerificationError("malformed model signature: bad ignore_paths or resources")
    resources: list[SignedResource] = []
    hasher = hashlib.sha256()
    for item in raw:
        if not isinstance(item, Mapping) or not all(
            isinstance(item.get(k), str) for k in ("name", "algorithm", "digest")
        ):
            raise VerificationError(f"malformed model signature: bad resource {item!r}")
        if item["algorithm"] != "sha256":
            raise VerificationError(f"unsupported model signature: {item['name']} hashed with {item['algorithm']!r}")
        try:
            hasher.update(bytes.fromhex(item["digest"]))
        except ValueError:
            raise VerificationError(f"malformed model signature: digest of {item['name']} is not hex") from None
        resources.append(SignedResource(item["name"], "sha256", item["digest"].lower()))
    if not resources:
        raise VerificationError("the model signature lists no file: it proves nothing")
    expected = subjects[0]["digest"]["sha256"].lower()
    if hasher.hexdigest() != expected:
        raise VerificationError(
            f"malformed model signature: root digest {expected} does not match its resources ({hasher.hexdigest()})"
        )
    single = [r.path for r in resources] == [SINGLE_FILE_RESOURCE]
    return SignedModel(str(subjects[0].get("name", "")), expected, tuple(resources), tuple(ignore), single)


def _inside(path: Path, root: Path) -> str | None:
    """``path`` relative to the folder ``root`` (POSIX), or None when it is not inside it."""
    if not root.is_dir():
        return None
    try:
        return PurePath(path.resolve().relative_to(root.resolve())).as_posix()
    except ValueError:
        return None


def _sign(
    model_path: Path,
    signature_path: Path,
    ignore_paths: Sequence[str | PurePath],
    workers: int | None,
    ignore_git_paths: bool,
    sign: Callable[[dict[str, Any]], dict[str, Any]],
) -> ModelManifest:
    ignore = [p.as_posix() for p in normalise_ignore_paths(ignore_paths)]
    inside = _inside(signature_path, model_path)
    if inside is not None:
        ignore.append(inside)  # the signature cannot be part of what it signs
    manifest = hash_model(model_path, ignore_paths=ignore, workers=workers, ignore_git_paths=ignore_git_paths)
    if not manifest.files:
        raise UsageError(f"nothing to sign: {model_path} holds no file (after ignore paths)")
    recorded = [*ignore, *(GIT_PATHS if ignore_git_paths else ())]
    write_bundle(sign(build_statement(manifest, recorded)), signature_path)
    return manifest


def sign_model(
    model_path: Path | str,
    private_key_path: Path | str,
    signature_path: Path | str,
    *,
    ignore_paths: Sequence[str | PurePath] = (),
    password: bytes | None = None,
    workers: int | None = None,
    ignore_git_paths: bool = True,
) -> ModelManifest:
    """Sign a model file or folder with a private key (``model_signing``'s ``key`` method).

    Args:
        model_path: the model file or folder.
        private_key_path: PEM ECDSA private key (P-256/384/521).
        signature_path: where the bundle goes (replaced atomically); left out of the model if inside it.
        ignore_paths: paths relative to the model root not to sign (recorded in the signature).
        password: the private key's password, if it is encrypted.
        workers: hashing threads (see :func:`~mlwarden.integrity.hashing.hash_model`).
        ignore_git_paths: leave out ``.git`` and friends at the root (default, like ``model_signing``).

    Returns:
        The manifest that was signed.

    Raises:
        KeyFileError: the key cannot be used.  ModelPathError: the model cannot be hashed.
        UsageError: nothing to sign, bad ignore paths, signature not writable.
    """
    key = load_private_key(private_key_path, password)  # before hashing: a wrong password fails fast
    return _sign(
        Path(model_path),
        Path(signature_path),
        ignore_paths,
        workers,
        ignore_git_paths,
        lambda statement: sign_statement(statement, key),
    )


def sign_model_certificate(
    model_path: Path | str,
    private_key_path: Path | str,
    signing_certificate_path: Path | str,
    signature_path: Path | str,
    *,
    certificate_chain_paths: Sequence[Path | str] = (),
    ignore_paths: Sequence[str | PurePath] = (),
    password: bytes | None = None,
    workers: int | None = None,
    ignore_git_paths: bool = True,
) -> ModelManifest:
    """Sign a model with a key and its certificate (``model_signing``'s ``certificate`` method).

    The bundle carries the signing certificate followed by ``certificate_chain_paths``' certificates (the
    intermediates; roots may be included) so a verifier needs only its trusted roots.

    Raises:
        KeyFileError: the key or a certificate cannot be used, or the certificate is not the key's.
        (and as :func:`sign_model`)
    """
    key = load_private_key(private_key_path, password)
    leaf = load_certificates([signing_certificate_path], "signing certificate")
    if len(leaf) != 1:
        raise KeyFileError(f"signing certificate {signing_certificate_path} must hold exactly one certificate")
    if leaf[0].public_key() != key.public_key():
        raise KeyFileError(
            f"signing certificate {signing_certificate_path} is not the certificate of {private_key_path}"
        )
    chain = [*leaf, *load_certificates(certificate_chain_paths, "certificate chain file")]
    return _sign(
        Path(model_path),
        Path(signature_path),
        ignore_paths,
        workers,
        ignore_git_paths,
        lambda statement: sign_statement(statement, key, certificates=chain),
    )


def check_model(
    model_path: Path | str,
    signature_path: Path | str,
    signed: SignedModel,
    *,
    ignore_paths: Sequence[str | PurePath] = (),
    workers: int | None = None,
    ignore_git_paths: bool = True,
) -> ModelManifest:
    """Hash the model as the signature says it was hashed and compare; return the fresh manifest.

    Raises:
        VerificationError: one problem per difference (``file added: x``, ``file removed: y``,
            ``file changed: z (sha256 expected ... got ...)``).
    """
    model = Path(model_path)
    try:
        recorded = normalise_ignore_paths(signed.ignore_paths)
    except UsageError as exc:
        raise VerificationError(f"malformed model signature: {exc}") from None
    ignore = [p.as_posix() for p in (*recorded, *normalise_ignore_paths(ignore_paths))]
    inside = _inside(Path(signature_path), model)
    if inside is not None:
        ignore.append(inside)
    actual = hash_model(model, ignore_paths=ignore, workers=workers, ignore_git_paths=ignore_git_paths)
    if signed.single_file != actual.is_file:
        signed_kind, actual_kind = ("a single file", "a folder") if signed.single_file else ("a folder", "a file")
        raise VerificationError(f"the signature covers {signed_kind} but {model} is {actual_kind}")
    expected = signed.resources
    if actual.is_file:  # model_signing's "." is this file, whatever its name
        expected = tuple(SignedResource(actual.files[0].path, r.algorithm, r.digest) for r in expected)
    differences = diff_files(expected, actual.files)
    if differences:
        raise VerificationError([str(d) for d in differences])
    return actual


def verify_model(
    model_path: Path | str,
    signature_path: Path | str,
    public_key_path: Path | str,
    *,
    ignore_paths: Sequence[str | PurePath] = (),
    workers: int | None = None,
    ignore_git_paths: bool = True,
) -> Verification:
    """Verify a key-signed model: the bundle's signature with the public key, then every file's digest.

    Raises:
        KeyFileError: the public key cannot be loaded.  ModelPathError: the model cannot be hashed.
        VerificationError: what is wrong, one problem per line in ``problems``.
    """
    key = load_public_key(public_key_path)
    statement = verify_statement(read_bundle(signature_path), key)
    signed = parse_statement(statement)
    manifest = check_model(
        model_path,
        signature_path,
        signed,
        ignore_paths=ignore_paths,
        workers=workers,
        ignore_git_paths=ignore_git_paths,
    )
    return Verification(manifest, signed, f"key sha256:{key_hint(key)}")


def verify_model_certificate(
    model_path: Path | str,
    signature_path: Path | str,
    certificate_chain_paths: Sequence[Path | str],
    *,
    ignore_paths: Sequence[str | PurePath] = (),
    workers: int | None = None,
    ignore_git_paths: bool = True,
) -> Verification:
    """Verify a certificate-signed model against trusted root certificates, then every file's digest.

    Raises:
        KeyFileError: a root certificate file cannot be loaded.
        VerificationError: untrusted chain, unusable certificate, bad signature or differing files.
    """
    from mlwarden.integrity.certificates import verify_statement_certificate

    statement, leaf = verify_statement_certificate(read_bundle(signature_path), certificate_chain_paths)
    signed = parse_statement(statement)
    manifest = check_model(
        model_path,
        signature_path,
        signed,
        ignore_paths=ignore_paths,
        workers=workers,
        ignore_git_paths=ignore_git_paths,
    )
    return Verification(manifest, signed, leaf.subject.rfc4514_string())
