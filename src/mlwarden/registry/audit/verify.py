"""Offline verification: recompute every leaf from the stored columns, the tree, and every signed checkpoint.

What is checked, in one pass over the entries in ``seq`` order (streamed, O(log n) memory):

* ``seq`` is gapless from 0 (a deleted row is named);
* each leaf recomputed from the row's *columns* equals the leaf hash stored when the row was written — a direct SQL
  edit of any column is named by its ``seq``;
* each checkpoint's Ed25519 signature (over a body rebuilt from its columns) and key id;
* each well-signed checkpoint's root equals the recomputed root at its size, and no checkpoint is beyond the end of
  the log (truncation). Two consecutive checkpoints that both match are consistent by construction (both are
  prefixes of the same recomputed leaves — what an RFC 6962 consistency proof establishes); when an earlier one
  fails and a later one matches, the signed history was rewritten, which is reported as such.

Naming the entry: an attacker who edits a row *and* recomputes its stored leaf hash defeats the per-row comparison,
but not the signed roots: the damage is then narrowed to the entries between the last checkpoint that still matches
and the first that does not (checkpoints are made every ``checkpoint_every`` entries, so the range is that small).
Entries after the last good checkpoint are an *unsigned tail*: reported, not a failure, since nothing signed them yet.
Nothing offline detects deleting the newest entries *and* every checkpoint that covers them; keep a copy of recent
checkpoints elsewhere (``mlwarden audit checkpoint`` prints one) to close that gap.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select

from mlwarden.registry.audit.checkpoint import Checkpoint, key_id
from mlwarden.registry.audit.merkle import EMPTY_ROOT, TreeBuilder
from mlwarden.registry.audit.replay import replay
from mlwarden.registry.audit.tables import AuditCheckpointRow
from mlwarden.registry.db import Database


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the log.

    Attributes:
        kind: ``edited`` (a row's columns differ from its leaf hash), ``gap`` (missing seq), ``rewritten`` (a signed
            root differs and no single row is to blame), ``inconsistent`` (two signed roots contradict each other),
            ``truncated`` (a checkpoint covers entries that are gone), ``bad-signature``, ``unknown-key``.
        message: one line for people.
        seq: the entry concerned, when one is.
        tree_size: the checkpoint concerned, when one is.
    """

    kind: str
    message: str
    seq: int | None = None
    tree_size: int | None = None


@dataclass(frozen=True)
class VerificationReport:
    """The outcome of :func:`verify_log`: ``ok`` when there is no problem (an unsigned tail is not one)."""

    size: int
    root: bytes
    checkpoints: int
    good_checkpoints: int
    signed_size: int
    unsigned_tail: tuple[int, int] | None
    problems: tuple[Problem, ...]
    full: bool

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems

    @property
    def named_entries(self) -> tuple[int, ...]:
        """The ``seq`` of every entry a problem names, ascending."""
        return tuple(sorted({p.seq for p in self.problems if p.seq is not None}))

    def summary(self) -> str:
        """One line for people."""
        verdict = "OK" if self.ok else f"TAMPERED ({len(self.problems)} problem(s))"
        tail = ""
        if self.unsigned_tail:
            start, stop = self.unsigned_tail
            tail = f"; {stop - start} unsigned entr{'y' if stop - start == 1 else 'ies'} ({start}..{stop - 1})"
        return (
            f"audit log {verdict}: {self.size} entries, root {self.root.hex()}, "
            f"{self.good_checkpoints}/{self.checkpoints} checkpoints verified, signed up to {self.signed_size}{tail}"
        )


def load_checkpoints(database: Database) -> list[Checkpoint]:
    """Every checkpoint, by tree size (then by the order they were made)."""
    c = AuditCheckpointRow
    query = select(c.tree_size, c.root_hash, c.timestamp, c.key_id, c.signature).order_by(c.tree_size, c.id)
    with database.reading() as session:
        rows = session.execute(query).all()
    # SQLite hands the time back without its zone; it was stored as UTC, so say so.
    return [
        Checkpoint(size, root, ts if ts.tzinfo else ts.replace(tzinfo=UTC), key, sig)
        for size, root, ts, key, sig in rows
    ]


def verify_log(
    database: Database, public_key: Ed25519PublicKey, *, full: bool = True, jobs: int | None = None
) -> VerificationReport:
    """Verify the whole log offline (see the module docstring for what is checked and why).

    Args:
        database: the registry database.
        public_key: the key that should have signed every checkpoint.
        full: recompute each leaf from its columns (the default); False trusts the stored leaf hashes (faster, still
            checks the tree against every signed root, but cannot name an edited row).
        jobs: worker processes for a big log (default: the CPU count; see :mod:`~mlwarden.registry.audit.replay`).
    """
    problems: list[Problem] = []
    checkpoints = load_checkpoints(database)
    expected_key = key_id(public_key)
    good: dict[int, list[Checkpoint]] = defaultdict(list)
    for cp in checkpoints:
        if cp.key_id != expected_key:
            problems.append(
                Problem(
                    "unknown-key",
                    f"checkpoint at size {cp.tree_size} is signed by key {cp.key_id}, "
                    f"not by the given key {expected_key}",
                    tree_size=cp.tree_size,
                )
            )
        elif not cp.signature_valid(public_key):
            problems.append(
                Problem(
                    "bad-signature",
                    f"checkpoint at size {cp.tree_size}: the signature does not match its "
                    "content (the checkpoint row was edited)",
                    tree_size=cp.tree_size,
                )
            )
        else:
            good[cp.tree_size].append(cp)
    parts = replay(database, sorted(good), full=full, jobs=jobs)
    edited: list[int] = []
    for part in parts:
        for damage in part.damage:
            problems.append(Problem(damage.kind, damage.message, seq=damage.seq))
            if damage.kind == "edited":
                edited.append(damage.seq)
    roots = {0: EMPTY_ROOT}
    prefix = TreeBuilder()
    for part in parts:
        for size, local in part.frontiers.items():
            roots[size] = prefix.extended(local, size - part.start).root()
        prefix = prefix.extended(part.end, part.count)
    size = prefix.size
    roots[size] = prefix.root()
    matches = [(s, cp.root_hash == roots[s]) for s in sorted(good) if s <= size for cp in good[s]]
    for cp_size in sorted(s for s in good if s > size):
        problems.append(
            Problem(
                "truncated",
                f"checkpoint at size {cp_size} signed entries up to {cp_size - 1}, but the log "
                f"ends at {size - 1} (entries deleted)",
                tree_size=cp_size,
            )
        )
    problems += _root_problems(matches, edited)
    signed = max((s for s, ok in matches if ok), default=0)
    tail = (signed, size) if size > signed else None
    return VerificationReport(
        size=size,
        root=roots[size],
        checkpoints=len(checkpoints),
        good_checkpoints=sum(ok for _, ok in matches),
        signed_size=signed,
        unsigned_tail=tail,
        problems=tuple(problems),
        full=full,
    )


def _root_problems(matches: list[tuple[int, bool]], edited: list[int]) -> list[Problem]:
    """Explain signed roots that differ from the recomputed tree, narrowing the damage to a range of entries."""
    problems: list[Problem] = []
    last_good = 0
    for index, (size, ok) in enumerate(matches):
        if ok:
            earlier_bad = [s for s, good in matches[:index] if not good and s > 0]
            if earlier_bad and earlier_bad[-1] > last_good:
                problems.append(
                    Problem(
                        "inconsistent",
                        f"checkpoints at sizes {earlier_bad[-1]} and {size} contradict each "
                        f"other: the log before entry {earlier_bad[-1]} changed after it was signed, and the "
                        f"checkpoint at {size} signed the changed log",
                        tree_size=size,
                    )
                )
            last_good = size
            continue
        named = [s for s in edited if s < size]
        if named:
            blame = f"entr{'y' if len(named) == 1 else 'ies'} {', '.join(map(str, named[:20]))} changed"
        else:
            blame = (
                f"one or more of entries {last_good}..{size - 1} were rewritten together with their stored leaf hashes"
            )
        problems.append(
            Problem(
                "rewritten",
                f"checkpoint at size {size}: the signed root differs from the recomputed one ({blame})",
                tree_size=size,
            )
        )
    return problems
