"""Rebuilding a workflow's state from its event log alone."""

from collections.abc import Iterable
from dataclasses import dataclass

from workflows.states import EventType, State


@dataclass(frozen=True)
class ReplayedState:
    state: str
    current_role: str | None
    awaiting_approval: bool
    regression_count: int
    last_seq: int


def workflow_replay(events: Iterable) -> ReplayedState:
    """Fold events (in seq order, starting at 1) into the state they describe."""
    state, role, awaiting, regressions, last_seq = State.DISCOVERY, None, False, 0, 0
    for event in events:
        if event.seq != last_seq + 1:
            raise ValueError(f"event log has a gap: expected seq {last_seq + 1}, got {event.seq}")
        last_seq = event.seq
        data = event.data
        if event.type == EventType.WORKFLOW_CREATED:
            state, role = data["state"], data["role"]
        elif event.type == EventType.APPROVAL_REQUESTED:
            awaiting = True
        elif event.type == EventType.TRANSITIONED:
            if data["from_state"] != state:
                raise ValueError(
                    f"event {event.seq} moves from {data['from_state']} but the log is in {state}"
                )
            state, role = data["to_state"], data["to_role"]
            awaiting = data["awaiting_approval"]
            regressions = data["regression_count"]
    return ReplayedState(state, role, awaiting, regressions, last_seq)
