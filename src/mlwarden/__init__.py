"""mlwarden — secure machine-learning models across their lifecycle.

The public API is small: :func:`scan` returns a :class:`ScanReport` of typed :class:`Finding` values
judged against a :class:`Policy`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__version__ = "0.1.0"

from mlwarden.core.errors import LimitExceeded, MlwardenError, PolicyError, UsageError  # noqa: E402
from mlwarden.core.findings import Confidence, Finding, Location, Rule, Severity  # noqa: E402
from mlwarden.core.policy import Limits, Policy, load_policy  # noqa: E402
from mlwarden.scan.result import FileResult, ScanReport  # noqa: E402


def scan(
    path: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    policy: Policy | str | os.PathLike[str] | None = None,
    *,
    jobs: int | None = 1,
    dynamic: bool = False,
) -> ScanReport:
    """Scan a file or directory (or several).

    Static analysis never executes anything. With ``dynamic=True`` each model is also loaded phase by phase in
    the sandbox (bubblewrap) and what it did to the host is compared with its framework's profile.

    Args:
        path: a file, a directory (scanned recursively), or an iterable of those.
        policy: a :class:`Policy`, a path to a TOML policy file, or ``None`` for the safe default.
        jobs: worker processes; ``None`` uses every core.
        dynamic: also run the sandboxed dynamic analysis (``SandboxUnavailable`` if the sandbox cannot run).

    Returns:
        The :class:`ScanReport`; ``report.exit_code()`` gives the CLI's 0/1/2 verdict.

    Raises:
        UsageError: a path does not exist.
        PolicyError: the policy file is invalid.
    """
    from mlwarden.scan.engine import scan_paths

    if not isinstance(policy, Policy):
        policy = load_policy(None if policy is None else Path(policy))
    paths = [path] if isinstance(path, str | os.PathLike | Path) else list(path)
    modes = ("static", "dynamic") if dynamic else ("static",)
    return scan_paths(paths, policy, jobs=jobs, modes=modes)


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
    "UsageError",
    "__version__",
    "load_policy",
    "scan",
]
