"""``mlwarden sign`` / ``verify`` / ``keys``: model signatures interchangeable with OpenSSF model_signing.

Options mirror the ``model_signing`` CLI (its underscore spellings, ``--private_key`` etc., are accepted too),
and so does ``--ignore-paths``: paths as seen from the current directory (or absolute) that must lie inside
the model folder, e.g. ``--ignore-paths my-model/README.md``. A signature file inside the model is left out
automatically. Exit codes: 0 signed / verified, 1 verification failed (each problem printed), 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mlwarden.core.errors import UsageError

EXIT_OK, EXIT_FAILED = 0, 1


def _common(parser: argparse.ArgumentParser, *, signing: bool) -> None:
    parser.add_argument("model_path", metavar="MODEL_PATH", help="model file or folder")
    parser.add_argument(
        "--signature",
        required=True,
        metavar="SIG",
        help="signature bundle to write" if signing else "signature bundle to check",
    )
    parser.add_argument(
        "--ignore-paths",
        action="extend",
        nargs="+",
        default=[],
        metavar="P",
        help="paths inside the model (as seen from the current directory) to leave out"
        + ("" if signing else "; those recorded in the signature are always left out"),
    )
    parser.add_argument(
        "--no-ignore-git-paths",
        dest="ignore_git_paths",
        action="store_false",
        help="include .git, .gitattributes, .github, .gitignore at the model root (left out by default)",
    )
    parser.add_argument("--workers", type=int, metavar="N", help="hashing threads (default: cores + 2)")


def add_parser(sub: Any) -> None:
    """Add ``sign``, ``verify`` and ``keys`` to the top-level subparsers ``sub``."""
    sign = sub.add_parser(
        "sign",
        help="sign a model file or folder (bundles compatible with OpenSSF model_signing)",
        description="Sign every file of a model (SHA-256 per file) into a Sigstore bundle (DSSE, in-toto).",
    )
    methods = sign.add_subparsers(dest="sign_method", metavar="METHOD", parser_class=type(sign), required=True)
    key = methods.add_parser("key", help="sign with an ECDSA private key", description="Sign with a private key.")
    _common(key, signing=True)
    key.add_argument("--private-key", "--private_key", required=True, metavar="KEY", help="PEM private key")
    key.add_argument("--password-file", metavar="F", help="file holding the private key's password")
    key.set_defaults(run=_sign_key)
    cert = methods.add_parser(
        "certificate",
        help="sign with a private key and its X.509 certificate",
        description="Sign with a private key; the bundle carries the signing certificate and its chain.",
    )
    _common(cert, signing=True)
    cert.add_argument("--private-key", "--private_key", required=True, metavar="KEY", help="PEM private key")
    cert.add_argument("--password-file", metavar="F", help="file holding the private key's password")
    cert.add_argument(
        "--signing-certificate", "--signing_certificate", required=True, metavar="CERT", help="PEM certificate of KEY"
    )
    cert.add_argument(
        "--certificate-chain",
        "--certificate_chain",
        action="extend",
        nargs="+",
        default=[],
        metavar="C",
        help="PEM intermediate certificates to include in the bundle",
    )
    cert.set_defaults(run=_sign_certificate)

    verify = sub.add_parser(
        "verify",
        help="verify a model against its signature",
        description="Check a signature bundle, then every file of the model. Exit 1 names each difference.",
    )
    methods = verify.add_subparsers(dest="verify_method", metavar="METHOD", parser_class=type(verify), required=True)
    vkey = methods.add_parser("key", help="verify with a public key", description="Verify with a public key.")
    _common(vkey, signing=False)
    vkey.add_argument("--public-key", "--public_key", required=True, metavar="KEY", help="PEM public key")
    vkey.set_defaults(run=_verify_key)
    vcert = methods.add_parser(
        "certificate",
        help="verify a certificate signature against trusted roots",
        description="Verify the bundle's certificate chain up to ROOTS, then the signature and the files.",
    )
    _common(vcert, signing=False)
    vcert.add_argument(
        "--certificate-chain",
        "--certificate_chain",
        action="extend",
        nargs="+",
        required=True,
        metavar="ROOTS",
        help="PEM files of trusted root certificates",
    )
    vcert.set_defaults(run=_verify_certificate)

    keys = sub.add_parser("keys", help="create signing keys", description="Manage signing keys.")
    actions = keys.add_subparsers(dest="keys_action", metavar="ACTION", parser_class=type(keys), required=True)
    gen = actions.add_parser(
        "generate", help="create an ECDSA key pair", description="Create an ECDSA key pair (private key mode 0600)."
    )
    gen.add_argument("--private-key", "--private_key", required=True, metavar="P", help="private key file to create")
    gen.add_argument("--public-key", "--public_key", required=True, metavar="Q", help="public key file to create")
    gen.add_argument("--curve", choices=("P-256", "P-384", "P-521"), default="P-256", help="default: P-256")
    gen.add_argument("--password-file", metavar="F", help="encrypt the private key with the password in F")
    gen.set_defaults(run=_generate)


def _password(args: argparse.Namespace) -> bytes | None:
    if not getattr(args, "password_file", None):
        return None
    try:
        data = Path(args.password_file).read_bytes()
    except OSError as exc:
        raise UsageError(f"--password-file: cannot read {args.password_file}: {exc.strerror or exc}") from None
    data = data.removesuffix(b"\n").removesuffix(b"\r")
    if not data:
        raise UsageError(f"--password-file: {args.password_file} is empty")
    return data


def _ignore_paths(args: argparse.Namespace) -> list[str]:
    """``--ignore-paths`` made relative to the model root, the way the model_signing CLI reads them."""
    model = Path(args.model_path)
    if not args.ignore_paths or not model.is_dir():
        return []
    root = model.resolve()
    out = []
    for raw in args.ignore_paths:
        candidate = Path(raw).resolve()
        try:
            relative = candidate.relative_to(root)
        except ValueError:
            raise UsageError(
                f"--ignore-paths: {raw} is not inside the model folder {args.model_path} "
                f"(give paths as seen from the current directory, e.g. {Path(args.model_path) / raw})"
            ) from None
        if not relative.parts:
            raise UsageError(f"--ignore-paths: {raw} is the whole model")
        out.append(relative.as_posix())
    return out


def _workers(args: argparse.Namespace) -> int | None:
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    return int(args.workers) if args.workers is not None else None


def _summary(verb: str, args: argparse.Namespace, manifest: Any, extra: str = "") -> None:
    size = manifest.total_size
    print(
        f"{verb} {args.model_path}: {len(manifest.files)} file(s), {size:,} bytes, "
        f"digest sha256:{manifest.digest}{extra}"
    )


def _sign_key(args: argparse.Namespace) -> int:
    from mlwarden.integrity.signing import sign_model

    manifest = sign_model(
        args.model_path,
        args.private_key,
        args.signature,
        ignore_paths=_ignore_paths(args),
        password=_password(args),
        workers=_workers(args),
        ignore_git_paths=args.ignore_git_paths,
    )
    _summary("signed", args, manifest, f" -> {args.signature}")
    return EXIT_OK


def _sign_certificate(args: argparse.Namespace) -> int:
    from mlwarden.integrity.signing import sign_model_certificate

    manifest = sign_model_certificate(
        args.model_path,
        args.private_key,
        args.signing_certificate,
        args.signature,
        certificate_chain_paths=args.certificate_chain,
        ignore_paths=_ignore_paths(args),
        password=_password(args),
        workers=_workers(args),
        ignore_git_paths=args.ignore_git_paths,
    )
    _summary("signed", args, manifest, f" -> {args.signature}")
    return EXIT_OK


def _report_failure(args: argparse.Namespace, problems: tuple[str, ...]) -> int:
    print(f"mlwarden: verification FAILED for {args.model_path} ({len(problems)} problem(s)):", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    return EXIT_FAILED


def _verify_key(args: argparse.Namespace) -> int:
    from mlwarden.integrity.signing import verify_model

    return _verify(args, verify_model, args.public_key)


def _verify_certificate(args: argparse.Namespace) -> int:
    from mlwarden.integrity.signing import verify_model_certificate

    return _verify(args, verify_model_certificate, args.certificate_chain)


def _verify(args: argparse.Namespace, verify: Any, trust: Any) -> int:
    """Run one verification method (``trust``: its public key or certificate chain); exit 1 lists each problem."""
    from mlwarden.integrity.errors import VerificationError

    try:
        result = verify(
            args.model_path,
            args.signature,
            trust,
            ignore_paths=_ignore_paths(args),
            workers=_workers(args),
            ignore_git_paths=args.ignore_git_paths,
        )
    except VerificationError as exc:
        return _report_failure(args, exc.problems)
    _summary("verified", args, result.manifest, f", signed by {result.signer}")
    return EXIT_OK


def _generate(args: argparse.Namespace) -> int:
    from mlwarden.integrity.keys import generate_key_pair, key_hint

    public = generate_key_pair(args.private_key, args.public_key, curve=args.curve, password=_password(args))
    print(
        f"created {args.curve} key pair: private {args.private_key} (mode 0600), public {args.public_key} "
        f"(key sha256:{key_hint(public)})"
    )
    return EXIT_OK
