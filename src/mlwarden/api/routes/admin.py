"""The caller, users and tokens (admin), and the audit log (entries and signed checkpoints)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from mlwarden.api.deps import Actor, LimitsDep, RegistryDep
from mlwarden.api.routes import errors
from mlwarden.api.routes.models import MAX_ID
from mlwarden.api.schemas import (
    AuditEntryOut,
    CheckpointOut,
    IssuedTokenOut,
    RolesUpdate,
    TokenCreate,
    TokenOut,
    UserCreate,
    UserOut,
    WhoAmI,
)
from mlwarden.http.errors import ApiError
from mlwarden.registry.errors import NotFound
from mlwarden.registry.roles import Permission

router = APIRouter(prefix="/v1")
Username = Annotated[str, Path(description="user name", max_length=100)]
_ADMIN = errors(401, 403, 404, 409, 422, 503)


@router.get("/whoami", response_model=WhoAmI, responses=errors(401, 503), tags=["users"], summary="Who am I")
def whoami(actor: Actor) -> WhoAmI:
    """The user and roles the presented token stands for."""
    return WhoAmI.of(actor)


@router.get("/users", response_model=list[UserOut], responses=_ADMIN, tags=["users"], summary="List users")
def list_users(registry: RegistryDep, actor: Actor) -> list[UserOut]:
    """Every user and their roles (admin)."""
    return [UserOut.of(u) for u in registry.list_users(actor)]


@router.post("/users", status_code=201, response_model=UserOut, responses=_ADMIN, tags=["users"], summary="Add a user")
def create_user(body: UserCreate, registry: RegistryDep, actor: Actor) -> UserOut:
    """Create a user with the given roles (admin)."""
    return UserOut.of(registry.create_user(actor, body.username, body.roles))


@router.put("/users/{username}/roles", response_model=UserOut, responses=_ADMIN, tags=["users"], summary="Set roles")
def set_roles(username: Username, body: RolesUpdate, registry: RegistryDep, actor: Actor) -> UserOut:
    """Replace a user's roles (admin)."""
    return UserOut.of(registry.set_roles(actor, username, body.roles))


@router.post(
    "/users/{username}/disable", response_model=UserOut, responses=_ADMIN, tags=["users"], summary="Disable a user"
)
def disable_user(username: Username, registry: RegistryDep, actor: Actor) -> UserOut:
    """Disable a user: every token of theirs stops working at once (admin)."""
    return UserOut.of(registry.disable_user(actor, username))


@router.post(
    "/users/{username}/tokens",
    status_code=201,
    response_model=IssuedTokenOut,
    responses=_ADMIN,
    tags=["tokens"],
    summary="Issue a token",
)
def issue_token(
    username: Username, body: TokenCreate, registry: RegistryDep, actor: Actor, response: Response
) -> IssuedTokenOut:
    """Issue an API token for a user (admin). The plaintext is in this response only; it is stored hashed."""
    expires = timedelta(days=body.expires_in_days) if body.expires_in_days is not None else None
    issued = registry.issue_token(actor, username, name=body.name, expires_in=expires, scope=body.scope)
    response.headers["Cache-Control"] = "no-store"
    return IssuedTokenOut.of(issued)


@router.get("/tokens", response_model=list[TokenOut], responses=_ADMIN, tags=["tokens"], summary="List tokens")
def list_tokens(
    registry: RegistryDep,
    actor: Actor,
    username: Annotated[str | None, Query(max_length=100, description="only this user's tokens")] = None,
) -> list[TokenOut]:
    """Tokens' public facts (id, owner, name, prefix, dates); never a secret."""
    return [TokenOut.of(t) for t in registry.list_tokens(actor, username)]


@router.delete(
    "/tokens/{token_id}", response_model=TokenOut, responses=_ADMIN, tags=["tokens"], summary="Revoke a token"
)
def revoke_token(token_id: Annotated[int, Path(ge=1, le=MAX_ID)], registry: RegistryDep, actor: Actor) -> TokenOut:
    """Revoke a token (admins: any; others: their own); it is refused from the next request on."""
    return TokenOut.of(registry.revoke_token(actor, token_id))


@router.get(
    "/audit",
    response_model=list[AuditEntryOut],
    responses=errors(401, 403, 422, 503),
    tags=["audit"],
    summary="Read the audit log",
)
def audit_entries(
    registry: RegistryDep,
    actor: Actor,
    limits: LimitsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_ID, description="most entries to return (capped by the server)")] = 100,
    before: Annotated[
        int | None, Query(ge=0, le=2**63 - 1, description="only entries with seq below this (paging back)")
    ] = None,
) -> list[AuditEntryOut]:
    """The newest entries first: who did what, from which state to which, allowed or refused (any role)."""
    actor.require(Permission.READ, "read the audit log")
    actor.require_scope("audit", "read the audit log")  # the log spans every model: no scoped token reads it
    log = registry.audit()
    stop = log.size() if before is None else min(before, log.size())
    start = max(0, stop - min(limit, limits.audit_page_max))
    return [AuditEntryOut.of(r) for r in reversed(list(log.entries(start, stop)))]


@router.get(
    "/audit/checkpoint",
    response_model=CheckpointOut,
    responses=errors(401, 403, 404, 503),
    tags=["audit"],
    summary="Latest signed checkpoint",
)
def latest_checkpoint(registry: RegistryDep, actor: Actor) -> CheckpointOut:
    """The newest signed checkpoint (tree size, root, Ed25519 signature), to compare with a copy kept elsewhere."""
    actor.require(Permission.READ, "read the audit log")
    actor.require_scope("audit", "read the audit log")  # the log spans every model: no scoped token reads it
    checkpoint = registry.audit().latest_checkpoint()
    if checkpoint is None:
        raise NotFound("no audit checkpoint has been signed yet (POST /v1/audit/checkpoint signs one)")
    return CheckpointOut.of(checkpoint)


@router.post(
    "/audit/checkpoint",
    status_code=201,
    response_model=CheckpointOut,
    responses=errors(401, 403, 503),
    tags=["audit"],
    summary="Sign a checkpoint now",
)
def sign_checkpoint(registry: RegistryDep, actor: Actor) -> CheckpointOut:
    """Sign the log's current head (refused with 500 ``audit_tampered`` if the log no longer matches its hashes)."""
    actor.require(Permission.READ, "sign an audit checkpoint")
    actor.require_scope("audit", "sign an audit checkpoint")
    log = registry.audit()
    if log.signer is None:
        raise ApiError(503, "not_configured", "this server has no audit checkpoint key (serve with --audit-key)")
    return CheckpointOut.of(log.checkpoint())
