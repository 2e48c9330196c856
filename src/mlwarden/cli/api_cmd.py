"""``mlwarden api serve``: run the registry's HTTP API with uvicorn.

It listens on 127.0.0.1 unless told otherwise: tokens travel in a header, so anything beyond loopback should
be behind TLS (``--tls-cert``/``--tls-key`` here, or a reverse proxy that terminates it).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path
from typing import Any

from mlwarden.core.errors import UsageError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def _size(text: str) -> int:
    from mlwarden.http.limits import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("a port is between 0 and 65535 (0: any free port)")
    return value


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``mlwarden api serve``."""
    api = sub.add_parser("api", help="the registry's HTTP API", description="The registry's HTTP API (FastAPI).")
    api_sub = api.add_subparsers(dest="api_command", metavar="COMMAND", required=True)
    serve = api_sub.add_parser(
        "serve",
        help="serve the registry over HTTP (OpenAPI docs at /docs)",
        description="Serve the registry's HTTP API with uvicorn until interrupted. Every request needs a bearer "
        "token issued by an admin, except GET /healthz. Interactive docs at /docs.",
    )
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST})")
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    serve.add_argument(
        "--db", metavar="URL", help="database URL (default: $MLWARDEN_DB_URL or the SQLite file in home)"
    )
    serve.add_argument(
        "--home", metavar="DIR", help="mlwarden home: blob store, default database (default: ~/.mlwarden)"
    )
    serve.add_argument(
        "--gates", metavar="FILE", help="gates TOML file (default: <home>/gates.toml, else the built-in safe gates)"
    )
    serve.add_argument(
        "--audit-key",
        metavar="FILE",
        help="Ed25519 key signing audit checkpoints (POST /v1/audit/checkpoint; without it that is refused)",
    )
    serve.add_argument(
        "--max-upload", type=_size, metavar="SIZE", help="largest model upload, e.g. 2GiB, 500MiB (default: 2GiB)"
    )
    serve.add_argument("--upload-dir", metavar="DIR", help="where uploads are staged (default: the system temp dir)")
    serve.add_argument("--archive-dir", metavar="DIR", help="enable archive-mode retirement: archives go here")
    serve.add_argument("--recipient", metavar="PUB", help="custodian X25519 public key that seals archives")
    serve.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate chain")
    serve.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    serve.add_argument(
        "--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info", help="(default: info)"
    )
    serve.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Open the registry, build the app and serve it until Ctrl-C."""
    try:
        import uvicorn  # noqa: F401 - checked here, so a missing extra is a clear error before anything loads

        from mlwarden.api import Limits, create_app
    except ImportError as exc:
        raise UsageError(f"the HTTP API needs the server extra: pip install 'mlwarden[server]' ({exc})") from None
    from mlwarden.registry.service import Registry

    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    for option in ("tls_cert", "tls_key"):
        value = getattr(args, option)
        if value and not Path(value).is_file():
            raise UsageError(f"--{option.replace('_', '-')}: no such file: {value}")
    upload_dir = Path(args.upload_dir) if args.upload_dir else None
    if upload_dir is not None and not upload_dir.is_dir():
        raise UsageError(f"--upload-dir: no such folder: {upload_dir}")
    limits = (
        Limits(upload_dir=upload_dir)
        if args.max_upload is None
        else Limits(max_upload_bytes=args.max_upload, upload_dir=upload_dir)
    )
    signer = None
    if args.audit_key:
        from mlwarden.registry.audit import CheckpointSigner

        signer = CheckpointSigner.load(args.audit_key)
    home = Path(args.home) if args.home else None
    registry = Registry.open(_database_url(args.db, home), home=home, gates=args.gates, audit_signer=signer)
    warn_if_plain_http(args)
    from mlwarden.api.routes.retire import RetirementSettings

    retirement = RetirementSettings(
        archive_dir=Path(args.archive_dir) if args.archive_dir else None,
        recipient=Path(args.recipient) if args.recipient else None,
    )
    app = create_app(registry, limits=limits, retirement=retirement)
    serve_http(app, args)
    return 0


def warn_if_plain_http(args: argparse.Namespace) -> None:
    """Say so when tokens would cross a network in clear (plain HTTP on a non-loopback address)."""
    if not args.tls_cert and not _is_loopback(args.host):
        print(
            f"mlwarden: warning: serving plain HTTP on {args.host}: tokens cross the network in clear; "
            "use --tls-cert/--tls-key or a TLS-terminating proxy",
            file=sys.stderr,
        )


def serve_http(app: Any, args: argparse.Namespace, *, access_log: bool = True) -> None:
    """Run ``app`` with uvicorn as ``--host``/``--port``/``--tls-*``/``--log-level`` say, until Ctrl-C."""
    import uvicorn

    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
        server_header=False,
        proxy_headers=False,
        access_log=access_log,
    )


def _database_url(db: str | None, home: Path | None) -> str | None:
    """``--db``, else ``$MLWARDEN_DB_URL``, else (with ``--home``) the SQLite file in that home, else the default.

    Without this, ``--home`` alone would put blobs in the given home but the database in the default one.
    """
    from mlwarden.registry.db import URL_ENV

    if db or os.environ.get(URL_ENV) or home is None:
        return db
    return f"sqlite:///{home / 'registry.db'}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
