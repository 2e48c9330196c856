"""Incremental output filtering: PII/secret masking and system-prompt leakage, chunk by chunk.

A streamed completion arrives in small pieces, and a card number or an e-mail address may be split across two of
them. :class:`StreamMasker` keeps a **carry-over tail**: the last ``tail`` characters received are held back,
because they may still be the start of a match that the next piece completes; everything before them is final
and is emitted at once, masked. A match that starts before the tail and is still visible at its end is held whole
(the cut moves back to its start), so a value is never emitted half masked. The tail is therefore the longest
span that is guaranteed to be masked across a boundary (default 128 characters: every card, IBAN, phone number,
SSN, cloud key and nearly every e-mail address; a longer value, such as a JWT of several hundred characters, is
masked only when the detector sees it whole within one tail, see ``docs/llm-proxy.md``). The last
:data:`LEFT_CONTEXT` characters already emitted (or a leak window, if longer) are kept as left context, so
detectors that look behind a value (``SSN: ...``) and the leak check keep working across boundaries.
:meth:`StreamMasker.flush` emits the tail at the end.

Nothing is buffered beyond the tail (plus a match being held): the first bytes of an answer leave as soon as
more than ``tail`` characters have arrived, whatever the answer's length.

:class:`LeakIndex` finds spans of a completion that reproduce the request's system message: every window of
``n`` characters (after case and whitespace folding) that also occurs in the system message marks its span.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from mlwarden.guard.pii import Match, find
from mlwarden.guard.redact import RedactionConfig

#: The label a reproduced span of the system message is replaced by (when the policy masks leaks).
LEAK_LABEL = "[REDACTED:system_prompt]"
#: Fewest final characters emitted at once: LLM chunks are often one token (about 4 characters), and a detector
#: pass per token over tail + context would cost several times more than one per 16 characters.
EMIT_STEP = 16
#: Characters of already emitted text kept before the held tail for the detectors' look-behind.
LEFT_CONTEXT = 64
_SPACES = re.compile(r"\s+")


def _fold_part(part: str, offset: int, out: list[str], where: list[int]) -> None:
    low = part.lower()
    if len(low) != len(part):  # a few characters lower-case to two (U+0130): keep one per character
        low = "".join(c.lower()[:1] or c for c in part)
    out.append(low)
    where.extend(range(offset, offset + len(part)))


def _fold(text: str) -> tuple[str, list[int]]:
    """Lower-cased text with whitespace runs folded to one space, and the original index of each folded char."""
    out: list[str] = []
    where: list[int] = []
    pos = 0
    for run in _SPACES.finditer(text):
        _fold_part(text[pos : run.start()], pos, out, where)
        out.append(" ")
        where.append(run.start())
        pos = run.end()
    _fold_part(text[pos:], pos, out, where)
    return "".join(out), where


class LeakIndex:
    """The ``n``-character windows of a system message, to find where a completion reproduces it."""

    def __init__(self, system: str, n: int) -> None:
        folded, _ = _fold(system)
        self.n = n
        self.windows = frozenset(folded[i : i + n] for i in range(len(folded) - n + 1))

    def __bool__(self) -> bool:
        return bool(self.windows)

    def spans(self, text: str, start: int = 0) -> list[tuple[int, int]]:
        """Merged ``(start, end)`` spans of ``text`` covered by windows that occur in the system message.

        Only windows ending after ``start`` are looked at (the text before it was checked already).
        """
        folded, where = _fold(text)
        n, spans = self.n, list[tuple[int, int]]()
        first = max(0, bisect.bisect_left(where, start) - n + 1)
        for i in range(first, len(folded) - n + 1):
            if folded[i : i + n] in self.windows:
                start, end = where[i], where[i + n - 1] + 1
                if spans and start <= spans[-1][1]:
                    spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
                else:
                    spans.append((start, end))
        return spans


@dataclass(frozen=True, slots=True)
class Span:
    """A span of text to mask: its label, and whether it may be emitted piecewise."""

    start: int
    end: int
    label: str
    splittable: bool  # a leak may be masked piecewise; a PII value is held until it is seen whole
    match: Match | None = None


class StreamMasker:
    """Masks one text that arrives in pieces (see the module docstring).

    Args:
        redaction: the PII/secret detectors and labels (``None``: no PII masking).
        leak: the request's system message windows (``None``: no leak check).
        mask_leaks: replace leaked spans (else they are only counted, for the audit and the metrics).
        tail: characters held back between pieces.
    """

    def __init__(
        self, redaction: RedactionConfig | None, leak: LeakIndex | None, *, mask_leaks: bool, tail: int
    ) -> None:
        self.redaction = redaction
        self.leak = leak if leak else None
        self.mask_leaks = mask_leaks
        self.tail = tail
        self.matches: list[Match] = []
        self.leaked_chars = 0
        self._context = ""
        self._pending = ""
        self._open_leak = False
        # Left context kept for the detectors: what look-behind validators need (an "SSN:" or "aws_secret" key
        # before a value), and a leak window's length; values themselves are never split (see _emit).
        self._keep = max(LEFT_CONTEXT, leak.n if leak else 0)

    def feed(self, text: str) -> str:
        """Take the next piece; return the masked text that is now final (possibly empty)."""
        self._pending += text
        return self._emit(final=False)

    def flush(self) -> str:
        """The end of the text: return everything still held, masked."""
        return self._emit(final=True)

    @property
    def keep(self) -> int:
        """Characters of emitted text kept as left context for the detectors."""
        return self._keep

    def spans(self, work: str, base: int) -> list[Span]:
        """The spans to mask in ``work`` (context of ``base`` characters, then new text), non-overlapping, in order."""
        found: list[Span] = []
        if self.redaction is not None:
            template, last4 = self.redaction.template, self.redaction.card_style == "last4"
            for m in find(work, self.redaction.pii):
                label = (
                    m.evidence_masked if last4 and m.detector == "credit_card" else template.format(detector=m.detector)
                )
                found.append(Span(m.start, m.end, label, False, m))
        if self.leak is not None:
            found += [Span(a, b, LEAK_LABEL, True) for a, b in self.leak.spans(work, base)]
        found.sort(key=lambda s: (s.start, -s.end))
        kept: list[Span] = []
        for span in found:  # PII first at equal starts would need ranking; overlaps are rare: first wins
            if not kept or span.start >= kept[-1].end:
                kept.append(span)
        return kept

    def _emit(self, *, final: bool) -> str:
        work = self._context + self._pending
        base = len(self._context)
        cut = len(work) if final else len(work) - self.tail
        if cut <= base or (not final and cut - base < EMIT_STEP):
            return ""  # nothing final yet, or too little to be worth a detector pass (token-sized chunks)
        spans = self.spans(work, base)
        for span in spans:  # a value still visible at the cut is held whole (never emitted half masked)
            if not span.splittable and span.start >= base and span.start < cut < span.end:
                cut = span.start
        parts: list[str] = []
        pos = base
        open_leak = self._open_leak
        self._open_leak = False
        for span in spans:
            if span.end <= base or span.start >= cut:
                continue
            a, b = max(span.start, base), min(span.end, cut)
            if span.label == LEAK_LABEL:
                self.leaked_chars += b - a
                if not self.mask_leaks:
                    continue
                self._open_leak = b == cut and span.end > cut
                label = "" if open_leak and span.start < base else LEAK_LABEL  # a leak continuing: one label
            else:
                label = span.label
                if span.match is not None:
                    self.matches.append(span.match)
            parts += [work[pos:a], label]
            pos = b
        parts.append(work[pos:cut])
        self._context = work[max(0, cut - self._keep) : cut]
        self._pending = work[cut:]
        return "".join(parts)
