"""Events observed while a model ran in the sandbox: what happened, in which phase, seen by whom."""

from __future__ import annotations

from dataclasses import dataclass, field

PHASES: tuple[str, ...] = ("import", "deserialize", "instantiate", "infer")


@dataclass(frozen=True, slots=True)
class Event:
    """One host effect.

    Attributes:
        phase: the lifecycle phase it happened in (one of :data:`PHASES`, or ``"setup"``).
        kind: a normalised kind, e.g. ``"process.exec"``, ``"net.connect"``, ``"file.write"``, ``"import"``.
        target: what it acted on (a command line, an address, a path, a module), already shortened.
        source: ``"audit"`` (Python audit hook inside the sandbox) or ``"syscall"`` (strace outside it).
        detail: the raw event name and arguments, for evidence.
        stack: innermost Python frames (``file:line function``) when the audit hook could capture them.
        caller: ``file:function`` of the Python code that asked for an import (importlib's own frames skipped).
    """

    phase: str
    kind: str
    target: str
    source: str
    detail: str = ""
    stack: tuple[str, ...] = field(default=())
    caller: str = ""


@dataclass(frozen=True, slots=True)
class PhaseRecord:
    """How one phase went."""

    name: str
    status: str  # "ok" | "error" | "skipped" | "not-reached"
    seconds: float = 0.0
    error: str = ""
