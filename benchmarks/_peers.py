"""Shared benchmark harness: run each tool in its own subprocess and measure wall time and peak RSS.

mlwarden runs from the interpreter that runs the benchmark (``.venv``); the peer tools (modelscan,
picklescan, fickling) run from ``.venv-peers`` because modelscan pins ``rich<15``, which conflicts with
mlwarden's own dependencies. ``make bench-setup`` creates that venv.

Peak RSS is the kernel's ``ru_maxrss`` for the tool's process as reported by GNU ``/usr/bin/time``
(for the multi-process CLI run: the largest of the process and its workers — a maximum, not a sum).
Two easier ways give wrong answers and are not used: ``RUSAGE_CHILDREN`` reports the largest child ever
waited for (one big run masks every later one), and ``os.wait4`` on a child forked from this Python
process includes *this* process's high-water mark, because Linux carries the pre-``exec`` memory's peak
into ``ru_maxrss``. ``/usr/bin/time`` is a small C program, so its fork adds ~1 MiB at most. The
runner also reports ``VmHWM`` from ``/proc/self/status`` (the post-``exec`` peak only) as a cross-check,
and that figure is used if ``/usr/bin/time`` is missing.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench-out"
RUNNER = Path(__file__).resolve().parent / "_runner.py"
PEERS_PY = REPO / ".venv-peers" / "bin" / "python"
MLW_PY = Path(sys.executable)
MLW_CLI = MLW_PY.parent / "mlwarden"
GNU_TIME = Path("/usr/bin/time")
PEERS = ("picklescan", "modelscan", "fickling")
TOOLS = ("mlwarden", *PEERS)
SEVERITIES = ("info", "low", "medium", "high", "critical")


@dataclass
class Run:
    """One measured subprocess: a tool over a list of files."""

    tool: str
    wall: float  # seconds, whole subprocess (start-up + import + scans)
    rss_mb: float  # peak resident set size, MiB
    returncode: int
    import_seconds: float = 0.0
    hwm_mb: float | None = None  # VmHWM reported by the runner itself (cross-check)
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per file, from the runner
    stderr_tail: str = ""

    @property
    def scan_seconds(self) -> float:
        """Time spent inside the per-file scan calls (excludes start-up and import)."""
        return float(sum(r["seconds"] for r in self.rows))


def require_peers() -> None:
    """Exit with a helpful message when the peers venv is missing."""
    if not PEERS_PY.exists():
        sys.exit(f"{PEERS_PY} not found: run `make bench-setup` first")


def peer_versions() -> dict[str, str]:
    """Installed versions of the three peers and of mlwarden (for the JSON output and README)."""
    code = (
        "import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in "
        "('modelscan', 'picklescan', 'fickling')}))"
    )
    out: dict[str, str] = json.loads(
        subprocess.run([str(PEERS_PY), "-c", code], check=True, capture_output=True, text=True).stdout
    )
    from importlib.metadata import version

    out["mlwarden"] = version("mlwarden")
    return out


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def _measure(cmd: Sequence[str], timeout: float) -> tuple[float, float, int, str, str]:
    """Run ``cmd``; return wall seconds, peak RSS MiB, exit code, stdout, stderr tail."""
    with (
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
        tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file,
    ):
        if GNU_TIME.exists():
            cmd = [str(GNU_TIME), "-f", "%M", "-o", rss_file.name, *cmd]
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, start_new_session=True)
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        rss_kib = usage.ru_maxrss  # polluted by this process's peak (see module doc); fallback only
        lines = rss_file.read().split()
        if GNU_TIME.exists() and lines and lines[-1].isdigit():
            rss_kib = int(lines[-1])
        return wall, rss_kib / 1024, proc.returncode, out.read(), err.read()[-2000:]


def run_tool(tool: str, paths: Iterable[Path | str], *, timeout: float = 900.0) -> Run:
    """Scan ``paths`` with ``tool`` in one fresh subprocess through :mod:`_runner`."""
    python = MLW_PY if tool == "mlwarden" else PEERS_PY
    with tempfile.NamedTemporaryFile("w", suffix=".lst", delete=False, encoding="utf-8") as fh:
        fh.write("".join(f"{p}\n" for p in paths))
        list_file = fh.name
    try:
        wall, rss, code, stdout, stderr = _measure([str(python), str(RUNNER), tool, list_file], timeout)
    finally:
        os.unlink(list_file)
    run = Run(tool, wall, rss, code, stderr_tail=stderr if code else "")
    for line in stdout.splitlines():
        obj = json.loads(line)
        if "import_seconds" in obj:
            run.import_seconds = obj["import_seconds"]
        elif "hwm_kib" in obj:
            run.hwm_mb = obj["hwm_kib"] / 1024 if obj["hwm_kib"] else None
            if not GNU_TIME.exists() and run.hwm_mb:
                run.rss_mb = run.hwm_mb
        else:
            run.rows.append(obj)
    return run


def scan_json(
    options: Sequence[str], paths: Sequence[Path | str], timeout: float
) -> tuple[float, float, int, str, dict[str, Any]]:
    """Run ``mlwarden scan OPTIONS --no-progress --format json`` over ``paths`` as one measured process.

    Returns wall seconds, peak RSS (MiB), exit code, stderr tail and the parsed JSON report (no files if none).
    """
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [str(MLW_CLI), "scan", *options, "--no-progress", "--format", "json", "--output", str(report)]
        wall, rss, code, _, stderr = _measure([*cmd, *map(str, paths)], timeout)
        data = json.loads(report.read_text(encoding="utf-8")) if report.exists() else {"files": []}
    return wall, rss, code, stderr, data


def run_mlwarden_cli(paths: Sequence[Path | str], jobs: int, *, timeout: float = 900.0) -> Run:
    """``mlwarden scan --jobs N`` over ``paths``; per-file verdicts come from its JSON report."""
    # --static-only: peers are static scanners; benchmarks/dynamic.py measures the sandbox
    wall, rss, code, stderr, data = scan_json(["--static-only", "--jobs", str(jobs)], paths, timeout)
    fail_on = SEVERITIES.index(data.get("fail_on", "medium"))
    run = Run(f"mlwarden CLI --jobs {jobs}", wall, rss, code, stderr_tail=stderr if code > 1 else "")
    for f in data["files"]:
        flagged = any(SEVERITIES.index(x["severity"]) >= fail_on for x in f["findings"])
        run.rows.append(
            {
                "path": f["path"],
                "flagged": flagged,
                "error": f["error"],
                "skipped": False,
                "seconds": f["duration"],
                "detail": "",
            }
        )
    return run


def ratio(a: float, b: float) -> str:
    """``a / b`` formatted, or ``-`` when ``b`` is zero."""
    return f"{a / b:.2f}x" if b else "-"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table that is also valid Markdown."""
    body = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    fmt = "| " + " | ".join(f"{{:{w}}}" for w in widths) + " |"
    lines = [fmt.format(*headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [fmt.format(*r) for r in body]
    return "\n".join(lines)


def save(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench-out/<name>.json`` with the raw numbers (runs are serialised with their rows)."""
    OUT.mkdir(parents=True, exist_ok=True)

    def enc(obj: Any) -> Any:
        if isinstance(obj, Run):
            return {**asdict(obj), "scan_seconds": obj.scan_seconds}
        if isinstance(obj, Path):
            return str(obj)
        raise TypeError(type(obj))

    target = OUT / f"{name}.json"
    target.write_text(json.dumps(payload, indent=1, default=enc) + "\n", encoding="utf-8")
    return target
