"""A library of real sample model files, built on demand: benign models and harmless malicious canaries.

One corpus serves three users: ``make demo`` (build a few samples and scan them), the test suite (every
malicious sample must fail the default policy, no benign one may) and the benchmarks. Samples are *built*
rather than checked in so that benign files come from the real libraries at their installed versions, and
so that no live payload ever sits in the repository.

Benign samples are small real models (scikit-learn, PyTorch, Keras, ONNX, GGUF, ...). Malicious samples
are canaries: if one were ever loaded, its payload would only create a file under ``canary_dir`` or
connect to ``127.0.0.1``. Builders never load or execute a payload; pickles are assembled opcode by
opcode or produced by ``__reduce__`` objects, and pickling never calls the reduced callable.

A family whose framework cannot be imported is skipped, not failed, so the corpus degrades gracefully on
a minimal install. Heavy imports happen inside the builders only.

Example:
    >>> from mlwarden_samples import build_all
    >>> samples = build_all(Path("corpus"), Path("/tmp/canary"))  # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "CANARY_PORT",
    "BuildContext",
    "Made",
    "Sample",
    "build_all",
    "build_benign",
    "build_malicious",
    "families",
    "write_labels",
]

log = logging.getLogger(__name__)

#: Loopback port that network canaries would connect to. Nothing listens on it unless a test does.
CANARY_PORT = 58213

Label = Literal["benign", "malicious"]


@dataclass(frozen=True)
class Sample:
    """One built sample: a file or a folder, with its ground-truth label.

    Attributes:
        path: The built file or folder.
        label: ``"benign"`` or ``"malicious"``.
        family: Stable family name (what ``only=`` selects), e.g. ``"pickle-os-system"``.
        description: One sentence saying what the sample is and why it is labelled so.
        expect: For malicious samples, the dangerous callable(s) as ``"module.name"`` when there is one.
        requires: Import names needed to build the sample, e.g. ``("torch",)``.
    """

    path: Path
    label: str
    family: str
    description: str
    expect: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class Made:
    """What a builder returns for each file it wrote; the registry turns it into a :class:`Sample`."""

    path: Path
    description: str
    expect: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildContext:
    """Where a builder writes, and the only targets a canary payload may name.

    Attributes:
        root: The output directory; samples go to ``root/<label>/<family>/``.
        canary_dir: The only directory a payload may write to or delete from.
        port: The loopback port network payloads would connect to.
    """

    root: Path
    canary_dir: Path
    port: int = CANARY_PORT

    def folder(self, label: str, family: str) -> Path:
        """Create and return the family's output folder."""
        path = self.root / label / family
        path.mkdir(parents=True, exist_ok=True)
        return path

    def canary(self, family: str) -> str:
        """Absolute path of the file a payload of ``family`` would create."""
        return str(self.canary_dir / f"{family}.canary")

    def url(self, family: str) -> str:
        """Loopback URL a network payload of ``family`` would fetch."""
        return f"http://127.0.0.1:{self.port}/{family}"


Builder = Callable[[BuildContext, Path], list[Made]]


@dataclass(frozen=True)
class _Spec:
    family: str
    label: Label
    requires: tuple[str, ...]
    build: Builder


_REGISTRY: dict[str, _Spec] = {}


def register(label: Label, family: str, requires: tuple[str, ...] = ()) -> Callable[[Builder], Builder]:
    """Declare a builder for ``family``. Used by the ``benign`` and ``malicious_*`` modules.

    The builder receives the :class:`BuildContext` and the family's (created) folder and returns one
    :class:`Made` per file or folder it wrote.
    """

    def deco(fn: Builder) -> Builder:
        if family in _REGISTRY:
            raise ValueError(f"duplicate sample family {family!r}")
        _REGISTRY[family] = _Spec(family, label, requires, fn)
        return fn

    return deco


def _load_builders() -> None:
    # Imported here, not at module import, so ``import mlwarden_samples`` stays cheap; the builder
    # modules import only the standard library at top level.
    from mlwarden_samples import (  # noqa: F401
        benign,
        benign_nn,
        malicious_containers,
        malicious_formats,
        malicious_pickle,
    )


def _importable(name: str) -> bool:
    if name == "keras":
        # Keras 3 picks its backend at import; torch is the backend mlwarden's extras install.
        os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a broken optional install is as good as a missing one
        return False
    return True


def families(label: Label | None = None) -> list[str]:
    """Names of all registered families (optionally only one label), sorted."""
    _load_builders()
    return sorted(f for f, s in _REGISTRY.items() if label is None or s.label == label)


def _selected(family: str, only: Iterable[str] | None) -> bool:
    if only is None:
        return True
    return any(fnmatch.fnmatchcase(family, pattern) for pattern in only)


def _build(label: Label, ctx: BuildContext, only: Iterable[str] | None) -> list[Sample]:
    _load_builders()
    patterns = None if only is None else list(only)
    out: list[Sample] = []
    for family in sorted(_REGISTRY):
        spec = _REGISTRY[family]
        if spec.label != label or not _selected(family, patterns):
            continue
        missing = [name for name in spec.requires if not _importable(name)]
        if missing:
            log.info("skipping sample family %s: cannot import %s", family, ", ".join(missing))
            continue
        for made in spec.build(ctx, ctx.folder(label, family)):
            out.append(Sample(made.path, label, family, made.description, made.expect, spec.requires))
    return out


def build_benign(out_dir: Path, *, only: Iterable[str] | None = None) -> list[Sample]:
    """Build benign samples under ``out_dir/benign/``.

    Args:
        out_dir: Output root (created if needed).
        only: Family names or shell-style patterns (``"torch-*"``); ``None`` builds every family.
    """
    ctx = BuildContext(Path(out_dir).resolve(), Path(out_dir).resolve() / "canary")
    return _build("benign", ctx, only)


def build_malicious(
    out_dir: Path, canary_dir: Path, *, only: Iterable[str] | None = None, port: int = CANARY_PORT
) -> list[Sample]:
    """Build malicious canary samples under ``out_dir/malicious/``. Nothing is loaded or executed.

    Args:
        out_dir: Output root (created if needed).
        canary_dir: The only directory payloads name; created empty if missing. If a canary file ever
            appears in it, something loaded a sample.
        only: Family names or shell-style patterns; ``None`` builds every family.
        port: Loopback port for network payloads.
    """
    canary = Path(canary_dir).resolve()
    canary.mkdir(parents=True, exist_ok=True)
    return _build("malicious", BuildContext(Path(out_dir).resolve(), canary, port), only)


def write_labels(samples: Iterable[Sample], out_dir: Path) -> Path:
    """Write ``out_dir/labels.json`` in the shape of the shared corpus: ``{relpath: {label, expect, note}}``.

    A ``family`` key is added to each entry; consumers of the shared corpus ignore it.
    """
    root = Path(out_dir).resolve()
    labels = {
        s.path.resolve().relative_to(root).as_posix(): {
            "label": s.label,
            "expect": list(s.expect),
            "note": s.description,
            "family": s.family,
        }
        for s in samples
    }
    target = root / "labels.json"
    target.write_text(json.dumps(dict(sorted(labels.items())), indent=1) + "\n", encoding="utf-8")
    return target


def build_all(out_dir: Path, canary_dir: Path, *, only: Iterable[str] | None = None) -> list[Sample]:
    """Build benign and malicious samples and write ``out_dir/labels.json``."""
    patterns = None if only is None else list(only)
    samples = build_benign(out_dir, only=patterns) + build_malicious(out_dir, canary_dir, only=patterns)
    write_labels(samples, out_dir)
    return samples
