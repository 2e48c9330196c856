"""Tamper-evident audit log: an RFC 6962 Merkle tree of every registry action, with signed checkpoints.

Public surface: :class:`AuditEvent` (what to record), :class:`AuditLog` (append, read, checkpoint, prove, verify),
:class:`CheckpointSigner` (the Ed25519 key), :class:`VerificationReport`. The tree math is in
:mod:`~mlwarden.registry.audit.merkle`.
"""

from __future__ import annotations

from mlwarden.registry.audit.checkpoint import Checkpoint, CheckpointSigner, load_public_key
from mlwarden.registry.audit.errors import AuditError, AuditKeyError, ProofError, TamperedError
from mlwarden.registry.audit.events import AuditEvent, AuditRecord
from mlwarden.registry.audit.log import AuditLog
from mlwarden.registry.audit.verify import Problem, VerificationReport

__all__ = [
    "AuditError",
    "AuditEvent",
    "AuditKeyError",
    "AuditLog",
    "AuditRecord",
    "Checkpoint",
    "CheckpointSigner",
    "Problem",
    "ProofError",
    "TamperedError",
    "VerificationReport",
    "load_public_key",
]
