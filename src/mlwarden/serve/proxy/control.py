"""What playbooks and admins change in a running LLM proxy: cut-off clients, quarantined routes, the upstream switch.

:class:`ProxyControls` implements :class:`~mlwarden.serve.proxy.playbooks.ProxyControl` over the proxy's hold
store (:mod:`mlwarden.serve.proxy.shared`: in memory, or in Redis shared by the workers). Every hold put is
audited by the playbook runner (``playbook.<action>``); every lift by an admin is audited here (``proxy.lift``);
both are counted (``mlwarden_proxy_holds_total{kind,event}``). A cut-off is looked up on every request of the
client; a route quarantine and the upstream switch, read on every request of every client, are read from Redis
at most once a second per worker (:data:`HOLD_CACHE_S`), so they reach every worker within that second.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mlwarden.core.errors import MlwardenError
from mlwarden.monitor.forensics import ForensicMaterial
from mlwarden.registry.audit.events import AuditEvent
from mlwarden.registry.roles import Principal
from mlwarden.serve.proxy.upstream import UpstreamError
from mlwarden.serve.state import StateUnavailableError

if TYPE_CHECKING:
    from mlwarden.serve.proxy.service import ProxyService

#: Seconds a route quarantine or the upstream switch read from Redis is reused by a worker.
HOLD_CACHE_S = 1.0
#: The kinds of holds.
KINDS = ("client", "route", "upstream")


class ProxyRefusal(UpstreamError):  # noqa: N818 - a refusal, answered like an upstream error
    """A request the proxy itself refuses (same OpenAI-shaped answer as an upstream failure)."""


def unavailable() -> ProxyRefusal:
    """The refusal when the shared state store does not answer."""
    return ProxyRefusal(503, "state_unavailable", "the shared state store is unavailable; try again later")


def _until(doc: Mapping[str, Any]) -> str:
    until = doc.get("until")
    if until is None:
        return "until lifted by an admin"
    return f"until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(until))}"


class ProxyControls:
    """See the module docstring."""

    def __init__(self, service: ProxyService) -> None:
        self.service = service
        self.holds = service.holds
        self._hold_cache: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = {}
        self._hold_cache_s = HOLD_CACHE_S if service.redis is not None else 0.0

    def _held(self, kind: str, name: str) -> dict[str, Any] | None:
        if not self._hold_cache_s:
            return self.holds.get(kind, name)
        now = time.monotonic()
        cached = self._hold_cache.get((kind, name))
        if cached is not None and cached[0] > now:
            return cached[1]
        doc = self.holds.get(kind, name)
        if len(self._hold_cache) > 10_000:
            self._hold_cache.clear()
        self._hold_cache[(kind, name)] = (now + self._hold_cache_s, doc)
        return doc

    def check(self, client: str | None, route: str | None) -> None:
        """Refuse a cut-off ``client`` (403) or a quarantined ``route`` (503).

        Raises:
            ProxyRefusal: either; or 503 ``state_unavailable`` when the shared store does not answer a route.
            StateUnavailableError: the shared store did not answer for a client.
        """
        if client is not None and (doc := self.holds.get("client", client)) is not None:
            raise self.service.reject(
                "cut_off",
                ProxyRefusal(
                    403, "client_cut_off", f"{client} is cut off {_until(doc)}: {doc.get('reason', '')}"[:500]
                ),
            )
        if route is not None:
            try:
                doc = self._held("route", route)
            except StateUnavailableError:
                raise self.service.reject("state_unavailable", unavailable()) from None
            if doc is not None:
                message = f"the route {route} is quarantined {_until(doc)}: {doc.get('reason', '')}"[:500]
                raise self.service.reject("quarantined", ProxyRefusal(503, "route_quarantined", message))

    def fallback_first(self) -> bool:
        """Whether a ``switch_upstream`` step is in force (the fallback is tried first)."""
        try:
            return self._held("upstream", "fallback") is not None
        except StateUnavailableError:
            return False  # the primary, as without a switch

    def _hold(self, kind: str, name: str, for_s: float | None, reason: str, by: str) -> dict[str, Any]:
        now = time.time()
        doc = {"reason": reason, "by": by, "since": now, "until": None if for_s is None else now + for_s}
        self.holds.put(kind, name, doc, for_s)
        self._hold_cache.pop((kind, name), None)
        self.service.metrics.holds.labels(kind, "put").inc()
        return {"kind": kind, "name": name, **doc}

    def cut_off(self, client: str, for_s: float, reason: str, by: str) -> Mapping[str, Any]:
        """Answer ``client`` with 403 ``client_cut_off`` for ``for_s`` seconds (a playbook step)."""
        return self._hold("client", client, for_s, reason, by)

    def switch_upstream(self, for_s: float, reason: str, by: str) -> Mapping[str, Any]:
        """Try the fallback upstream first for ``for_s`` seconds (a playbook step).

        Raises:
            MlwardenError: no fallback upstream is configured.
        """
        if not self.service.upstream.has_fallback:
            raise MlwardenError("no fallback upstream is configured (--fallback-upstream)")
        return self._hold("upstream", "fallback", for_s, reason, by) | {"to": self.service.upstream.urls[1]}

    def quarantine_route(self, route: str, for_s: float | None, reason: str, by: str) -> Mapping[str, Any]:
        """Answer ``route`` with 503 ``route_quarantined`` (a playbook step)."""
        return self._hold("route", route, for_s, reason, by)

    def lift(self, kind: str, name: str, caller: Principal) -> dict[str, Any] | None:
        """End a hold (an admin's request), audited; the hold's document, or ``None`` when there was none."""
        doc = self.holds.lift(kind, name)
        self._hold_cache.pop((kind, name), None)
        if doc is not None:
            self.service.metrics.holds.labels(kind, "lifted").inc()
        event = AuditEvent(
            caller.username,
            "proxy.lift",
            f"upstream:{self.service.name}/{kind}:{name}"[:512],
            doc is not None,
            "" if doc is not None else "nothing held",
            details={"kind": kind, "name": name, "hold": doc},
        )
        self.service.auditor.record(event, now=True)
        return doc

    def holds_snapshot(self) -> dict[str, Any]:
        """Every current hold, by kind."""
        return {kind: self.holds.items(kind) for kind in KINDS}

    # -- what playbooks see (ProxyControl) ------------------------------------------------------------------------

    @property
    def model_ref(self) -> str:
        """``upstream:NAME``."""
        return f"upstream:{self.service.name}"

    def quarantine(self, reason: str) -> Mapping[str, Any]:
        """Not a proxy step (it quarantines a registry version): use ``quarantine_route``."""
        raise MlwardenError("the LLM proxy serves no registry version: use quarantine_route")

    def rollback(self) -> Mapping[str, Any]:
        """Not a proxy step: use ``switch_upstream``."""
        raise MlwardenError("the LLM proxy serves no registry version: use switch_upstream")

    def forensic_material(self, window: int) -> ForensicMaterial:
        """The last ``window`` monitor records (no prompt or answer texts), alerts and monitor state."""
        records = self.service.monitor.recent(window) if self.service.monitor is not None else []
        alerts = [a.to_dict() for a in self.service.monitor.recent_alerts()] if self.service.monitor is not None else []
        state = self.service.monitor.snapshot() if self.service.monitor is not None else {}
        return ForensicMaterial(self.model_ref, "", None, self.service.policy.summary(), records, alerts, state)
