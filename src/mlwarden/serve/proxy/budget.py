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
import time
from collections.abc import Callable
from dataclasses import dataclass

from mlwarden.serve.proxy.settings import BudgetSettings
from mlwarden.serve.proxy.shared import LocalUsage, UsageStore


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
    """Per-client use, refused once a limit is reached (see the module docstring).

    The use is kept by ``store``: in this process by default, in Redis (shared by the workers) when given a
    :class:`~mlwarden.serve.proxy.shared.RedisUsage`.
    """

    def __init__(
        self, settings: BudgetSettings, *, clock: Callable[[], float] = time.monotonic, store: UsageStore | None = None
    ) -> None:
        self.settings = settings
        self.store = store or LocalUsage(settings.max_clients, clock)

    def check(self, client: str) -> BudgetState:
        """Whether ``client`` may send another request now.

        Raises:
            StateUnavailableError: the shared store did not answer.
        """
        s = self.settings
        if s.tokens is None and s.cost is None:
            return BudgetState(0, 0.0, None, s.window_s)  # unlimited: no round trip to a shared store
        use = self.store.add(client, 0, 0.0, s.window_s)
        refused = None
        if s.tokens is not None and use.tokens >= s.tokens:
            refused = f"token budget used up: {use.tokens} of {s.tokens} tokens in this window"
        elif s.cost is not None and use.cost >= s.cost:
            refused = f"cost budget used up: {use.cost:.4f} of {s.cost:.4f} in this window"
        return BudgetState(use.tokens, use.cost, refused, use.resets_in_s)

    def used(self, client: str) -> BudgetState:
        """``client``'s use in its window, whether or not a limit is set (nothing refused)."""
        use = self.store.add(client, 0, 0.0, self.settings.window_s)
        return BudgetState(use.tokens, use.cost, None, use.resets_in_s)

    def price(self, model: str, usage: Usage) -> float:
        """The cost of ``usage`` on ``model`` by the price table (0 for a model without a price)."""
        price = self.settings.prices.get(model) or self.settings.prices.get("*")
        if price is None:
            return 0.0
        return (usage.prompt_tokens * price.prompt + usage.completion_tokens * price.completion) / 1000.0

    def charge(self, client: str, model: str, usage: Usage) -> float:
        """Add ``usage`` to ``client``'s window; returns its cost.

        Raises:
            StateUnavailableError: the shared store did not answer.
        """
        cost = self.price(model, usage)
        self.store.add(client, usage.total, cost, self.settings.window_s)
        return cost
