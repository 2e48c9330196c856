"""Per-tool scan runner, executed in a subprocess: ``python _runner.py TOOL LIST_FILE``.

Runs under either venv (mlwarden's ``.venv`` or the peers' ``.venv-peers``), so it imports only the
standard library at top level and the tool inside its adapter. ``LIST_FILE`` holds one path per line.
Output is JSON lines on stdout: first ``{"import_seconds": s}`` (time to import the tool), then one
``{"path", "flagged", "error", "skipped", "seconds", "detail"}`` object per file, in input order, and
last ``{"hwm_kib": n}``, the process's own peak RSS since ``exec`` (``VmHWM``).

The parent measures the wall time and peak RSS of this whole process, so interpreter start-up and the
tool's import are part of each tool's cost, just as they are for a user running the tool's CLI.

Verdicts (what counts as *flagged*) follow each tool's own notion of "unsafe":

* mlwarden: any finding at or above the default policy's ``fail_on`` (MEDIUM).
* picklescan: ``infected_files > 0`` (a Dangerous global); ``scan_err`` is reported as an error.
* modelscan: any issue in the result dict; entries in ``errors`` are errors; a file listed in
  ``summary.skipped`` (and not scanned) is reported as skipped.
* fickling: the per-file dispatch of fickling's own hub scanner (``fickling --hf``): ZIP files go to
  ``scan_zip_archive`` (it analyses the ``.pkl``/``.pickle``/``.bin`` members), everything else to
  ``scan_file(graceful=True)`` when it has a raw-pickle extension or parses as one (fickling's
  ``check_pickle``); flagged when a result is not ``is_safe`` (worse than LIKELY_SAFE). Any other file
  (npy, 7z, tar, onnx, ...) is *skipped*, as the hub scanner skips it. A parse error is an error and
  flags (fickling rates it SUSPICIOUS). The hub scanner's format probe, ``fickling.polyglot``, imports
  torch at module level, so we use ``zipfile.is_zipfile`` and a copy of ``check_pickle`` instead —
  fickling then needs no torch.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

Verdict = tuple[bool, str | None, bool, str]  # flagged, error, skipped, detail
Scanner = Callable[[str], Verdict]


def _short(text: object, limit: int = 160) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _mlwarden() -> Scanner:
    from pathlib import Path

    from mlwarden.core.policy import Policy
    from mlwarden.scan.engine import scan_file

    policy = Policy()

    def scan(path: str) -> Verdict:
        result = scan_file(Path(path), policy)
        bad = sorted(
            (f for f in result.findings if f.severity >= policy.fail_on), key=lambda f: f.severity, reverse=True
        )
        detail = "; ".join(f"{f.rule_id}[{f.severity}] {_short(f.evidence, 90)}" for f in bad[:3])
        return bool(bad), result.error, False, detail

    return scan


def _picklescan() -> Scanner:
    from picklescan.scanner import SafetyLevel, scan_file_path

    def scan(path: str) -> Verdict:
        res = scan_file_path(path)
        dangerous = [f"{g.module}.{g.name}" for g in res.globals if g.safety == SafetyLevel.Dangerous]
        return (
            res.infected_files > 0,
            "scan_err" if res.scan_err else None,
            False,
            _short(", ".join(sorted(set(dangerous)))),
        )

    return scan


def _modelscan() -> Scanner:
    from modelscan.modelscan import ModelScan

    scanner = ModelScan()

    def scan(path: str) -> Verdict:
        report: dict[str, Any] = scanner.scan(path)
        issues = report.get("issues") or []
        errors = report.get("errors") or []
        summary = report.get("summary", {})
        scanned = summary.get("scanned", {}).get("total_scanned", 0)
        skipped = summary.get("skipped", {}).get("total_skipped", 0)
        detail = ", ".join(sorted({f"{i.get('module')}.{i.get('operator')}" for i in issues}))
        error = _short("; ".join(str(e.get("description", e)) for e in errors)) if errors else None
        return bool(issues), error, bool(skipped) and not scanned and not issues, _short(detail)

    return scan


def _fickling() -> Scanner:
    import zipfile
    from pathlib import PurePosixPath

    from fickling.fickle import Pickled, StackedPickle
    from fickling.loader import scan_file, scan_zip_archive

    raw_ext = {".bin", ".pkl", ".pickle"}

    def is_valid_pickle(path: str) -> bool:
        # fickling.polyglot.check_pickle(min_length=2), copied because fickling.polyglot imports torch.
        with open(path, "rb") as fh:
            try:
                return len(Pickled.load(fh)) > 2
            except Exception:  # noqa: BLE001
                fh.seek(0)
                try:
                    return any(len(p) > 2 for p in StackedPickle.load(fh).pickled)
                except Exception:  # noqa: BLE001
                    return False

    def scan(path: str) -> Verdict:
        if zipfile.is_zipfile(path):
            results = list(scan_zip_archive(path, graceful=True).values())
        elif PurePosixPath(path).suffix.lower() in raw_ext or is_valid_pickle(path):
            results = [scan_file(path, graceful=True)]
        else:
            return False, None, True, "not a pickle: format not scanned by fickling"
        flagged = any(not r.is_safe for r in results)
        errors = [e for r in results for e in r.errors]
        worst = max((r.severity for r in results), default=None)
        return flagged, _short("; ".join(errors)) if errors else None, False, worst.name if worst else ""

    return scan


def _vm_hwm_kib() -> int | None:
    """This process's peak RSS since ``exec`` (Linux only), as a cross-check of the parent's figure."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


TOOLS: dict[str, Callable[[], Scanner]] = {
    "mlwarden": _mlwarden,
    "picklescan": _picklescan,
    "modelscan": _modelscan,
    "fickling": _fickling,
}


def main() -> int:
    """Scan every listed file with one tool and print one JSON line per file."""
    tool, list_file = sys.argv[1], sys.argv[2]
    logging.disable(logging.CRITICAL)  # peers log warnings per file; their cost is not what we measure
    warnings.simplefilter("ignore")
    with open(list_file, encoding="utf-8") as fh:
        paths = [line.rstrip("\n") for line in fh if line.strip()]
    t0 = time.perf_counter()
    scan = TOOLS[tool]()
    out = sys.stdout
    out.write(json.dumps({"import_seconds": time.perf_counter() - t0}) + "\n")
    devnull = open(os.devnull, "w")
    for path in paths:
        started = time.perf_counter()
        sys.stdout = devnull
        try:
            flagged, error, skipped, detail = scan(path)
        except Exception as exc:  # noqa: BLE001 - a crash is a data point, not a reason to stop
            flagged, error, skipped, detail = False, _short(f"crash: {type(exc).__name__}: {exc}"), False, ""
        finally:
            sys.stdout = out
        out.write(
            json.dumps(
                {
                    "path": path,
                    "flagged": flagged,
                    "error": error,
                    "skipped": skipped,
                    "seconds": time.perf_counter() - started,
                    "detail": detail,
                }
            )
            + "\n"
        )
        out.flush()
    out.write(json.dumps({"hwm_kib": _vm_hwm_kib()}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
