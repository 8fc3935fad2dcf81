"""The vocabulary of the workflow state machine: states, roles and how they relate."""

from django.db import models


class State(models.TextChoices):
    DISCOVERY = "DISCOVERY"
    PLANNING = "PLANNING"
    IMPLEMENTATION = "IMPLEMENTATION"
    TESTING = "TESTING"
    VERIFICATION = "VERIFICATION"
    DEPLOYMENT = "DEPLOYMENT"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class Role(models.TextChoices):
    Q_ASSISTANT = "Q_ASSISTANT"
    CODE_WRITER = "CODE_WRITER"
    TEST_AUDITOR = "TEST_AUDITOR"
    VERIFICATION_AUDITOR = "VERIFICATION_AUDITOR"
    RELEASE_MANAGER = "RELEASE_MANAGER"


PHASES: tuple[str, ...] = (
    State.DISCOVERY,
    State.PLANNING,
    State.IMPLEMENTATION,
    State.TESTING,
    State.VERIFICATION,
    State.DEPLOYMENT,
)
TERMINAL_STATES: tuple[str, ...] = (State.COMPLETE, State.FAILED, State.CANCELLED)

PHASE_ROLE: dict[str, str] = {
    State.DISCOVERY: Role.Q_ASSISTANT,
    State.PLANNING: Role.Q_ASSISTANT,
    State.IMPLEMENTATION: Role.CODE_WRITER,
    State.TESTING: Role.TEST_AUDITOR,
    State.VERIFICATION: Role.VERIFICATION_AUDITOR,
    State.DEPLOYMENT: Role.RELEASE_MANAGER,
}

NEXT_STATE: dict[str, str] = {
    State.DISCOVERY: State.PLANNING,
    State.PLANNING: State.IMPLEMENTATION,
    State.IMPLEMENTATION: State.TESTING,
    State.TESTING: State.VERIFICATION,
    State.VERIFICATION: State.DEPLOYMENT,
    State.DEPLOYMENT: State.COMPLETE,
}

# Where each phase may send work back to, first entry being the default.
REGRESSION_TARGETS: dict[str, tuple[str, ...]] = {
    State.TESTING: (State.IMPLEMENTATION,),
    State.VERIFICATION: (State.IMPLEMENTATION, State.PLANNING),
}


def phases_completed(*, state: str, last_phase: str) -> list[str]:
    """Phases whose evidence stands: all before the current (or last) phase."""
    if state == State.COMPLETE:
        return list(PHASES)
    return list(PHASES[: PHASES.index(last_phase)])


def role_for_state(state: str) -> str | None:
    """The role that owns `state`, or None for terminal states."""
    return PHASE_ROLE.get(state)


class HandoffKind(models.TextChoices):
    FORWARD = "forward"
    REGRESSION = "regression"
    APPROVAL = "approval"
    REJECTION = "rejection"
    CANCEL = "cancel"
    FAIL = "fail"


class Transition(models.TextChoices):
    """The operations a caller may ask for; `available_transitions` lists these."""

    COMPLETE = "complete"
    REGRESS = "regress"
    APPROVE = "approve"
    REJECT = "reject"
    CANCEL = "cancel"
    FAIL = "fail"


class MemberRole(models.TextChoices):
    OWNER = "owner"  # everything, including gates and project settings
    DEVELOPER = "developer"  # drives workflows
    VIEWER = "viewer"  # reads only


# Which membership roles may ask for which transitions.
TRANSITION_MEMBER_ROLES: dict[str, frozenset[str]] = {
    Transition.COMPLETE: frozenset({MemberRole.OWNER, MemberRole.DEVELOPER}),
    Transition.REGRESS: frozenset({MemberRole.OWNER, MemberRole.DEVELOPER}),
    Transition.CANCEL: frozenset({MemberRole.OWNER, MemberRole.DEVELOPER}),
    Transition.APPROVE: frozenset({MemberRole.OWNER}),
    Transition.REJECT: frozenset({MemberRole.OWNER}),
    Transition.FAIL: frozenset({MemberRole.OWNER}),
}


class EventType(models.TextChoices):
    WORKFLOW_CREATED = "workflow.created"
    PHASE_COMPLETED = "phase.completed"
    APPROVAL_REQUESTED = "approval.requested"
    TRANSITIONED = "workflow.transitioned"
    MESSAGE_CREATED = "message.created"
    RELEASE_FAILED = "release.failed"
    CHECK_STARTED = "check.started"
    CHECK_FINISHED = "check.finished"
    WORK_ITEM_STARTED = "work_item.started"
    WORK_ITEM_FINISHED = "work_item.finished"
    WORK_ITEM_FAILED = "work_item.failed"


class Sender(models.TextChoices):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"
