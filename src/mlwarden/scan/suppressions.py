"""Apply reviewed suppressions (``mlwarden/core/suppressions.py``) to the results of a scan.

Suppressions are applied after every file was analysed and the policy applied, in the process that builds the
report: analysis never knows about them, so a suppression can only ever mark a finding, never prevent one.

A digest suppression names the bytes that were reviewed. Each file's identity (device, inode, size, modification
and change times) is taken before the scan starts; a file is hashed only if one of its findings could be covered
by a digest suppression, and the digest counts only if the identity is still the same after hashing — so a file
replaced or rewritten during the scan never borrows the suppression of the bytes it replaced.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import date
from pathlib import Path

from mlwarden.core.suppressions import Suppression, SuppressionUse, path_spellings, uses
from mlwarden.scan.result import FileResult

__all__ = ["apply_suppressions", "file_digest", "identities", "known_rules"]

_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike[str]) -> str | None:
    """SHA-256 (hex) of a file's bytes, or ``None`` when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _identity(path: Path) -> tuple[int, ...] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def identities(files: Iterable[Path]) -> dict[str, tuple[int, ...] | None]:
    """Each file's identity before a scan, keyed by the path as the scan displays it (``str(path)``)."""
    return {str(f): _identity(f) for f in files}


def _verified_digest(path: str, before: tuple[int, ...] | None) -> str | None:
    """The file's digest if it is still the file identified ``before`` the scan, else ``None``."""
    if before is None:
        return None
    digest = file_digest(path)
    return digest if digest is not None and _identity(Path(path)) == before else None


def apply_suppressions(
    results: Sequence[FileResult],
    suppressions: Sequence[Suppression],
    on: date,
    before: Mapping[str, tuple[int, ...] | None],
    cwd: Path | None = None,
) -> tuple[list[FileResult], tuple[SuppressionUse, ...]]:
    """Mark the findings that a live suppression covers; count what every suppression matched.

    A finding is marked with the first suppression in file order that covers it and has not expired. Expired
    suppressions still count the findings they cover (so a report can say which findings count again).

    Args:
        results: the scan's results, policy applied.
        suppressions: in file order.
        on: the day expiry is judged on.
        before: file identities taken before the scan (:func:`identities`); a file missing there is never hashed.
        cwd: the folder absolute paths are also made relative to for path globs (default: the current one).

    Returns:
        The results with marked findings (same order), and one :class:`SuppressionUse` per suppression.
    """
    matched: dict[int, int] = {}
    out: list[FileResult] = []
    for result in results:
        if result.error is not None or not result.findings:
            out.append(result)
            continue
        spellings = path_spellings(result.path, cwd)
        by_digest = {s.rule_id for s in suppressions if s.digest is not None}
        needs_digest = any(f.rule_id in by_digest for f in result.findings)
        digest = _verified_digest(result.path, before.get(result.path)) if needs_digest else None
        findings = []
        changed = False
        for finding in result.findings:
            chosen: Suppression | None = None
            for i, s in enumerate(suppressions):
                if s.covers(finding.rule_id, spellings, digest):
                    matched[i] = matched.get(i, 0) + 1
                    if chosen is None and not s.expired(on):
                        chosen = s
            if chosen is not None:
                finding = replace(finding, suppressed=chosen)
                changed = True
            findings.append(finding)
        out.append(replace(result, findings=tuple(findings)) if changed else result)
    return out, uses(suppressions, matched, on)


def known_rules() -> frozenset[str]:
    """Every rule ID in the catalogue (imports every handler, as ``mlwarden rules`` does): what may be suppressed."""
    from mlwarden.core.findings import catalogue
    from mlwarden.scan.static.base import load_all_handlers

    load_all_handlers()
    import mlwarden.scan.context  # noqa: F401 - declares the generic rules

    return frozenset(catalogue())
