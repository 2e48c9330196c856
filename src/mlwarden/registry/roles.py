"""Roles, the permissions each one grants, and the authenticated caller (:class:`Principal`).

The table below is the whole access policy of the registry: the service asks :meth:`Principal.require` before it
looks at anything else, so a caller without the role learns nothing about the version's state or gates.
Separation of duties (nobody approves what they submitted) is not a permission: it is checked by the service,
for admins too.

A token may also carry a *scope* (``model:NAME`` or ``model:NAME:VERSION``): its roles then apply to that model
or version only, which is what a serving client gets. :meth:`Principal.within` is the whole scope rule; the
service applies it to every action's subject (and again once an alias is resolved). Listing every model, and
anything about users or tokens, lies outside every scope and is refused rather than filtered: a filtered list
would read like a complete one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from mlwarden.registry.errors import BadInput, PermissionDenied

__all__ = ["PERMISSIONS", "Permission", "Principal", "Role", "parse_roles", "roles_granting"]


class Role(StrEnum):
    """A role a user holds; a user may hold several."""

    VIEWER = "viewer"
    SUBMITTER = "submitter"
    APPROVER = "approver"
    DEPLOYER = "deployer"
    ADMIN = "admin"


class Permission(StrEnum):
    """One kind of action the service checks."""

    READ = "read"
    REGISTER = "register"
    ATTACH = "attach"
    SCAN = "scan"
    APPROVE = "approve"
    RELEASE = "release"
    DEPLOY = "deploy"
    ROLLBACK = "rollback"
    QUARANTINE = "quarantine"
    MANAGE_USERS = "manage_users"
    MANAGE_TOKENS = "manage_tokens"
    RETIRE = "retire"
    SUPPRESS = "suppress"


_READ = frozenset({Permission.READ})

#: What each role may do. Admin holds every permission; the others are disjoint apart from reading.
PERMISSIONS: Mapping[Role, frozenset[Permission]] = MappingProxyType(
    {
        Role.VIEWER: _READ,
        Role.SUBMITTER: _READ | {Permission.REGISTER, Permission.ATTACH, Permission.SCAN},
        Role.APPROVER: _READ | {Permission.APPROVE, Permission.RELEASE, Permission.SUPPRESS},
        Role.DEPLOYER: _READ | {Permission.DEPLOY, Permission.ROLLBACK, Permission.QUARANTINE},
        Role.ADMIN: frozenset(Permission),
    }
)


def roles_granting(permission: Permission) -> tuple[Role, ...]:
    """The roles that grant ``permission``, in declaration order (for messages: "needs role approver or admin")."""
    return tuple(role for role in Role if permission in PERMISSIONS[role])


def parse_roles(names: Iterable[str | Role]) -> frozenset[Role]:
    """Role names to roles; at least one, each known.

    Raises:
        BadInput: an unknown role name, or none at all.
    """
    roles: set[Role] = set()
    for name in names:
        try:
            roles.add(Role(str(name).strip().lower()))
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise BadInput(f"unknown role {name!r} (expected one of: {known})") from None
    if not roles:
        raise BadInput("a user needs at least one role")
    return frozenset(roles)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is acting: a user name, the roles they held when they authenticated, and the token they used.

    Attributes:
        username: the user's name (what the audit log records as the actor).
        roles: the roles granted to the user.
        token_id: the id of the API token used (``None`` for in-process callers such as a bootstrap).
        scope: ``None`` (the roles apply everywhere), ``model:NAME`` or ``model:NAME:VERSION``: the token's
            roles apply only to that model or version (a serving client's token, say).
    """

    username: str
    roles: frozenset[Role]
    token_id: int | None = None
    scope: str | None = None

    def within(self, subject: str) -> bool:
        """Whether the action's ``subject`` lies inside the token's scope (always, for an unscoped token).

        Subjects are what actions audit: ``model:NAME`` (register, list a model's versions), ``model:NAME:N``,
        ``model:NAME@ALIAS`` and ``alias:NAME@ALIAS`` (rollback) are about one model; ``user:...``,
        ``token:...``, ``users`` and ``models`` are not, and lie outside every scope. A version scope admits
        only that version's own reference: an alias is refused even when it points at the version, because
        it may be moved to another one at any time (use ``NAME:N``).
        """
        if self.scope is None:
            return True
        kind, _, rest = self.scope.partition(":")
        if kind != "model" or not rest or rest.count(":") > 1:  # not a scope this version issues: fail closed
            return False
        if ":" in rest:  # one version
            return subject == self.scope
        return subject == self.scope or subject.startswith((f"model:{rest}:", f"model:{rest}@", f"alias:{rest}@"))

    def require_scope(self, subject: str, action: str) -> None:
        """Raise unless ``subject`` is inside the caller's token scope.

        Raises:
            PermissionDenied: the token is scoped to another model or version (or the subject is no model).
        """
        if self.within(subject):
            return
        hint = ""
        if (
            self.scope is not None
            and self.scope.count(":") == 2
            and subject.startswith(f"{self.scope.rsplit(':', 1)[0]}@")
        ):
            hint = f" (name the version, {self.scope.removeprefix('model:')}, not an alias)"
        raise PermissionDenied(
            f"{self.username}'s token is scoped to {self.scope} and may not {action} {subject}{hint}",
            permission=action,
        )

    def can(self, permission: Permission) -> bool:
        """Whether any of the caller's roles grants ``permission``."""
        return any(permission in PERMISSIONS[role] for role in self.roles)

    def require(self, permission: Permission, action: str | None = None) -> None:
        """Raise unless the caller may do ``permission``.

        Raises:
            PermissionDenied: naming the roles that would allow it.
        """
        if self.can(permission):
            return
        needed = roles_granting(permission)
        held = ", ".join(sorted(self.roles)) or "no role"
        raise PermissionDenied(
            f"{self.username} ({held}) may not {action or permission.value}: needs role {' or '.join(needed)}",
            permission=permission.value,
            roles_needed=tuple(r.value for r in needed),
        )
