"""``mlwarden serve --workers N --redis URL``: the options and the checks that run before any worker starts.

See :mod:`mlwarden.serve.workers` (the supervisor) and :mod:`mlwarden.serve.state` (what Redis holds).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from mlwarden.core.errors import UsageError

#: Most workers accepted (a typo such as 80 for 8 would load the model 80 times).
MAX_WORKERS = 64


def _workers(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= n <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"--workers must be 1 to {MAX_WORKERS}, got {n}")
    return n


def add_scale_options(parser: argparse.ArgumentParser) -> None:
    """``--workers`` and ``--redis``."""
    group = parser.add_argument_group("scaling out (docs/guard.md, 'Scaling out')")
    group.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="request processes sharing the port (SO_REUSEPORT); N > 1 needs --redis (default: 1)",
    )
    group.add_argument(
        "--redis",
        metavar="URL",
        help="keep per-client state (rate limits, extraction statistics) in this Redis, shared by every worker "
        "(default: the policy's state.redis_url; none: in the process)",
    )


def redis_url(args: argparse.Namespace, policy: Any) -> str | None:
    """The Redis URL to use: ``--redis``, else the policy's ``state.redis_url``."""
    url: str | None = getattr(args, "redis", None) or policy.state.redis_url
    return url


def is_worker(args: argparse.Namespace) -> bool:
    """Whether this process is one of several workers (it then binds with ``SO_REUSEPORT``)."""
    return getattr(args, "worker_index", None) is not None


def supervise_workers(
    args: argparse.Namespace,
    url: str | None,
    target: Callable[[Any], int],
    monitor: Callable[[int], tuple[Any, Any]] | None = None,
) -> int | None:
    """Start ``--workers`` processes running ``target`` and supervise them; ``None`` when this is a single process.

    ``monitor(n)``, when given, starts the monitor process the ``n`` workers share (see
    :func:`mlwarden.serve.workers.supervise`); it runs after the checks, before any worker starts.

    Raises:
        UsageError: N > 1 without Redis, without a fixed port, or with metrics ports that clash with ``--port``;
            Redis does not answer (checked once here, so a wrong URL fails before any model loads).
    """
    n = getattr(args, "workers", 1)
    if n <= 1 or is_worker(args):
        return None
    if url is None:
        raise UsageError(
            f"--workers {n} needs --redis URL (or the policy's state.redis_url): rate limits and extraction "
            "statistics must be shared, or a client spread over the workers gets N times its limit"
        )
    if args.port == 0:
        raise UsageError("--workers needs a fixed --port (every worker listens on the same one)")
    if args.metrics_port is not None and args.metrics_host == args.host:
        if args.metrics_port <= args.port < args.metrics_port + n:
            raise UsageError(f"--metrics-port: worker i listens on {args.metrics_port}+i, which reaches --port")
    from mlwarden.serve.state import StateSettings, make_state
    from mlwarden.serve.workers import supervise

    make_state(StateSettings(), 1.0, 1, max_clients=1, redis_url=url).close()  # pings it
    return supervise(_EachWorker(target), args, n, monitor=monitor(n) if monitor is not None else None)


class _EachWorker:  # a class, not a closure, so the spawned process can unpickle it
    """``target`` with the worker's own metrics port (``--metrics-port + i``)."""

    def __init__(self, target: Callable[[Any], int]) -> None:
        self.target = target

    def __call__(self, args: argparse.Namespace) -> int:
        if args.metrics_port is not None:
            args.metrics_port += args.worker_index
        return self.target(args)
