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
from collections.abc import Callable
from types import FrameType
from typing import Any

#: Seconds the workers get to finish their requests and flush their audit queues after a stop signal.
STOP_GRACE_S = 30.0


def supervise(target: Callable[[Any], int], args: Any, workers: int) -> int:
    """Run ``target(args_i)`` in ``workers`` spawned processes, ``args_i`` being ``args`` with ``worker_index = i``.

    Args:
        target: a module-level function (it is pickled by name), e.g. the CLI's serve entry point.
        args: an ``argparse.Namespace`` (picklable).
        workers: how many processes.

    Returns:
        0 when every worker stopped cleanly after a signal; otherwise the first failing worker's exit status.
    """
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for i in range(workers):
        worker_args = type(args)(**{**vars(args), "worker_index": i})
        proc = ctx.Process(target=_worker, args=(target, worker_args), name=f"mlwarden-worker-{i}", daemon=False)
        proc.start()
        procs.append(proc)
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
