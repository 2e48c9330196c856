"""The LLM proxy's decisions: who may call, what is screened, what is masked, what is charged and audited.

:class:`ProxyService` is to the proxy what :class:`~mlwarden.serve.service.GuardService` is to a served model,
built from the same parts: registry tokens (:class:`~mlwarden.serve.auth.TokenCache`), per-client token buckets
(:class:`~mlwarden.serve.ratelimit.RateLimiter`), the pluggable prompt screen, the PII/secret detectors and the
decision auditor. Refusals are audited before they are answered; served requests are audited when they end, with
the screen's evidence, what was masked, the leak check, the tokens and the cost.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlwarden.guard.prompt_screen import PromptScreen, ScreenResult, load_screen
from mlwarden.guard.redact import RedactionConfig
from mlwarden.registry.audit.events import AuditEvent
from mlwarden.registry.roles import Permission, Principal
from mlwarden.registry.service import Registry
from mlwarden.serve.auditor import DecisionAuditor
from mlwarden.serve.auth import TokenCache
from mlwarden.serve.policy import GuardPolicy
from mlwarden.serve.proxy.budget import Budgets, Usage
from mlwarden.serve.proxy.control import ProxyControls, ProxyRefusal, unavailable
from mlwarden.serve.proxy.metrics import ProxyMetrics
from mlwarden.serve.proxy.monitor import ProxyMonitor, Record
from mlwarden.serve.proxy.outputs import mask_extras
from mlwarden.serve.proxy.playbooks import ProxyPlaybookRunner
from mlwarden.serve.proxy.shared import HoldStore, LocalHolds, RedisHolds, RedisUsage, connect
from mlwarden.serve.proxy.stream import LeakIndex, StreamMasker
from mlwarden.serve.proxy.upstream import Upstream, UpstreamError
from mlwarden.serve.state import LocalState, RedisState, StateBackend, StateUnavailableError

log = logging.getLogger("mlwarden.proxy")

#: The endpoints proxied, by the path they have under the upstream's base URL.
ENDPOINTS = ("chat/completions", "completions", "embeddings")
_REFUSAL = re.compile(
    r"^\s*(?:i'?m sorry|i am sorry|sorry|i apologi[sz]e)?[,.!]?\s*(?:but )?"
    r"i (?:can(?:no|')t|won'?t|am unable|'m unable|cannot)\b",
    re.I,
)


@dataclass
class Exchange:
    """One proxied request, from its decision to its audit record."""

    caller: Principal
    endpoint: str
    model: str
    body: dict[str, Any]
    stream: bool
    client_wants_usage: bool
    prompt_chars: int
    decision: str
    screen: list[dict[str, Any]]
    leak: LeakIndex | None
    started: float = field(default_factory=time.perf_counter)
    completion_chars: int = 0
    screen_score: float = 0.0
    upstream_s: float | None = None  # time to the upstream's headers (None: not called)
    refused: bool | None = None  # a completion was a refusal (None: no completion seen)

    @property
    def route(self) -> str:
        """``<endpoint>:<model>``: what monitoring, alerts and quarantines are kept by."""
        return f"{self.endpoint}:{self.model}"


def _texts(content: Any) -> list[str]:
    """The text parts of a message's ``content`` (a string, or a list of typed parts)."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return []


def _invalid(message: str) -> ProxyRefusal:
    return ProxyRefusal(400, "invalid_request", message)


class ProxyService:
    """See the module docstring.

    Args:
        registry: the open registry (tokens and the audit log).
        policy: the guard policy (its ``proxy``, ``output`` and ``limits`` sections apply).
        upstream: the upstream API.
        name: the upstream's name in audit subjects and scopes (``upstream:NAME``).
        redis_url: keep budgets and holds in this Redis, shared with other workers (default: the policy's
            ``state.redis_url``; neither: in this process).
        signer: signs the forensics bundles of playbooks (without it a forensics step fails, audited).
        forensics_dir: where those bundles go.

    Raises:
        UsageError: a bad Redis URL or baseline file; StateUnavailableError: Redis does not answer.
    """

    def __init__(
        self,
        registry: Registry,
        policy: GuardPolicy,
        upstream: Upstream,
        *,
        name: str = "openai",
        redis_url: str | None = None,
        signer: Any = None,
        forensics_dir: Path | None = None,
    ) -> None:
        self.registry, self.policy, self.settings, self.upstream, self.name = (
            registry,
            policy,
            policy.proxy,
            upstream,
            name,
        )
        self.metrics = ProxyMetrics()
        self.tokens = TokenCache(registry, policy.limits.token_cache_s, keep_warm=policy.limits.token_keep_warm_s)
        url = redis_url or policy.state.redis_url
        self.redis = connect(url, policy.state) if url else None
        lim = policy.limits
        # Rate buckets as the guard keeps them (serve/state.py): in Redis too when the workers share one.
        self.limiter: StateBackend = (
            RedisState(url, lim.rate_per_s, lim.burst, policy.state, client=self.redis)
            if url and self.redis is not None
            else LocalState(lim.rate_per_s, lim.burst, max_clients=lim.max_clients)
        )
        self.holds: HoldStore = RedisHolds(self.redis, policy.state) if self.redis is not None else LocalHolds()
        store = RedisUsage(self.redis, policy.state) if self.redis is not None else None
        self.budgets = Budgets(self.settings.budget, store=store)
        s = self.settings.screen
        self.screens: list[PromptScreen] = []
        if s.action != "off":
            self.screens.append(load_screen(s.screen, **s.options))
            if s.model is not None:
                from mlwarden.serve.proxy.model_screen import OnnxScreen

                self.screens.append(OnnxScreen(s.model, s.model_threshold))
        self.redaction: RedactionConfig | None = (
            policy.output.redaction() if policy.output.pii_action != "off" else None
        )
        self.auditor = DecisionAuditor(registry.audit(), on_failure=lambda n: self.metrics.audit_dropped.inc(n))
        self.controls = ProxyControls(self)
        self.runner = ProxyPlaybookRunner(
            self.settings.playbooks,
            self.controls,
            on_step=lambda action, ok: self.metrics.playbook_actions.labels(action, str(ok).lower()).inc(),
            audit=lambda event: self.auditor.record(event, now=True),
            signer=signer,
            forensics_dir=forensics_dir or Path("forensics"),
            subject=f"upstream:{name}",
        )
        m = self.settings.monitor
        self.monitor = ProxyMonitor(m, self.metrics, self.runner.handle) if m.enabled else None

    # -- the request ------------------------------------------------------------------------------------------

    def admit(self, caller: Principal, endpoint: str, body: dict[str, Any]) -> Exchange:
        """Authorise, rate-limit, budget-check and screen a request; the :class:`Exchange` says what to send.

        Raises:
            ProxyRefusal: 400 (malformed, or blocked by the screen), 403, 413, 429 (rate or budget).
        """
        subject = f"upstream:{self.name}"
        if not caller.can(Permission.READ) or (caller.scope is not None and caller.scope != subject):
            raise self.reject("forbidden", ProxyRefusal(403, "forbidden", f"{caller.username} may not call {subject}"))
        try:
            self.controls.check(caller.username, None)
            rate = self.limiter.take(caller.username)
        except StateUnavailableError:
            raise self.reject("state_unavailable", unavailable()) from None
        if not rate.allowed:
            retry = str(max(1, round(rate.retry_after_s)))
            raise self.reject("rate", ProxyRefusal(429, "rate_limited", "too many requests", retry_after=retry))
        try:
            budget = self.budgets.check(caller.username)
        except StateUnavailableError:
            raise self.reject("state_unavailable", unavailable()) from None
        if budget.refused is not None:
            retry = str(max(1, round(budget.resets_in_s)))
            raise self.reject("budget", ProxyRefusal(429, "insufficient_quota", budget.refused, retry_after=retry))
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _invalid("'model' is required")
        self.controls.check(None, f"{endpoint}:{model}")
        screened, system = self._screened(endpoint, body)
        chars = sum(len(t) for _, t in screened)
        if chars > self.settings.max_prompt_chars:
            raise self.reject(
                "size", ProxyRefusal(413, "prompt_too_long", f"{chars} characters > {self.settings.max_prompt_chars}")
            )
        self.metrics.prompt_chars.observe(chars)
        exchange = Exchange(
            caller, endpoint, model, dict(body), bool(body.get("stream")), False, chars, "allow", [], None
        )
        self._screen(exchange, screened)
        if self.settings.leak_action != "off" and system:
            exchange.leak = LeakIndex("\n".join(system), self.settings.leak_min_chars)
        if exchange.stream and endpoint != "embeddings":
            given = body.get("stream_options")
            options: dict[str, Any] = given if isinstance(given, dict) else {}
            exchange.client_wants_usage = bool(options.get("include_usage"))
            exchange.body["stream_options"] = {**options, "include_usage": True}  # count tokens from the upstream
        return exchange

    def reject(self, reason: str, error: ProxyRefusal) -> ProxyRefusal:
        """Count a refusal by ``reason``; returns ``error`` to be raised."""
        self.metrics.rejections.labels(reason).inc()
        return error

    def _screened(self, endpoint: str, body: dict[str, Any]) -> tuple[list[tuple[int, str]], list[str]]:
        """``(message index, text)`` pairs to screen (``-1``: the prompt), and the system messages' texts."""
        if endpoint == "chat/completions":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
                raise _invalid("'messages' must be a non-empty list of message objects")
            roles = self.settings.screen.roles
            screened = [
                (i, t) for i, m in enumerate(messages) if m.get("role") in roles for t in _texts(m.get("content"))
            ]
            system = [t for m in messages if m.get("role") in ("system", "developer") for t in _texts(m.get("content"))]
            return screened, system
        if endpoint == "completions":
            prompt = body.get("prompt")
            texts = [prompt] if isinstance(prompt, str) else prompt if isinstance(prompt, list) else None
            if texts is None:
                raise _invalid("'prompt' must be a string or a list of strings")
            return [(-1, t) for t in texts if isinstance(t, str)], []
        return [], []  # embeddings: the input is embedded, not followed as instructions

    def _screen(self, exchange: Exchange, screened: list[tuple[int, str]]) -> None:
        if not self.screens or not screened:
            return
        flagged: set[int] = set()
        best: dict[str, float] = {}
        for index, text in screened:
            results: list[ScreenResult] = [screen.screen(text) for screen in self.screens]
            for r in results:
                best[r.screen] = max(best.get(r.screen, 0.0), r.score)
                if r.flagged:
                    flagged.add(index)
                    exchange.screen.append(
                        {
                            "message": index,
                            "screen": r.screen,
                            "score": r.score,
                            "threshold": r.threshold,
                            "reasons": [
                                {"rule": x.rule, "weight": x.weight, "evidence": x.evidence} for x in r.reasons
                            ],
                        }
                    )
        for name, score in best.items():
            self.metrics.screen_score.labels(name).observe(score)
        exchange.screen_score = max(best.values(), default=0.0)
        if not flagged:
            return
        action = self.settings.screen.action
        if action == "block" or (action == "strip" and exchange.endpoint != "chat/completions"):
            exchange.decision = "block"
            return
        if action == "strip":
            messages = [m for i, m in enumerate(exchange.body["messages"]) if i not in flagged]
            if not any(m.get("role") == "user" for m in messages):
                exchange.decision = "block"
                return
            exchange.body["messages"] = messages
        exchange.decision = action  # flag or strip

    # -- the answer -------------------------------------------------------------------------------------------

    def masker(self, exchange: Exchange) -> StreamMasker:
        """A masker for one completion text of ``exchange``."""
        mask_leaks = self.settings.leak_action in ("mask", "block")
        return StreamMasker(self.redaction, exchange.leak, mask_leaks=mask_leaks, tail=self.settings.stream_tail_chars)

    def filter_body(self, exchange: Exchange, doc: dict[str, Any]) -> tuple[list[StreamMasker], bool]:
        """Mask a whole (non-streamed) answer in place; returns the maskers and whether a leak must block it.

        The content, tool-call arguments and logprob tokens of every choice are masked (:mod:`.outputs`).
        """
        maskers: list[StreamMasker] = []
        chat = exchange.endpoint == "chat/completions"
        for choice in doc.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            holder, key = (choice.get("message"), "content") if chat else (choice, "text")
            if not isinstance(holder, dict):
                continue
            self.count_refusal(exchange, holder.get(key), holder.get("refusal"))
            if isinstance(holder.get(key), str):
                masker = self.masker(exchange)
                text = holder[key]
                exchange.completion_chars += len(text)
                holder[key] = masker.feed(text) + masker.flush()
                maskers.append(masker)
            maskers += mask_extras(chat, choice, lambda: self.masker(exchange))
        blocked = self.settings.leak_action == "block" and any(m.leaked_chars for m in maskers)
        return maskers, blocked

    def count_refusal(self, exchange: Exchange, content: Any, refusal: Any = None) -> None:
        """Count a completion, and a refusal if it is one."""
        self.metrics.completions.inc()
        refused = bool(refusal or (isinstance(content, str) and _REFUSAL.match(content[:200])))
        if refused:
            self.metrics.refusals.inc()
        exchange.refused = bool(exchange.refused) or refused

    def finish_blocks(self, exchange: Exchange, maskers: list[StreamMasker]) -> bool:
        """Whether :meth:`finish` may wait (a Redis round trip for the budget, a flag written before it returns).

        When it cannot, the event loop runs it itself: handing a few hundred microseconds of work to a pool
        thread cost the loop a hand-over of the interpreter lock per request.
        """
        leaked = any(m.leaked_chars for m in maskers)
        return self.redis is not None or exchange.decision != "allow" or leaked

    def finish(self, exchange: Exchange, usage: Usage, maskers: list[StreamMasker], error: str | None = None) -> None:
        """Charge the budget, count, and audit the served request (queued: the answer is already out)."""
        try:
            cost = self.budgets.charge(exchange.caller.username, exchange.model, usage)
        except StateUnavailableError as exc:  # the answer is out: count and audit it, never fail the request now
            self.metrics.state_errors.inc()
            log.error("proxy: budget of %s not charged: %s", exchange.caller.username, exc)
            cost = self.budgets.price(exchange.model, usage)
        self._observe(exchange, blocked=False, error=error is not None)
        self.metrics.tokens.labels("prompt", str(usage.estimated).lower()).inc(usage.prompt_tokens)
        self.metrics.tokens.labels("completion", str(usage.estimated).lower()).inc(usage.completion_tokens)
        masked = [m for masker in maskers for m in masker.matches]
        for m in masked:
            self.metrics.masked.labels(m.detector).inc()
        leaked = sum(m.leaked_chars for m in maskers)
        if leaked:
            self.metrics.leaks.inc()
        decision = exchange.decision if not leaked or exchange.decision != "allow" else "flag"
        self.metrics.requests.labels(exchange.endpoint, decision).inc()
        details = self._details(exchange) | {
            "usage": {
                "prompt": usage.prompt_tokens,
                "completion": usage.completion_tokens,
                "estimated": usage.estimated,
            },
            "cost": round(cost, 6),
            "masked": [{"detector": m.detector, "evidence": m.evidence_masked} for m in masked[:50]],
            "system_prompt_leak_chars": leaked,
            "seconds": round(time.perf_counter() - exchange.started, 4),
        }
        if error is not None:
            details["upstream_error"] = error
        now = decision != "allow"  # flags are written before returning, like the guard's
        self.auditor.record(self._event(exchange, decision, True, details), now=now)

    def refuse(self, exchange: Exchange | None, caller: Principal, endpoint: str, error: UpstreamError) -> None:
        """Audit a refused request at once (a DB write: the caller runs it off the event loop)."""
        if isinstance(error, ProxyRefusal) and exchange is not None and exchange.decision == "block":
            decision = "block"
        else:
            decision = "error" if not isinstance(error, ProxyRefusal) else "refuse"
        if exchange is not None:
            self._observe(exchange, blocked=decision == "block", error=decision == "error")
            self.metrics.requests.labels(endpoint, decision).inc()
            details = self._details(exchange)
            event = self._event(exchange, decision, False, details | {"code": error.code}, reason=str(error))
        else:
            self.metrics.requests.labels(endpoint, decision).inc()
            event = AuditEvent(
                caller.username,
                f"proxy.{decision}",
                f"upstream:{self.name}",
                False,
                str(error)[:500],
                details={"endpoint": endpoint, "code": error.code},
            )
        self.auditor.record(event, now=True)

    def _details(self, exchange: Exchange) -> dict[str, Any]:
        return {
            "endpoint": exchange.endpoint,
            "model": exchange.model,
            "stream": exchange.stream,
            "prompt_chars": exchange.prompt_chars,
            "screen": exchange.screen[:20],
        }

    def _event(
        self, exchange: Exchange, decision: str, allowed: bool, details: dict[str, Any], reason: str = ""
    ) -> AuditEvent:
        subject = f"upstream:{self.name}/{exchange.model}"[:512]
        return AuditEvent(
            exchange.caller.username, f"proxy.{decision}", subject, allowed, reason[:500], details=details
        )

    def _observe(self, exchange: Exchange, *, blocked: bool, error: bool) -> None:
        """Hand the request's record to the monitor (a non-blocking put; see :mod:`.monitor`)."""
        if self.monitor is None:
            return
        self.monitor.record(
            Record(
                exchange.endpoint,
                exchange.model,
                exchange.caller.username,
                exchange.prompt_chars,
                exchange.screen_score,
                blocked,
                None if blocked or error else exchange.refused,
                error,
                exchange.upstream_s,
                time.time(),
            )
        )

    def extra_metrics(self) -> bytes:
        """Series kept outside :attr:`metrics` (none: the proxy's monitor counts into the same registry)."""
        return b""

    async def close(self) -> None:
        """Close the upstream pool and write pending audit events."""
        await self.upstream.close()
        self.shutdown()

    def shutdown(self) -> None:
        """Stop the monitor, write pending audit events, drop the Redis connection."""
        if self.monitor is not None:
            self.monitor.stop()
        self.tokens.close()
        self.auditor.close()
        if self.redis is not None:
            self.redis.close()
