"""The lifecycle table: every (action, state) pair is allowed or refused as the issue describes."""

from __future__ import annotations

import pytest

from mlwarden.registry.errors import InvalidTransition
from mlwarden.registry.states import TRANSITIONS, Action, State, check_transition

S = State
EXPECTED: dict[Action, dict[State, State]] = {
    Action.SCAN: {S.RECEIVED: S.SCANNED, S.SCANNED: S.SCANNED, S.APPROVED: S.APPROVED, S.DEPLOYED: S.DEPLOYED,
                  S.QUARANTINED: S.QUARANTINED, S.ROLLED_BACK: S.ROLLED_BACK},
    Action.APPROVE: {S.SCANNED: S.APPROVED},
    Action.DEPLOY: {S.APPROVED: S.DEPLOYED, S.DEPLOYED: S.DEPLOYED},
    Action.QUARANTINE: {s: S.QUARANTINED for s in (S.RECEIVED, S.SCANNED, S.APPROVED, S.DEPLOYED, S.ROLLED_BACK)},
    Action.RELEASE: {S.QUARANTINED: S.APPROVED},
    Action.ROLLBACK: {S.DEPLOYED: S.ROLLED_BACK, S.QUARANTINED: S.ROLLED_BACK},
    Action.RETIRE: {s: S.RETIRED for s in State if s is not S.RETIRED},
}  # fmt: skip


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("action", list(Action))
def test_transition_table(action: Action, state: State) -> None:
    expected = EXPECTED[action].get(state)
    if expected is None:
        with pytest.raises(InvalidTransition, match=f"cannot {action.value} m:1"):
            check_transition(action, state, "m:1")
    else:
        assert check_transition(action, state, "m:1") is expected


def test_retired_is_terminal() -> None:
    assert all(State.RETIRED not in t.sources for t in TRANSITIONS.values())
    with pytest.raises(InvalidTransition, match="retirement is final"):
        check_transition(Action.DEPLOY, State.RETIRED, "m:1")


def test_refusal_names_the_states_that_would_do() -> None:
    with pytest.raises(InvalidTransition, match=r"it is received \(approve needs scanned\)"):
        check_transition(Action.APPROVE, State.RECEIVED, "m:1")
