"""Declarative incident response: on an alert, run steps — forensics, quarantine, rollback, webhook — audited.

A playbook matches alerts by rule name, by kind (``kind:drift``) or ``*``, from a minimum severity; it then runs
its steps in order, stopping at the first failure unless ``continue_on_error``. Quarantine and rollback go
through the :class:`ServingControl` the service implements (the registry is the source of truth; the service
switches what it serves); the forensics step writes a signed bundle; the webhook step POSTs JSON, signed with
HMAC-SHA256 when a key is configured. Every step, successful or not, becomes an audit event
(``playbook.<action>``, actor ``system:guard``). A failing step never raises to the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from mlwarden.core.errors import MlwardenError, PolicyError
from mlwarden.core.yamlfile import load_config_yaml
from mlwarden.monitor.alerts import SEVERITY_RANK, Alert, Severity
from mlwarden.monitor.forensics import ForensicMaterial, write_bundle
from mlwarden.registry.audit.events import AuditEvent

log = logging.getLogger("mlwarden.monitor")


class _Step(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class QuarantineStep(_Step):
    """Quarantine the served version in the registry."""

    action: Literal["quarantine"]
    reason: str = Field(default="quarantined by a guard playbook", min_length=1, max_length=500)


class RollbackStep(_Step):
    """Move the alias back to the last approved version and serve it (from the warm standby)."""

    action: Literal["rollback"]


class WebhookStep(_Step):
    """POST the alert as JSON; ``secret_env`` names an env var with an HMAC key (``X-Mlwarden-Signature``)."""

    action: Literal["webhook"]
    url: str
    timeout_s: float = Field(default=5.0, gt=0.0, le=60.0)
    retries: int = Field(default=2, ge=0, le=5)
    headers: dict[str, str] = Field(default_factory=dict)
    secret_env: str | None = None

    @field_validator("url")
    @classmethod
    def _http_only(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or len(value) > 2000:
            raise ValueError("must be an http:// or https:// URL")
        return value


class ForensicsStep(_Step):
    """Write a signed forensics bundle with the last ``window`` requests."""

    action: Literal["forensics"]
    window: int = Field(default=200, ge=0, le=100_000)


Step = Annotated[QuarantineStep | RollbackStep | WebhookStep | ForensicsStep, Field(discriminator="action")]


class Playbook(BaseModel):
    """Which alerts it answers and the steps it runs (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    on: tuple[str, ...] = Field(min_length=1)
    min_severity: Severity = "warning"
    steps: tuple[Step, ...] = Field(min_length=1)
    cooldown_s: float = Field(default=300.0, ge=0.0)
    continue_on_error: bool = False

    def matches(self, alert: Alert) -> bool:
        """Whether ``alert`` triggers this playbook."""
        if SEVERITY_RANK.get(alert.severity, 0) < SEVERITY_RANK[self.min_severity]:
            return False
        return any(p == "*" or p == alert.rule or p == f"kind:{alert.kind}" for p in self.on)


_LIST = TypeAdapter(tuple[Playbook, ...])
T = TypeVar("T")


def parse_playbooks(doc: object, source: str = "<playbooks>") -> tuple[Playbook, ...]:
    """Validate playbooks given as a list, or as ``{"playbooks": [...]}``.

    Raises:
        PolicyError: naming the source and the offending field.
    """
    if isinstance(doc, dict) and set(doc) == {"playbooks"}:
        doc = doc["playbooks"]
    return validate_list(_LIST, doc, source)


def validate_list(adapter: TypeAdapter[tuple[T, ...]], doc: object, source: str) -> tuple[T, ...]:
    """``doc`` (a list, or nothing) validated by ``adapter``; the guard's and the proxy's playbooks.

    Raises:
        PolicyError: naming the source and the first offending field.
    """
    try:
        return adapter.validate_python(doc or [])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PolicyError(f"playbooks {source}: {where}: {first['msg']}") from None


def load_playbooks(path: str | os.PathLike[str]) -> tuple[Playbook, ...]:
    """Read playbooks from a YAML file (``on`` stays a key: YAML 1.2 booleans)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        doc = load_config_yaml(text)
    except OSError as exc:
        raise PolicyError(f"playbooks {path}: cannot read it ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - yaml.YAMLError and decoding errors
        raise PolicyError(f"playbooks {path}: not valid YAML ({type(exc).__name__})") from None
    return parse_playbooks(doc, str(path))


class ServingControl(Protocol):
    """What a playbook may ask of the service that serves the model."""

    @property
    def model_ref(self) -> str:
        """``NAME:VERSION`` served now."""
        ...

    def quarantine(self, reason: str) -> Mapping[str, Any]:
        """Quarantine the served version in the registry."""
        ...

    def rollback(self) -> Mapping[str, Any]:
        """Roll the alias back and serve its target; ``{"from": ref, "to": ref, ...}``."""
        ...

    def forensic_material(self, window: int) -> ForensicMaterial:
        """The material of a forensics bundle."""
        ...


@dataclass(frozen=True, slots=True)
class StepResult:
    """One step's outcome."""

    playbook: str
    action: str
    ok: bool
    started_at: float
    duration_s: float
    details: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


class PlaybookRunner:
    """Runs the playbooks matching each alert (one incident at a time; see the module docstring)."""

    def __init__(
        self,
        playbooks: Sequence[Playbook],
        control: ServingControl,
        *,
        audit: Callable[[AuditEvent], None],
        signer: Any,
        forensics_dir: Path,
        clock: Callable[[], float] = time.time,
        opener: Callable[..., Any] = urllib.request.urlopen,
        subject: str | None = None,
    ) -> None:
        self.playbooks = tuple(playbooks)
        self.subject = subject  # the audit events' subject (default: model:<served ref>)
        self.control = control
        self._audit = audit
        self.signer = signer
        self.forensics_dir = forensics_dir
        self._clock = clock
        self._open = opener
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def handle(self, alert: Alert) -> list[StepResult]:
        """Run every matching playbook that is not cooling down; the results of every step run."""
        results: list[StepResult] = []
        with self._lock:
            for book in self.playbooks:
                if not book.matches(alert):
                    continue
                now = self._clock()
                last = self._last.get(book.name)
                if last is not None and now - last < book.cooldown_s:
                    continue
                self._last[book.name] = now
                done: list[StepResult] = []
                for step in book.steps:
                    result = self._run(book, step, alert, done)
                    done.append(result)
                    if not result.ok and not book.continue_on_error:
                        break
                results.extend(done)
        return results

    def _run(self, book: Playbook, step: Any, alert: Alert, done: list[StepResult]) -> StepResult:
        started = self._clock()
        began = time.monotonic()
        subject = self.subject or f"model:{self.control.model_ref}"
        try:
            details = dict(self._do(book, step, alert, done))
            result = StepResult(book.name, step.action, True, started, time.monotonic() - began, details)
        except (MlwardenError, OSError, urllib.error.URLError, ValueError) as exc:
            result = StepResult(book.name, step.action, False, started, time.monotonic() - began, {}, str(exc))
            log.error("playbook %s: %s failed: %s", book.name, step.action, exc)
        alert_doc = alert.to_dict()
        alert_doc["evidence"] = {k: v for k, v in list(alert_doc["evidence"].items())[:20]}
        self._audit(
            AuditEvent(
                actor="system:guard",
                action=f"playbook.{step.action}",
                subject=subject,
                allowed=result.ok,
                reason=result.error or "",
                details={
                    "playbook": book.name,
                    "alert": alert_doc,
                    "step": dict(result.details),
                    "duration_s": round(result.duration_s, 4),
                },
            )
        )
        return result

    def _do(self, book: Playbook, step: Any, alert: Alert, done: list[StepResult]) -> Mapping[str, Any]:
        if isinstance(step, QuarantineStep):
            return self.control.quarantine(f"{step.reason} (alert {alert.rule}: {alert.message})"[:500])
        if isinstance(step, RollbackStep):
            return self.control.rollback()
        if isinstance(step, ForensicsStep):
            path = write_bundle(self.control.forensic_material(step.window), self.forensics_dir, self.signer)
            return {"bundle": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        if not (isinstance(step, WebhookStep)):
            raise RuntimeError("internal invariant broken: isinstance(step, WebhookStep)")
        return self._webhook(book, step, alert, done)

    def _webhook(self, book: Playbook, step: WebhookStep, alert: Alert, done: list[StepResult]) -> Mapping[str, Any]:
        body = json.dumps(
            {
                "model": self.control.model_ref,
                "playbook": book.name,
                "alert": alert.to_dict(),
                "steps": [{"action": r.action, "ok": r.ok, "details": dict(r.details), "error": r.error} for r in done],
            },
            sort_keys=True,
            default=str,
        ).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "mlwarden-guard", **step.headers}
        if step.secret_env:
            key = os.environ.get(step.secret_env)
            if not key:
                raise ValueError(f"webhook secret variable {step.secret_env} is not set")
            headers["X-Mlwarden-Signature"] = "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
        last: Exception | None = None
        for attempt in range(step.retries + 1):
            if attempt:
                time.sleep(min(2.0, 0.2 * 2**attempt))
            # The URL was checked to be http(s) when the playbook was parsed (WebhookStep._http_only).
            request = urllib.request.Request(step.url, data=body, headers=headers, method="POST")  # noqa: S310
            try:
                with self._open(request, timeout=step.timeout_s) as response:
                    status = int(response.status)
                if status < 300:
                    return {"url": step.url, "status": status, "attempts": attempt + 1}
                last = ValueError(f"webhook answered {status}")
            except urllib.error.HTTPError as exc:
                last = ValueError(f"webhook answered {exc.code}")
            except (urllib.error.URLError, OSError) as exc:  # refused, timed out
                last = exc
        raise ValueError(f"webhook {step.url} failed after {step.retries + 1} attempt(s): {last}")
