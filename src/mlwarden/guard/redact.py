"""Output filtering: mask PII and secrets in model outputs, and reduce what scores leak about the model.

Masking replaces each :func:`mlwarden.guard.pii.find` match by a label (``[REDACTED:email]``) and leaves
every other character exactly as it was; JSON-like outputs are walked within depth, node and size
limits, masking string leaves (and keys, and integers long enough to be card numbers).

The leakage reducers are the countermeasures studied against prediction-API attacks: rounding
confidences (Fredrikson et al., CCS 2015, model inversion; Tramèr et al., USENIX Security 2016, model
extraction) and returning only the top-k classes (Shokri et al., S&P 2017, membership inference). They
raise the cost of those attacks rather than prevent them, and every change is reported as evidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mlwarden.core.errors import LimitExceeded, UsageError
from mlwarden.guard.pii import Match, PiiConfig, find

__all__ = [
    "JsonRedaction",
    "LeakageReduction",
    "OutputLimits",
    "RedactionConfig",
    "TextRedaction",
    "limit_scores",
    "redact_json",
    "redact_text",
    "round_scores",
    "top_k_scores",
]


@dataclass(frozen=True, slots=True)
class RedactionConfig:
    """How matches are masked and how much of a JSON output is walked.

    Attributes:
        pii: which detectors run, their confidence floor and the per-string size limit.
        template: replacement text; ``{detector}`` is replaced by the detector id.
        card_style: ``"label"`` replaces a card by the template; ``"last4"`` keeps its last four digits
            (``**** **** **** 1111``), which PCI DSS allows to display.
        mask_keys: also mask dictionary keys (label → score maps use free text as keys).
        scan_integers: scan integers of 9 digits or more as text (card numbers and SSNs arrive as numbers).
        max_depth: deepest nesting walked in a JSON output.
        max_nodes: most containers and leaves walked in a JSON output.
        max_total_chars: most string characters scanned over a whole JSON output.
    """

    pii: PiiConfig = field(default_factory=PiiConfig)
    template: str = "[REDACTED:{detector}]"
    card_style: Literal["label", "last4"] = "label"
    mask_keys: bool = True
    scan_integers: bool = True
    max_depth: int = 64
    max_nodes: int = 100_000
    max_total_chars: int = 10_000_000

    def __post_init__(self) -> None:
        if self.card_style not in ("label", "last4"):
            raise UsageError(f"RedactionConfig.card_style must be 'label' or 'last4', got {self.card_style!r}")
        for name in ("max_depth", "max_nodes", "max_total_chars"):
            if getattr(self, name) <= 0:
                raise UsageError(f"RedactionConfig.{name} must be > 0, got {getattr(self, name)}")
        try:
            self.template.format(detector="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise UsageError(f"RedactionConfig.template {self.template!r} is invalid: {exc}") from None


@dataclass(frozen=True, slots=True)
class TextRedaction:
    """A masked text and the matches that were masked (offsets refer to the original text)."""

    text: str
    matches: tuple[Match, ...]

    @property
    def changed(self) -> bool:
        """Whether anything was masked."""
        return bool(self.matches)


@dataclass(frozen=True, slots=True)
class JsonRedaction:
    """A masked JSON-like value and, per masked leaf, its JSON Pointer (RFC 6901) and matches.

    Pointers use the *masked* keys; a pointer ending in ``#key`` means the key itself was masked.
    """

    value: Any
    redactions: tuple[tuple[str, tuple[Match, ...]], ...]

    @property
    def changed(self) -> bool:
        """Whether anything was masked."""
        return bool(self.redactions)


def _replacement(text: str, match: Match, config: RedactionConfig) -> str:
    if match.detector == "credit_card" and config.card_style == "last4":
        return match.evidence_masked
    return config.template.format(detector=match.detector)


def redact_text(text: str, config: RedactionConfig | None = None) -> TextRedaction:
    """Mask every PII/secret match in ``text``; characters outside matches are kept exactly.

    Raises:
        UsageError: ``text`` is not a string.
        LimitExceeded: ``text`` is longer than ``config.pii.max_chars``.
    """
    config = config or RedactionConfig()
    matches = find(text, config.pii)
    parts: list[str] = []
    pos = 0
    for m in matches:
        parts += [text[pos : m.start], _replacement(text, m, config)]
        pos = m.end
    parts.append(text[pos:])
    return TextRedaction("".join(parts), tuple(matches))


def _pointer(path: tuple[str, ...]) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in path)


class _Walker:
    """One walk over a JSON-like value, counting nodes and characters against the configured limits."""

    def __init__(self, config: RedactionConfig) -> None:
        self.config = config
        self.nodes = 0
        self.chars = 0
        self.redactions: list[tuple[str, tuple[Match, ...]]] = []

    def text(self, value: str, path: tuple[str, ...] | None) -> TextRedaction:
        """Mask one string; record it under ``path`` (``None``: the caller records it, e.g. for keys)."""
        self.chars += len(value)
        if self.chars > self.config.max_total_chars:
            raise LimitExceeded(
                "redaction size", f"more than {self.config.max_total_chars} characters of strings in the output"
            )
        result = redact_text(value, self.config)
        if result.changed and path is not None:
            self.redactions.append((_pointer(path), result.matches))
        return result

    def walk(self, value: Any, path: tuple[str, ...], depth: int) -> Any:
        self.nodes += 1
        if self.nodes > self.config.max_nodes:
            raise LimitExceeded("redaction nodes", f"more than {self.config.max_nodes} values in the output")
        if depth > self.config.max_depth:
            raise LimitExceeded("redaction depth", f"nesting deeper than {self.config.max_depth} at {_pointer(path)}")
        if isinstance(value, str):
            return self.text(value, path).text
        if isinstance(value, bool) or value is None or isinstance(value, float):
            return value
        if isinstance(value, int):
            if self.config.scan_integers and abs(value) >= 100_000_000:
                masked = self.text(str(value), path)
                return masked.text if masked.changed else value
            return value
        if isinstance(value, Mapping):
            out: dict[Any, Any] = {}
            for key, item in value.items():
                new_key = key
                if isinstance(key, str) and self.config.mask_keys:
                    masked = self.text(key, None)
                    new_key = masked.text
                    while new_key in out:  # two keys masked to the same label must not overwrite each other
                        new_key += "*"
                    if masked.changed:  # recorded under the masked key: the evidence must not leak the PII
                        self.redactions.append((_pointer((*path, new_key)) + "#key", masked.matches))
                out[new_key] = self.walk(item, (*path, str(new_key)), depth + 1)
            return out
        if isinstance(value, list | tuple):
            items = [self.walk(item, (*path, str(i)), depth + 1) for i, item in enumerate(value)]
            return items if isinstance(value, list) else tuple(items)
        raise UsageError(f"cannot redact a value of type {type(value).__name__} at {_pointer(path) or '/'}")


def redact_json(value: Any, config: RedactionConfig | None = None) -> JsonRedaction:
    """Mask PII in every string leaf (and key) of a JSON-like value built of dicts, lists, tuples and scalars.

    The input is not modified. Anything that is not JSON-like raises rather than passing through unchecked.

    Raises:
        UsageError: a value of an unsupported type (bytes, objects) was found.
        LimitExceeded: the value is nested deeper, has more nodes, or more string characters than configured.
    """
    walker = _Walker(config or RedactionConfig())
    result = walker.walk(value, (), 0)
    return JsonRedaction(result, tuple(walker.redactions))


# --- leakage reducers ------------------------------------------------------------------------------------------

Scores = Sequence[float] | Mapping[str, float] | np.ndarray


@dataclass(frozen=True, slots=True)
class OutputLimits:
    """How much precision and how many classes a served output keeps.

    Attributes:
        decimals: digits kept after the decimal point (round half to even); ``None`` disables rounding.
        top_k: classes kept per output; ``None`` keeps them all.
        renormalize: after top-k, rescale the kept scores to sum to 1. Off by default: the kept scores
            then stay the model's own probabilities (the dropped mass is visible as ``1 - sum``), which
            keeps calibration meaningful; on, they read as a distribution over the returned classes only.
    """

    decimals: int | None = 2
    top_k: int | None = None
    renormalize: bool = False

    def __post_init__(self) -> None:
        if self.decimals is not None and not 0 <= self.decimals <= 15:
            raise UsageError(f"OutputLimits.decimals must be within [0, 15] or None, got {self.decimals}")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"OutputLimits.top_k must be >= 1 or None, got {self.top_k}")


@dataclass(frozen=True, slots=True)
class LeakageReduction:
    """Reduced scores and what was changed: the evidence the guard logs with the response.

    Attributes:
        value: the scores in the caller's shape (list, dict or array; top-k of a dict keeps k entries,
            top-k of a vector keeps its length and zeroes the dropped classes so the schema is unchanged).
        rounded: how many scores rounding changed.
        dropped: how many scores top-k removed (or zeroed).
        renormalized: whether the kept scores were rescaled.
        max_abs_change: the largest change of any single score.
    """

    value: Any
    rounded: int
    dropped: int
    renormalized: bool
    max_abs_change: float

    @property
    def changed(self) -> bool:
        """Whether the output differs from the model's."""
        return bool(self.rounded or self.dropped or self.renormalized)


def _as_array(scores: Scores) -> tuple[np.ndarray, list[str] | None]:
    if isinstance(scores, Mapping):
        keys = list(scores)
        array = np.asarray([scores[k] for k in keys], dtype=np.float64)
    else:
        keys = None
        array = np.asarray(scores, dtype=np.float64)
    if array.ndim not in (1, 2) or array.size == 0:
        raise UsageError(f"scores must be a non-empty vector or batch of vectors, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise UsageError("scores contain NaN or infinity; refusing to serve them")
    return array, keys


def _restore(original: Scores, array: np.ndarray, keys: list[str] | None, keep: np.ndarray | None) -> Any:
    if keys is not None:
        flags = keep.tolist() if keep is not None else [True] * len(keys)
        return {k: float(v) for k, v, kept in zip(keys, array, flags, strict=True) if kept}
    if isinstance(original, np.ndarray):
        return array.astype(original.dtype) if np.issubdtype(original.dtype, np.floating) else array
    return array.tolist()


def limit_scores(scores: Scores, limits: OutputLimits | None = None) -> LeakageReduction:
    """Apply top-k truncation, then rounding, to a probability vector, a batch of them, or a label → score map.

    Raises:
        UsageError: the scores are empty, of the wrong shape, or not finite.
    """
    limits = limits or OutputLimits()
    array, keys = _as_array(scores)
    original = array.copy()
    rows = array.reshape(1, -1) if array.ndim == 1 else array
    keep = np.ones_like(rows, dtype=bool)
    dropped = 0
    renormalized = False
    if limits.top_k is not None and limits.top_k < rows.shape[1]:
        order = np.argsort(-rows, axis=1, kind="stable")  # ties keep the lower index
        keep = np.zeros_like(rows, dtype=bool)
        np.put_along_axis(keep, order[:, : limits.top_k], True, axis=1)
        dropped = int((~keep).sum())
        rows = np.where(keep, rows, 0.0)
        if limits.renormalize:
            sums = rows.sum(axis=1, keepdims=True)
            rows = np.divide(rows, sums, out=rows.copy(), where=sums > 0)
            renormalized = True
    before_rounding = rows.copy()
    if limits.decimals is not None:
        rows = np.round(rows, limits.decimals)
    rounded = int(((rows != before_rounding) & keep).sum())
    result = rows.reshape(array.shape)
    change = float(np.max(np.abs(result - original)))
    keep_flat = keep.reshape(array.shape) if keys is not None else None
    return LeakageReduction(_restore(scores, result, keys, keep_flat), rounded, dropped, renormalized, change)


def round_scores(scores: Scores, decimals: int = 2) -> LeakageReduction:
    """Round scores to ``decimals`` digits (round half to even); see :func:`limit_scores`."""
    return limit_scores(scores, OutputLimits(decimals=decimals))


def top_k_scores(scores: Scores, k: int, *, renormalize: bool = False) -> LeakageReduction:
    """Keep the ``k`` highest scores (no rounding); see :func:`limit_scores` and :class:`OutputLimits`."""
    return limit_scores(scores, OutputLimits(decimals=None, top_k=k, renormalize=renormalize))
