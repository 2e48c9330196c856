"""The registry service: the one layer the CLI, the HTTP API, the guard and the playbooks go through.

Every public method takes the acting :class:`Principal` first and, in this order: checks the caller's role
(:class:`PermissionDenied` names the role needed) and its token scope (a token scoped to ``model:NAME`` or
``model:NAME:VERSION`` acts there only), checks the version's state and the gate, then writes the
change and its audit event in one database transaction. A refused action raises and is audited too
(``allowed=False``, with the reason). Artifact bytes live in a content-addressed blob store under
``<home>/blobs``; the rows hold their digests.

Typical use::

    registry = Registry.open()                       # $MLWARDEN_DB_URL or ~/.mlwarden/registry.db
    alice = registry.authenticate(token)
    v = registry.register(alice, "fraud", Path("model.joblib"), signature=Path("model.sig"))
    registry.scan(alice, v.ref)
    registry.approve(bob, v.ref)                     # not alice: separation of duties
    registry.deploy(carol, v.ref, "production")
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from mlwarden.registry import _lifecycle, _register, _suppress, _users
from mlwarden.registry._core import Core, attempt, model_row, version_info, version_row, view_path
from mlwarden.registry._fs import private_dir, tighten
from mlwarden.registry._lifecycle import RetireHook
from mlwarden.registry._refusals import RefusalCounter
from mlwarden.registry.audit import AuditLog, CheckpointSigner
from mlwarden.registry.blobs import BlobStore
from mlwarden.registry.db import DEFAULT_LOCK_TIMEOUT, Database, home, open_database
from mlwarden.registry.errors import (
    AuthError,
    BadInput,
    Conflict,
    GateRefused,
    InvalidTransition,
    NotFound,
    PermissionDenied,
    RegistryError,
    StorageError,
)
from mlwarden.registry.gates import GateCheck, GateResult, Gates, load_gates
from mlwarden.registry.models import AliasRow, ModelRow, VersionRow
from mlwarden.registry.roles import Permission, Principal, Role
from mlwarden.registry.states import State
from mlwarden.registry.values import (
    AttachmentInfo,
    AttachmentKind,
    IssuedToken,
    ModelInfo,
    Ref,
    TokenInfo,
    UserInfo,
    VersionInfo,
    parse_ref,
)

if TYPE_CHECKING:
    from mlwarden.core.policy import Policy
    from mlwarden.core.suppressions import Suppression
    from mlwarden.registry._assess import Step
    from mlwarden.registry.fsck import FsckReport
    from mlwarden.registry.source import ModelSource

__all__ = [
    "AttachmentInfo",
    "AttachmentKind",
    "AuthError",
    "BadInput",
    "Conflict",
    "GateCheck",
    "GateRefused",
    "InvalidTransition",
    "IssuedToken",
    "ModelInfo",
    "NotFound",
    "PermissionDenied",
    "Principal",
    "Ref",
    "Registry",
    "RegistryError",
    "Role",
    "State",
    "StorageError",
    "TokenInfo",
    "UserInfo",
    "VersionInfo",
    "parse_ref",
]

#: Default lifetime of an issued token.
DEFAULT_TOKEN_LIFETIME = timedelta(days=90)
#: Gates file looked for in mlwarden's home when none is given.
GATES_FILE = "gates.toml"


class Registry:
    """Models, versions, their evidence and lifecycle, users and tokens; see the module docstring."""

    def __init__(
        self,
        database: Database,
        *,
        home_dir: Path,
        gates: Gates,
        audit: AuditLog,
        policy: Policy | None = None,
        max_artifact_bytes: int | None = None,
    ) -> None:
        """Use an open, migrated ``database``; prefer :meth:`open`."""
        from mlwarden.core.policy import Policy

        self.database = database
        self.home = home_dir
        self._core = Core(
            database=database,
            blobs=BlobStore(home_dir / "blobs"),
            audit=audit,
            gates=gates,
            policy=policy or Policy(),
            views=home_dir / "artifacts",
            max_artifact_bytes=max_artifact_bytes,
        )
        self._core.refusals = RefusalCounter(audit)

    @classmethod
    def open(
        cls,
        url: str | None = None,
        *,
        home: Path | None = None,
        gates: Path | Gates | None = None,
        policy: Path | None = None,
        audit_signer: CheckpointSigner | None = None,
        max_artifact_bytes: int | None = None,
        upgrade: bool = True,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> Registry:
        """Open (and by default migrate) the registry.

        Args:
            url: database URL (default ``$MLWARDEN_DB_URL`` or the SQLite file in mlwarden's home).
            home: where blobs and artifact views live (default ``$MLWARDEN_HOME`` or ``~/.mlwarden``).
            gates: a gates TOML file or :class:`Gates` (default ``<home>/gates.toml`` if present, else the
                built-in, fail-closed defaults).
            policy: scan policy TOML for :meth:`scan` (default: mlwarden's default policy).
            audit_signer: key signing audit checkpoints (see :class:`~mlwarden.registry.audit.AuditLog`).
            max_artifact_bytes: refuse to register models larger than this (default: no limit).
            upgrade: run migrations (``False``: only check the schema is current).
            lock_timeout: seconds a write waits for another writer's lock before failing with DatabaseError.

        Raises:
            DatabaseError: the database is unreachable, locked, or (``upgrade=False``) not initialised.
            PolicyError: the gates or policy file is invalid.
        """
        from mlwarden.core.policy import load_policy

        home_dir = Path(home) if home is not None else _default_home()
        private_dir(home_dir)  # 0700 whatever the umask: the database, blobs and keys live here
        tighten(home_dir)
        if gates is None and (home_dir / GATES_FILE).is_file():
            gates = home_dir / GATES_FILE
        loaded = gates if isinstance(gates, Gates) else load_gates(gates)
        scan_policy = load_policy(policy)
        database = open_database(url, upgrade=upgrade, lock_timeout=lock_timeout)
        if audit_signer is None:
            audit_signer = _home_signer(home_dir)
        registry = cls(
            database,
            home_dir=home_dir,
            gates=loaded,
            audit=AuditLog(database, audit_signer),
            policy=scan_policy,
            max_artifact_bytes=max_artifact_bytes,
        )
        registry._recover()
        return registry

    def _recover(self) -> None:
        """Start-up: staging folders of killed uploads restore blobs a crash lost, then go (never fatal)."""
        import logging

        from mlwarden.registry.fsck import recover_staging

        try:
            for done in recover_staging(self._core.blobs, self.database):
                logging.getLogger("mlwarden.registry").warning("%s %s: %s", done.kind, done.subject, done.detail)
        except (RegistryError, OSError) as exc:
            logging.getLogger("mlwarden.registry").warning("staging clean-up failed: %s", exc)

    def fsck(self, actor: Principal, *, repair: bool = False) -> FsckReport:
        """Compare the blob store with the rows (admin); ``repair`` fixes what is safe (see :mod:`.fsck`). Audited."""
        from mlwarden.registry.fsck import fsck

        with attempt(self._core, actor, "registry.fsck", "blobs", Permission.RETIRE) as act:
            report = fsck(self._core.blobs, self.database, repair=repair)
            kinds: dict[str, int] = {}
            for problem in report.problems:
                kinds[problem.kind] = kinds.get(problem.kind, 0) + 1
            act.details = {"repair": repair, "problems": kinds, "clean": report.clean}
            self._core.audit.append_now(act.event(allowed=True))
            return report

    def close(self) -> None:
        """Write the pending summary of failed authentications, sign the unsigned tail, release the database.

        Every writer with the audit key (``audit_signer``, or ``<home>/keys/audit.key``) checkpoints on shutdown,
        besides every 1000 entries while it runs, so what it wrote is covered by a signature.
        """
        import logging

        refusals = self._core.refusals
        try:
            if refusals is not None:
                refusals.flush()
            audit = self._core.audit
            if audit.signer is not None:
                last = audit.latest_checkpoint()
                if audit.size() > (last.tree_size if last is not None else 0):
                    audit.checkpoint()
        except Exception as exc:  # noqa: BLE001 - closing must release the database whatever happened
            logging.getLogger("mlwarden.registry").warning("audit checkpoint on shutdown failed: %s", exc)
        finally:
            self.database.dispose()

    @property
    def refusals(self) -> RefusalCounter | None:
        """Failed authentications, counted per client and reason (the HTTP API rate limits with it)."""
        return self._core.refusals

    @property
    def gates(self) -> Gates:
        """The gates in force."""
        return self._core.gates

    @property
    def blobs(self) -> BlobStore:
        """The blob store (for retirement and maintenance)."""
        return self._core.blobs

    def audit(self) -> AuditLog:
        """The audit log every action is appended to."""
        return self._core.audit

    # -- users and tokens -------------------------------------------------------------------------------------------

    def bootstrap(self, username: str, *, expires_in: timedelta | None = DEFAULT_TOKEN_LIFETIME) -> IssuedToken:
        """Create the first admin and return their token (shown once); refused (AuthError) once any user exists."""
        return _users.bootstrap(self._core, username, expires_in)

    def authenticate(self, token: str, *, client: str | None = None) -> Principal:
        """The principal behind ``token``; AuthError when unknown, expired, revoked or its user is disabled.

        Failures are counted per ``client`` (an address; ``None``: local) and reason and audited aggregated: the
        first of each in a window at once, then one summary row per window.
        """
        return _users.authenticate(self._core, token, client)

    def recheck_tokens(self, token_ids: Collection[int], used: Collection[int] = ()) -> dict[int, Principal]:
        """The principals of those of ``token_ids`` that still authenticate, read again by id in batches.

        For a serving cache keeping its entries fresh: a missing id was revoked, has expired or its user is
        disabled. ``used`` get their last use recorded as :meth:`authenticate` would.
        """
        return _users.recheck_tokens(self._core, token_ids, used)

    def create_user(self, actor: Principal, username: str, roles: Iterable[Role | str]) -> UserInfo:
        """Add a user (admin)."""
        return _users.create_user(self._core, actor, username, roles)

    def set_roles(self, actor: Principal, username: str, roles: Iterable[Role | str]) -> UserInfo:
        """Replace a user's roles (admin; the last enabled admin keeps admin)."""
        return _users.set_roles(self._core, actor, username, roles)

    def disable_user(self, actor: Principal, username: str) -> UserInfo:
        """Disable a user: their tokens stop authenticating (admin)."""
        return _users.disable_user(self._core, actor, username)

    def list_users(self, actor: Principal) -> list[UserInfo]:
        """Every user (admin)."""
        return _users.list_users(self._core, actor)

    def issue_token(
        self,
        actor: Principal,
        username: str,
        *,
        name: str = "",
        expires_in: timedelta | None = DEFAULT_TOKEN_LIFETIME,
        scope: str | None = None,
    ) -> IssuedToken:
        """Issue a token for ``username`` (admin); ``expires_in=None`` never expires.

        ``scope`` — ``model:NAME`` or ``model:NAME:VERSION`` — limits it to that model or version (a serving
        client's token); retiring the version revokes the tokens scoped to it.
        """
        return _users.issue_token(self._core, actor, username, name=name, expires_in=expires_in, scope=scope)

    def revoke_token(self, actor: Principal, token_id: int) -> TokenInfo:
        """Revoke a token (admin, or its owner)."""
        return _users.revoke_token(self._core, actor, token_id)

    def list_tokens(self, actor: Principal, username: str | None = None) -> list[TokenInfo]:
        """Tokens (admin: anyone's; others: their own)."""
        return _users.list_tokens(self._core, actor, username)

    # -- adding ------------------------------------------------------------------------------------------------------

    def register(
        self,
        actor: Principal,
        name: str,
        model_path: Path,
        *,
        signature: Path | None = None,
        dataset_manifests: Sequence[Path] = (),
        training_record: Path | None = None,
        framework: str | None = None,
        description: str = "",
        source: ModelSource | None = None,
    ) -> VersionInfo:
        """Store a new version of ``name`` (created on first use), state ``received``.

        The model's bytes are copied into the blob store while hashed; the signature, dataset manifests and
        training record are checked to parse and stored as attachments; an ML-BOM (CycloneDX 1.6) is written.
        ``source`` (a model downloaded from a URL) must describe exactly these bytes; it is redacted and stored as
        the ``source`` attachment, and its summary goes into the audit event.
        """
        return _register.register(
            self._core,
            actor,
            name,
            Path(model_path),
            signature=signature,
            dataset_manifests=dataset_manifests,
            training_record=training_record,
            framework=framework,
            description=description,
            source=source,
        )

    def attach(self, actor: Principal, ref: str, kind: AttachmentKind | str, path: Path) -> VersionInfo:
        """Attach a signature, dataset manifest, training record, scan or test report to a version."""
        return _register.attach(self._core, actor, ref, kind, Path(path))

    def scan(self, actor: Principal, ref: str, *, modes: Sequence[str] = ("static", "dynamic")) -> VersionInfo:
        """Scan the stored bytes with mlwarden's scanner and store the JSON report (``received -> scanned``)."""
        return _register.scan(self._core, actor, ref, modes)

    def test(
        self,
        actor: Principal,
        ref: str,
        steps: Sequence[Step],
        *,
        signing_key: Path | None = None,
        password: bytes | None = None,
    ) -> VersionInfo:
        """Run model tests and data checks on the stored copy and attach their reports (received or scanned).

        ``steps`` run in order, each on an :class:`~mlwarden.registry._assess.AssessInput` (the stored bytes,
        re-hashed first); each returns a ``model_test`` or ``data_check`` report, which must be about this
        version (a data check: about an attached dataset manifest's data). Reports are stored with
        ``details.source = "registry"`` — the only ones the approve gates count — and, with ``signing_key``, a
        signed statement over their SHA-256 in ``details.signature``. Needs the scan permission; audited.
        """
        from mlwarden.registry._assess import assess

        return assess(self._core, actor, ref, steps, signing_key, password)

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    def approve(self, actor: Principal, ref: str, *, comment: str = "") -> VersionInfo:
        """``scanned -> approved`` through the approve gate (never by the version's submitter)."""
        return _lifecycle.approve(self._core, actor, ref, comment)

    def deploy(self, actor: Principal, ref: str, alias: str) -> VersionInfo:
        """Point ``alias`` at the version through the deploy gate (fresh digest check of the stored bytes)."""
        return _lifecycle.deploy(self._core, actor, ref, alias)

    def quarantine(self, actor: Principal, ref: str, reason: str) -> VersionInfo:
        """Quarantine a version (its aliases stay until :meth:`rollback` moves them)."""
        return _lifecycle.quarantine(self._core, actor, ref, reason)

    def release(self, actor: Principal, ref: str, *, comment: str = "") -> VersionInfo:
        """Release a quarantined version after re-checking the approve (and, if aliased, deploy) gate."""
        return _lifecycle.release(self._core, actor, ref, comment)

    def rollback(self, actor: Principal, name: str, alias: str) -> VersionInfo:
        """Move ``alias`` back to the previous approved version it pointed at; returns that version."""
        return _lifecycle.rollback(self._core, actor, name, alias)

    def verify_copy(self, actor: Principal, ref: str, copy: Path, *, signature_required: bool = True) -> GateResult:
        """Check a private copy of the version's bytes before loading it (what a server does; audited).

        The digest of ``copy`` must equal the version's, and (``signature_required``) its attached signature
        must verify over ``copy`` with a deploy-trusted key. Raises :class:`GateRefused` naming what failed.
        """
        return _lifecycle.verify_copy(self._core, actor, ref, copy, signature_required)

    def rollback_target(self, actor: Principal, name: str, alias: str) -> VersionInfo:
        """The version :meth:`rollback` would move ``alias`` to now, without moving it (raises if none)."""
        return _lifecycle.rollback_target(self._core, actor, name, alias)

    def retire(self, actor: Principal, ref: str, *, reason: str = "", hook: RetireHook | None = None) -> VersionInfo:
        """Mark a version retired (final) and detach its aliases (admin).

        ``hook(session, version)`` runs in the same transaction before the audit event is written (archive or
        delete artifacts, issue the certificate); what it returns is added to the event's details. Raising in
        it rolls everything back.
        """
        return _lifecycle.retire(self._core, actor, ref, reason, hook)

    def suppress(self, actor: Principal, ref: str, rule_id: str, *, reason: str, expires: str | date) -> Suppression:
        """Accept ``rule_id``'s findings on the version's bytes until ``expires`` (an ISO date in the future).

        Approver or admin only, never on a version the caller submitted; audited. The approve gate then ignores
        that rule's findings in the registry's scan of exactly these bytes, and says so in its evidence.
        """
        return _suppress.suppress(self._core, actor, ref, rule_id, reason, expires)

    def suppressions(self, actor: Principal, ref: str) -> list[Suppression]:
        """Every suppression recorded on the version, oldest first (expired ones included)."""
        return _suppress.list_suppressions(self._core, actor, ref)

    # -- reading -----------------------------------------------------------------------------------------------------

    def resolve(self, actor: Principal, ref: str | Ref) -> VersionInfo:
        """The version ``ref`` names (``fraud:3`` or ``fraud@production``)."""
        with attempt(self._core, actor, "read", f"model:{ref}", Permission.READ, read_only=True) as act:
            with self.database.reading() as session:
                info = version_info(session, version_row(session, ref))
            act.resolved(f"model:{info.ref}")
            return info

    get = resolve

    def list_models(self, actor: Principal) -> list[ModelInfo]:
        """Every model with its version count, newest version number and aliases.

        Refused to a scoped token (rather than filtered to its model: a filtered list would pass for the
        complete one); such a client names its model with :meth:`versions` or its version with :meth:`get`.
        """
        with (
            attempt(self._core, actor, "read", "models", Permission.READ, read_only=True),
            self.database.reading() as session,
        ):
            query = select(VersionRow.model_id, func.count(), func.max(VersionRow.number)).group_by(VersionRow.model_id)
            counts: dict[int, tuple[int, int | None]] = {mid: (n, last) for mid, n, last in session.execute(query)}
            aliases: dict[int, dict[str, int]] = {}
            for alias, model_id, number in session.execute(
                select(AliasRow.name, AliasRow.model_id, VersionRow.number).join(
                    VersionRow, AliasRow.version_id == VersionRow.id
                )
            ):
                aliases.setdefault(model_id, {})[alias] = number
            return [
                ModelInfo(
                    m.name,
                    m.created_at,
                    m.created_by,
                    counts.get(m.id, (0, None))[0],
                    counts.get(m.id, (0, None))[1],
                    aliases.get(m.id, {}),
                )
                for m in session.scalars(select(ModelRow).order_by(ModelRow.name))
            ]

    def versions(self, actor: Principal, name: str) -> list[VersionInfo]:
        """Every version of ``name``, oldest first (refused to a token scoped to a single version)."""
        with (
            attempt(self._core, actor, "read", f"model:{name}", Permission.READ, read_only=True),
            self.database.reading() as session,
        ):
            model = model_row(session, name)
            rows = session.scalars(
                select(VersionRow).where(VersionRow.model_id == model.id).order_by(VersionRow.number)
            )
            return [version_info(session, r) for r in rows]

    def artifact_path(self, actor: Principal, ref: str) -> Path:
        """The stored copy of the version (its original file or folder name), for serving or loading.

        The path is a view of the blobs; verify before trusting it after a long time (:meth:`deploy` does).
        """
        info = self.resolve(actor, ref)
        if info.state is State.RETIRED:
            raise InvalidTransition(f"{info.ref} is retired: its artifact is not served")
        return view_path(self._core, info)

    def attachment_path(self, actor: Principal, ref: str, attachment_id: int) -> Path:
        """The blob of one attachment of ``ref`` (verified against its digest first)."""
        info = self.resolve(actor, ref)
        found = next((a for a in info.attachments if a.id == attachment_id), None)
        if found is None:
            raise NotFound(f"{info.ref} has no attachment {attachment_id}")
        self._core.blobs.verify(found.digest)
        return self._core.blobs.path(found.digest)


def _default_home() -> Path:
    return home()


def _home_signer(home_dir: Path) -> CheckpointSigner | None:
    """The home's audit key, when there is one (``mlwarden audit checkpoint`` creates it); unusable: None, warned."""
    import logging

    from mlwarden.registry.audit import AuditKeyError

    key = home_dir / "keys" / "audit.key"
    if not key.is_file():
        return None
    try:
        return CheckpointSigner.load(key)
    except AuditKeyError as exc:
        logging.getLogger("mlwarden.registry").warning("audit key not used for checkpoints: %s", exc)
        return None
