"""The per-model guard policy: which checks run on a served model, with what thresholds and actions.

One YAML file per served model (``mlwarden serve --policy FILE``); every section is optional and defaults
to the safe choice — block out-of-range inputs, prompt injections and extraction, flag adversarial and
out-of-distribution inputs, mask PII in outputs, round scores. The file is validated strictly: an unknown
key or an out-of-range value is refused with the field's path, never ignored. See ``docs/guard.md``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mlwarden.core.errors import PolicyError, UsageError
from mlwarden.core.yamlfile import load_config_yaml
from mlwarden.guard.extraction import ExtractionConfig
from mlwarden.guard.pii import PiiConfig
from mlwarden.guard.redact import OutputLimits, RedactionConfig
from mlwarden.monitor.playbooks import Playbook
from mlwarden.monitor.runtime import MonitorConfig
from mlwarden.serve.calibration import AdversarialSettings
from mlwarden.serve.proxy.settings import ProxySettings
from mlwarden.serve.state import StateSettings

#: The ``format`` key a guard policy file carries.
POLICY_FORMAT = "mlwarden.guard-policy/1"
#: Largest policy file read.
MAX_POLICY_BYTES = 1024 * 1024

Action3 = Literal["off", "flag", "block"]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputSettings(_Section):
    """Input validation against the model's signature and the baseline captured at approval.

    Attributes:
        max_rows: most rows (or texts) in one request.
        max_text_chars: longest text accepted (text models).
        range_action: what a value outside the baseline's range (widened by ``range_margin``) does.
        range_margin: widening of each feature's ``[min, max]`` as a fraction of its width.
        ood_action: what a row whose Mahalanobis distance exceeds the baseline's threshold does.
        require_baseline: refuse to serve a tabular model without a baseline attachment (fail closed: without
            it there are no ranges, no OOD score, no calibrated adversarial thresholds and no drift tests).
    """

    max_rows: int = Field(default=64, ge=1, le=10_000)
    max_text_chars: int = Field(default=20_000, ge=1, le=10_000_000)
    range_action: Action3 = "block"
    range_margin: float = Field(default=0.25, ge=0.0, le=100.0)
    ood_action: Action3 = "flag"
    require_baseline: bool = True


class PromptSettings(_Section):
    """The prompt-injection / jailbreak screen of text models.

    Attributes:
        action: what a flagged text does.
        screen: a registered screen name (``heuristic``) or ``module:factory``.
        options: keyword options of the screen's factory.
    """

    action: Action3 = "block"
    screen: str = "heuristic"
    options: dict[str, Any] = Field(default_factory=dict)


class OutputSettings(_Section):
    """Output filtering: PII and secrets, and leakage reduction of scores.

    Attributes:
        pii_action: ``mask`` replaces detected PII and secrets; ``block`` withholds the whole response.
        pii_detectors: detector ids to run (``None``: all registered detectors).
        pii_min_confidence: matches below this confidence are ignored.
        decimals: digits kept in scores (``None``: no rounding).
        top_k: classes returned per row (``None``: all).
        expose_evidence: return the guard's check details to the client (off: they go to the audit log only,
            so an attacker cannot tune inputs against the detectors' scores).
    """

    pii_action: Literal["off", "mask", "block"] = "mask"
    pii_detectors: tuple[str, ...] | None = None
    pii_min_confidence: float = Field(default=0.5, ge=0.0, le=1.0)
    decimals: int | None = Field(default=2, ge=0, le=15)
    top_k: int | None = Field(default=None, ge=1)
    expose_evidence: bool = False

    def redaction(self) -> RedactionConfig:
        """The :class:`RedactionConfig` these settings mean."""
        pii = PiiConfig(detectors=self.pii_detectors, min_confidence=self.pii_min_confidence)
        return RedactionConfig(pii=pii)

    def limits(self) -> OutputLimits:
        """The :class:`OutputLimits` these settings mean."""
        return OutputLimits(decimals=self.decimals, top_k=self.top_k)


class ExtractionSettings(_Section):
    """Per-client reconnaissance and extraction detection (PRADA, query rate, coverage).

    Attributes:
        action: ``enforce`` throttles (429) or blocks (403) as the detector decides; ``flag`` only records.
        config: :class:`~mlwarden.guard.extraction.ExtractionConfig` fields (e.g. ``delta``, which should be
            tuned per model: benign query streams of some models are less normal than others).
    """

    action: Literal["off", "flag", "enforce"] = "enforce"
    config: dict[str, Any] = Field(default_factory=dict)

    def extraction_config(self) -> ExtractionConfig:
        """The detector configuration (raises :class:`UsageError` on a bad value)."""
        try:
            return ExtractionConfig(**self.config)
        except TypeError as exc:
            raise UsageError(f"extraction.config: {exc}") from None


class LimitSettings(_Section):
    """Resource and abuse limits of the service.

    Attributes:
        max_body_bytes: largest request body (413 beyond it; counted while reading, not trusted from a header).
        rate_per_s / burst: per-client token bucket (429 with ``Retry-After`` when empty).
        max_clients: clients whose rate state is kept (least recently seen evicted).
        token_cache_s: how long an authenticated token is trusted after the registry last confirmed it (a
            revocation takes effect within this time); a background sweep confirms the tokens in use.
        token_keep_warm_s: how long after a client's last request its token is still confirmed in the
            background, so that a client coming back after a pause is answered from memory.
        require_signature: refuse to serve a version whose signature does not verify with a deploy-trusted key.
        records_kept: recent requests kept in memory for forensics bundles.
    """

    max_body_bytes: int = Field(default=1024 * 1024, ge=256, le=1024 * 1024 * 1024)
    rate_per_s: float = Field(default=100.0, gt=0)
    burst: int = Field(default=200, ge=1)
    max_clients: int = Field(default=10_000, ge=1)
    token_cache_s: float = Field(default=30.0, ge=0.0, le=3600.0)
    token_keep_warm_s: float = Field(default=900.0, ge=0.0, le=86400.0)
    require_signature: bool = True
    records_kept: int = Field(default=1000, ge=0, le=1_000_000)


class ConnectionSettings(_Section):
    """Limits of the listening socket, against slowloris and connection floods (``serve/connections.py``).

    Found by a security review: about 20,000 connections holding partial headers made ``/healthz`` fail for 15 s.

    Attributes:
        max_connections: open connections at most; a new one beyond it is closed at accept. uvicorn's
            ``limit_concurrency`` is set one above, so it bounds requests in flight without refusing requests on
            connections already admitted.
        max_connections_per_ip: open connections from one client address (an IPv6 client: its /64) at most;
            ``0`` turns the cap off — do that behind a reverse proxy, where every client has the proxy's address.
        header_timeout_s: time a request's line and headers may take, counted from the connection's opening or
            from the first byte of a later request on it; beyond it: 408 and the connection closed.
        body_timeout_s: time the body may take after the headers; beyond it: 408 (if no answer started) and closed.
        keep_alive_s: idle time allowed between requests on one connection.
        max_header_bytes: request line and headers at most (431 and closed beyond it).
        backlog: connections the kernel queues before they are accepted.
    """

    max_connections: int = Field(default=1024, ge=1, le=1_000_000)
    max_connections_per_ip: int = Field(default=64, ge=0, le=1_000_000)
    header_timeout_s: float = Field(default=10.0, gt=0.0, le=3600.0)
    body_timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    keep_alive_s: int = Field(default=5, ge=1, le=3600)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    backlog: int = Field(default=1024, ge=1, le=65_535)


class GuardPolicy(_Section):
    """Everything the guard does for one served model (see the module docstring)."""

    format: Literal["mlwarden.guard-policy/1"] = "mlwarden.guard-policy/1"
    model: str | None = None
    input: InputSettings = Field(default_factory=InputSettings)
    adversarial: AdversarialSettings = Field(default_factory=AdversarialSettings)
    prompt: PromptSettings = Field(default_factory=PromptSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    extraction: ExtractionSettings = Field(default_factory=ExtractionSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    connections: ConnectionSettings = Field(default_factory=ConnectionSettings)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    playbooks: tuple[Playbook, ...] = ()
    proxy: ProxySettings = Field(default_factory=ProxySettings)  # mlwarden serve --upstream (docs/llm-proxy.md)
    state: StateSettings = Field(default_factory=StateSettings)  # shared per-client state (docs/guard.md)

    @field_validator("extraction")
    @classmethod
    def _extraction_valid(cls, value: ExtractionSettings) -> ExtractionSettings:
        try:
            value.extraction_config()
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        return value

    def summary(self) -> dict[str, Any]:
        """The policy as JSON-able data (for forensics bundles and the service's info endpoint)."""
        return self.model_dump(mode="json")


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        parts.append(f"{where}: {error['msg']}")
    more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return "; ".join(parts) + more


def parse_guard_policy(doc: object, source: str = "<policy>") -> GuardPolicy:
    """Validate an already-parsed policy document.

    Raises:
        PolicyError: naming the source and each offending field.
    """
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise PolicyError(f"guard policy {source}: the top level must be a mapping, got {type(doc).__name__}")
    try:
        return GuardPolicy.model_validate(doc)
    except ValidationError as exc:
        raise PolicyError(f"guard policy {source}: {_describe(exc)}") from None


def load_guard_policy(path: str | os.PathLike[str] | None) -> GuardPolicy:
    """Read a guard policy YAML file (``None``: the defaults).

    Raises:
        PolicyError: the file is missing, too large, not YAML, or invalid (the message names the field).
    """
    if path is None:
        return GuardPolicy()
    source = Path(path)
    try:
        size = source.stat().st_size
        if size > MAX_POLICY_BYTES:
            raise PolicyError(f"guard policy {source}: {size} bytes is larger than the {MAX_POLICY_BYTES} limit")
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"guard policy {source}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise PolicyError(f"guard policy {source}: not UTF-8 text") from None
    try:
        doc = load_config_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PolicyError(f"guard policy {source}: not valid YAML{where}") from None
    return parse_guard_policy(doc, str(source))
