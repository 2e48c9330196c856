"""Render a :class:`~mlwarden.scan.result.ScanReport` for people (text, HTML) and machines (JSON, SARIF).

Renderers are pure functions of the report: they never re-read the scanned files, so a report can be
rendered again later, or in another format, with the same result. Each format lives in its own module
and is imported only when asked for (``mlwarden scan --format json`` never imports ``rich``).

Everything a renderer shows that came out of a scanned file (paths, member names, evidence) is hostile
input: the text renderer neutralises terminal control sequences and the HTML renderer escapes markup.
The helpers below are shared by the human-facing renderers for that reason.
"""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlwarden.core.findings import Finding, Location
    from mlwarden.scan.result import FileResult, ScanReport

FORMATS = ("text", "json", "sarif", "html")

_MODULES = {"text": "text", "json": "jsonfmt", "sarif": "sarif", "html": "html"}

VERDICTS = {0: "PASS", 1: "FAIL", 2: "ERROR"}


def render(report: ScanReport, fmt: str, *, color: bool = False, verbose: bool = False) -> str:
    """Render ``report`` in one of :data:`FORMATS`.

    Args:
        report: the scan outcome.
        fmt: ``"text"``, ``"json"``, ``"sarif"`` or ``"html"``.
        color: ANSI colours in the text format (ignored by the others).
        verbose: in text and HTML, also list files without findings, INFO findings and remediation.
            Machine formats are always complete.

    Raises:
        ValueError: unknown format.
    """
    name = _MODULES.get(fmt)
    if name is None:
        raise ValueError(f"unknown report format {fmt!r} (expected one of: {', '.join(FORMATS)})")
    module = importlib.import_module(f"{__name__}.{name}")
    out: str = module.render(report, color=color, verbose=verbose)
    return out


def verdict(report: ScanReport) -> str:
    """``PASS``, ``FAIL`` (a finding at or above ``fail_on``) or ``ERROR`` (a file could not be scanned).

    Mirrors :meth:`ScanReport.exit_code`, so the word printed always agrees with the exit status.
    """
    return VERDICTS[report.exit_code()]


# C0/C1 controls (ANSI escapes start with ESC), DEL, and the bidirectional overrides used in
# "Trojan Source" tricks: a hostile file must not be able to repaint the terminal or reorder text;
# lone surrogates (undecodable bytes) because they cannot be written out as UTF-8.
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(text: str, *, newlines: bool = False) -> str:
    r"""Make untrusted text safe to print: control and bidi characters become ``\xNN`` escapes.

    Args:
        text: text that may come from a scanned file.
        newlines: keep ``\n`` and ``\t`` (evidence blocks); otherwise they are escaped too (paths).
    """
    if not newlines:
        text = text.replace("\n", "\\n").replace("\t", "\\t")
    # Nothing is normalised: evidence must show exactly which characters were in the file.
    return _UNSAFE.sub(_escape, text)


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to about ``limit`` characters, saying how much was left out (never silently)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit:,} more characters]"


def where(location: Location) -> str:
    """The part of a location below the on-disk path: ``member ▸ member @ byte N [phase]``."""
    parts = [location.member] if location.member else []
    if location.offset is not None:
        parts.append(f"@ byte {location.offset}" if parts else f"byte {location.offset}")
    if location.phase:
        parts.append(f"[{location.phase}]")
    return " ".join(parts) or "(whole file)"


def format_duration(seconds: float) -> str:
    """A short human duration: ``0.004 s``, ``12.3 s``, ``2 min 03 s``."""
    if seconds < 10:
        return f"{seconds:.3f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s"


def phase_summary(name: str, status: str, seconds: float, events: int, *, with_events: bool = False) -> str:
    """One phase of a dynamic timeline: ``import ok 1.52s`` (times under 10 ms are left out as noise)."""
    text = f"{name} {status}"
    if seconds >= 0.01:
        text += f" {seconds:.2f}s"
    if with_events:
        text += f" {events} event{'s' if events != 1 else ''}"
    return text


def timeline_line(result: FileResult, *, with_events: bool = False) -> str | None:
    """``dynamic (torch): import ok 1.52s · deserialize ok 0.01s · …``, or ``None`` when nothing ran.

    A file whose framework was chosen but that has no phases (its loader is not installed) reads
    ``dynamic (onnx): not run``; the finding saying why is listed with the others.
    """
    if result.framework is None and not result.timeline:
        return None
    head = f"dynamic ({result.framework or 'unknown'}): "
    if not result.timeline:
        return head + "not run"
    return head + " · ".join(phase_summary(*p, with_events=with_events) for p in result.timeline)


def stack_of(finding: Finding) -> list[str]:
    """The Python stack a dynamic finding captured (innermost frame last), or an empty list."""
    stack = finding.detail("stack")
    return [str(frame) for frame in stack] if isinstance(stack, tuple | list) else []


__all__ = [
    "FORMATS",
    "clean",
    "format_duration",
    "phase_summary",
    "render",
    "stack_of",
    "timeline_line",
    "truncate",
    "verdict",
    "where",
]
