"""Registry commands: registry init|scan|test, user, token, register, attach, approve, deploy, quarantine, release...

Also ``rollback``, ``models``, ``versions`` and ``show``.

Every command goes through :class:`mlwarden.registry.service.Registry`, exactly as the HTTP API does. The caller is
identified by ``--token`` or ``$MLWARDEN_TOKEN``; the database is ``--db`` or ``$MLWARDEN_DB_URL`` (default: the
SQLite file in mlwarden's home, ``--home`` or ``$MLWARDEN_HOME``). Exit codes: 0 done; 1 a gate refused (each
failed rule printed) or a registry scan found problems; 2 any other error (one line).
``mlwarden retire`` lives in its own module and uses :meth:`Registry.retire` (its ``hook`` archives or deletes).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlwarden.registry.roles import Principal
    from mlwarden.registry.service import Registry
    from mlwarden.registry.values import VersionInfo

TOKEN_ENV = "MLWARDEN_TOKEN"  # noqa: S105 - the name of an environment variable, not a secret
EXIT_OK, EXIT_REFUSED = 0, 1


def add_parser(sub: Any) -> None:
    """Add the registry commands to the top-level subparsers ``sub``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", metavar="URL", help="database URL (default: $MLWARDEN_DB_URL or SQLite in the home)")
    common.add_argument("--home", metavar="DIR", help="mlwarden home: blobs, gates.toml (default: $MLWARDEN_HOME)")
    common.add_argument("--gates", metavar="FILE", help="gates TOML file (default: <home>/gates.toml, else built in)")
    add_token_options(common)

    def command(parent: Any, name: str, run: Any, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(
            name, parents=[common], help=help_text, description=help_text
        )
        parser.set_defaults(run=run)
        return parser

    registry = sub.add_parser("registry", help="create the registry database; scan a stored version")
    actions = registry.add_subparsers(
        dest="registry_command", metavar="ACTION", parser_class=type(registry), required=True
    )
    init = command(actions, "init", _init, "create or migrate the registry database; bootstrap the first admin")
    init.add_argument("--admin", metavar="NAME", help="create this first admin and print their token (once)")
    scan = command(actions, "scan", _scan, "scan a stored version with mlwarden's scanner (received -> scanned)")
    scan.add_argument("ref", metavar="REF", help="NAME:VERSION or NAME@ALIAS")
    scan.add_argument("--static-only", action="store_true", help="static analysis only (default: static + dynamic)")
    fsck = command(actions, "fsck", _fsck, "check blobs against rows: missing, orphan, corrupt, staging leftovers")
    fsck.add_argument("--repair", action="store_true", help="restore from staging, delete old orphans and leftovers")
    fsck.add_argument("--format", "-f", choices=("text", "json"), default="text")
    suppress = command(
        actions, "suppress", _suppress, "accept a rule's findings on a version until a date (approver; not yours)"
    )
    suppress.add_argument("ref", metavar="NAME:VERSION", help="the version whose bytes were reviewed")
    suppress.add_argument("rule", metavar="RULE", help="rule ID, as listed by `mlwarden rules`")
    suppress.add_argument("--reason", required=True, metavar="TEXT", help="why the findings are acceptable")
    suppress.add_argument("--expires", required=True, metavar="DATE", help="ISO date (YYYY-MM-DD) in the future")
    from mlwarden.cli import registry_test_cmd

    registry_test_cmd.add_parser(actions, command)  # `registry test`: model tests and data checks

    user = sub.add_parser("user", help="manage registry users (admin)")
    user_actions = user.add_subparsers(dest="user_command", metavar="ACTION", parser_class=type(user), required=True)
    add = command(user_actions, "add", _user_add, "add a user with one or more roles")
    add.add_argument("username", metavar="NAME")
    add.add_argument("--role", dest="roles", action="extend", nargs="+", required=True, metavar="R", help="role(s)")
    roles = command(user_actions, "roles", _user_roles, "replace a user's roles")
    roles.add_argument("username", metavar="NAME")
    roles.add_argument("--role", dest="roles", action="extend", nargs="+", required=True, metavar="R")
    disable = command(user_actions, "disable", _user_disable, "disable a user (their tokens stop working)")
    disable.add_argument("username", metavar="NAME")
    command(user_actions, "list", _user_list, "list users and their roles")

    token = sub.add_parser("token", help="issue, list and revoke API tokens")
    token_actions = token.add_subparsers(
        dest="token_command", metavar="ACTION", parser_class=type(token), required=True
    )
    issue = command(token_actions, "issue", _token_issue, "issue a token for a user (printed once)")
    issue.add_argument("username", metavar="USER")
    issue.add_argument("--expires", default="90d", metavar="DURATION", help="lifetime: 30d, 12h, 2w or never")
    issue.add_argument("--name", default="", metavar="N", help="a label for the token")
    issue.add_argument(
        "--scope", metavar="SCOPE", help="limit the token to model:NAME or model:NAME:VERSION (default: no limit)"
    )
    revoke = command(token_actions, "revoke", _token_revoke, "revoke a token by id")
    revoke.add_argument("token_id", type=int, metavar="ID")
    listing = command(token_actions, "list", _token_list, "list tokens (yours, or USER's as admin)")
    listing.add_argument("username", nargs="?", metavar="USER")

    register = command(sub, "register", _register, "register a new version of a model (state received)")
    register.add_argument("name", metavar="NAME")
    register.add_argument(
        "model_path", metavar="MODEL_PATH", help="model file or folder, or a URL (downloaded first; docs/remote.md)"
    )
    register.add_argument("--signature", metavar="SIG", help="signature bundle (mlwarden sign / model_signing)")
    register.add_argument("--dataset-manifest", dest="dataset_manifests", action="extend", nargs="+", default=[])
    register.add_argument("--training-record", metavar="R", help="signed training record (mlwarden record)")
    register.add_argument("--framework", metavar="F", help="framework (default: guessed from the files)")
    register.add_argument("--description", default="", metavar="TEXT")

    attach = command(sub, "attach", _attach, "attach a document to a version")
    attach.add_argument("ref", metavar="REF")
    attach.add_argument(
        "kind",
        metavar="KIND",
        help="signature, dataset_manifest, training_record, scan_report, test_report, model_test, data_check",
    )
    attach.add_argument("path", metavar="PATH")

    approve = command(sub, "approve", _approve, "approve a scanned version (approve gate; not your own submission)")
    approve.add_argument("ref", metavar="REF")
    approve.add_argument("--comment", default="", metavar="TEXT")
    deploy = command(sub, "deploy", _deploy, "point an alias at an approved version (deploy gate)")
    deploy.add_argument("ref", metavar="REF")
    deploy.add_argument("--alias", required=True, metavar="A", help="e.g. production")
    quarantine = command(sub, "quarantine", _quarantine, "quarantine a version")
    quarantine.add_argument("ref", metavar="REF")
    quarantine.add_argument("--reason", required=True, metavar="TEXT")
    release = command(sub, "release", _release, "release a quarantined version (re-gated)")
    release.add_argument("ref", metavar="REF")
    release.add_argument("--comment", default="", metavar="TEXT")
    rollback = command(sub, "rollback", _rollback, "move an alias back to the previous approved version")
    rollback.add_argument("name", metavar="NAME")
    rollback.add_argument("--alias", required=True, metavar="A")

    command(sub, "models", _models, "list models")
    versions = command(sub, "versions", _versions, "list the versions of a model")
    versions.add_argument("name", metavar="NAME")
    show = command(sub, "show", _show, "show one version: state, digest, files, attachments, aliases")
    show.add_argument("ref", metavar="REF")
    show.add_argument("--format", "-f", choices=("text", "json"), default="text")


def open_registry(args: argparse.Namespace, *, upgrade: bool = False) -> Registry:
    """The registry named by ``--db``/``--home``/``--gates`` (schema checked, migrated only by ``init``)."""
    from mlwarden.registry.service import Registry

    return Registry.open(
        args.db,
        home=Path(args.home) if args.home else None,
        gates=Path(args.gates) if args.gates else None,
        upgrade=upgrade,
    )


def add_token_options(parser: Any) -> None:
    """``--token-file`` (preferred) and ``--token`` (deprecated: visible to every local user in ``ps``)."""
    parser.add_argument("--token-file", metavar="FILE", help=f"read the API token from FILE (default: ${TOKEN_ENV})")
    parser.add_argument("--token", metavar="TOKEN", help="API token on the command line: avoid, `ps` shows it")


def read_token(args: argparse.Namespace) -> str:
    """The caller's token: ``--token-file``, else ``$MLWARDEN_TOKEN``, else ``--token`` (with a warning).

    Raises:
        AuthError: none given, or the file cannot be read.
    """
    from mlwarden.registry.errors import AuthError

    path = getattr(args, "token_file", None)
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthError(f"cannot read the token file {path}: {getattr(exc, 'strerror', None) or exc}") from None
        if not token:
            raise AuthError(f"the token file {path} is empty")
        return token
    given = getattr(args, "token", None)
    if given:
        print(
            f"mlwarden: warning: --token puts the token on the command line, where any local user can read it "
            f"(ps, /proc); use ${TOKEN_ENV} or --token-file",
            file=sys.stderr,
        )
        return str(given).strip()
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise AuthError(f"no API token: set {TOKEN_ENV} or pass --token-file")
    return token


def caller(registry: Registry, args: argparse.Namespace) -> Principal:
    """Authenticate the token :func:`read_token` finds."""
    return registry.authenticate(read_token(args))


def _session(args: argparse.Namespace, action: Any) -> int:
    """Open, authenticate, run ``action(registry, principal)``; a refused gate prints every rule and exits 1."""
    from mlwarden.registry.errors import GateRefused

    registry = open_registry(args)
    try:
        principal = caller(registry, args)
        try:
            return int(action(registry, principal) or EXIT_OK)
        except GateRefused as exc:
            print(f"mlwarden: refused: gate {exc.gate!r} refused {exc.subject}:", file=sys.stderr)
            for check in exc.failed:
                print(f"  {check.rule}: {check.detail}", file=sys.stderr)
            return EXIT_REFUSED
    finally:
        registry.close()


def _init(args: argparse.Namespace) -> int:
    from mlwarden.registry.db import describe

    registry = open_registry(args, upgrade=True)
    try:
        print(f"registry ready: {describe(registry.database.url)}")
        if args.admin:
            issued = registry.bootstrap(args.admin)
            print(f"admin {issued.username} created; token (shown once, store it now):")
            print(issued.token)
    finally:
        registry.close()
    return EXIT_OK


def _scan(args: argparse.Namespace) -> int:
    def run(registry: Registry, who: Principal) -> int:
        modes = ("static",) if args.static_only else ("static", "dynamic")
        info = registry.scan(who, args.ref, modes=modes)
        report = info.latest(_kind("scan_report"))
        details = report.details if report is not None else {}
        counts = ", ".join(f"{n} {s}" for s, n in details.get("by_severity", {}).items() if n) or "no findings"
        print(f"{info.ref}: {details.get('verdict', '?')} ({counts}); state {info.state}")
        return EXIT_OK if details.get("verdict") == "PASS" else EXIT_REFUSED

    return _session(args, run)


def _fsck(args: argparse.Namespace) -> int:
    def run(registry: Registry, who: Principal) -> int:
        report = registry.fsck(who, repair=args.repair)
        if args.format == "json":
            print(json.dumps(report.to_dict(), indent=2))
        else:
            for p in report.problems:
                print(f"{p.kind:<8} {p.subject}: {p.detail}{' [repaired]' if p.repaired else ''}")
            state = "clean" if report.clean else "problems found"
            print(f"{report.blobs} blob(s), {report.rows} reference(s): {state}")
        return EXIT_OK if report.clean else EXIT_REFUSED

    return _session(args, run)


def _suppress(args: argparse.Namespace) -> int:
    def run(registry: Registry, who: Principal) -> None:
        s = registry.suppress(who, args.ref, args.rule, reason=args.reason, expires=args.expires)
        print(f"{args.ref}: {s.rule_id} suppressed by {s.reviewer} until {s.expires.isoformat()} ({s.source})")

    return _session(args, run)


def _user_add(args: argparse.Namespace) -> int:
    def run(registry: Registry, who: Principal) -> None:
        user = registry.create_user(who, args.username, _roles(args.roles))
        print(f"user {user.username} added with role(s) {', '.join(sorted(user.roles))}")

    return _session(args, run)


def _user_roles(args: argparse.Namespace) -> int:
    def run(registry: Registry, who: Principal) -> None:
        user = registry.set_roles(who, args.username, _roles(args.roles))
        print(f"user {user.username} now has role(s) {', '.join(sorted(user.roles))}")

    return _session(args, run)


def _user_disable(args: argparse.Namespace) -> int:
    def run(registry: Registry, who: Principal) -> None:
        registry.disable_user(who, args.username)
        print(f"user {args.username} disabled")

    return _session(args, run)


def _user_list(args: argparse.Namespace) -> int:
    def run(registry: Registry, who: Principal) -> None:
        for user in registry.list_users(who):
            flag = " (disabled)" if user.disabled else ""
            print(f"{user.username:<24} {','.join(sorted(user.roles))}{flag}")

    return _session(args, run)


def _token_issue(args: argparse.Namespace) -> int:
    from mlwarden.registry.auth import parse_duration

    def run(registry: Registry, who: Principal) -> None:
        issued = registry.issue_token(
            who, args.username, name=args.name, expires_in=parse_duration(args.expires), scope=args.scope
        )
        until = f"expires {issued.expires_at:%Y-%m-%d %H:%M} UTC" if issued.expires_at else "never expires"
        scoped = f", scoped to {issued.scope}" if issued.scope else ""
        print(f"token {issued.id} for {issued.username} ({until}{scoped}); shown once:", file=sys.stderr)
        print(issued.token)

    return _session(args, run)


def _token_revoke(args: argparse.Namespace) -> int:
    def run(registry: Registry, who: Principal) -> None:
        info = registry.revoke_token(who, args.token_id)
        print(f"token {info.id} of {info.username} revoked")

    return _session(args, run)


def _token_list(args: argparse.Namespace) -> int:
    def run(registry: Registry, who: Principal) -> None:
        for t in registry.list_tokens(who, args.username):
            status = (
                "revoked" if t.revoked_at else (f"expires {t.expires_at:%Y-%m-%d}" if t.expires_at else "no expiry")
            )
            print(f"{t.id:>5} {t.username:<20} {t.prefix}…  {status:<20} {t.scope or '-':<24} {t.name}")

    return _session(args, run)


def _register(args: argparse.Namespace) -> int:
    from mlwarden.scan.remote import is_remote

    def run(registry: Registry, who: Principal) -> None:
        with contextlib.ExitStack() as stack:
            model_path = Path(args.model_path)
            source = None
            if is_remote(args.model_path):  # downloaded once into the private remote cache (docs/remote.md)
                from mlwarden.core.policy import Policy
                from mlwarden.registry.source import download

                model_path, source = stack.enter_context(download(args.model_path, Policy().limits.max_file_size))
            info = registry.register(
                who,
                args.name,
                model_path,
                signature=Path(args.signature) if args.signature else None,
                dataset_manifests=[Path(p) for p in args.dataset_manifests],
                training_record=Path(args.training_record) if args.training_record else None,
                framework=args.framework,
                description=args.description,
                source=source,
            )
        print(f"registered {info.ref} {info.digest} ({len(info.files)} file(s)); state {info.state}")
        if info.source is not None:
            print(f"  from {_source_line(info.source)}")

    return _session(args, run)


def _source_line(source: dict[str, Any]) -> str:
    """``URL @ revision (commit C)`` / ``URL etag E`` for one line of output."""
    parts = [str(source.get("url", "?"))]
    if source.get("revision"):
        parts.append(f"@ {source['revision']}")
    for key in ("commit", "version_id", "etag"):
        if source.get(key):
            parts.append(f"{key} {source[key]}")
    return "  ".join(parts)


def _attach(args: argparse.Namespace) -> int:
    def run(registry: Registry, who: Principal) -> None:
        info = registry.attach(who, args.ref, args.kind, Path(args.path))
        print(f"attached {args.kind} {Path(args.path).name} to {info.ref}")

    return _session(args, run)


def _transition(args: argparse.Namespace, method: str, *extra: Any, **options: Any) -> int:
    def run(registry: Registry, who: Principal) -> None:
        info = getattr(registry, method)(who, *extra, **options)
        aliases = f" (aliases: {', '.join(info.aliases)})" if info.aliases else ""
        print(f"{info.ref}: {info.state}{aliases}")

    return _session(args, run)


def _approve(args: argparse.Namespace) -> int:
    return _transition(args, "approve", args.ref, comment=args.comment)


def _deploy(args: argparse.Namespace) -> int:
    return _transition(args, "deploy", args.ref, args.alias)


def _quarantine(args: argparse.Namespace) -> int:
    return _transition(args, "quarantine", args.ref, args.reason)


def _release(args: argparse.Namespace) -> int:
    return _transition(args, "release", args.ref, comment=args.comment)


def _rollback(args: argparse.Namespace) -> int:
    return _transition(args, "rollback", args.name, args.alias)


def _models(args: argparse.Namespace) -> int:
    def run(registry: Registry, who: Principal) -> None:
        for model in registry.list_models(who):
            aliases = " ".join(f"{a}->{n}" for a, n in sorted(model.aliases.items()))
            print(f"{model.name:<30} {model.versions:>4} version(s)  {aliases}")

    return _session(args, run)


def _versions(args: argparse.Namespace) -> int:
    def run(registry: Registry, who: Principal) -> None:
        for v in registry.versions(who, args.name):
            aliases = ",".join(v.aliases)
            print(f"{v.ref:<24} {v.state:<12} {v.digest[:19]}…  {v.submitted_by:<16} {v.created_at:%Y-%m-%d} {aliases}")

    return _session(args, run)


def _show(args: argparse.Namespace) -> int:
    def run(registry: Registry, who: Principal) -> None:
        info = registry.resolve(who, args.ref)
        if args.format == "json":
            print(json.dumps(jsonable(info), indent=2, sort_keys=True))
        else:
            print(_text(info))

    return _session(args, run)


def jsonable(value: Any) -> Any:
    """Frozen registry values as JSON data (dates ISO 8601, enums by value, sets sorted)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if hasattr(value, "ref"):
            out["ref"] = value.ref
        if hasattr(value, "source"):  # a version: where it was downloaded from, or None
            out["source"] = jsonable(value.source)
        return out
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, frozenset | set):
        return sorted(jsonable(v) for v in value)
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def _text(info: VersionInfo) -> str:
    lines = [
        f"{info.ref}  {info.state}",
        f"  digest:       {info.digest}",
        f"  artifact:     {info.artifact_name} ({'file' if info.is_file else 'folder'}, {info.total_size} bytes)",
        f"  framework:    {info.framework or '-'}",
        f"  submitted by: {info.submitted_by} at {info.created_at:%Y-%m-%d %H:%M:%S} UTC",
        f"  aliases:      {', '.join(info.aliases) or '-'}",
        *_source_lines(info.source),
        "  files:",
        *(f"    {f.digest[:16]}…  {f.size:>12}  {f.path}" for f in info.files),
        "  attachments:",
        *(
            f"    #{a.id:<4} {a.kind:<17} {a.filename}  sha256:{a.digest[:16]}…  by {a.created_by}"
            for a in info.attachments
        ),
    ]
    return "\n".join(lines)


def _source_lines(source: dict[str, Any] | None) -> list[str]:
    if source is None:
        return []
    lines = [f"  source:       {source.get('url', '?')}"]
    for key in ("revision", "commit", "version_id", "etag", "last_modified", "sha256"):
        if source.get(key):
            lines.append(f"    {key + ':':<14}{source[key]}")
    if source.get("files", 1) != 1:
        lines.append(f"    {'files:':<14}{source['files']} (per-file pins in the source attachment)")
    return lines


def _roles(values: list[str]) -> list[str]:
    return [part for value in values for part in value.split(",") if part]


def _kind(name: str) -> Any:
    from mlwarden.registry.values import AttachmentKind

    return AttachmentKind(name)
