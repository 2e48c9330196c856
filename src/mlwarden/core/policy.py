"""Policy: what is allowed, when a scan fails, and the limits every analysis runs under.

A policy is loaded from TOML and validated with pydantic; unknown keys are errors (a typo in a security
policy must never silently weaken it). Defaults are the safe ones. The schema is documented in
``docs/policy.md``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mlwarden.core.errors import PolicyError
from mlwarden.core.findings import Severity

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Strict):
    """Resource limits. Exceeding one produces a finding (the file was not fully analysed), never a pass."""

    max_file_size: Annotated[int, Field(gt=0)] = 64 * GiB
    max_depth: Annotated[int, Field(ge=0, le=64)] = 8  # nesting of archives / compressed layers
    max_members: Annotated[int, Field(gt=0)] = 100_000  # members of one archive
    max_member_size: Annotated[int, Field(gt=0)] = 16 * GiB  # uncompressed bytes read from one member
    max_total_uncompressed: Annotated[int, Field(gt=0)] = 64 * GiB  # per top-level file, all layers
    max_compression_ratio: Annotated[float, Field(gt=1)] = 250.0
    max_pickle_opcodes: Annotated[int, Field(gt=0)] = 20_000_000
    max_pickle_memo: Annotated[int, Field(gt=0)] = 5_000_000
    max_pickle_depth: Annotated[int, Field(gt=0)] = 10_000  # nesting of MARK frames / containers
    max_pickle_arg_preview: Annotated[int, Field(gt=8)] = 200  # characters of argument shown as evidence
    max_pickles_per_stream: Annotated[int, Field(gt=0)] = 1_000  # consecutive pickles in one file
    max_header_size: Annotated[int, Field(gt=0)] = 100 * MiB  # JSON/metadata headers (safetensors, GGUF)
    max_text_size: Annotated[int, Field(gt=0)] = 16 * MiB  # templates, JSON configs read whole
    timeout_seconds: Annotated[float, Field(gt=0)] = 120.0  # per top-level file


class PickleRules(_Strict):
    """Extensions to the built-in pickle allowlist and denylist.

    Entries are ``module.qualname`` or a module prefix ending in ``.*`` (allows only class-like
    names, i.e. names starting with an upper-case letter, below that module).
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    @field_validator("allow", "deny")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not item or " " in item or "." not in item:
                raise ValueError(f"{item!r} is not of the form module.name or module.*")
        return value


class RuleOverride(_Strict):
    """Per-rule changes: a new severity, or disabling the rule altogether."""

    severity: Severity | None = None
    enabled: bool = True

    @field_validator("severity", mode="before")
    @classmethod
    def _sev(cls, value: Any) -> Any:
        return None if value is None else Severity.parse(value)


class Policy(_Strict):
    """The whole policy. ``Policy()`` is the safe default."""

    version: int = 1
    fail_on: Severity = Severity.MEDIUM
    limits: Limits = Limits()
    pickle: PickleRules = PickleRules()
    rules: dict[str, RuleOverride] = {}

    @field_validator("fail_on", mode="before")
    @classmethod
    def _fail_on(cls, value: Any) -> Any:
        return Severity.parse(value)

    @field_validator("version")
    @classmethod
    def _version(cls, value: int) -> int:
        if value != 1:
            raise ValueError(f"unsupported policy version {value} (this mlwarden reads version 1)")
        return value

    def with_fail_on(self, severity: Severity) -> Policy:
        """A copy with another failing severity (the CLI's ``--fail-on``)."""
        return self.model_copy(update={"fail_on": severity})


def load_policy(path: str | Path | None) -> Policy:
    """Load and validate a TOML policy file; ``None`` gives the default policy.

    Raises:
        PolicyError: the file is missing, is not TOML, or does not match the schema. The message names
            the offending key.
    """
    if path is None:
        return Policy()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"cannot read policy {p}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PolicyError(f"policy {p} is not valid TOML: {exc}") from exc
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise PolicyError(f"policy {p} is invalid: {problems}") from exc
