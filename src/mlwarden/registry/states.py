"""The lifecycle of a model version: its states and which action may move it from which state to which.

``received ─scan─▶ scanned ─approve─▶ approved ─deploy─▶ deployed ─▶ quarantined | rolled_back ─▶ retired``

The table is data, not scattered ``if``s, so the service, the docs and the tests read the same rules. Gates
(:mod:`mlwarden.registry.gates`) then decide whether an allowed transition may happen *now*.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from mlwarden.registry.errors import InvalidTransition

__all__ = ["TRANSITIONS", "Action", "State", "Transition", "check_transition"]


class State(StrEnum):
    """Where a version is in its life."""

    RECEIVED = "received"
    SCANNED = "scanned"
    APPROVED = "approved"
    DEPLOYED = "deployed"
    QUARANTINED = "quarantined"
    ROLLED_BACK = "rolled_back"
    RETIRED = "retired"


class Action(StrEnum):
    """A lifecycle action (the audit log records these names)."""

    SCAN = "scan"
    APPROVE = "approve"
    DEPLOY = "deploy"
    QUARANTINE = "quarantine"
    RELEASE = "release"
    ROLLBACK = "rollback"
    RETIRE = "retire"


@dataclass(frozen=True, slots=True)
class Transition:
    """States an action may start from, and where it leads (``None``: the state does not change).

    Attributes:
        sources: the states the action is allowed from.
        target: the state after the action from ``sources`` other than those in ``keep``.
        keep: sources in which the action is allowed but leaves the state as it is (e.g. re-scanning an
            approved version stores a new report without sending it back to ``scanned``).
    """

    sources: frozenset[State]
    target: State
    keep: frozenset[State] = frozenset()

    def next_state(self, current: State) -> State:
        """The state after the action from ``current`` (which must be one of ``sources``)."""
        return current if current in self.keep else self.target


_LIVE = frozenset({State.RECEIVED, State.SCANNED, State.APPROVED, State.DEPLOYED, State.QUARANTINED, State.ROLLED_BACK})

#: The whole state machine. ``retired`` is terminal: no action starts from it.
TRANSITIONS: Mapping[Action, Transition] = MappingProxyType(
    {
        # A scan stores a report; it moves received -> scanned and leaves later states alone.
        Action.SCAN: Transition(_LIVE, State.SCANNED, keep=_LIVE - {State.RECEIVED}),
        Action.APPROVE: Transition(frozenset({State.SCANNED}), State.APPROVED),
        # Deploying a version already deployed under another alias keeps it deployed.
        Action.DEPLOY: Transition(frozenset({State.APPROVED, State.DEPLOYED}), State.DEPLOYED),
        # Anything not yet retired can be quarantined: a suspicious approved version must not be deployed either.
        Action.QUARANTINE: Transition(_LIVE - {State.QUARANTINED}, State.QUARANTINED),
        # Release goes back to approved (the service makes it deployed when an alias still points at it).
        Action.RELEASE: Transition(frozenset({State.QUARANTINED}), State.APPROVED),
        Action.ROLLBACK: Transition(frozenset({State.DEPLOYED, State.QUARANTINED}), State.ROLLED_BACK),
        Action.RETIRE: Transition(_LIVE, State.RETIRED),
    }
)


def check_transition(action: Action, current: State, subject: str) -> State:
    """The state ``action`` leads to from ``current``.

    Raises:
        InvalidTransition: the action is not allowed from ``current``; the message lists the states it is.
    """
    transition = TRANSITIONS[action]
    if current not in transition.sources:
        allowed = ", ".join(sorted(s.value for s in transition.sources))
        if current is State.RETIRED:
            raise InvalidTransition(f"cannot {action.value} {subject}: it is retired (retirement is final)")
        raise InvalidTransition(
            f"cannot {action.value} {subject}: it is {current.value} ({action.value} needs {allowed})"
        )
    return transition.next_state(current)
