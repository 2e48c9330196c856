"""Per-client token and cost budgets over a fixed window, and the token count of an exchange.

Tokens are counted from the upstream's ``usage`` (non-streamed answers, and streamed ones: the proxy asks for
``stream_options.include_usage`` and strips that last chunk when the client did not ask for it). When the
upstream reports no usage the count is an **estimate**: characters / 4, rounded up (the usual rule of thumb for
English text with BPE tokenizers; it can be off by a factor of two for code or other scripts). A request is
refused (429) once the client's budget is used up; the request that crosses the limit is served whole (its size
is only known afterwards), so a client can exceed the budget by at most one answer.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from mlwarden.serve.proxy.settings import BudgetSettings


def estimate_tokens(chars: int) -> int:
    """Tokens of a text of ``chars`` characters, estimated as ``ceil(chars / 4)``."""
    return math.ceil(chars / 4) if chars > 0 else 0


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one exchange and whether they were reported by the upstream or estimated."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool

    @property
    def total(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


def usage_from(body: object, prompt_chars: int, completion_chars: int) -> Usage:
    """The ``usage`` object of an OpenAI response body, or an estimate from the character counts."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if isinstance(usage, dict):
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
        if isinstance(prompt, int) and isinstance(completion, int | None) and prompt >= 0:
            return Usage(prompt, completion or 0, estimated=False)
    return Usage(estimate_tokens(prompt_chars), estimate_tokens(completion_chars), estimated=True)


@dataclass(frozen=True, slots=True)
class BudgetState:
    """A client's use in the current window, and why it may not go on (``None``: it may)."""

    tokens: int
    cost: float
    refused: str | None
    resets_in_s: float


class Budgets:
    """Per-client use, refused once a limit is reached (see the module docstring)."""

    def __init__(self, settings: BudgetSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._use: OrderedDict[str, tuple[float, int, float]] = OrderedDict()  # client -> (window start, tok, cost)
        self._lock = threading.Lock()

    def _current(self, client: str, now: float) -> tuple[float, int, float]:
        start, tokens, cost = self._use.pop(client, (now, 0, 0.0))
        if now - start >= self.settings.window_s:
            start, tokens, cost = now, 0, 0.0
        self._use[client] = (start, tokens, cost)
        while len(self._use) > self.settings.max_clients:
            self._use.popitem(last=False)
        return start, tokens, cost

    def check(self, client: str) -> BudgetState:
        """Whether ``client`` may send another request now."""
        now = self._clock()
        with self._lock:
            start, tokens, cost = self._current(client, now)
        s = self.settings
        refused = None
        if s.tokens is not None and tokens >= s.tokens:
            refused = f"token budget used up: {tokens} of {s.tokens} tokens in this window"
        elif s.cost is not None and cost >= s.cost:
            refused = f"cost budget used up: {cost:.4f} of {s.cost:.4f} in this window"
        return BudgetState(tokens, cost, refused, max(0.0, start + s.window_s - now))

    def price(self, model: str, usage: Usage) -> float:
        """The cost of ``usage`` on ``model`` by the price table (0 for a model without a price)."""
        price = self.settings.prices.get(model) or self.settings.prices.get("*")
        if price is None:
            return 0.0
        return (usage.prompt_tokens * price.prompt + usage.completion_tokens * price.completion) / 1000.0

    def charge(self, client: str, model: str, usage: Usage) -> float:
        """Add ``usage`` to ``client``'s window; returns its cost."""
        cost = self.price(model, usage)
        now = self._clock()
        with self._lock:
            start, tokens, spent = self._current(client, now)
            self._use[client] = (start, tokens + usage.total, spent + cost)
        return cost
