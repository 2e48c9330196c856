"""Retirement over HTTP: the same :func:`mlwarden.registry.retire.retire_version` the CLI calls (admin only).

The certificate is signed with the registry's key (``<home>/keys/registry.key``) and written under
``<home>/certificates``; archive mode needs the server to be told where archives go and which custodian key
seals them (``mlwarden api serve --archive-dir DIR --recipient PUB``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from fastapi import APIRouter, Request

from mlwarden.api.deps import Actor, RegistryDep
from mlwarden.api.routes import errors
from mlwarden.api.routes.models import Name, Version
from mlwarden.api.schemas import RetiredItemOut, RetirementOut, RetireRequest, VersionOut
from mlwarden.registry.errors import BadInput

router = APIRouter(prefix="/v1/models/{name}", tags=["lifecycle"])


@dataclass(frozen=True)
class RetirementSettings:
    """Where certificates and archives go; ``None`` fields default to the registry home (archives: disabled)."""

    signing_key: Path | None = None
    certificate_dir: Path | None = None
    archive_dir: Path | None = None
    recipient: Path | None = None


@router.post(
    "/versions/{version}/retire",
    response_model=RetirementOut,
    responses=errors(401, 403, 404, 409, 422, 503),
    summary="Retire a version",
)
def retire(
    name: Name, version: Version, body: RetireRequest, request: Request, registry: RegistryDep, actor: Actor
) -> RetirementOut:
    """Retire a version for good (admin); a retired version is never served or deployed again.

    Detaches its aliases, revokes its scoped tokens, archives or deletes the bytes only it references, verifies
    they are gone, and issues a signed retirement certificate.
    """
    from mlwarden.registry.retire import registry_key, retire_version

    settings: RetirementSettings = getattr(request.app.state, "retirement", None) or RetirementSettings()
    home = registry.blobs.root.parent
    if body.mode == "archive" and (settings.archive_dir is None or settings.recipient is None):
        raise BadInput("archive mode is not configured on this server (start it with --archive-dir and --recipient)")
    result = retire_version(
        registry,
        actor,
        f"{name}:{version}",
        mode=body.mode,
        signing_key=settings.signing_key or registry_key(home),
        certificate_dir=settings.certificate_dir or home / "certificates",
        archive_dir=settings.archive_dir,
        recipient=settings.recipient,
        reason=body.reason,
    )
    return RetirementOut(
        version=VersionOut.of(result.version),
        mode=result.mode.value,
        items=[RetiredItemOut(**asdict(item)) for item in result.items],
        certificate_sha256=result.certificate_sha256,
        archive_sha256=result.archive_sha256,
        tokens_revoked=list(result.tokens_revoked),
    )
