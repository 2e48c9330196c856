"""``mlwarden data manifest|verify``, ``mlwarden record`` and ``mlwarden bom``: the provenance trail.

Exit codes follow ``mlwarden verify``: 0 success; 1 verification failed (files added, removed or changed, a
signature that does not verify, an unreadable manifest) with every problem listed on stderr; 2 usage errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mlwarden.core.errors import UsageError
from mlwarden.core.files import write_atomically

EXIT_OK, EXIT_FAILED = 0, 1


def add_parser(sub: Any) -> None:
    """Add ``data manifest``, ``data verify``, ``record`` and ``bom`` to the top-level subparsers ``sub``."""
    data = sub.add_parser(
        "data",
        help="create or verify signed dataset manifests",
        description="Dataset manifests list every file of a dataset with its SHA-256, its source, licence and "
        "collection date, signed like a model signature.",
    )
    actions = data.add_subparsers(dest="data_action", metavar="ACTION", parser_class=type(data), required=True)
    manifest = actions.add_parser(
        "manifest", help="hash a dataset folder into a signed manifest", description="Write DIR's manifest to FILE."
    )
    manifest.add_argument("dir", metavar="DIR", help="dataset folder (or a single file)")
    manifest.add_argument("--name", required=True, metavar="N", help="the dataset's name")
    manifest.add_argument("--source", required=True, metavar="S", help="where it came from (URL, system, vendor)")
    manifest.add_argument("--license", required=True, metavar="L", help="SPDX id or expression, or licence name")
    manifest.add_argument("--collected-at", metavar="DATE", help="ISO 8601 date or date-time (default: now)")
    manifest.add_argument("--description", default="", metavar="TEXT", help="free text")
    manifest.add_argument(
        "--ignore-paths", nargs="+", default=[], metavar="PATH", help="paths to leave out, e.g. DIR/cache"
    )
    _signing_arguments(manifest)
    manifest.set_defaults(run=_data_manifest)

    verify = actions.add_parser(
        "verify",
        help="check a dataset folder against its manifest",
        description="Re-hash DIR and compare with the manifest (and check its signature with --public-key).",
    )
    verify.add_argument("dir", metavar="DIR", help="dataset folder (or file)")
    verify.add_argument("--manifest", required=True, metavar="FILE", help="the manifest written by `data manifest`")
    verify.add_argument("--public-key", metavar="KEY", help="PEM public key the manifest must be signed with")
    verify.set_defaults(run=_data_verify)

    record = sub.add_parser(
        "record",
        help="write a signed training record",
        description="Record how a model was trained (command, config, git commit, packages, datasets, metrics) "
        "as a signed in-toto statement.",
    )
    record.add_argument("--command", required=True, metavar="CMD", help="the training command line")
    record.add_argument("--config", metavar="FILE", help="training configuration (.json, .toml or .yaml)")
    record.add_argument("--git-dir", metavar="DIR", help="folder in the training code's git work tree")
    record.add_argument("--git-commit", metavar="SHA", help="the training code's commit (instead of --git-dir)")
    record.add_argument("--dataset-manifest", action="append", default=[], metavar="F", help="repeatable")
    record.add_argument("--dataset-public-key", metavar="KEY", help="dataset manifests must be signed with this key")
    record.add_argument("--metric", action="append", default=[], metavar="NAME=VALUE", type=_metric, help="repeatable")
    record.add_argument("--model", metavar="PATH", help="the trained model (its files become the subjects)")
    record.add_argument("--started-at", metavar="TIME", help="ISO 8601 start of training")
    record.add_argument("--finished-at", metavar="TIME", help="ISO 8601 end of training")
    _signing_arguments(record)
    record.set_defaults(run=_record)

    bom = sub.add_parser(
        "bom",
        help="write the ML-BOM (CycloneDX 1.6 JSON) of a model",
        description="Hash MODEL_PATH and describe it, its framework, packages and datasets as CycloneDX 1.6.",
    )
    bom.add_argument("model_path", metavar="MODEL_PATH", help="model file or folder")
    bom.add_argument("--name", required=True, metavar="N", help="the model's name")
    bom.add_argument("--version", required=True, metavar="V", help="the model's version")
    bom.add_argument("--framework", metavar="F", help="framework (default: guessed from the content)")
    bom.add_argument("--dataset-manifest", action="append", default=[], metavar="F", help="repeatable")
    bom.add_argument("--dataset-public-key", metavar="KEY", help="dataset manifests must be signed with this key")
    bom.add_argument("--output", "-o", metavar="FILE", help="write to FILE (default: stdout)")
    bom.set_defaults(run=_bom)


def _signing_arguments(parser: argparse.ArgumentParser) -> None:
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--private-key", metavar="KEY", help="PEM private key to sign with")
    how.add_argument("--unsigned", action="store_true", help="write the bare statement, without a signature")
    parser.add_argument("--password-file", metavar="F", help="file holding the private key's password")
    parser.add_argument("--output", "-o", required=True, metavar="FILE", help="where to write it")


def _metric(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None


def _password(args: argparse.Namespace) -> bytes | None:
    if not args.password_file:
        return None
    try:
        data = Path(args.password_file).read_bytes().removesuffix(b"\n").removesuffix(b"\r")
    except OSError as exc:
        raise UsageError(f"--password-file: cannot read {args.password_file}: {exc.strerror or exc}") from None
    if not data:
        raise UsageError(f"--password-file: {args.password_file} is empty")
    return data


def _inside(path: Path, root: Path) -> str | None:
    """``path`` relative to the folder ``root`` (POSIX), or None when it is not inside."""
    if not root.is_dir():
        return None
    try:
        relative = path.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    return relative.as_posix() if relative.parts else None


def _write(statement: dict[str, Any], sign: Any, args: argparse.Namespace) -> None:
    """Sign (unless ``--unsigned``) and write atomically to ``--output``."""
    from mlwarden.integrity.envelope import write_bundle

    document = statement if args.unsigned else sign(args.private_key, _password(args))
    write_bundle(document, args.output)


def _data_manifest(args: argparse.Namespace) -> int:
    from mlwarden.integrity.dataset import build_dataset_manifest, dataset_statement, sign_dataset_manifest

    ignore = []
    for raw in args.ignore_paths:  # as seen from the current folder, like `mlwarden sign --ignore-paths`
        relative = _inside(Path(raw), Path(args.dir))
        if relative is None:
            raise UsageError(f"--ignore-paths: {raw} is not inside the dataset folder {args.dir}")
        ignore.append(relative)
    check = getattr(args, "check", None)  # `--check REPORT.json` (added by datacheck_cmd): a data-check report
    for own_file in (args.output, check):  # the manifest and the report do not list themselves
        own = _inside(Path(own_file), Path(args.dir)) if own_file else None
        if own is not None and own not in ignore:
            ignore.append(own)
    manifest = build_dataset_manifest(
        args.dir,
        name=args.name,
        source=args.source,
        license=args.license,
        collected_at=args.collected_at,
        description=args.description,
        ignore_paths=ignore,
    )
    recorded = ""
    if check:  # the report's summary goes into pii_scan before signing (mlwarden.datacheck.attach)
        import dataclasses

        from mlwarden.datacheck.attach import manifest_summary, read_report

        report, report_sha256 = read_report(check)
        manifest = dataclasses.replace(manifest, pii_scan=manifest_summary(report, report_sha256, manifest))
        recorded = f"; data check {report_sha256[:12]} recorded"
    _write(
        dataset_statement(manifest),
        lambda key, password: sign_dataset_manifest(manifest, key, password=password),
        args,
    )
    state = "unsigned" if args.unsigned else "signed"
    print(
        f"{state} dataset manifest {args.output}: {manifest.name}, {manifest.file_count} file(s), "
        f"{manifest.total_size:,} bytes, digest sha256:{manifest.digest}{recorded}"
    )
    return EXIT_OK


def _failed(what: str, problems: tuple[str, ...] | list[str]) -> int:
    print(f"mlwarden: verification FAILED for {what} ({len(problems)} problem(s)):", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    return EXIT_FAILED


def _data_verify(args: argparse.Namespace) -> int:
    from mlwarden.integrity.dataset import read_dataset_manifest, verify_dataset
    from mlwarden.integrity.errors import VerificationError

    try:
        manifest = read_dataset_manifest(args.manifest, args.public_key)
    except VerificationError as exc:
        return _failed(args.dir, exc.problems)
    own = _inside(Path(args.manifest), Path(args.dir))
    differences = verify_dataset(args.dir, manifest, ignore_paths=[own] if own else [])
    if differences:
        return _failed(args.dir, [str(d) for d in differences])
    checked = "signature verified" if args.public_key else "signature NOT checked (no --public-key)"
    print(
        f"verified {args.dir}: {manifest.file_count} file(s) match dataset {manifest.name!r} "
        f"(sha256:{manifest.digest}); {checked}"
    )
    return EXIT_OK


def _record(args: argparse.Namespace) -> int:
    from mlwarden.integrity.record import build_training_record, sign_training_record, training_statement

    names = [name for name, _ in args.metric]
    if len(set(names)) != len(names):
        raise UsageError("--metric: a metric is given twice")
    if args.git_commit and args.git_dir:
        raise UsageError("give --git-commit or --git-dir, not both")
    record = build_training_record(
        command=args.command,
        config=args.config,
        git_commit=args.git_commit,
        git_dir=args.git_dir,
        dataset_manifests=args.dataset_manifest,
        dataset_public_key=args.dataset_public_key,
        metrics=dict(args.metric),
        model_path=args.model,
        started_at=args.started_at,
        finished_at=args.finished_at,
    )
    _write(
        training_statement(record),
        lambda key, password: sign_training_record(record, key, password=password),
        args,
    )
    if args.git_dir and record.git_commit is None:
        print(f"mlwarden: warning: {args.git_dir} is not in a git work tree: no commit recorded", file=sys.stderr)
    state = "unsigned" if args.unsigned else "signed"
    commit = record.git_commit[:12] if record.git_commit else "none"
    print(
        f"{state} training record {args.output}: commit {commit}, {len(record.datasets)} dataset(s), "
        f"{len(record.metrics)} metric(s), {len(record.packages)} package(s)"
    )
    return EXIT_OK


def _bom(args: argparse.Namespace) -> int:
    from mlwarden.integrity.bom import DatasetRef, bom_for_path

    datasets = [DatasetRef.from_manifest_bundle(p, args.dataset_public_key) for p in args.dataset_manifest]
    text = bom_for_path(
        args.model_path, name=args.name, version=args.version, framework=args.framework, datasets=datasets
    )
    if args.output:
        _write_text(Path(args.output), text + "\n")
        print(f"wrote ML-BOM {args.output} (CycloneDX 1.6)", file=sys.stderr)
    else:
        sys.stdout.write(text + "\n")
    return EXIT_OK


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (a reader never sees half a BOM)."""
    folder = path.resolve().parent
    if not folder.is_dir():
        raise UsageError(f"--output: folder {folder} does not exist")
    try:
        write_atomically(path, text)
    except OSError as exc:
        raise UsageError(f"--output: cannot write {path}: {exc.strerror or exc}") from None
