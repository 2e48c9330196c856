"""Failed authentications, counted and summarised instead of one audit row each (security review 2027-01, item 3).

One unauthenticated client used to write ~5,500 audit rows in 10 s: every bad token was its own entry, so a flood
buried the log's real entries and grew it without bound. Now, per window (60 s by default):

* the **first** refusal of each (client, reason) is written at once, as before (``action="auth"``): a single
  mistyped token is still visible immediately;
* every refusal is **counted** per client and reason; when the window closes (on the next authentication after
  it, or on :meth:`RefusalCounter.flush` at shutdown) **one** summary row is written (``action="auth.summary"``)
  with the counts, the busiest clients first (at most :data:`MAX_LISTED` listed, the rest totalled);
* a client crossing ``alert_after`` refusals in a window is logged (warning, once per window), and one with more
  than ``limit`` is **rate limited**: :meth:`limited` tells the HTTP API to answer 429 without even looking the
  token up (those refusals are counted as ``rate_limited``).

Memory is bounded: at most ``max_clients`` clients are tracked per window; the rest count under ``"(other)"``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mlwarden.core.errors import MlwardenError

if TYPE_CHECKING:
    from mlwarden.registry.audit import AuditLog

log = logging.getLogger("mlwarden.registry.auth")

#: How many (client, reason) counts a summary row lists; the rest are totalled.
MAX_LISTED = 100
#: Client name used when the caller is local (the CLI) or unknown.
LOCAL = "local"
OTHER = "(other)"
RATE_LIMITED = "rate_limited"


def reason_class(message: str) -> str:
    """The kind of an authentication failure, from its message (token ids and dates left out)."""
    text = message.lower()
    for needle, kind in (("revoked", "revoked"), ("expired", "expired"), ("disabled", "disabled")):
        if needle in text:
            return kind
    if "too many" in text:
        return RATE_LIMITED
    return "invalid"


class RefusalCounter:
    """Counts refusals per window and writes them to ``audit`` as described in the module docstring."""

    def __init__(
        self,
        audit: AuditLog,
        *,
        window_s: float = 60.0,
        limit: int = 100,
        alert_after: int = 20,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Count into windows of ``window_s`` seconds; rate limit a client above ``limit`` refusals in one."""
        self.audit = audit
        self.window_s = window_s
        self.limit = limit
        self.alert_after = alert_after
        self.max_clients = max_clients
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._started_at = datetime.now(UTC)
        self._counts: dict[tuple[str, str], int] = {}
        self._per_client: dict[str, int] = {}
        self._alerted: set[str] = set()

    def limited(self, client: str | None) -> bool:
        """Whether ``client`` exceeded the refusal limit in the current window (answer 429, do not look up)."""
        self.tick()
        with self._lock:
            return self._per_client.get(client or LOCAL, 0) >= self.limit

    def record(self, client: str | None, message: str) -> None:
        """Count one refusal; write it now when it is the first of its client and reason in this window."""
        self.tick()
        reason = reason_class(message)
        with self._lock:
            who = client or LOCAL
            if who not in self._per_client and len(self._per_client) >= self.max_clients:
                who = OTHER
            key = (who, reason)
            first = key not in self._counts
            self._counts[key] = self._counts.get(key, 0) + 1
            seen = self._per_client[who] = self._per_client.get(who, 0) + 1
            alert = seen >= self.alert_after and who not in self._alerted
            if alert:
                self._alerted.add(who)
        if alert:
            log.warning("%d failed authentication(s) from %s in %.0f s (latest: %s)", seen, who, self.window_s, reason)
        if first:
            self._write("auth", f"token:{who}", message, {"client": who, "reason": reason, "first_in_window": True})

    def tick(self) -> None:
        """Close the window if its time is up (cheap; called on every authentication)."""
        if self._clock() - self._start >= self.window_s:
            self.flush()

    def flush(self) -> None:
        """Write the current window's summary row (if anything was refused) and start a new window."""
        with self._lock:
            counts, started = self._counts, self._started_at
            self._counts, self._per_client, self._alerted = {}, {}, set()
            self._start, self._started_at = self._clock(), datetime.now(UTC)
        if not counts:
            return
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        listed = [{"client": c, "reason": r, "count": n} for (c, r), n in ranked[:MAX_LISTED]]
        rest = sum(n for _, n in ranked[MAX_LISTED:])
        total = sum(counts.values())
        clients = len({c for c, _ in counts})
        details = {
            "window_start": started.isoformat(),
            "window_end": datetime.now(UTC).isoformat(),
            "total": total,
            "clients": clients,
            "counts": listed,
            "unlisted": rest,
        }
        reason = f"{total} failed authentication(s) from {clients} client(s)"
        if total > len(counts):
            log.warning("audit: %s in the last window", reason)
        self._write("auth.summary", "auth", reason, details)

    def _write(self, action: str, subject: str, reason: str, details: dict[str, object]) -> None:
        from mlwarden.registry.audit import AuditEvent

        try:
            self.audit.append_now(AuditEvent("anonymous", action, subject, False, reason=reason, details=details))
        except MlwardenError as exc:  # the refusal must still reach the caller
            log.error("cannot audit failed authentications: %s", exc)
