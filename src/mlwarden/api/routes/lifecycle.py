"""Lifecycle actions on a version: scan, approve, deploy, quarantine, release, and rolling an alias back.

Each endpoint is one call to the service, which checks the caller's role, the transition and the gate, changes
the state and writes the audit entry in one transaction; a refusal comes back as 403 or 409 naming the reason
(for a gate: every failed rule).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from mlwarden.api.deps import Actor, RegistryDep
from mlwarden.api.routes import errors
from mlwarden.api.routes.models import Alias, Name, Version
from mlwarden.api.schemas import CommentRequest, DeployRequest, QuarantineRequest, ScanRequest, VersionOut

router = APIRouter(prefix="/v1/models/{name}", tags=["lifecycle"])
_REFUSALS = errors(401, 403, 404, 409, 422, 503)


@router.post("/versions/{version}/scan", response_model=VersionOut, responses=_REFUSALS, summary="Scan a version")
def scan(
    name: Name,
    version: Version,
    registry: RegistryDep,
    actor: Actor,
    body: Annotated[ScanRequest | None, Body()] = None,
) -> VersionOut:
    """Scan the stored bytes (static and/or dynamic analysis) and attach the report; received -> scanned.

    This runs the scanners synchronously: allow minutes for a large model with dynamic analysis.
    """
    request = body or ScanRequest()
    return VersionOut.of(registry.scan(actor, f"{name}:{version}", modes=tuple(request.modes)))


@router.post("/versions/{version}/approve", response_model=VersionOut, responses=_REFUSALS, summary="Approve a version")
def approve(
    name: Name,
    version: Version,
    registry: RegistryDep,
    actor: Actor,
    body: Annotated[CommentRequest | None, Body()] = None,
) -> VersionOut:
    """Pass the approve gate; scanned -> approved. Refused to the version's submitter (separation of duties)."""
    comment = body.comment if body else ""
    return VersionOut.of(registry.approve(actor, f"{name}:{version}", comment=comment))


@router.post("/versions/{version}/deploy", response_model=VersionOut, responses=_REFUSALS, summary="Deploy a version")
def deploy(name: Name, version: Version, body: DeployRequest, registry: RegistryDep, actor: Actor) -> VersionOut:
    """Pass the deploy gate (fresh digest check) and point ``alias`` at the version; approved -> deployed."""
    return VersionOut.of(registry.deploy(actor, f"{name}:{version}", body.alias))


@router.post(
    "/versions/{version}/quarantine",
    response_model=VersionOut,
    responses=_REFUSALS,
    summary="Quarantine a version",
)
def quarantine(
    name: Name, version: Version, body: QuarantineRequest, registry: RegistryDep, actor: Actor
) -> VersionOut:
    """Take a version out of service: it cannot be deployed until released."""
    return VersionOut.of(registry.quarantine(actor, f"{name}:{version}", body.reason))


@router.post(
    "/versions/{version}/release", response_model=VersionOut, responses=_REFUSALS, summary="Release a quarantine"
)
def release(
    name: Name,
    version: Version,
    registry: RegistryDep,
    actor: Actor,
    body: Annotated[CommentRequest | None, Body()] = None,
) -> VersionOut:
    """Release a quarantined version after passing the approve gate again; quarantined -> approved."""
    comment = body.comment if body else ""
    return VersionOut.of(registry.release(actor, f"{name}:{version}", comment=comment))


@router.post("/aliases/{alias}/rollback", response_model=VersionOut, responses=_REFUSALS, summary="Roll an alias back")
def rollback(name: Name, alias: Alias, registry: RegistryDep, actor: Actor) -> VersionOut:
    """Move the alias to the last approved version it pointed at; returns that version (the new target)."""
    return VersionOut.of(registry.rollback(actor, name, alias))
