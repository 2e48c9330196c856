"""Authenticated records on the event channel between the sandboxed runner and the host.

The model runs in the same process as the runner's reporter, and the event descriptor's number is no secret,
so anything may be written to it. Every genuine record is therefore a line ``<mac> <json>``: an HMAC-SHA256 over
the JSON text with a per-run secret key, which the host generates and hands to the runner through a pipe the
runner reads and closes before the framework or the model is touched (the key is never in argv or the
environment). The key is ratcheted after every record (``K[n+1] = SHA-256(K[n])``) and each record carries its
sequence number, so a line that is forged, replayed, reordered or dropped breaks the chain for the host: the run
is then never clean. A payload that reaches the live key can forge *later* records, but never remove what was
already reported before it got there (the audit hook reports ``gc`` introspection before it happens).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

_LABEL = b"mlwarden-record-ratchet\0"


def ratchet(key: bytes) -> bytes:
    """The next record's key."""
    return hashlib.sha256(_LABEL + key).digest()


def derive(master: bytes, label: str) -> bytes:
    """A sub-key (e.g. one per warm-pool request) that does not reveal ``master``."""
    return hmac.new(master, label.encode(), hashlib.sha256).digest()


def read_key(fd: int) -> bytes:
    """Read the key from its pipe and close it (nothing else in the process can read it again)."""
    data = b""
    try:
        while len(data) < 32:
            chunk = os.read(fd, 64)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data


def _opaque(value: object) -> str:
    return "<object>"  # never repr() a model's object: its __repr__ would run inside the reporter


class Signer:
    """Turns records into authenticated, sequenced lines (used inside the sandbox)."""

    __slots__ = ("_dumps", "_key", "_new", "_sha", "seq")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self.seq = 0
        self._dumps = json.dumps  # bound now: later monkeypatching of json/hmac does not reach the signer
        self._new = hmac.new
        self._sha = hashlib.sha256

    def forget(self) -> None:
        """Wipe the key (a forked child drops its parent's chain: it must not be able to sign for it)."""
        self._key = b""

    def line(self, record: dict[str, Any]) -> bytes:
        """One newline-terminated line ``<mac> <json>`` for ``record`` (which gets its sequence number)."""
        record["seq"] = self.seq
        body = self._dumps(record, default=_opaque).encode()
        mac = self._new(self._key, body, self._sha).hexdigest().encode()
        self._key = self._sha(_LABEL + self._key).digest()
        self.seq += 1
        return mac + b" " + body + b"\n"


class Verifier:
    """Checks one chain of lines (used by the host)."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.seq = 0
        self.forged = 0
        self.samples: list[str] = []

    def check(self, line: bytes) -> dict[str, Any] | None:
        """The record if ``line`` is the chain's next genuine record, else None (the chain is not advanced)."""
        mac, _, body = line.strip().partition(b" ")
        expected = hmac.new(self.key, body, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(mac, expected):
            return None
        try:
            record = json.loads(body)
        except ValueError:
            return None
        if not isinstance(record, dict) or record.get("seq") != self.seq:
            return None
        self.key = ratchet(self.key)
        self.seq += 1
        return record

    def reject(self, line: bytes) -> None:
        """Count a line no chain accepted."""
        if line.strip():
            self.forged += 1
            if len(self.samples) < 3:
                self.samples.append(line.strip()[:160].decode(errors="replace"))


def verify(data: bytes, key: bytes) -> tuple[list[dict[str, Any]], Verifier]:
    """The genuine records of one chain in ``data`` and the verifier (its ``forged`` count, samples)."""
    verifier = Verifier(key)
    out = []
    for line in data.split(b"\n")[:-1]:  # a last line without its newline was cut off by the kill
        if not line.strip():
            continue
        record = verifier.check(line)
        if record is None:
            verifier.reject(line)
        else:
            out.append(record)
    return out, verifier
