"""Policy: what is allowed, when a scan fails, and the limits every analysis runs under.

A policy is loaded from TOML and validated with pydantic; unknown keys are errors (a typo in a security
policy must never silently weaken it). Defaults are the safe ones. The schema is documented in
``docs/policy.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlwarden.core.errors import PolicyError
from mlwarden.core.findings import Severity

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# pydantic validates these dataclasses when a policy *file* is loaded, and is imported only then: building
# pydantic models at import time would double the start-up of every scan, which mostly use the defaults.
_STRICT = {"extra": "forbid"}


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits. Exceeding one produces a finding (the file was not fully analysed), never a pass."""

    __pydantic_config__ = _STRICT

    max_file_size: int = 64 * GiB
    max_depth: int = 8  # nesting of archives / compressed layers
    max_members: int = 100_000  # members of one archive
    max_member_size: int = 16 * GiB  # uncompressed bytes read from one member
    max_total_uncompressed: int = 64 * GiB  # per top-level file, all layers
    max_compression_ratio: float = 250.0
    # The ratio limit applies only above this expanded size: sparse arrays legitimately compress 300:1, and a
    # few megabytes of zeros exhaust nothing; a bomb is a large absolute expansion.
    min_bomb_size: int = 64 * MiB
    max_pickle_opcodes: int = 20_000_000
    max_pickle_memo: int = 5_000_000
    max_pickle_depth: int = 10_000  # nesting of MARK frames / containers
    max_pickle_arg_preview: int = 200  # characters of argument shown as evidence
    max_pickles_per_stream: int = 1_000  # consecutive pickles in one file
    max_pickle_alloc: int = 1 * GiB  # size argument of an allowed allocating call (bytearray(n), range(n) ...)
    max_header_size: int = 100 * MiB  # JSON/metadata headers (safetensors, GGUF)
    max_text_size: int = 16 * MiB  # templates, JSON configs read whole
    timeout_seconds: float = 120.0  # per top-level file

    def __post_init__(self) -> None:
        for name, (low, high) in _BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"limits.{name}: {value!r} is not a number")
            if value <= low or (high is not None and value > high):
                rng = f"greater than {low}" + (f" and at most {high}" if high is not None else "")
                raise ValueError(f"limits.{name}: {value!r} must be {rng}")


# Bounds of each limit: (exclusive lower bound, inclusive upper bound or None).
_BOUNDS: dict[str, tuple[float, float | None]] = {
    "max_depth": (-1, 64),
    "max_compression_ratio": (1, None),
    "max_pickle_arg_preview": (8, None),
    **{
        name: (0, None)
        for name in (
            "max_file_size",
            "max_members",
            "max_member_size",
            "max_total_uncompressed",
            "min_bomb_size",
            "max_pickle_opcodes",
            "max_pickle_memo",
            "max_pickle_depth",
            "max_pickles_per_stream",
            "max_pickle_alloc",
            "max_header_size",
            "max_text_size",
            "timeout_seconds",
        )
    },
}


@dataclass(frozen=True, slots=True)
class PickleRules:
    """Extensions to the built-in pickle allowlist and denylist.

    Entries are ``module.qualname`` or a module prefix ending in ``.*`` (allows only class-like
    names, i.e. names starting with an upper-case letter, below that module).
    """

    __pydantic_config__ = _STRICT

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key in ("allow", "deny"):
            for item in getattr(self, key):
                if not isinstance(item, str) or not item or " " in item or "." not in item:
                    raise ValueError(f"pickle.{key}: {item!r} is not of the form module.name or module.*")


@dataclass(frozen=True, slots=True)
class RuleOverride:
    """Per-rule changes: a new severity, or disabling the rule altogether."""

    __pydantic_config__ = _STRICT

    severity: Severity | None = None
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class SandboxSettings:
    """Limits of one sandboxed dynamic-analysis run, and where framework profiles come from."""

    __pydantic_config__ = _STRICT

    wall_seconds: float = 120.0
    cpu_seconds: int = 120
    memory_bytes: int = 8 * GiB
    file_size_bytes: int = 256 * MiB
    tmpfs_bytes: int = 512 * MiB
    profile_dir: str | None = None  # a folder of <framework>.toml profiles replacing the shipped ones

    def __post_init__(self) -> None:
        for name in ("wall_seconds", "cpu_seconds", "memory_bytes", "file_size_bytes", "tmpfs_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"sandbox.{name}: {value!r} must be a positive number")


@dataclass(frozen=True, slots=True)
class Policy:
    """The whole policy. ``Policy()`` is the safe default."""

    __pydantic_config__ = _STRICT

    version: int = 1
    fail_on: Severity = Severity.MEDIUM
    limits: Limits = field(default_factory=Limits)
    pickle: PickleRules = field(default_factory=PickleRules)
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    rules: dict[str, RuleOverride] = field(default_factory=dict)

    def with_fail_on(self, severity: Severity) -> Policy:
        """A copy with another failing severity (the CLI's ``--fail-on``)."""
        return dataclasses.replace(self, fail_on=severity)


def _severities(data: dict[str, Any]) -> dict[str, Any]:
    """Turn severity names into :class:`Severity` before validation, naming the key on error."""
    out = dict(data)
    try:
        if "fail_on" in out:
            out["fail_on"] = Severity.parse(out["fail_on"])
        if isinstance(out.get("rules"), dict):
            rules = {}
            for rule_id, override in out["rules"].items():
                if isinstance(override, dict) and override.get("severity") is not None:
                    override = {**override, "severity": Severity.parse(override["severity"])}
                rules[rule_id] = override
            out["rules"] = rules
    except ValueError as exc:
        raise PolicyError(f"invalid severity: {exc}") from None
    return out


def parse_policy(data: dict[str, Any], source: str = "<policy>") -> Policy:
    """Validate a policy mapping (as read from TOML).

    Raises:
        PolicyError: naming the offending key.
    """
    from pydantic import TypeAdapter, ValidationError

    if data.get("version", 1) != 1:
        raise PolicyError(
            f"policy {source}: unsupported policy version {data.get('version')!r} (this mlwarden reads version 1)"
        )
    try:
        return TypeAdapter(Policy).validate_python(_severities(data))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise PolicyError(f"policy {source} is invalid: {problems}") from None
    except ValueError as exc:  # __post_init__ checks
        raise PolicyError(f"policy {source} is invalid: {exc}") from None


def load_policy(path: str | Path | None) -> Policy:
    """Load and validate a TOML policy file; ``None`` gives the default policy.

    Raises:
        PolicyError: the file is missing, is not TOML, or does not match the schema. The message names
            the offending key.
    """
    if path is None:
        return Policy()
    import tomllib

    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"cannot read policy {p}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PolicyError(f"policy {p} is not valid TOML: {exc}") from exc
    return parse_policy(data, str(p))
