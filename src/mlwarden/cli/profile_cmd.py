"""``mlwarden profile``: learn, extend and review the per-framework profiles of dynamic analysis.

A profile says what each phase of loading a benign model of one framework normally does to the host (see
``docs/profiles.md``). ``learn`` runs every file of the framework found under the given folders in the
sandbox and writes the union of what they did, generalised, as TOML; ``show`` prints a profile for review.
Learning runs models (sandboxed, exactly like a dynamic scan): feed it only models you trust, because
whatever they do becomes allowed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlwarden.core.errors import UsageError

if TYPE_CHECKING:
    from mlwarden.scan.dynamic.profiles import Profile

SHOW_FORMATS = ("toml", "table")


def add_parser(sub: Any) -> None:
    """Add ``profile learn`` and ``profile show`` to the top-level subparsers ``sub``."""
    profile = sub.add_parser(
        "profile",
        help="learn or show the framework profiles that dynamic analysis compares against",
        description="Framework profiles list, per loading phase, the host effects a benign model of that "
        "framework has. See docs/profiles.md.",
    )
    actions = profile.add_subparsers(dest="profile_command", metavar="ACTION", parser_class=type(profile))

    learn = actions.add_parser(
        "learn",
        help="learn a profile by running benign models in the sandbox",
        description="Run every file of FRAMEWORK found under DIR in the sandbox and write a profile allowing "
        "what they did. Only learn from models you trust: whatever they do becomes allowed.",
    )
    learn.add_argument("dirs", nargs="+", metavar="DIR", help="folders (or files) of benign models")
    learn.add_argument("--framework", required=True, metavar="F", help="framework to learn, e.g. torch, pickle")
    dest = learn.add_mutually_exclusive_group()
    dest.add_argument("--output", "-o", metavar="FILE", help="write the TOML to FILE (default: stdout)")
    dest.add_argument(
        "--profile-dir", metavar="DIR", help="write DIR/<framework>.toml (a folder usable as sandbox.profile_dir)"
    )
    learn.add_argument(
        "--extend",
        action="store_true",
        help="add to the existing profile (the destination if it exists, else the shipped one) instead of "
        "starting empty",
    )
    learn.add_argument("--policy", metavar="FILE", help="TOML policy whose [sandbox] limits the runs use")

    show = actions.add_parser("show", help="print a profile", description="Print FRAMEWORK's profile.")
    show.add_argument("framework", metavar="FRAMEWORK")
    show.add_argument("--profile-dir", metavar="DIR", help="read DIR/<framework>.toml instead of the shipped one")
    show.add_argument("--format", "-f", choices=SHOW_FORMATS, default="toml", help="toml (default) or table")


def run(args: argparse.Namespace) -> int:
    """Dispatch ``mlwarden profile ...``; returns the exit code (errors raise MlwardenError -> exit 2)."""
    if args.profile_command == "learn":
        return _learn(args)
    if args.profile_command == "show":
        return _show(args)
    raise UsageError("mlwarden profile: choose an action: learn or show")


def _check_framework(framework: str) -> None:
    from mlwarden.scan.dynamic.adapters import ADAPTERS

    if framework not in ADAPTERS:
        raise UsageError(f"unknown framework {framework!r} (expected one of: {', '.join(sorted(ADAPTERS))})")


def _destination(args: argparse.Namespace) -> Path | None:
    """Where the TOML goes (None: stdout); its folder must exist (a profile dir is created)."""
    if args.profile_dir:
        folder = Path(args.profile_dir)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--profile-dir: {folder} is not a folder")
        return folder / f"{args.framework}.toml"
    if args.output:
        out = Path(args.output)
        if not out.resolve().parent.is_dir():
            raise UsageError(f"--output: folder {out.resolve().parent} does not exist")
        return out
    return None


def _load_file(framework: str, path: Path) -> Profile:
    """Load a profile from any file name (load_profile wants ``<framework>.toml`` in a folder)."""
    from mlwarden.scan.dynamic.profiles import load_profile

    if path.name == f"{framework}.toml":
        return load_profile(framework, path.parent)
    with tempfile.TemporaryDirectory(prefix="mlwarden-profile-") as tmp:
        shutil.copyfile(path, Path(tmp) / f"{framework}.toml")
        return load_profile(framework, Path(tmp))


def _base(framework: str, destination: Path | None) -> tuple[Profile, str]:
    """The profile ``--extend`` starts from, and where it came from."""
    from mlwarden.scan.dynamic.profiles import PROFILE_DIR, load_profile

    if destination is not None and destination.is_file():
        base, source = _load_file(framework, destination), str(destination)
    else:
        base, source = load_profile(framework), str(PROFILE_DIR / f"{framework}.toml")
    if base.framework != framework:
        raise UsageError(f"--extend: {source} is a profile for {base.framework!r}, not {framework!r}")
    return base, source


def _learn(args: argparse.Namespace) -> int:
    import dataclasses

    from mlwarden.core.policy import load_policy
    from mlwarden.scan.dynamic.events import PHASES
    from mlwarden.scan.dynamic.learning import learn_from

    framework = args.framework
    _check_framework(framework)
    for raw in args.dirs:
        if not Path(raw).exists():
            raise UsageError(f"no such file or directory: {raw}")
    destination = _destination(args)
    base, base_source = _base(framework, destination) if args.extend else (None, "")
    limits = load_policy(args.policy).sandbox

    incomplete: list[Path] = []

    def progress(path: Path, complete: bool) -> None:
        if not complete:
            incomplete.append(path)
            print(f"mlwarden: warning: {path} did not finish every phase (its events were learned)", file=sys.stderr)

    profile, runs = learn_from(framework, [Path(d) for d in args.dirs], limits, base=base, progress=progress)
    if runs == 0:
        raise UsageError(f"no {framework} files found under {', '.join(args.dirs)}")
    where = ", ".join(args.dirs)
    if base is not None:
        description = f"{base.description}; extended with {runs} model(s) from {where}".lstrip("; ")
    else:
        description = f"learned by `mlwarden profile learn` from {runs} benign {framework} model(s) in {where}"
    profile = dataclasses.replace(profile, description=description, version=base.version if base else 1)
    text = profile.to_toml()
    if destination is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {destination}: {exc.strerror or exc}") from None
    counts = ", ".join(f"{p} {len(profile.phases.get(p, ()))}" for p in PHASES)
    print(
        f"mlwarden: learned {framework} profile from {runs} run(s) ({len(incomplete)} did not complete); "
        f"patterns per phase: {counts}"
        + (f"; extended {base_source}" if base is not None else "")
        + (f"; wrote {destination}" if destination is not None else ""),
        file=sys.stderr,
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    from mlwarden.scan.dynamic.profiles import PROFILE_DIR, load_profile

    framework = args.framework
    _check_framework(framework)
    folder = Path(args.profile_dir) if args.profile_dir else None
    profile = load_profile(framework, folder)  # validates; raises UsageError when missing or malformed
    path = (folder or PROFILE_DIR) / f"{framework}.toml"
    if args.format == "toml":
        text = path.read_text(encoding="utf-8")  # as reviewed, comments included
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        sys.stdout.write(table(profile, path))
    return 0


def table(profile: Profile, source: Path) -> str:
    """A readable listing: one row per allowed pattern, grouped by phase, kind and target in columns."""
    from mlwarden.scan.dynamic.events import PHASES
    from mlwarden.scan.dynamic.profiles import BASELINE

    lines = [f"profile {profile.framework} (version {profile.version}) from {source}"]
    if profile.description:
        lines.append(f"  {_printable(profile.description)}")
    lines += [f"  plus {len(BASELINE)} baseline patterns allowed in every phase (see docs/profiles.md)"]
    if profile.capabilities:
        lines.append(f"  capabilities: {', '.join(profile.capabilities)} (see docs/dynamic.md)")
    if profile.include:
        lines.append(f"  includes: {', '.join(profile.include)} ({len(profile.inherited)} machinery patterns)")
    lines.append("")
    rows = [
        (phase, *pattern.partition(":")[::2])
        for phase in PHASES
        for pattern in sorted(set(profile.phases.get(phase, ())))
    ]
    rows += [("every", *pattern.partition(":")[::2]) for pattern in sorted(set(profile.machinery))]
    kind_width = max((len(k) for _, k, _ in rows), default=4)
    lines.append(f"{'PHASE':<12} {'KIND':<{kind_width}} TARGET")
    for phase in PHASES:
        phase_rows = [r for r in rows if r[0] == phase]
        if not phase_rows:
            lines.append(f"{phase:<12} {'-':<{kind_width}} (nothing beyond the baseline)")
        for _, kind, target in phase_rows:
            lines.append(f"{phase:<12} {kind:<{kind_width}} {_printable(target)}")
    for _, kind, target in (r for r in rows if r[0] == "every"):  # [machinery]: the framework's own call sites
        lines.append(f"{'every':<12} {kind:<{kind_width}} {_printable(target)}")
    return "\n".join(lines) + "\n"


def _printable(text: str) -> str:
    from mlwarden.report import clean

    return clean(text)
