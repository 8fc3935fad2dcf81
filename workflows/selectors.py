"""Reads. Each selector scopes to what the user may see and owns its query shape."""

import enum
import uuid
from dataclasses import dataclass
from decimal import Decimal
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user, get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, F, QuerySet, Sum
from django.http import HttpRequest

from workflows.broadcast import event_frame
from workflows.errors import ProjectNotFound, WorkflowNotFound
from workflows.models import (
    ApiToken,
    CheckRun,
    Handoff,
    Message,
    PhaseResult,
    Project,
    RoleContext,
    Workflow,
    WorkflowEvent,
)
from workflows.states import PHASES, State, phases_completed
from workflows.summaries import workflow_summary


def api_token_find(*, raw: str) -> ApiToken | None:
    """The token whose digest `raw` has, with its user, in one query; None if none has.

    Only what a request needs of the user is read; its other fields load if touched."""
    try:
        return (
            ApiToken.objects.select_related("user")
            .only(*_TOKEN_FIELDS)
            .get(digest=ApiToken.digest_of(raw))
        )
    except ApiToken.DoesNotExist:
        return None


_TOKEN_FIELDS = (
    "last_used_at",
    "user__username",
    "user__is_active",
    "user__is_superuser",
    "user__is_staff",
)


def project_list_for_user(*, user: AbstractBaseUser) -> QuerySet[Project]:
    """Projects the user belongs to, with their role as `member_role`."""
    return Project.objects.filter(memberships__user=user).annotate(
        member_role=F("memberships__role")
    )


def project_get_for_user(*, user: AbstractBaseUser, project_ref: Any) -> Project:
    """One of the user's projects by id or slug; ProjectNotFound otherwise."""
    try:
        lookup = {"pk": uuid.UUID(str(project_ref))}
    except ValueError:
        lookup = {"slug": str(project_ref)}
    try:
        return project_list_for_user(user=user).get(**lookup)
    except Project.DoesNotExist as exc:
        raise ProjectNotFound(f"project {str(project_ref)[:100]!r} not found") from exc


def workflow_list_for_user(*, user: AbstractBaseUser) -> QuerySet[Workflow]:
    """Workflows of the user's projects, with the project and the user's role."""
    return (
        Workflow.objects.filter(project__memberships__user=user)
        .select_related("project")
        .annotate(member_role=F("project__memberships__role"))
    )


def workflow_get_for_user(*, user: AbstractBaseUser, workflow_id: Any) -> Workflow:
    """One workflow the user may see, in one query; WorkflowNotFound otherwise."""
    queryset = workflow_list_for_user(user=user).select_related("created_by")
    try:
        return queryset.get(pk=workflow_uuid(workflow_id))
    except Workflow.DoesNotExist as exc:
        raise WorkflowNotFound() from exc


def workflow_uuid(workflow_id: Any) -> uuid.UUID:
    """`workflow_id` as a UUID; anything else is a workflow nobody has (WorkflowNotFound)."""
    try:
        return uuid.UUID(str(workflow_id))
    except ValueError as exc:
        raise WorkflowNotFound() from exc


@dataclass(frozen=True)
class WorkflowStatus:
    """The IDE's status of one workflow (rendered by the status endpoint's serializer)."""

    id: uuid.UUID
    state: str
    current_role: str | None
    completed_phases: list[str]
    awaiting_approval: bool
    regression_count: int

    @property
    def progress(self) -> float:
        return round(len(self.completed_phases) / len(PHASES), 4)

    @property
    def is_complete(self) -> bool:
        return self.state == State.COMPLETE


def workflow_status_get(*, user: AbstractBaseUser, workflow_id: Any) -> WorkflowStatus:
    """The IDE's status of one workflow the user may see: one narrow query (five columns,
    no joins beyond membership) and no model instance."""
    workflow_id = workflow_uuid(workflow_id)
    rows = Workflow.objects.filter(project__memberships__user=user, pk=workflow_id)
    try:
        state, role, last_phase, awaiting, regressions = rows.values_list(
            "state", "current_role", "last_phase", "awaiting_approval", "regression_count"
        ).get()
    except Workflow.DoesNotExist:
        raise WorkflowNotFound() from None
    return WorkflowStatus(
        id=workflow_id,
        state=state,
        current_role=role,
        completed_phases=phases_completed(state=state, last_phase=last_phase),
        awaiting_approval=awaiting,
        regression_count=regressions,
    )


def workflow_events(*, workflow: Workflow, after: int = 0) -> QuerySet[WorkflowEvent]:
    return WorkflowEvent.objects.filter(workflow=workflow, seq__gt=after).order_by("seq")


def workflow_handoffs(*, workflow: Workflow) -> QuerySet[Handoff]:
    return Handoff.objects.filter(workflow=workflow).order_by("event_seq")


def workflow_messages(*, workflow: Workflow, role: str | None = None) -> QuerySet[Message]:
    queryset = Message.objects.filter(workflow=workflow)
    if role:
        queryset = queryset.filter(role=role)
    return queryset.order_by("seq")


def workflow_phase_results(*, workflow: Workflow) -> QuerySet[PhaseResult]:
    return PhaseResult.objects.filter(workflow=workflow).order_by("created_at", "id")


def role_context_get(*, workflow: Workflow, role: str) -> RoleContext:
    return RoleContext.objects.get(workflow=workflow, role=role)


def workflow_event_frames(
    *, workflow_id: Any, after: int, up_to: int | None, limit: int
) -> tuple[list[dict], bool]:
    """Websocket frames of events after `after` (to `up_to`), and whether more than `limit`."""
    queryset = WorkflowEvent.objects.filter(workflow_id=workflow_id, seq__gt=after)
    if up_to is not None:
        queryset = queryset.filter(seq__lte=up_to)
    events = list(queryset.order_by("seq")[: limit + 1])
    if len(events) > limit:
        return [], True
    return [event_frame(event) for event in events], False


DASHBOARD_SNAPSHOT_SIZE = 500


def dashboard_snapshot(*, user: AbstractBaseUser) -> tuple[list[Any], list[dict]]:
    """The user's project ids and summaries of their most recent workflows."""
    project_ids = list(Project.objects.filter(memberships__user=user).values_list("id", flat=True))
    workflows = (
        Workflow.objects.filter(project_id__in=project_ids)
        .select_related("project")
        .order_by("-created_at", "-id")[:DASHBOARD_SNAPSHOT_SIZE]
    )
    return project_ids, [workflow_summary(workflow) for workflow in workflows]


@dataclass(frozen=True)
class SocketCredential:
    """What a websocket authenticated with: an API token (by id), else a session (by key)."""

    user_id: int
    token_id: int | None = None
    session_key: str | None = None


class SocketAccess(enum.Enum):
    OK = "ok"
    UNAUTHENTICATED = "unauthenticated"  # token revoked, session ended, user inactive or gone
    NOT_FOUND = "not_found"  # no such workflow, or no longer a member of its project


def socket_credential_valid(*, credential: SocketCredential) -> bool:
    """Whether a websocket's credential still authenticates its user: the token is not
    revoked, or the session still exists, has not expired and still verifies (a password
    change ends it); and the user still exists and is active."""
    if credential.token_id is not None:
        return ApiToken.objects.filter(
            pk=credential.token_id, user_id=credential.user_id, user__is_active=True
        ).exists()
    if credential.session_key is not None:
        # A fresh load, not the handshake's cached copy, through Django's own check.
        request = HttpRequest()
        request.session = import_module(settings.SESSION_ENGINE).SessionStore(
            credential.session_key
        )
        user = get_user(request)
        return user.is_authenticated and user.is_active and user.pk == credential.user_id
    return get_user_model()._default_manager.filter(pk=credential.user_id, is_active=True).exists()


def workflow_socket_access(
    *, credential: SocketCredential, workflow_id: Any
) -> tuple[SocketAccess, int | None]:
    """Whether a workflow's websocket may stay open and, if it may, the seq of the
    workflow's last stored event (two queries at most)."""
    if not socket_credential_valid(credential=credential):
        return SocketAccess.UNAUTHENTICATED, None
    last_seq = (
        Workflow.objects.filter(pk=workflow_id, project__memberships__user_id=credential.user_id)
        .values_list("last_event_seq", flat=True)
        .first()
    )
    return (SocketAccess.NOT_FOUND, None) if last_seq is None else (SocketAccess.OK, last_seq)


def dashboard_socket_projects(*, credential: SocketCredential) -> set[Any] | None:
    """The ids of the projects a dashboard websocket may follow; None if its credential no
    longer authenticates."""
    if not socket_credential_valid(credential=credential):
        return None
    return set(
        Project.objects.filter(memberships__user_id=credential.user_id).values_list("id", flat=True)
    )


def workflow_check_runs(*, workflow: Workflow) -> QuerySet[CheckRun]:
    """The workflow's check runs, newest first."""
    return CheckRun.objects.filter(workflow=workflow).order_by("-created_at", "-id")


def workflow_testing_result(*, workflow: Workflow) -> dict | None:
    """The accepted TESTING evidence of the workflow's latest attempt, if any."""
    found = (
        PhaseResult.objects.filter(workflow=workflow, phase=State.TESTING, status="accepted")
        .order_by("-attempt")
        .values_list("result", flat=True)
        .first()
    )
    return found


def workflow_usage(*, workflow: Workflow) -> dict:
    """Tokens and cost in total, by role and by phase (from the stored messages)."""
    rows = (
        Message.objects.filter(workflow=workflow)
        .exclude(input_tokens=0, output_tokens=0)
        .values("role", "phase")
        .annotate(
            calls=Count("id"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
            cost_usd=Sum("cost_usd"),
        )
        .order_by("role", "phase")
    )
    by_role: dict[str, dict] = {}
    by_phase: dict[str, dict] = {}
    for row in rows:
        for bucket, key in ((by_role, row["role"]), (by_phase, row["phase"])):
            totals = bucket.setdefault(
                key, {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": Decimal(0)}
            )
            totals["calls"] += row["calls"]
            totals["input_tokens"] += row["input_tokens"]
            totals["output_tokens"] += row["output_tokens"]
            totals["cost_usd"] += row["cost_usd"]
    return {
        "total": {
            "input_tokens": workflow.input_tokens,
            "output_tokens": workflow.output_tokens,
            "cost_usd": workflow.cost_usd,
        },
        "by_role": by_role,
        "by_phase": by_phase,
    }
