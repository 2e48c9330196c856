"""``mlwarden serve --workers N``: N request processes on one port, supervised by the process that started them.

The guard's request path is CPU-bound Python, so one process uses one core whatever its threads do. N workers
are N independent processes (spawned, not forked: each loads the model and opens the registry itself, so no
lock, thread or connection is inherited half-way), each listening on the same address with ``SO_REUSEPORT`` —
the kernel spreads incoming connections over them. What must be shared between them (a client's rate bucket and
extraction statistics) lives in Redis (:mod:`mlwarden.serve.state`), which is why N > 1 requires ``--redis``.
Everything else stays per worker: the token cache, the monitor's windows (each worker tests drift on its share
of the traffic), ``/metrics`` (worker ``i`` serves its own on ``--metrics-port + i``).

The supervisor forwards SIGINT/SIGTERM to the workers and waits for them; when one worker exits on its own (a
crash, a model that stopped loading) it stops the others and exits with that worker's status, so a process
manager sees the failure instead of a service quietly running at 1/N of its capacity.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

#: Seconds the workers get to finish their requests and flush their audit queues after a stop signal.
STOP_GRACE_S = 30.0


def supervise(
    target: Callable[[Any], int],
    args: Any,
    workers: int,
    *,
    monitor: tuple[Any, Sequence[Connection]] | None = None,
) -> int:
    """Run ``target(args_i)`` in ``workers`` spawned processes, ``args_i`` being ``args`` with ``worker_index = i``.

    Args:
        target: a module-level function (it is pickled by name), e.g. the CLI's serve entry point.
        args: an ``argparse.Namespace`` (picklable).
        workers: how many processes.
        monitor: a monitor process shared by the workers and its pipe ends, one per worker
            (:func:`mlwarden.serve.monitor_host.spawn_shared`): worker ``i`` gets ``monitor_conn`` = pipe ``i``. It
            is supervised like a worker (when it dies, the service stops: its audit trail went with it) and stops
            by itself after the last worker, once its pending audit events are written.

    Returns:
        0 when every worker stopped cleanly after a signal; otherwise the first failing process's exit status.
    """
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for i in range(workers):
        extra: dict[str, Any] = {"worker_index": i}
        if monitor is not None:
            extra["monitor_conn"] = monitor[1][i]
        worker_args = type(args)(**{**vars(args), **extra})
        proc = ctx.Process(target=_worker, args=(target, worker_args), name=f"mlwarden-worker-{i}", daemon=False)
        proc.start()
        procs.append(proc)
    if monitor is not None:
        for conn in monitor[1]:
            conn.close()  # the workers hold them now: the monitor process sees each worker go
    status = _run(procs, monitor[0] if monitor is not None else None)
    if monitor is not None:
        monitor[0].join(STOP_GRACE_S)
        if monitor[0].is_alive():
            monitor[0].terminate()
    return status


def _run(procs: list[Any], companion: Any) -> int:
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                proc.terminate()  # SIGTERM: uvicorn's graceful shutdown

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = 0
        while any(p.is_alive() for p in procs):
            if companion is not None and not companion.is_alive() and not stopping:
                print(
                    f"mlwarden: the monitor process exited with status {companion.exitcode}; stopping the workers",
                    file=sys.stderr,
                    flush=True,
                )
                status = _status(companion.exitcode) or 1
                stop(signal.SIGTERM, None)
            for proc in procs:
                if not proc.is_alive() and proc.exitcode not in (None, 0) and not stopping:
                    print(
                        f"mlwarden: worker {proc.name} exited with status {proc.exitcode}; stopping the others",
                        file=sys.stderr,
                        flush=True,
                    )
                    status = _status(proc.exitcode)
                    stop(signal.SIGTERM, None)
            time.sleep(0.1)
        for proc in procs:
            proc.join(STOP_GRACE_S)
            if status == 0 and not stopping and proc.exitcode not in (0, None):
                status = _status(proc.exitcode)
        return status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _status(exitcode: int | None) -> int:
    """A process exit status from ``multiprocessing``'s (negative: killed by that signal)."""
    if exitcode is None:
        return 1
    return 128 - exitcode if exitcode < 0 else exitcode


def _worker(target: Callable[[Any], int], args: Any) -> None:
    """A worker's body: the target's status becomes the process's (SIGINT is the supervisor's to handle)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(target(args))
