"""Errors of the audit log; each is an :class:`~mlwarden.core.errors.MlwardenError` with a one-line message."""

from __future__ import annotations

from mlwarden.core.errors import MlwardenError


class AuditError(MlwardenError):
    """The audit log refused an operation (an invalid event, a missing signer, an out-of-range sequence number)."""


class ProofError(AuditError):
    """A Merkle proof is malformed or does not lead to the expected root."""


class AuditKeyError(AuditError):
    """A checkpoint key is missing, unreadable, of the wrong type, too widely readable, or would be overwritten."""


class TamperedError(AuditError):
    """The log's content does not match its own hashes or signed checkpoints (run ``mlwarden audit verify``)."""
