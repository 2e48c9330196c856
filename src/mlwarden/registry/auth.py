"""API tokens: random, stored only as a hash, found by a public prefix, compared in constant time.

A token reads ``mlw_<43 characters>`` (``secrets.token_urlsafe(32)``: 256 random bits). The database keeps:

* ``lookup`` — the first :data:`LOOKUP_LENGTH` characters after ``mlw_``, in clear, indexed: it finds the row
  without scanning every token, and is useless on its own (it is 48 of the 256 bits);
* ``secret_hash`` — SHA-256 of the whole token. A slow password hash buys nothing here: the token has 256 bits
  of entropy, so no dictionary exists to attack the hash with.

Presenting a token costs the same whether its prefix exists or not: an unknown prefix is still compared
(:func:`hmac.compare_digest`) against a dummy hash, so response time does not reveal which prefixes are live.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from mlwarden.registry.errors import AuthError, BadInput
from mlwarden.registry.models import TokenRow

__all__ = [
    "LOOKUP_LENGTH",
    "TOKEN_PREFIX",
    "NewToken",
    "find_token",
    "why_dead",
    "hash_token",
    "new_token",
    "parse_duration",
]

TOKEN_PREFIX = "mlw_"  # noqa: S105 - the public prefix of every token, not a secret
#: Characters of the random part kept in clear to find the row.
LOOKUP_LENGTH = 8
_RANDOM_BYTES = 32
_TOKEN_SHAPE = re.compile(r"mlw_[A-Za-z0-9_-]{43}")
_DUMMY_HASH = hashlib.sha256(b"mlwarden: no such token").hexdigest()
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True, slots=True)
class NewToken:
    """A generated token: the plaintext (given to the user once) and what the database stores."""

    plaintext: str
    lookup: str
    secret_hash: str


def hash_token(token: str) -> str:
    """SHA-256 (hex) of the whole token text."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> NewToken:
    """Generate a fresh token from :mod:`secrets`."""
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(_RANDOM_BYTES)
    return NewToken(plaintext, plaintext[len(TOKEN_PREFIX) : len(TOKEN_PREFIX) + LOOKUP_LENGTH], hash_token(plaintext))


def find_token(session: Session, token: str, now: datetime) -> TokenRow:
    """The live token row matching ``token``.

    Every candidate sharing the lookup prefix is compared with :func:`hmac.compare_digest` (and a dummy one
    when there is none), so the work done does not depend on whether the prefix exists.

    Raises:
        AuthError: malformed, unknown, revoked or expired token, or a disabled user. The message says which,
            except that a malformed and an unknown token read the same.
    """
    shaped = isinstance(token, str) and _TOKEN_SHAPE.fullmatch(token) is not None
    lookup = token[len(TOKEN_PREFIX) : len(TOKEN_PREFIX) + LOOKUP_LENGTH] if shaped else ""
    presented = hash_token(token) if isinstance(token, str) else _DUMMY_HASH
    candidates: Sequence[TokenRow] = (
        session.scalars(select(TokenRow).where(TokenRow.lookup == lookup)).all() if shaped else ()
    )
    match: TokenRow | None = None
    for row in candidates or (None,):
        stored = row.secret_hash if row is not None else _DUMMY_HASH
        if hmac.compare_digest(stored.encode("ascii"), presented.encode("ascii")) and row is not None:
            match = row
    if match is None:
        raise AuthError("invalid token: not recognised (check MLWARDEN_TOKEN or --token)")
    dead = why_dead(match, now)
    if dead is not None:
        raise AuthError(dead)
    return match


def why_dead(row: TokenRow, now: datetime) -> str | None:
    """Why the token in ``row`` no longer authenticates (revoked, expired, its user disabled), or ``None``."""
    if row.revoked_at is not None:
        return f"token {row.id} was revoked on {row.revoked_at:%Y-%m-%d %H:%M} UTC"
    if row.expires_at is not None and row.expires_at <= now:
        return f"token {row.id} expired on {row.expires_at:%Y-%m-%d %H:%M} UTC; ask an admin for another"
    if row.user.disabled:
        return f"user {row.user.username} is disabled"
    return None


def parse_duration(text: str) -> timedelta | None:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s`` (or a sum like ``1d12h``); ``never`` gives None (no expiry).

    Raises:
        BadInput: an empty, zero, negative or unparseable duration.
    """
    cleaned = text.strip().lower()
    if cleaned in ("never", "none"):
        return None
    parts = re.findall(r"(\d+)\s*([smhdw])", cleaned)
    if not parts or re.sub(r"(\d+)\s*([smhdw])", "", cleaned).strip():
        raise BadInput(f"invalid duration {text!r}: use e.g. 30d, 12h, 90m, 2w or never")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in parts)
    if seconds <= 0:
        raise BadInput(f"invalid duration {text!r}: must be longer than zero")
    return timedelta(seconds=seconds)
