"""``mlwarden serve --model NAME@ALIAS``: the guard service in front of a registry version.

The service authenticates to the registry with its own token (``--token-file`` / ``$MLWARDEN_TOKEN``: a user with
read, quarantine and rollback rights, e.g. a deployer, so playbooks can act); clients call it with their own
registry tokens. Everything the guard does is set in the guard policy file (``--policy``, see docs/guard.md),
including the connection limits of the listener (``connections``). ``/metrics`` names the model, its version and
digest: it is served on the public port only with ``--metrics-token`` (scrapers send it as a bearer token), and
on a listener of its own with ``--metrics-port`` (default address: loopback).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from pathlib import Path
from typing import Any

from mlwarden.cli import serve_scale
from mlwarden.cli.api_cmd import _database_url, _is_loopback, _port, warn_if_plain_http
from mlwarden.cli.registry_cmd import add_token_options, read_token
from mlwarden.core.errors import UsageError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
#: Where the metrics token is read from when ``--metrics-token`` is not given (a flag shows in ``ps``).
METRICS_TOKEN_ENV = "MLWARDEN_METRICS_TOKEN"  # noqa: S105 - an environment variable name


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``mlwarden serve``."""
    serve = sub.add_parser(
        "serve",
        help="serve a registry version behind the guard (checks, monitoring, playbooks)",
        description="Resolve NAME@ALIAS (or NAME:VERSION) in the registry, verify the copy's digest and "
        "signature, load it through the safe loader, and serve /v1/models/NAME/predict behind the guard policy.",
    )
    serve.add_argument("--model", metavar="REF", help="NAME@ALIAS (follows the alias) or NAME:VERSION")
    serve.add_argument("--policy", metavar="FILE", help="guard policy YAML (default: built-in safe defaults)")
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST})")
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    serve.add_argument("--db", metavar="URL", help="registry database URL (default: $MLWARDEN_DB_URL or the home's)")
    serve.add_argument("--home", metavar="DIR", help="mlwarden home (default: $MLWARDEN_HOME)")
    serve.add_argument("--gates", metavar="FILE", help="gates TOML (deploy-trusted keys verify the signature)")
    add_token_options(serve)  # the service's own registry token: --token-file or $MLWARDEN_TOKEN (--token warns)
    serve.add_argument("--history-dir", metavar="DIR", help="keep the monitor history here (for `monitor report`)")
    serve.add_argument("--forensics-dir", metavar="DIR", default="forensics", help="where bundles go")
    serve.add_argument("--signing-key", metavar="KEY", help="ECDSA private key (PEM) signing forensics bundles")
    serve.add_argument("--dynamic", action="store_true", help="also run the sandboxed dynamic analysis on load")
    serve.add_argument("--poll", type=float, default=5.0, metavar="S", help="registry poll period (default: 5)")
    serve.add_argument(
        "--monitor",
        choices=("process", "thread"),
        default="process",
        help="run audit writes, drift tests, control charts and playbooks in a monitor process of their own "
        "(default), or in a thread of the request process (docs/guard.md)",
    )
    serve.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve /metrics on a listener of its own at --metrics-host:PORT (default: no such listener)",
    )
    serve.add_argument(
        "--metrics-host",
        default=DEFAULT_HOST,
        help=f"address of the metrics listener (default: {DEFAULT_HOST})",
    )
    serve.add_argument(
        "--metrics-token",
        metavar="TOKEN",
        help=f"bearer token scrapers must send for /metrics; with it /metrics is also on the public port "
        f"(default: ${METRICS_TOKEN_ENV}; without one, /metrics is only on the metrics listener)",
    )
    serve.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate chain")
    serve.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    serve.add_argument(
        "--log-level",
        choices=("critical", "error", "warning", "info", "debug"),
        default="warning",
        help="(default: warning)",
    )
    serve_scale.add_scale_options(serve)  # --workers, --redis (serve_scale.py)
    proxy = serve.add_argument_group("LLM proxy (instead of --model; docs/llm-proxy.md)")
    proxy.add_argument("--upstream", metavar="URL", help="guard this OpenAI-compatible API (base URL, e.g. .../v1)")
    proxy.add_argument("--api", choices=("openai",), default="openai", help="the upstream's API (default: openai)")
    proxy.add_argument("--upstream-key-env", metavar="NAME", help="environment variable holding the upstream's key")
    proxy.add_argument("--upstream-key-file", metavar="PATH", help="file holding the upstream's key")
    proxy.add_argument("--fallback-upstream", metavar="URL", help="a second upstream tried when the first fails")
    proxy.add_argument("--upstream-name", default="openai", help="name in audit subjects and token scopes")
    serve.set_defaults(run=run_serve)


def _signer(path: str | None) -> object:
    if path is None:
        return None
    from mlwarden.integrity.keys import load_private_key

    return load_private_key(path)  # ECDSA (mlwarden keys generate), as for model signatures


def run_serve(args: argparse.Namespace) -> int:
    """Prepare the service (nothing listens until the version verified and loaded) and serve until Ctrl-C."""
    try:
        import uvicorn  # noqa: F401 - checked here, so a missing extra is a clear error before anything loads

        from mlwarden.serve import server
        from mlwarden.serve.app import check_metrics_token, create_guard_app, create_metrics_app
        from mlwarden.serve.policy import load_guard_policy
        from mlwarden.serve.service import GuardService
    except ImportError as exc:
        raise UsageError(
            f"mlwarden serve needs the server and guard extras: pip install 'mlwarden[server,guard]' ({exc})"
        ) from None

    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if bool(args.model) == bool(getattr(args, "upstream", None)):
        raise UsageError("give --model (a registry version) or --upstream (an LLM API), exactly one")
    if args.upstream:
        return run_proxy(args)
    if args.poll <= 0:
        raise UsageError("--poll must be a positive number of seconds")
    metrics_token = check_metrics_token(args.metrics_token or os.environ.get(METRICS_TOKEN_ENV))
    if args.metrics_port is not None and args.metrics_port == args.port and args.metrics_host == args.host:
        raise UsageError("--metrics-port must differ from --port (the metrics listener is a server of its own)")
    if args.metrics_port is not None and metrics_token is None and not _is_loopback(args.metrics_host):
        print(
            f"mlwarden: warning: /metrics on {args.metrics_host} without --metrics-token: anyone who reaches that "
            "address sees the model's name, version and digest",
            file=sys.stderr,
        )
    policy = load_guard_policy(args.policy)
    redis_url = serve_scale.redis_url(args, policy)
    shared = _SharedMonitor(args, policy, redis_url) if args.monitor == "process" else None
    supervised = serve_scale.supervise_workers(args, redis_url, run_serve, shared)  # --workers N: N processes
    if supervised is not None:
        return supervised
    registry, actor, options = _open_service(args, redis_url)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = GuardService(registry, actor, args.model, policy, options)
    # Everything loaded so far (frameworks, the model) lives as long as the process: move it out of the garbage
    # collector's view, so its full collections scan only what requests create (each full scan of the imported
    # frameworks' objects stalled every request for a moment).
    gc.collect()
    gc.freeze()
    warn_if_plain_http(args)
    print(
        f"mlwarden: serving {service.current.info.ref} ({service.current.info.digest}) on {args.host}:{args.port}",
        file=sys.stderr,
        flush=True,
    )
    listen = server.Listen(args.host, args.port, args.tls_cert, args.tls_key, args.log_level)
    main_config = server.uvicorn_config(
        create_guard_app(service, metrics_token=metrics_token), listen, policy.connections
    )
    metrics_config = None
    if args.metrics_port is not None:
        metrics_listen = server.Listen(args.metrics_host, args.metrics_port, log_level=args.log_level)
        metrics_config = server.uvicorn_config(
            create_metrics_app(service, token=metrics_token), metrics_listen, policy.connections
        )
        print(f"mlwarden: metrics on {args.metrics_host}:{args.metrics_port}", file=sys.stderr, flush=True)
    try:
        server.run(main_config, metrics_config, reuse_port=serve_scale.is_worker(args))
    finally:
        service.close()
        registry.close()
    return 0


def _open_service(args: argparse.Namespace, redis_url: str | None) -> tuple[Any, Any, Any]:
    """The registry, the service's principal (from its token) and the service options of ``mlwarden serve``."""
    from mlwarden.registry.service import Registry
    from mlwarden.serve.service import ServiceOptions

    signer = _signer(args.signing_key)
    token = read_token(args)
    home = Path(args.home) if args.home else None
    registry = Registry.open(_database_url(args.db, home), home=home, gates=args.gates, upgrade=False)
    try:
        actor = registry.authenticate(token.strip())
    except BaseException:
        registry.close()
        raise
    options = ServiceOptions(
        history_dir=Path(args.history_dir) if args.history_dir else None,
        forensics_dir=Path(args.forensics_dir),
        signer=signer,
        dynamic=args.dynamic,
        poll_s=args.poll,
        redis_url=redis_url,
        monitor=args.monitor,
        log_level=args.log_level.upper(),
        monitor_conn=getattr(args, "monitor_conn", None),
    )
    return registry, actor, options


class _SharedMonitor:
    """Starts the monitor process ``--workers N`` share (in the supervisor, before the workers)."""

    def __init__(self, args: argparse.Namespace, policy: Any, redis_url: str | None) -> None:
        self.args, self.policy, self.redis_url = args, policy, redis_url

    def __call__(self, workers: int) -> tuple[Any, Any]:
        from mlwarden.serve.monitor_host import spawn_shared
        from mlwarden.serve.service import monitor_host_config

        registry, actor, options = _open_service(self.args, self.redis_url)
        try:
            config = monitor_host_config(registry, actor, self.args.model, self.policy, options)
        finally:
            registry.close()
        return spawn_shared(config, workers)


def run_proxy(args: argparse.Namespace) -> int:
    """``mlwarden serve --upstream URL --api openai``: the guard in front of an OpenAI-compatible API."""
    from mlwarden.registry.service import Registry
    from mlwarden.serve import server
    from mlwarden.serve.app import check_metrics_token
    from mlwarden.serve.policy import load_guard_policy
    from mlwarden.serve.proxy.app import create_proxy_app
    from mlwarden.serve.proxy.service import ProxyService
    from mlwarden.serve.proxy.upstream import Credential, Upstream

    policy = load_guard_policy(args.policy)
    redis_url = serve_scale.redis_url(args, policy)  # budgets and cut-offs shared by --workers N
    supervised = serve_scale.supervise_workers(args, redis_url, run_serve)
    if supervised is not None:
        return supervised
    credential = Credential.from_sources(args.upstream_key_env, args.upstream_key_file)
    upstream = Upstream(args.upstream, policy.proxy.upstream, credential, fallback=args.fallback_upstream)
    metrics_token = check_metrics_token(args.metrics_token or os.environ.get(METRICS_TOKEN_ENV))
    home = Path(args.home) if args.home else None
    registry = Registry.open(_database_url(args.db, home), home=home, gates=args.gates, upgrade=False)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = ProxyService(
        registry,
        policy,
        upstream,
        name=args.upstream_name,
        redis_url=redis_url,
        signer=_signer(args.signing_key),
        forensics_dir=Path(args.forensics_dir),
    )
    gc.collect()  # as for the guard: what is loaded by now lives as long as the process, out of the collector's view
    gc.freeze()
    warn_if_plain_http(args)
    print(f"mlwarden: proxying {args.api} API on {args.host}:{args.port}", file=sys.stderr, flush=True)
    listen = server.Listen(args.host, args.port, args.tls_cert, args.tls_key, args.log_level)
    config = server.uvicorn_config(create_proxy_app(service, metrics_token=metrics_token), listen, policy.connections)
    try:
        server.run(config, reuse_port=serve_scale.is_worker(args))
    finally:
        service.shutdown()  # the upstream pool goes with the process (its loop is closed by now)
        registry.close()
    return 0
