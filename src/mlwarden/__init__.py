"""mlwarden — secure machine-learning models across their lifecycle.

The public API is small: :func:`scan` returns a :class:`ScanReport` of typed :class:`Finding` values
judged against a :class:`Policy`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from mlwarden._version import __version__
from mlwarden.core.errors import (
    LimitExceeded,
    MlwardenError,
    PolicyError,
    UnsafeModelError,
    UsageError,
)
from mlwarden.core.findings import Confidence, Finding, Location, Rule, Severity
from mlwarden.core.policy import Limits, Policy, load_policy
from mlwarden.scan.result import FileResult, ScanReport


def scan(
    path: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    policy: Policy | str | os.PathLike[str] | None = None,
    *,
    jobs: int | None = 1,
    dynamic: bool = False,
    suppressions: str | os.PathLike[str] | None = None,
) -> ScanReport:
    """Scan a file or directory (or several).

    Static analysis never executes anything. With ``dynamic=True`` each model is also loaded phase by phase in
    the sandbox (bubblewrap) and what it did to the host is compared with its framework's profile.

    Args:
        path: a file, a directory (scanned recursively), a URL (``https://``, ``s3://BUCKET/PREFIX``,
            ``hf://ORG/NAME[@REVISION]`` or any fsspec URL: read in place with ranged reads; with ``dynamic`` also
            downloaded once into the private remote cache and run there; see docs/remote.md), or an iterable of those.
        policy: a :class:`Policy`, a path to a TOML policy file, or ``None`` for the safe default.
        jobs: worker processes; ``None`` uses every core.
        dynamic: also run the sandboxed dynamic analysis (``SandboxUnavailable`` if the sandbox cannot run).
        suppressions: a reviewed suppressions TOML file (``docs/suppressions.md``): the findings it accepts stay in
            the report, marked ``suppressed``, and no longer count toward ``exit_code()``. None: no suppressions
            (the CLI's default lookup of ``mlwarden-suppressions.toml`` does not apply here).

    Returns:
        The :class:`ScanReport`; ``report.exit_code()`` gives the CLI's 0/1/2 verdict.

    Raises:
        UsageError: a path does not exist, or a URL names nothing (``RemoteError``).
        PolicyError: the policy file (or the suppressions file) is invalid.
    """
    from mlwarden.core.suppressions import load_suppressions
    from mlwarden.scan.engine import scan_paths

    if not isinstance(policy, Policy):
        policy = load_policy(None if policy is None else Path(policy))
    paths = [path] if isinstance(path, str | os.PathLike | Path) else list(path)
    modes = ("static", "dynamic") if dynamic else ("static",)
    accepted = load_suppressions(suppressions) if suppressions is not None else ()
    return scan_paths(paths, policy, jobs=jobs, modes=modes, suppressions=accepted)


def load(
    path: str | os.PathLike[str],
    framework: str | None = None,
    policy: Policy | str | os.PathLike[str] | None = None,
    *,
    dynamic: bool = True,
    restricted: bool | None = None,
) -> object:
    """Load a model only if the analysis of exactly the bytes being loaded passes (see :mod:`mlwarden.loader`).

    The model is copied into a private directory first; the copy is scanned (statically and, with ``dynamic``,
    in the sandbox) and loaded only if no finding reaches ``policy.fail_on``; pickle-family formats are
    loaded with a restricted unpickler that admits only allowlisted globals.

    Raises:
        UnsafeModelError: the model failed the analysis or the restricted unpickler; ``.findings`` say why.
        SandboxUnavailable: ``dynamic`` and the sandbox cannot be created.
    """
    from mlwarden.loader import load as _load

    return _load(path, framework, policy, dynamic=dynamic, restricted=restricted)


__all__ = [
    "Confidence",
    "FileResult",
    "Finding",
    "LimitExceeded",
    "Limits",
    "Location",
    "MlwardenError",
    "Policy",
    "PolicyError",
    "Rule",
    "ScanReport",
    "Severity",
    "UnsafeModelError",
    "UsageError",
    "__version__",
    "load",
    "load_policy",
    "scan",
]
