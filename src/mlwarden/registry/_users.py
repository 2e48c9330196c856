"""Users and API tokens: bootstrap, authentication, user and token management (all audited).

Tokens are issued by admins; any user may list and revoke their own. The last enabled admin can be neither
disabled nor demoted, so the registry can never lock everybody out of user management.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import timedelta

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.orm import Session, joinedload

from mlwarden.registry._core import Core, attempt, token_info, user_info
from mlwarden.registry.auth import find_token, new_token, why_dead
from mlwarden.registry.errors import AuthError, BadInput, Conflict, NotFound
from mlwarden.registry.models import TokenRow, UserRow, utcnow
from mlwarden.registry.roles import Permission, Principal, Role, parse_roles
from mlwarden.registry.values import IssuedToken, TokenInfo, UserInfo, check_name, check_text

#: PostgreSQL advisory-lock key serialising bootstraps (two "first admins" must not both succeed).
_BOOTSTRAP_LOCK = 0x6D6C7762
#: ``last_used_at`` is written at most this often per token, so authenticating is not always a write.
LAST_USED_GRANULARITY = timedelta(minutes=1)
#: Token ids per query of :func:`recheck_tokens` (well under every database's limit on bound parameters).
_RECHECK_CHUNK = 500
SYSTEM_BOOTSTRAP = Principal("system:bootstrap", frozenset({Role.ADMIN}))


def bootstrap(core: Core, username: str, expires_in: timedelta | None) -> IssuedToken:
    """Create the first admin and their token; refused once any user exists."""
    with attempt(core, SYSTEM_BOOTSTRAP, "user.bootstrap", f"user:{username}", Permission.MANAGE_USERS) as act:
        check_name("user", username)
        with core.database.transaction() as session:
            if core.database.dialect == "postgresql":
                session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _BOOTSTRAP_LOCK})
            if session.scalar(select(func.count()).select_from(UserRow)):
                raise AuthError("the registry already has users: ask an admin for an account")
            user = UserRow(username=username, roles=[Role.ADMIN.value], created_by=SYSTEM_BOOTSTRAP.username)
            session.add(user)
            session.flush()
            issued = _issue(session, user, "bootstrap", expires_in)
            act.details = {"roles": [Role.ADMIN.value], "token_id": issued.id}
            core.audit.append(session, act.event(allowed=True))
        return issued


def authenticate(core: Core, token: str, client: str | None = None) -> Principal:
    """The principal a token stands for; a failure is counted (and audited, aggregated) and raised as AuthError.

    ``client`` (an address, for the HTTP API) is what refusals are counted per; see :mod:`._refusals`.
    """
    refusals = core.refusals
    if refusals is not None:
        refusals.tick()
    try:
        # A read first: most authentications change nothing, and a write transaction would take SQLite's writer
        # lock (BEGIN IMMEDIATE) on every request of a busy service.
        with core.database.reading() as session:
            now = utcnow()
            row = find_token(session, token, now)
            principal = Principal(row.user.username, frozenset(Role(r) for r in row.user.roles), row.id, row.scope)
            stale = row.last_used_at is None or now - row.last_used_at >= LAST_USED_GRANULARITY
        if stale:
            with core.database.transaction() as session:
                session.execute(update(TokenRow).where(TokenRow.id == principal.token_id).values(last_used_at=now))
        return principal
    except AuthError as exc:
        if refusals is not None:
            refusals.record(client, str(exc))
        else:
            from mlwarden.registry.audit import AuditEvent

            prefix = token[:12] if isinstance(token, str) and token.startswith("mlw_") else "?"
            core.audit.append_now(AuditEvent("anonymous", "auth", f"token:{prefix}", False, reason=str(exc)))
        raise


def recheck_tokens(core: Core, token_ids: Collection[int], used: Collection[int]) -> dict[int, Principal]:
    """The principals of those of ``token_ids`` that still authenticate (read again: roles, scope, user).

    A token that is missing from the answer was revoked, has expired or belongs to a disabled user. ``used``
    (token ids presented since the last call) get their last use written, at most once per
    :data:`LAST_USED_GRANULARITY` as :func:`authenticate` does. Nothing is audited: this re-reads tokens that
    were authenticated before, by id; it never sees a token's text.
    """
    now = utcnow()
    live: dict[int, Principal] = {}
    ids = sorted(set(token_ids))
    with core.database.reading() as session:
        for start in range(0, len(ids), _RECHECK_CHUNK):
            query = select(TokenRow).options(joinedload(TokenRow.user))
            for row in session.scalars(query.where(TokenRow.id.in_(ids[start : start + _RECHECK_CHUNK]))):
                if why_dead(row, now) is None:
                    roles = frozenset(Role(r) for r in row.user.roles)
                    live[row.id] = Principal(row.user.username, roles, row.id, row.scope)
    touched = sorted(set(used) & live.keys())
    if touched:
        with core.database.transaction() as session:
            for start in range(0, len(touched), _RECHECK_CHUNK):
                chunk = touched[start : start + _RECHECK_CHUNK]
                stale = or_(TokenRow.last_used_at.is_(None), TokenRow.last_used_at <= now - LAST_USED_GRANULARITY)
                session.execute(update(TokenRow).where(TokenRow.id.in_(chunk), stale).values(last_used_at=now))
    return live


def create_user(core: Core, actor: Principal, username: str, roles: Iterable[Role | str]) -> UserInfo:
    """Add a user with ``roles``."""
    with attempt(core, actor, "user.create", f"user:{username}", Permission.MANAGE_USERS) as act:
        check_name("user", username)
        granted = parse_roles(roles)
        act.details = {"roles": sorted(granted)}
        with core.database.transaction() as session:
            clash = session.scalar(select(UserRow.username).where(func.lower(UserRow.username) == username.lower()))
            if clash is not None:  # names are ASCII (check_name): lower() is their case fold
                same = "already exists" if clash == username else f"differs only in case from user {clash!r}"
                raise Conflict(f"user {username!r} {same}: user names are unique whatever their case")
            row = UserRow(username=username, roles=sorted(granted), created_by=actor.username)
            session.add(row)
            session.flush()
            core.audit.append(session, act.event(allowed=True))
            return user_info(row)


def set_roles(core: Core, actor: Principal, username: str, roles: Iterable[Role | str]) -> UserInfo:
    """Replace a user's roles (refused when it would leave no enabled admin)."""
    with attempt(core, actor, "user.set_roles", f"user:{username}", Permission.MANAGE_USERS) as act:
        granted = parse_roles(roles)
        with core.database.transaction() as session:
            row = _user(session, username, lock=True)
            act.details = {"before": sorted(row.roles), "roles": sorted(granted)}
            if Role.ADMIN.value in row.roles and Role.ADMIN not in granted and not row.disabled:
                _keep_an_admin(session, row)
            row.roles = sorted(granted)
            core.audit.append(session, act.event(allowed=True))
            return user_info(row)


def disable_user(core: Core, actor: Principal, username: str) -> UserInfo:
    """Disable a user: their tokens stop working (refused for the last enabled admin)."""
    with attempt(core, actor, "user.disable", f"user:{username}", Permission.MANAGE_USERS) as act:
        with core.database.transaction() as session:
            row = _user(session, username, lock=True)
            if Role.ADMIN.value in row.roles and not row.disabled:
                _keep_an_admin(session, row)
            row.disabled = True
            core.audit.append(session, act.event(allowed=True))
            return user_info(row)


def list_users(core: Core, actor: Principal) -> list[UserInfo]:
    """Every user (admins only: it reveals who holds which role)."""
    with (
        attempt(core, actor, "user.list", "users", Permission.MANAGE_USERS, read_only=True),
        core.database.reading() as session,
    ):
        return [user_info(r) for r in session.scalars(select(UserRow).order_by(UserRow.username))]


def issue_token(
    core: Core, actor: Principal, username: str, *, name: str, expires_in: timedelta | None, scope: str | None = None
) -> IssuedToken:
    """Issue a token for ``username`` (admins only); the plaintext is returned once and stored nowhere.

    ``scope`` (``model:NAME`` or ``model:NAME:VERSION``) limits the token to that model or version.
    """
    with attempt(core, actor, "token.issue", f"user:{username}", Permission.MANAGE_TOKENS) as act:
        check_scope(scope)
        check_text("token name", name)
        if len(name) > 200:
            raise BadInput("a token name is at most 200 characters")
        if expires_in is not None and expires_in <= timedelta(0):
            raise BadInput("a token's lifetime must be positive (or None for no expiry)")
        with core.database.transaction() as session:
            user = _user(session, username)
            if user.disabled:
                raise Conflict(f"user {username!r} is disabled: enable them before issuing a token")
            issued = _issue(session, user, name, expires_in, scope)
            act.details = {"token_id": issued.id, "name": name, "expires_at": _iso(issued), "scope": scope}
            core.audit.append(session, act.event(allowed=True))
            return issued


def revoke_token(core: Core, actor: Principal, token_id: int) -> TokenInfo:
    """Revoke a token: admins any, other users their own."""
    permission = Permission.READ if _owns(core, actor, token_id) else Permission.MANAGE_TOKENS
    with attempt(core, actor, "token.revoke", f"token:{token_id}", permission) as act:
        with core.database.transaction() as session:
            row = session.get(TokenRow, token_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no token with id {token_id}")
            act.details = {"user": row.user.username}
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            core.audit.append(session, act.event(allowed=True))
            return token_info(row)


def list_tokens(core: Core, actor: Principal, username: str | None) -> list[TokenInfo]:
    """Tokens of ``username`` (or everyone's); users other than admins see only their own."""
    own = username is None or username == actor.username
    permission = Permission.MANAGE_TOKENS if not own or actor.can(Permission.MANAGE_TOKENS) else Permission.READ
    with attempt(core, actor, "token.list", f"user:{username or '*'}", permission, read_only=True):
        with core.database.reading() as session:
            query = select(TokenRow).join(UserRow).order_by(TokenRow.id)
            if username is not None:
                query = query.where(UserRow.username == username)
            elif not actor.can(Permission.MANAGE_TOKENS):
                query = query.where(UserRow.username == actor.username)
            return [token_info(r) for r in session.scalars(query)]


def _issue(
    session: Session, user: UserRow, name: str, expires_in: timedelta | None, scope: str | None = None
) -> IssuedToken:
    generated = new_token()
    expires_at = utcnow() + expires_in if expires_in is not None else None
    row = TokenRow(
        user_id=user.id,
        name=name,
        lookup=generated.lookup,
        secret_hash=generated.secret_hash,
        expires_at=expires_at,
        scope=scope,
    )
    session.add(row)
    session.flush()
    return IssuedToken(row.id, user.username, generated.plaintext, expires_at, scope)


def check_scope(scope: str | None) -> None:
    """Validate a token scope: ``None``, ``model:NAME`` or ``model:NAME:VERSION``.

    Raises:
        BadInput: anything else.
    """
    if scope is None:
        return
    parts = scope.split(":")
    if len(parts) not in (2, 3) or parts[0] != "model":
        raise BadInput(f"token scope must be model:NAME or model:NAME:VERSION, not {scope!r}")
    check_name("model", parts[1])
    if len(parts) == 3 and not (parts[2].isdigit() and int(parts[2]) >= 1):
        raise BadInput(f"token scope {scope!r}: the version must be a positive number")


def revoke_tokens_for(session: Session, model: str, version: int) -> list[int]:
    """Revoke, in the caller's transaction, every live token scoped to exactly ``model:version``; their ids."""
    scope = f"model:{model}:{version}"
    rows = session.scalars(
        select(TokenRow).where(TokenRow.scope == scope, TokenRow.revoked_at.is_(None)).with_for_update()
    ).all()
    now = utcnow()
    for row in rows:
        row.revoked_at = now
    return sorted(row.id for row in rows)


def _user(session: Session, username: str, *, lock: bool = False) -> UserRow:
    query = select(UserRow).where(UserRow.username == username)
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise NotFound(f"no user named {username!r}")
    return row


def _keep_an_admin(session: Session, row: UserRow) -> None:
    others = [
        u
        for u in session.scalars(select(UserRow).where(UserRow.id != row.id, UserRow.disabled.is_(False)))
        if Role.ADMIN.value in u.roles
    ]
    if not others:
        raise Conflict(f"{row.username} is the last enabled admin: make someone else admin first")


def _owns(core: Core, actor: Principal, token_id: int) -> bool:
    with core.database.reading() as session:
        row = session.get(TokenRow, token_id)
        return row is not None and row.user.username == actor.username


def _iso(issued: IssuedToken) -> str | None:
    return issued.expires_at.isoformat() if issued.expires_at is not None else None
