"""One predict request, from the authenticated caller to the JSON reply, with every decision audited.

The order is fixed and each step can end the request: scope (403) → rate (429) → shape against the served
version's signature (422) → input checks (403 when blocked) → model → per-client extraction check (429/403,
the answer withheld) → output filtering (masking, or 403 when PII blocks) → monitor, audit, reply. A refused
request is audited like an allowed one; blocked and flagged ones before the reply is sent. A refused client gets
a stable code (guard decisions add a ``reason``, see :data:`REFUSALS`) and a generic message; the evidence behind
it goes to the audit log only.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag
from pydantic_core import PydanticCustomError

from mlwarden.core.errors import MlwardenError
from mlwarden.monitor.alerts import Alert
from mlwarden.registry.audit.events import AuditEvent
from mlwarden.registry.roles import Principal
from mlwarden.serve.auditor import AuditBacklog
from mlwarden.serve.auth import may_predict
from mlwarden.serve.checks import CheckResult, Decision, decide
from mlwarden.serve.state import StateUnavailableError

if TYPE_CHECKING:
    from mlwarden.serve.deployment import Deployment
    from mlwarden.serve.service import GuardService

log = logging.getLogger("mlwarden.serve")


def _strict_number(value: Any) -> float:
    """A feature value: a JSON number and nothing else, finite.

    Found by a security review: lax parsing accepted ``"0.5"``, ``"1_000"`` and ``true`` as numbers, so what the
    guard checked was not what the client sent.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("strict_number", "must be a JSON number (not a string, boolean or null)")
    try:
        number = float(value)
    except OverflowError:
        raise PydanticCustomError("finite_number", "must be a finite number (too large)") from None
    if not math.isfinite(number):
        raise PydanticCustomError("finite_number", "must be a finite number (NaN and Infinity are refused)")
    return number


#: A feature value: strict (see :func:`_strict_number`), finite.
FiniteFloat = Annotated[float, BeforeValidator(_strict_number), Field(allow_inf_nan=False)]


def _input_kind(value: Any) -> str:
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return "texts"
    return "rows"


#: ``inputs``: rows of numbers or texts; errors are located as ``inputs.rows.I.J`` or ``inputs.texts.I``.
Inputs = Annotated[
    Annotated[list[list[FiniteFloat]], Field(min_length=1), Tag("rows")]
    | Annotated[list[str], Field(min_length=1), Tag("texts")],
    Discriminator(_input_kind),
]
#: Inputs kept per forensics record (a request of many rows is summarised).
MAX_RECORD_ROWS = 16


class PredictRequest(BaseModel):
    """A predict request: ``inputs`` (rows of numbers, or texts) or ``instances`` (rows by feature name)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"inputs": [[0.1, 2.0, 3.5]]}]})

    inputs: Inputs | None = Field(
        default=None, description="Tabular rows (JSON numbers in the model's feature order) or texts."
    )
    instances: list[dict[str, FiniteFloat]] | None = Field(
        default=None,
        min_length=1,
        description="Tabular rows as {feature name: JSON number} (names from the model's baseline).",
    )


class PredictResponse(BaseModel):
    """A served answer."""

    model: str
    version: int
    request_id: str
    decision: str = Field(description="allowed, or flagged (served, recorded for review)")
    predictions: list[dict[str, Any]]
    checks: list[dict[str, Any]] | None = Field(
        default=None, description="Check details, when the policy exposes them."
    )


@dataclass(frozen=True, slots=True)
class Reply:
    """What the HTTP layer sends: status, JSON body, headers — and the audit event to write first.

    ``audit`` is set when the decision must be in the log before the reply leaves (blocks, flags, scope
    refusals); :func:`settle` writes it, off the event loop when served over HTTP. ``audit_required``: the reply
    must not be sent unless that write succeeded (an answer; a refusal is sent either way).
    """

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    audit: AuditEvent | None = None
    audit_required: bool = False


def settle(service: GuardService, reply: Reply) -> Reply:
    """Write the reply's pending audit event; an answer whose event cannot be written becomes a 503."""
    if reply.audit is None:
        return reply
    try:
        service.audit(reply.audit, now=True)
    except AuditBacklog as exc:
        return _unaudited(service, reply, exc)
    return Reply(reply.status, reply.body, reply.headers)


async def settle_async(service: GuardService, reply: Reply) -> Reply:
    """:func:`settle` for the event loop: the monitor process confirms the write to the loop itself.

    With the monitor in a process of its own, waiting in a pool thread cost four handovers of the interpreter lock
    per blocked or flagged request (to the pool thread, the sender, the receiver, back to the loop), each up to the
    switch interval while the loop was busy with other requests: those requests were the guard's p99. Here the
    loop awaits a future the receiver resolves. In ``thread`` mode the write is a database call: a pool thread.
    """
    if reply.audit is None:
        return reply
    link = service.link
    if link is None:
        from fastapi.concurrency import run_in_threadpool

        return await run_in_threadpool(settle, service, reply)
    try:
        await link.record_now(reply.audit)
    except AuditBacklog as exc:
        return _unaudited(service, reply, exc)
    return Reply(reply.status, reply.body, reply.headers)


def _unaudited(service: GuardService, reply: Reply, exc: AuditBacklog) -> Reply:
    """The reply whose pending audit event could not be written: a 503 for an answer; a refusal stands."""
    request_id = reply.body.get("request_id") or reply.body.get("error", {}).get("request_id", "")
    log.error("could not audit request %s: %s", request_id, exc)
    if reply.audit_required:  # fail closed: no answer leaves without its audit record
        service.metrics.rejections.labels(service.name, "audit").inc()
        return _error(503, "audit_unavailable", "the audit log is unavailable; try again later", request_id)
    service.metrics.audit_dropped.labels(service.name).inc()
    return Reply(reply.status, reply.body, reply.headers)


#: What a client is told when a check refuses its request: a stable reason code and a generic message. The
#: evidence (scores, thresholds, distances, detector names) goes to the audit log only: a client that saw it could
#: tune its inputs against the detectors (found by a security review: ``prada: Shapiro-Wilk W=... < delta=...``
#: and Mahalanobis distances reached clients).
REFUSALS: dict[str, tuple[str, str]] = {
    "range": ("out_of_range", "an input value is outside the baseline range"),
    "ood": ("out_of_distribution", "the input is unlike the data this model was approved for"),
    "adversarial": ("adversarial_suspected", "the input was refused as a likely adversarial example"),
    "prompt": ("prompt_injection", "the text was refused as a likely prompt injection or jailbreak"),
    "output_pii": ("output_withheld", "the answer was withheld: it contained personal data or secrets"),
    "extraction": ("extraction_suspected", "the query pattern of this client suggests model extraction"),
}
#: The reason of a block no check claimed (a policy the table above does not know yet).
GENERIC_REFUSAL = ("blocked", "the request was refused by the guard policy")


class _Refused(Exception):  # noqa: N818 - a refusal, turned into a reply
    """A refusal: ``message`` goes to the client, ``detail`` (default: the message) to the audit log."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        reason: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}
        self.reason = reason
        self.detail = detail if detail is not None else message


def _error(
    status: int,
    code: str,
    message: str,
    request_id: str,
    headers: dict[str, str] | None = None,
    reason: str | None = None,
) -> Reply:
    error: dict[str, Any] = {"code": code, "message": message, "request_id": request_id}
    if reason is not None:
        error["reason"] = reason
    return Reply(status, {"error": error}, headers or {})


def _rows(deployment: Deployment, payload: Mapping[str, Any], max_rows: int, max_chars: int) -> np.ndarray | list[str]:
    servable = deployment.servable
    inputs, instances = payload.get("inputs"), payload.get("instances")
    if (inputs is None) == (instances is None):
        raise _Refused(422, "invalid_input", "send exactly one of 'inputs' or 'instances'")
    count = len(inputs if inputs is not None else instances)  # type: ignore[arg-type]
    if count > max_rows:
        raise _Refused(413, "payload_too_large", f"{count} rows; at most {max_rows} per request")
    if servable.input_kind == "text":
        if instances is not None or not all(isinstance(t, str) for t in inputs):  # type: ignore[union-attr]
            raise _Refused(422, "invalid_input", "this model takes texts: {'inputs': ['...', ...]}")
        texts: list[str] = list(inputs)  # type: ignore[arg-type]
        longest = max(len(t) for t in texts)
        if longest > max_chars:
            raise _Refused(413, "payload_too_large", f"a text of {longest} characters; at most {max_chars}")
        return texts
    if instances is not None:
        names = servable.feature_names or (deployment.baseline.feature_names if deployment.baseline else None)
        if not names:
            raise _Refused(422, "invalid_input", "this model has no feature names; send 'inputs' rows")
        for i, row in enumerate(instances):
            if set(row) != set(names):
                missing, extra = sorted(set(names) - set(row)), sorted(set(row) - set(names))
                raise _Refused(422, "invalid_input", f"instances.{i}: missing {missing}, unknown {extra}")
        return np.array([[row[n] for n in names] for row in instances], dtype=np.float64)
    if any(isinstance(r, str) for r in inputs):  # type: ignore[union-attr]
        raise _Refused(422, "invalid_input", "this model takes rows of numbers, not texts")
    width = servable.n_features
    for i, row in enumerate(inputs):  # type: ignore[arg-type]
        if width is not None and len(row) != width:
            raise _Refused(422, "invalid_input", f"inputs.{i}: {len(row)} values; the model takes {width}")
    rows = np.asarray(inputs, dtype=np.float64)
    if rows.ndim != 2:
        raise _Refused(422, "invalid_input", "inputs rows must all have the same length")
    return rows


def _event(
    service: GuardService,
    principal: Principal,
    deployment: Deployment,
    request_id: str,
    decision: str,
    checks: list[CheckResult],
    rows: int,
    reason: str = "",
) -> AuditEvent:
    notable = [c.to_dict() for c in checks if c.outcome != "pass"]
    details: dict[str, Any] = {"request_id": request_id, "decision": decision, "rows": rows}
    if notable:
        details["checks"] = notable
    if principal.token_id is not None:
        details["token_id"] = principal.token_id
    return AuditEvent(
        actor=principal.username,
        action="guard.predict",
        subject=f"model:{deployment.info.ref}",
        allowed=decision in ("allowed", "flagged"),
        reason=reason,
        digests={"artifact": deployment.info.digest},
        details=details,
    )


def handle_predict(  # noqa: C901 - the request path, check by check, in the order they run
    service: GuardService, principal: Principal, name: str, payload: Mapping[str, Any]
) -> Reply:
    """Run one request through the guard (see the module docstring)."""
    started = time.perf_counter()
    request_id = uuid.uuid4().hex[:16]
    deployment = service.current  # this request is answered by this version, whatever swaps meanwhile
    metrics, model = service.metrics, service.name
    if name != model:
        return _error(404, "not_found", f"this service serves {model!r}, not {name!r}", request_id)
    if service.halted:
        metrics.rejections.labels(model, "halted").inc()
        log.warning("request %s refused: not serving: %s", request_id, service.halted)
        return _error(503, "unavailable", "the model is not being served right now", request_id, {"Retry-After": "30"})
    checks: list[CheckResult] = []
    n_rows = 0
    try:
        why = may_predict(principal, f"model:{deployment.info.ref}")
        if why:
            raise _Refused(403, "forbidden", "this token may not call this model", detail=why)
        rate = service.state.take(principal.username)
        if not rate.allowed:
            retry = str(max(1, int(rate.retry_after_s + 0.999)))
            raise _Refused(
                429, "rate_limited", "too many requests for this client", {"Retry-After": retry}, reason="rate_limited"
            )
        limits = service.policy.input
        rows = _rows(deployment, payload, limits.max_rows, limits.max_text_chars)
        n_rows = len(rows)
        checks.extend(deployment.guard.check_input(rows))
        if decide(checks) == "blocked":
            raise _blocked(checks)
        model_started = time.perf_counter()
        try:
            prediction = deployment.servable.predict(rows)
        except Exception as exc:  # noqa: BLE001 - the model's own failure: recorded, never shown to the client
            log.error("model %s failed on request %s: %r", deployment.info.ref, request_id, exc)
            service.monitor.observe(features=None, confidence=None, latency_s=time.perf_counter() - started, error=True)
            raise _Refused(
                500, "model_error", "the model failed; quote the request_id", detail="the model failed (service log)"
            ) from None
        metrics.child(metrics.model_seconds, model).observe(time.perf_counter() - model_started)
        if isinstance(rows, np.ndarray):
            client = deployment.guard.check_client(
                principal.username, rows, prediction, time.time(), service.state, deployment.info.digest
            )
            if client is not None:
                checks.append(client)
                if client.outcome in ("throttle", "block"):
                    service.alert(_extraction_alert(principal, client))
                    status = 429 if client.outcome == "throttle" else 403
                    reason, message = REFUSALS["extraction"]
                    raise _Refused(status, reason, message, reason=reason, detail=client.detail)
        outputs, output_checks = deployment.guard.filter_output(prediction)
        checks.extend(output_checks)
        if decide(checks) == "blocked":
            raise _blocked(checks, prefix="the response was withheld: ")
    except _Refused as refused:
        decision: Decision = "throttled" if refused.status == 429 else "blocked"
        if refused.status in (404, 413, 422):
            decision = "blocked"
        return _finish_refusal(service, principal, deployment, request_id, refused, checks, n_rows, started, decision)
    except StateUnavailableError as exc:  # the shared state did not answer: fail closed, never decide without it
        metrics.rejections.labels(model, "state_unavailable").inc()
        log.error("request %s refused: %s", request_id, exc)
        return _error(
            503,
            "state_unavailable",
            "the guard's state store is unavailable; try again later",
            request_id,
            {"Retry-After": "5"},
        )
    except MlwardenError as exc:  # e.g. non-finite scores, a detector's limit: refuse, never serve unchecked
        invalid = _Refused(422, "invalid_input", "the input could not be checked", detail=str(exc))
        return _finish_refusal(service, principal, deployment, request_id, invalid, checks, n_rows, started, "blocked")
    decision = decide(checks)
    elapsed = time.perf_counter() - started
    features = rows if isinstance(rows, np.ndarray) else None
    confidence = None if prediction.scores is None else np.asarray(prediction.scores).max(axis=1).tolist()
    service.monitor.observe(
        features=features, confidence=confidence, latency_s=elapsed, error=False, flagged=decision != "allowed"
    )
    event = _event(service, principal, deployment, request_id, decision, checks, n_rows)
    pending = None
    if decision != "allowed":
        pending = event  # written by settle() before the reply leaves
    else:
        try:
            service.audit(event, now=False)
        except AuditBacklog as exc:  # fail closed: no answer leaves without its audit record
            service.metrics.rejections.labels(model, "audit").inc()
            log.error("request %s refused: %s", request_id, exc)
            return _error(503, "audit_unavailable", "the audit log is unavailable; try again later", request_id)
    _record(service, principal, request_id, decision, rows, outputs)
    _count(service, deployment, decision, checks, elapsed)
    # PredictResponse's shape, built directly (every field is already of its type; validating it cost more than
    # the range check).
    body: dict[str, Any] = {
        "model": model,
        "version": deployment.info.version,
        "request_id": request_id,
        "decision": decision,
        "predictions": outputs,
    }
    if service.policy.output.expose_evidence:
        body["checks"] = [c.to_dict() for c in checks]
    return Reply(200, body, audit=pending, audit_required=True)


def _blocked(checks: list[CheckResult], prefix: str = "") -> _Refused:
    """The refusal of a blocked request: the first blocking check's reason; every blocking check's detail audited."""
    blocking = [c for c in checks if c.outcome in ("block", "throttle")]
    reason, message = REFUSALS.get(blocking[0].check, GENERIC_REFUSAL) if blocking else GENERIC_REFUSAL
    detail = prefix + ("; ".join(c.detail for c in blocking) or "blocked by the guard policy")
    return _Refused(403, "blocked_by_guard", message, reason=reason, detail=detail)


def _finish_refusal(
    service: GuardService,
    principal: Principal,
    deployment: Deployment,
    request_id: str,
    refused: _Refused,
    checks: list[CheckResult],
    n_rows: int,
    started: float,
    decision: Decision,
) -> Reply:
    reason_label = {403: "forbidden", 413: "too_large", 422: "schema", 429: "rate", 500: "model_error"}
    if refused.code in ("blocked_by_guard", "extraction_suspected"):
        service.metrics.child(service.metrics.requests, service.name, str(deployment.info.version), decision).inc()
        latency = time.perf_counter() - started
        service.monitor.observe(features=None, confidence=None, latency_s=latency, error=False, flagged=True)
    else:
        reason = reason_label.get(refused.status, "other")
        service.metrics.child(service.metrics.rejections, service.name, reason).inc()
    for check in checks:
        service.metrics.child(service.metrics.checks, service.name, check.check, check.outcome).inc()
    event = _event(service, principal, deployment, request_id, decision, checks, n_rows, refused.detail)
    # Guard blocks are evidence: written before the reply. Rate and schema refusals are batched (a flood of
    # them must not turn into a flood of synchronous writes).
    _record(service, principal, request_id, decision, None, None, refused.detail)
    reply = _error(refused.status, refused.code, refused.message, request_id, refused.headers, refused.reason)
    if service.policy.output.expose_evidence and checks:  # for testing a policy, never in production
        reply.body["error"]["checks"] = [c.to_dict() for c in checks]
    if refused.code in ("blocked_by_guard", "extraction_suspected", "forbidden"):
        return Reply(reply.status, reply.body, reply.headers, audit=event)  # the refusal stands either way
    try:
        service.audit(event, now=False)
    except AuditBacklog as exc:
        service.metrics.audit_dropped.labels(service.name).inc()
        log.error("could not audit refused request %s: %s", request_id, exc)
    return reply


def _record(
    service: GuardService,
    principal: Principal,
    request_id: str,
    decision: str,
    rows: Any,
    outputs: Any,
    reason: str = "",
) -> None:
    if service.records.maxlen == 0:
        return
    if isinstance(rows, np.ndarray):
        rows = rows[:MAX_RECORD_ROWS].tolist()
    elif isinstance(rows, list):
        rows = [t[:1000] for t in rows[:MAX_RECORD_ROWS]]
    service.records.append(
        {
            "t": time.time(),
            "request_id": request_id,
            "client": principal.username,
            "decision": decision,
            "inputs": rows,
            "outputs": outputs[:MAX_RECORD_ROWS] if outputs else outputs,
            "reason": reason,
        }
    )


def _count(
    service: GuardService, deployment: Deployment, decision: str, checks: list[CheckResult], took: float
) -> None:
    metrics = service.metrics
    metrics.child(metrics.requests, service.name, str(deployment.info.version), decision).inc()
    metrics.child(metrics.latency, service.name).observe(took)
    for check in checks:
        metrics.child(metrics.checks, service.name, check.check, check.outcome).inc()


def _extraction_alert(principal: Principal, check: CheckResult) -> Alert:
    w = check.evidence.get("prada_w")
    return Alert(
        rule="extraction",
        kind="guard",
        severity="critical" if check.outcome == "block" else "warning",
        metric="prada_w" if w is not None else "query_rate",
        value=float(w if w is not None else check.evidence.get("rate_per_s", 0.0)),
        threshold=float(check.evidence.get("delta", 0.0)),
        message=f"client {principal.username}: {check.detail}",
        at=time.time(),
        evidence={"client": principal.username, **dict(check.evidence)},
    )
