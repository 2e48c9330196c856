"""Playbooks that act on the LLM proxy's alerts: cut off a client, switch to the fallback upstream, quarantine a route.

The format and the runner are the guard's (:mod:`mlwarden.monitor.playbooks`): a playbook matches alerts by
rule name, ``kind:<kind>`` or ``*`` from a minimum severity, has a cooldown, and runs its steps in order, each
audited as ``playbook.<action>`` (actor ``system:guard``, subject ``upstream:NAME``) and counted
(``mlwarden_proxy_playbook_actions_total{action,ok}``). The proxy adds three steps to the guard's ``webhook``
and ``forensics`` (``quarantine`` and ``rollback`` act on a registry version, which the proxy does not serve):

- ``cut_off_client``: the client that dominates the alert's bad records (screen blocks for ``block_rate``,
  refusals for ``refusal_rate``, upstream errors for ``upstream_error_rate``, requests otherwise) is answered
  403 ``client_cut_off`` for ``for_s`` seconds or until an admin lifts it; nobody is cut off unless one client
  has at least ``min_share`` of those records and at least ``min_records`` of them.
- ``switch_upstream``: requests go to the fallback upstream first for ``for_s`` seconds (the cool-down), then
  to the primary again (a primary still failing fires the alert again, after the rule's cooldown).
- ``quarantine_route``: the alert's route (``<endpoint>:<model>``, or ``route`` if given) answers 503
  ``route_quarantined`` for ``for_s`` seconds, or until lifted when ``for_s`` is not set.

The holds live in the proxy's hold store (:mod:`mlwarden.serve.proxy.shared`): shared by the workers with Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Protocol

from pydantic import Field, TypeAdapter

from mlwarden.core.errors import MlwardenError
from mlwarden.monitor.alerts import Alert
from mlwarden.monitor.forensics import ForensicMaterial
from mlwarden.monitor.playbooks import (
    ForensicsStep,
    Playbook,
    PlaybookRunner,
    WebhookStep,
    _Step,
    validate_list,
)

_MAX_HOLD_S = 30 * 86_400.0


class CutOffClientStep(_Step):
    """Answer the alert's dominant client with 403 for ``for_s`` seconds (or until an admin lifts it)."""

    action: Literal["cut_off_client"]
    for_s: float = Field(default=3600.0, gt=0.0, le=_MAX_HOLD_S)
    min_share: float = Field(default=0.5, gt=0.0, le=1.0)
    min_records: int = Field(default=3, ge=1)


class SwitchUpstreamStep(_Step):
    """Send requests to the fallback upstream first for ``for_s`` seconds."""

    action: Literal["switch_upstream"]
    for_s: float = Field(default=300.0, gt=0.0, le=_MAX_HOLD_S)


class QuarantineRouteStep(_Step):
    """Answer a route with 503 for ``for_s`` seconds (``None``: until lifted)."""

    action: Literal["quarantine_route"]
    route: str | None = Field(default=None, min_length=1, max_length=600)
    for_s: float | None = Field(default=None, gt=0.0, le=_MAX_HOLD_S)
    reason: str = Field(default="quarantined by a proxy playbook", min_length=1, max_length=500)


ProxyStep = Annotated[
    CutOffClientStep | SwitchUpstreamStep | QuarantineRouteStep | WebhookStep | ForensicsStep,
    Field(discriminator="action"),
]


class ProxyPlaybook(Playbook):
    """A guard playbook whose steps are the proxy's (see the module docstring)."""

    steps: tuple[ProxyStep, ...] = Field(min_length=1)  # type: ignore[assignment]


_LIST = TypeAdapter(tuple[ProxyPlaybook, ...])


def parse_proxy_playbooks(doc: object, source: str = "<proxy playbooks>") -> tuple[ProxyPlaybook, ...]:
    """Validate a list of proxy playbooks.

    Raises:
        PolicyError: naming the source and the offending field.
    """
    return validate_list(_LIST, doc, source)


class ProxyControl(Protocol):
    """What a proxy playbook may ask of the proxy (implemented by :class:`~.service.ProxyService`)."""

    @property
    def model_ref(self) -> str:
        """``upstream:NAME``."""
        ...

    def cut_off(self, client: str, for_s: float, reason: str, by: str) -> Mapping[str, Any]:
        """Answer ``client`` with 403 for ``for_s`` seconds."""
        ...

    def switch_upstream(self, for_s: float, reason: str, by: str) -> Mapping[str, Any]:
        """Use the fallback upstream first for ``for_s`` seconds."""
        ...

    def quarantine_route(self, route: str, for_s: float | None, reason: str, by: str) -> Mapping[str, Any]:
        """Answer ``route`` with 503 for ``for_s`` seconds (``None``: until lifted)."""
        ...

    def forensic_material(self, window: int) -> ForensicMaterial:
        """Recent traffic statistics and alerts for a forensics bundle."""
        ...

    def quarantine(self, reason: str) -> Mapping[str, Any]:
        """Not available on the proxy (the guard's registry step)."""
        ...

    def rollback(self) -> Mapping[str, Any]:
        """Not available on the proxy (the guard's registry step)."""
        ...


def dominant_client(alert: Alert, step: CutOffClientStep) -> str:
    """The client a ``cut_off_client`` step cuts off, from the alert's evidence.

    Raises:
        MlwardenError: no client has ``min_share`` and ``min_records`` of the records behind the alert.
    """
    clients = alert.evidence.get("clients") or []
    if not clients:
        raise MlwardenError(f"alert {alert.rule} names no client to cut off")
    top = clients[0]
    if top["records"] < step.min_records or top["share"] < step.min_share:
        raise MlwardenError(
            f"no client dominates alert {alert.rule}: the first, {top['client']}, has {top['records']} record(s), "
            f"a share of {top['share']:.2f} (needs {step.min_records} and {step.min_share})"
        )
    return str(top["client"])


class ProxyPlaybookRunner(PlaybookRunner):
    """The guard's runner with the proxy's steps (see the module docstring); ``on_step`` counts each step."""

    def __init__(
        self,
        playbooks: tuple[ProxyPlaybook, ...],
        control: ProxyControl,
        *,
        on_step: Callable[[str, bool], None],
        **kw: Any,
    ) -> None:
        super().__init__(playbooks, control, **kw)
        self.proxy = control
        self._on_step = on_step

    def _run(self, book: Playbook, step: Any, alert: Alert, done: list[Any]) -> Any:
        result = super()._run(book, step, alert, done)
        self._on_step(step.action, result.ok)
        return result

    def _do(self, book: Playbook, step: Any, alert: Alert, done: list[Any]) -> Mapping[str, Any]:
        by = f"playbook {book.name} (alert {alert.rule})"
        reason = f"alert {alert.rule}: {alert.message}"[:500]
        if isinstance(step, CutOffClientStep):
            return self.proxy.cut_off(dominant_client(alert, step), step.for_s, reason, by)
        if isinstance(step, SwitchUpstreamStep):
            return self.proxy.switch_upstream(step.for_s, reason, by)
        if isinstance(step, QuarantineRouteStep):
            route = step.route or alert.evidence.get("route")
            if not route:
                raise MlwardenError(f"alert {alert.rule} names no route to quarantine")
            return self.proxy.quarantine_route(str(route), step.for_s, f"{step.reason} ({reason})"[:500], by)
        return super()._do(book, step, alert, done)
