"""Text an answer carries besides its content: tool-call arguments and logprob tokens, masked like the content.

A completion that calls a tool puts its text in ``message.tool_calls[i].function.arguments`` (a JSON string
written by the model; ``function_call.arguments`` in the older form), and one asked for ``logprobs`` repeats the
whole answer token by token in ``logprobs.content[j].token`` (``logprobs.tokens`` for text completions), with
each token's ``bytes`` and alternatives. Either can carry the personal data, secrets or system prompt that the
content filter masks, so both go through the same detectors, the same leak check and, when streamed, the same
carry-over tail (:class:`~mlwarden.serve.proxy.stream.StreamMasker`):

- arguments are one more text per tool call (streamed: pieces per call ``index``);
- logprob tokens are masked as one text split at token boundaries (:class:`PieceMasker`): a token overlapping a
  masked value becomes the label (the first) or empty (the rest), its ``bytes`` follow, and its alternatives
  (``top_logprobs``) are dropped, since they could spell the value. Streamed, tokens are held back like
  content and may leave in a later chunk than they came in; their order and count are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mlwarden.serve.proxy.stream import StreamMasker

Entry = dict[str, Any]


class PieceMasker:
    """Masks a text that arrives as a sequence of tokens, keeping one output token per input token.

    Args:
        masker: supplies the detectors, the leak check, the tail and the counts (its own text is not used).
    """

    def __init__(self, masker: StreamMasker) -> None:
        self.masker = masker
        self._context = ""
        self._pending: list[Entry] = []

    def feed(self, entries: Sequence[Entry]) -> list[Entry]:
        """Take the next tokens (dicts with a ``token``); return those now final, masked."""
        self._pending.extend(entries)
        return self._emit(final=False)

    def flush(self) -> list[Entry]:
        """The end: every token still held, masked."""
        return self._emit(final=True)

    def _emit(self, *, final: bool) -> list[Entry]:
        texts = [e["token"] if isinstance(e.get("token"), str) else "" for e in self._pending]
        work = self._context + "".join(texts)
        base = len(self._context)
        cut = len(work) if final else len(work) - self.masker.tail
        if cut <= base or not self._pending:
            return []
        spans = self.masker.spans(work, base)
        for span in spans:  # a value still visible at the cut is held whole
            if not span.splittable and span.start >= base and span.start < cut < span.end:
                cut = span.start
        ends, pos = [], base
        for t in texts:
            pos += len(t)
            ends.append(pos)
        k = sum(1 for e in ends if e <= cut)
        if k == 0:
            return []
        cut = ends[k - 1]
        out: list[Entry] = []
        start = base
        for entry, end in zip(self._pending[:k], ends[:k], strict=True):
            out.append(self._masked(entry, work, start, end, spans, base))
            start = end
        for span in spans:
            if base <= span.start < cut:
                if span.match is not None:
                    self.masker.matches.append(span.match)
            if span.splittable:
                self.masker.leaked_chars += max(0, min(span.end, cut) - max(span.start, base))
        self._context = work[max(0, cut - self.masker.keep) : cut]
        self._pending = self._pending[k:]
        return out

    def _masked(self, entry: Entry, work: str, a: int, b: int, spans: Sequence[Any], base: int) -> Entry:
        parts, pos = [], a
        for span in spans:
            if span.end <= a or span.start >= b or (span.splittable and not self.masker.mask_leaks):
                continue
            parts.append(work[pos : max(pos, span.start)])
            if a <= span.start and span.start >= base:
                parts.append(span.label)
            pos = max(pos, min(span.end, b))
        parts.append(work[pos:b])
        text = "".join(parts)
        if text == work[a:b]:
            return entry
        masked = dict(entry)
        masked["token"] = text
        if "bytes" in masked:
            masked["bytes"] = list(text.encode())
        if "top_logprobs" in masked:
            masked["top_logprobs"] = [] if isinstance(masked["top_logprobs"], list) else {}
        return masked


def _legacy_entries(logprobs: dict[str, Any]) -> list[Entry]:
    tokens = logprobs.get("tokens") or []
    lps, tops, offsets = (
        logprobs.get(k) or [None] * len(tokens) for k in ("token_logprobs", "top_logprobs", "text_offset")
    )
    return [
        {"token": t, "logprob": lp, "top_logprobs": top, "offset": off}
        for t, lp, top, off in zip(tokens, lps, tops, offsets, strict=False)
    ]


def _write_legacy(logprobs: dict[str, Any], entries: list[Entry]) -> None:
    logprobs["tokens"] = [e["token"] for e in entries]
    for key, field in (("token_logprobs", "logprob"), ("top_logprobs", "top_logprobs"), ("text_offset", "offset")):
        if logprobs.get(key) is not None:
            logprobs[key] = [e[field] for e in entries]


def _setter(doc: dict[str, Any], key: str) -> Callable[[list[Entry]], None]:
    def write(out: list[Entry]) -> None:
        doc[key] = out

    return write


def _logprob_lists(chat: bool, choice: dict[str, Any]) -> list[tuple[str, list[Entry], Callable[[list[Entry]], None]]]:
    """``(name, entries, write back)`` for each token list of a choice's ``logprobs``."""
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return []
    if not chat:
        if not isinstance(logprobs.get("tokens"), list):
            return []
        return [("tokens", _legacy_entries(logprobs), lambda out: _write_legacy(logprobs, out))]
    found: list[tuple[str, list[Entry], Callable[[list[Entry]], None]]] = []
    for key in ("content", "refusal"):
        entries = logprobs.get(key)
        if isinstance(entries, list):
            kept = [e for e in entries if isinstance(e, dict)]
            found.append((key, kept, _setter(logprobs, key)))
    return found


def _arguments(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``function`` objects of a message (or delta) whose ``arguments`` are text."""
    calls = [c.get("function") for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    calls.append(message.get("function_call"))
    return [f for f in calls if isinstance(f, dict) and isinstance(f.get("arguments"), str)]


def mask_extras(chat: bool, choice: dict[str, Any], new: Callable[[], StreamMasker]) -> list[StreamMasker]:
    """Mask a whole (non-streamed) choice's tool-call arguments and logprob tokens in place; the maskers used."""
    used: list[StreamMasker] = []
    message = choice.get("message")
    if chat and isinstance(message, dict):
        for function in _arguments(message):
            masker = new()
            function["arguments"] = masker.feed(function["arguments"]) + masker.flush()
            used.append(masker)
    for _, entries, write in _logprob_lists(chat, choice):
        pieces = PieceMasker(new())
        write(pieces.feed(entries) + pieces.flush())
        used.append(pieces.masker)
    return used


class StreamExtras:
    """The tool-call and logprob maskers of one streamed choice (see the module docstring)."""

    def __init__(self, chat: bool, new: Callable[[], StreamMasker]) -> None:
        self.chat, self._new = chat, new
        self.calls: dict[int, StreamMasker] = {}
        self.tokens: dict[str, PieceMasker] = {}

    def maskers(self) -> list[StreamMasker]:
        """Every masker used so far (for the audit: what was masked, leaked characters)."""
        return [*self.calls.values(), *(p.masker for p in self.tokens.values())]

    def filter(self, choice: dict[str, Any]) -> None:
        """Mask this chunk's pieces in place (what is held back leaves with a later chunk)."""
        delta = choice.get("delta")
        if self.chat and isinstance(delta, dict):
            for call in delta.get("tool_calls") or []:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    index = call.get("index", 0) if isinstance(call.get("index", 0), int) else 0
                    masker = self.calls.get(index) or self.calls.setdefault(index, self._new())
                    function["arguments"] = masker.feed(function["arguments"])
            legacy = delta.get("function_call")
            if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
                masker = self.calls.get(-1) or self.calls.setdefault(-1, self._new())
                legacy["arguments"] = masker.feed(legacy["arguments"])
        for key, entries, write in _logprob_lists(self.chat, choice):
            pieces = self.tokens.get(key) or self.tokens.setdefault(key, PieceMasker(self._new()))
            write(pieces.feed(entries))

    def flush_into(self, choice: dict[str, Any]) -> bool:
        """Add everything still held to ``choice`` (the last of its chunks); whether anything was added."""
        added = False
        delta = choice.setdefault("delta", {}) if self.chat else None
        for index, masker in self.calls.items():
            rest = masker.flush()
            if not rest or delta is None:
                continue
            added = True
            if index == -1:
                delta.setdefault("function_call", {})["arguments"] = rest
            else:
                delta.setdefault("tool_calls", []).append({"index": index, "function": {"arguments": rest}})
        for key, pieces in self.tokens.items():
            held = pieces.flush()
            if not held:
                continue
            added = True
            logprobs = choice.get("logprobs")
            if not isinstance(logprobs, dict):
                logprobs = choice["logprobs"] = {}
            if self.chat:
                logprobs[key] = [*(logprobs.get(key) or []), *held]
            else:
                if not logprobs.get("tokens"):
                    logprobs.update({"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []})
                _write_legacy(logprobs, _legacy_entries(logprobs) + held)
        return added
