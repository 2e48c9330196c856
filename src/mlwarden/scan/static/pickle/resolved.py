"""What prefix-admitted pickle globals resolve to: the table built offline by ``scripts/build-resolved-allowlist``.

The allowlist's prefix rules (every class under ``sklearn``, every public function of ``torch.nn.functional``)
describe spellings; ``find_class`` hands out whatever ``getattr(module, name)`` is, and modules re-export
objects from elsewhere (``operator.attrgetter``, ``functools.partial``, modules, ``tempfile`` classes). The table
records, per framework version it was built from, every name those rules admit that resolves to an object defined
there (or to a re-export of an allowed object); the scanner admits a prefix name only when the table has it, and
judges an excluded re-export as the object it resolves to. Nothing is imported at scan time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True, slots=True)
class Resolution:
    """How the table resolves one ``module.name``."""

    admitted: bool
    reason: str
    home: str | None  # the object's real ``module.qualname``, when it differs from the name


@dataclass(frozen=True, slots=True)
class ResolvedTable:
    """The shipped table: walked modules, admitted entries, excluded names with reasons, framework versions."""

    modules: frozenset[str]
    entries: dict[str, str | list[str]]
    excluded: dict[str, list[str]]
    versions: dict[str, str]

    def resolve(self, full: str) -> Resolution:
        """Resolve ``module.name`` (the module is everything before the last dot)."""
        entry = self.entries.get(full)
        if entry is not None:
            home = entry[1] if isinstance(entry, list) else None
            return Resolution(True, "alias" if home else entry if isinstance(entry, str) else "", home)
        excluded = self.excluded.get(full)
        if excluded is not None:
            return Resolution(False, excluded[0], excluded[1] if len(excluded) > 1 else None)
        module = full.rpartition(".")[0]
        if module in self.modules:
            return Resolution(
                False, f"{module} defines no such name in the versions resolved ({self.built_from})", None
            )
        return Resolution(False, f"module {module} is not in the framework versions resolved ({self.built_from})", None)

    def kind(self, full: str) -> str | None:
        """The entry's kind (``class``, ``function``, ``value``, ``enum``, ``data-class``, ``alias``) or None."""
        entry = self.entries.get(full)
        if entry is None:
            return None
        return entry if isinstance(entry, str) else entry[0]

    @property
    def built_from(self) -> str:
        """The framework versions the table was built from, for messages."""
        return ", ".join(f"{k} {v}" for k, v in sorted(self.versions.items()))


@cache
def table() -> ResolvedTable:
    """The shipped table (read once per process)."""
    raw = json.loads(resources.files(__package__).joinpath("resolved.json").read_text("utf-8"))
    return ResolvedTable(
        frozenset(raw["modules"]), raw["entries"], raw["excluded"], {str(k): str(v) for k, v in raw["versions"].items()}
    )
