"""Append a reviewed suppression to a suppressions file, keeping everything reviewers wrote in it.

The file is edited as text, never re-serialised: comments, order and formatting of existing entries stay as they
are, so the diff a reviewer sees is exactly the new entry. The result is parsed back before it replaces the file
(atomically), so a failed add leaves the file untouched. The format is :mod:`mlwarden.core.suppressions`.
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import date
from pathlib import Path

from mlwarden.core.files import write_atomically
from mlwarden.core.suppressions import FORMAT_VERSION, Suppression, SuppressionError, parse_suppressions, today

__all__ = ["append_suppression"]

_HEADER = (
    "# Reviewed suppressions for mlwarden (see docs/suppressions.md).\n"
    "# Each entry accepts one rule on one file (by SHA-256 digest or path glob) until it expires.\n"
    "# Add entries with `mlwarden suppress add`; review changes to this file like code.\n"
    f"version = {FORMAT_VERSION}\n"
)


def _toml_string(text: str) -> str:
    """A TOML basic string (quotes, backslashes and control characters escaped)."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _block(s: Suppression, added: date) -> str:
    target = f"digest = {_toml_string(s.digest)}" if s.digest is not None else f"path = {_toml_string(s.path or '')}"
    return (
        "\n[[suppression]]\n"
        f"rule = {_toml_string(s.rule_id)}\n"
        f"{target}\n"
        f"reason = {_toml_string(s.reason)}\n"
        f"reviewer = {_toml_string(s.reviewer)}\n"
        f"expires = {s.expires.isoformat()}\n"
        f"added = {added.isoformat()}\n"
    )


def append_suppression(path: str | os.PathLike[str], entry: Suppression, *, on: date | None = None) -> Suppression:
    """Append ``entry`` to the file (created with a header if missing), keeping what reviewers wrote in it.

    The existing file must be valid, the same rule and target must not be there yet, and the result is parsed
    back before it replaces the file (atomically), so a failed add leaves the file as it was.

    Returns:
        The entry as stored (with its ``source``).

    Raises:
        SuppressionError: the file is invalid or unwritable, or already has this rule on this target.
    """
    target = Path(path)
    if target.exists():
        if not target.is_file():
            raise SuppressionError(f"suppressions file {target} is not a regular file")
        try:
            existing_text = target.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SuppressionError(f"cannot read suppressions file {target}: {exc}") from None
        existing = parse_suppressions(existing_text, str(target))
    else:
        existing_text, existing = _HEADER, ()
    for old in existing:
        if (old.rule_id, old.digest, old.path) == (entry.rule_id, entry.digest, entry.path):
            raise SuppressionError(f"{old.source} already suppresses {entry.rule_id} on {entry.target}; edit it there")
    text = existing_text + ("" if existing_text.endswith("\n") else "\n") + _block(entry, on or today())
    stored = parse_suppressions(text, str(target))
    if len(stored) != len(existing) + 1 or replace(stored[-1], source="") != replace(entry, source=""):
        raise SuppressionError(f"cannot append to {target}: the entry did not read back as written")
    _write_atomically(target, text)
    return stored[-1]


def _write_atomically(target: Path, text: str) -> None:
    try:
        write_atomically(target, text, target.stat().st_mode & 0o777 if target.exists() else 0o644)
    except OSError as exc:
        raise SuppressionError(f"cannot write suppressions file {target}: {exc.strerror or exc}") from None
