"""Request and response bodies of the HTTP API, as pydantic models (they are also the OpenAPI schema).

Responses are built from the service's frozen values (:mod:`mlwarden.registry.values`) by the ``of`` class
methods, so the wire format is declared here once and never leaks ORM rows. Requests forbid unknown fields:
a misspelt ``"alais"`` is a 422 naming it, not a silently ignored option.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mlwarden.http.responses import _Response
from mlwarden.registry.audit.checkpoint import Checkpoint
from mlwarden.registry.audit.events import AuditRecord
from mlwarden.registry.errors import BadInput
from mlwarden.registry.roles import Principal, Role
from mlwarden.registry.states import State
from mlwarden.registry.values import (
    AttachmentInfo,
    AttachmentKind,
    IssuedToken,
    ModelInfo,
    TokenInfo,
    UserInfo,
    VersionInfo,
    check_name,
)

#: The pattern of model, alias and user names; the service's ``check_name`` is the authority (it also refuses
#: ``..``), this copy only documents the rule in the OpenAPI schema.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_TEXT_LIMIT = 4096


def _checked(kind: str) -> AfterValidator:
    """Run the service's own name check (it also refuses ``..``) so a bad name is a field problem, not a guess."""

    def check(value: str) -> str:
        try:
            return check_name(kind, value)
        except BadInput as exc:
            raise ValueError(str(exc)) from None

    return AfterValidator(check)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- errors (shared with the guard: mlwarden.http.responses) --------------------------------------------------


# --- health -------------------------------------------------------------------------------------------------


class Health(_Response):
    """The service is up and its database answers."""

    status: Literal["ok"] = "ok"
    database: Literal["ok"] = "ok"
    version: str = Field(description="mlwarden's version")


# --- models and versions ------------------------------------------------------------------------------------


class FileOut(_Response):
    """One file of a model artifact."""

    path: str = Field(description="POSIX path relative to the model root (the file name for a single file)")
    algorithm: str
    digest: str = Field(description="hex digest of the file's bytes")
    size: int


class AttachmentOut(_Response):
    """A document attached to a version (signature, dataset manifest, scan report, ML-BOM...)."""

    id: int
    kind: AttachmentKind
    filename: str
    digest: str = Field(description="SHA-256 (hex) of the stored bytes")
    size: int
    created_by: str
    created_at: datetime

    @classmethod
    def of(cls, info: AttachmentInfo) -> AttachmentOut:
        """The wire form of ``info``."""
        return cls(
            id=info.id,
            kind=info.kind,
            filename=info.filename,
            digest=info.digest,
            size=info.size,
            created_by=info.created_by,
            created_at=info.created_at,
        )


class VersionOut(_Response):
    """A model version: its state, digests, aliases and attachments."""

    model: str
    version: int
    ref: str = Field(description="`NAME:VERSION`, usable wherever a reference is expected")
    state: State
    digest: str = Field(description="`sha256:<hex>` over the artifact's file manifest")
    submitted_by: str
    created_at: datetime
    state_changed_at: datetime | None
    aliases: list[str]
    artifact_name: str
    is_file: bool
    framework: str | None
    description: str
    total_size: int
    files: list[FileOut]
    attachments: list[AttachmentOut]

    @classmethod
    def of(cls, info: VersionInfo) -> VersionOut:
        """The wire form of ``info``."""
        return cls(
            model=info.model,
            version=info.version,
            ref=info.ref,
            state=info.state,
            digest=info.digest,
            submitted_by=info.submitted_by,
            created_at=info.created_at,
            state_changed_at=info.state_changed_at,
            aliases=list(info.aliases),
            artifact_name=info.artifact_name,
            is_file=info.is_file,
            framework=info.framework,
            description=info.description,
            total_size=info.total_size,
            files=[FileOut(path=f.path, algorithm=f.algorithm, digest=f.digest, size=f.size) for f in info.files],
            attachments=[AttachmentOut.of(a) for a in info.attachments],
        )


class ModelOut(_Response):
    """A model: how many versions it has and where its aliases point."""

    name: str
    created_at: datetime
    created_by: str
    versions: int
    latest: int | None
    aliases: dict[str, int] = Field(description="alias -> version number")

    @classmethod
    def of(cls, info: ModelInfo) -> ModelOut:
        """The wire form of ``info``."""
        return cls(
            name=info.name,
            created_at=info.created_at,
            created_by=info.created_by,
            versions=info.versions,
            latest=info.latest,
            aliases=dict(info.aliases),
        )


# --- lifecycle requests -------------------------------------------------------------------------------------


class ScanRequest(_Request):
    """Which analyses to run on the stored bytes."""

    modes: list[Literal["static", "dynamic"]] = Field(default=["static", "dynamic"], min_length=1, max_length=2)


class CommentRequest(_Request):
    """An optional comment recorded in the audit log (approve, release)."""

    comment: str = Field(default="", max_length=_TEXT_LIMIT)


class DeployRequest(_Request):
    """The alias to point at the version (``production``, ``staging``...)."""

    alias: Annotated[str, Field(min_length=1, max_length=100, pattern=NAME_PATTERN), _checked("alias")]


class QuarantineRequest(_Request):
    """Why the version is quarantined (recorded in the audit log)."""

    reason: str = Field(min_length=1, max_length=_TEXT_LIMIT)


# --- users and tokens ---------------------------------------------------------------------------------------


class UserCreate(_Request):
    """A new user and the roles they hold."""

    username: Annotated[str, Field(min_length=1, max_length=100, pattern=NAME_PATTERN), _checked("user")]
    roles: list[Role] = Field(min_length=1, max_length=len(Role))


class RolesUpdate(_Request):
    """The complete new set of roles of a user."""

    roles: list[Role] = Field(min_length=1, max_length=len(Role))


class UserOut(_Response):
    """A user (never a token secret)."""

    username: str
    roles: list[Role]
    disabled: bool
    created_at: datetime
    created_by: str

    @classmethod
    def of(cls, info: UserInfo) -> UserOut:
        """The wire form of ``info``; roles sorted so responses are stable."""
        return cls(
            username=info.username,
            roles=sorted(info.roles),
            disabled=info.disabled,
            created_at=info.created_at,
            created_by=info.created_by,
        )


class TokenCreate(_Request):
    """A token for a user; it expires after ``expires_in_days`` (``null``: never — discouraged)."""

    name: str = Field(default="", max_length=100, description="a label, e.g. `ci`")
    expires_in_days: int | None = Field(default=90, ge=1, le=3650)
    scope: str | None = Field(
        default=None, max_length=200, description="`model:NAME` or `model:NAME:VERSION`: limit the token to it"
    )


class IssuedTokenOut(_Response):
    """A new token. ``token`` is shown this once: it is stored only as a hash."""

    id: int
    username: str
    token: str
    expires_at: datetime | None
    scope: str | None = None

    @classmethod
    def of(cls, issued: IssuedToken) -> IssuedTokenOut:
        """The wire form of ``issued``."""
        return cls(
            id=issued.id, username=issued.username, token=issued.token, expires_at=issued.expires_at, scope=issued.scope
        )


class TokenOut(_Response):
    """A token's public facts (never its secret)."""

    id: int
    username: str
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    scope: str | None = None

    @classmethod
    def of(cls, info: TokenInfo) -> TokenOut:
        """The wire form of ``info``."""
        return cls(
            id=info.id,
            username=info.username,
            name=info.name,
            prefix=info.prefix,
            created_at=info.created_at,
            expires_at=info.expires_at,
            revoked_at=info.revoked_at,
            last_used_at=info.last_used_at,
            scope=info.scope,
        )


class WhoAmI(_Response):
    """The caller as the registry sees them."""

    username: str
    roles: list[Role]
    token_id: int | None

    @classmethod
    def of(cls, principal: Principal) -> WhoAmI:
        """The wire form of ``principal``."""
        return cls(username=principal.username, roles=sorted(principal.roles), token_id=principal.token_id)


# --- audit --------------------------------------------------------------------------------------------------


class AuditEntryOut(_Response):
    """One audit log entry: who did what to which subject, from which state to which, allowed or refused."""

    seq: int = Field(description="position in the log and its Merkle tree (0-based)")
    timestamp: str = Field(description="RFC 3339 UTC, as hashed")
    actor: str
    action: str
    subject: str
    allowed: bool
    reason: str
    from_state: str | None
    to_state: str | None
    digests: dict[str, str]
    details: dict[str, Any]
    leaf_hash: str = Field(description="hex RFC 6962 leaf hash of the canonical entry")

    @classmethod
    def of(cls, record: AuditRecord) -> AuditEntryOut:
        """The wire form of ``record`` (the audit log's own JSON view)."""
        return cls.model_validate(record.as_json())


class CheckpointOut(_Response):
    """A signed checkpoint: the log had ``tree_size`` entries with Merkle root ``root_hash`` at ``timestamp``."""

    tree_size: int
    root_hash: str = Field(description="hex Merkle tree root")
    timestamp: datetime
    key_id: str = Field(description="id of the Ed25519 checkpoint key")
    signature: str = Field(description="base64 Ed25519 signature over `text`'s body")
    text: str = Field(description="the signed body followed by its signature line, as `mlwarden audit` exports it")

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> CheckpointOut:
        """The wire form of ``checkpoint``."""
        return cls(
            tree_size=checkpoint.tree_size,
            root_hash=checkpoint.root_hash.hex(),
            # Always timezone-aware UTC (a checkpoint read back from SQLite comes without its zone).
            timestamp=checkpoint.timestamp if checkpoint.timestamp.tzinfo else checkpoint.timestamp.replace(tzinfo=UTC),
            key_id=checkpoint.key_id,
            signature=base64.b64encode(checkpoint.signature).decode(),
            text=checkpoint.to_text(),
        )


# --- retirement ---------------------------------------------------------------------------------------------


class RetireRequest(_Request):
    """How to retire: ``archive`` (needs an archive folder and custodian key configured on the server) or ``delete``."""

    mode: Literal["archive", "delete"]
    reason: str = Field(default="", max_length=_TEXT_LIMIT)


class RetiredItemOut(_Response):
    """One file or attachment of the retired version and what happened to it."""

    name: str
    sha256: str
    size: int
    disposition: str
    absent: bool


class RetirementOut(_Response):
    """The retired version, every item with its digest and fate, and the digests of certificate and archive."""

    version: VersionOut
    mode: str
    items: list[RetiredItemOut]
    certificate_sha256: str
    archive_sha256: str | None
    tokens_revoked: list[int]
