"""Dashboard pages. Thin: one selector each, then shaping rows for the templates.

Both pages render completely on the server; their scripts then follow changes over the
websockets (`/ws/dashboard/`, `/ws/workflows/<id>/?after=<seq>`).

The workflow page's autopilot runs belong to the AI layer, which this app must not
import: the page's script reads them from the REST API (`GET /api/workflows/<id>/runs/`,
with the session) and follows their `ai.run` frames; its buttons call the same API
(start, cancel, approve, reject) with the CSRF token, so the page offers nothing the API
would not allow the user.
"""

import json
from dataclasses import dataclass, field
from decimal import Decimal

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET

from workflows import selectors
from workflows.errors import WorkflowNotFound
from workflows.models import Handoff, Message, PhaseResult, RoleContext, Workflow, WorkflowEvent
from workflows.services import available_transitions
from workflows.states import (
    PHASE_ROLE,
    PHASES,
    TRANSITION_MEMBER_ROLES,
    EventType,
    HandoffKind,
    Role,
    State,
    Transition,
)
from workflows.verification import tests_verification_note
from workflows.web.selectors import WorkflowRecord, workflow_record_get
from workflows.work_items import work_items_current

DONE_COLUMN = "DONE"
WORKFLOW_ID_PLACEHOLDER = "__id__"
# The Send-backs tab: every handoff that did not move the work forward. Only the first
# kind counts toward the regression limit (Workflow.regression_count).
SEND_BACK_KINDS = (HandoffKind.REGRESSION, HandoffKind.REJECTION, HandoffKind.FAIL)


def label(value: str | None) -> str:
    """`VERIFICATION_AUDITOR` -> `Verification Auditor`; a missing role -> an em dash."""
    return value.replace("_", " ").title() if value else "—"


@require_GET
@login_required
def board(request: HttpRequest) -> HttpResponse:
    """The board: the user's workflows in a column per phase, moved live."""
    _project_ids, summaries = selectors.dashboard_snapshot(user=request.user)
    columns = [{"key": phase, "label": label(phase)} for phase in PHASES]
    columns.append({"key": DONE_COLUMN, "label": "Done"})
    context = {
        "columns": columns,
        "summaries": summaries,
        "workflow_url": reverse("dashboard:workflow", args=[WORKFLOW_ID_PLACEHOLDER]),
    }
    return render(request, "dashboard/board.html", context)


@require_GET
@login_required
@ensure_csrf_cookie  # the page's buttons send it back as X-CSRFToken
def workflow_detail(request: HttpRequest, workflow_id: str) -> HttpResponse:
    """One workflow: timeline, evidence, conversations, regressions and totals."""
    try:
        record = workflow_record_get(user=request.user, workflow_id=workflow_id)
    except WorkflowNotFound as exc:
        raise Http404("workflow not found") from exc
    return render(request, "dashboard/workflow.html", _workflow_page(record))


# --- shaping the workflow page -----------------------------------------------------------


@dataclass(frozen=True)
class TimelineEntry:
    event: WorkflowEvent
    title: str
    tone: str
    handoff: Handoff | None = None
    detail: str = ""


@dataclass(frozen=True)
class Attempt:
    row: PhaseResult
    pretty_json: str


@dataclass
class PhaseView:
    phase: str
    label: str
    role_label: str
    status: str  # done | current | stopped | pending
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def latest(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None


@dataclass
class Conversation:
    role: str
    label: str
    context: RoleContext | None
    messages: list[Message]
    is_current: bool

    @property
    def input_tokens(self) -> int:
        return sum(message.input_tokens for message in self.messages)

    @property
    def output_tokens(self) -> int:
        return sum(message.output_tokens for message in self.messages)


@dataclass(frozen=True)
class Regression:
    handoff: Handoff
    from_label: str
    to_label: str


def _workflow_page(record: WorkflowRecord) -> dict:
    workflow = record.workflow
    conversations = _conversations(record)
    send_backs = [
        Regression(h, label(h.from_state), label(h.to_state))
        for h in record.handoffs
        if h.kind in SEND_BACK_KINDS
    ]
    return {
        "workflow": workflow,
        "state_label": label(workflow.state),
        "role_label": label(workflow.current_role),
        "progress_percent": round(workflow.progress() * 100),
        "requirements_extra": _pretty(
            {k: v for k, v in workflow.requirements.items() if k != "description"}
        )
        if len(workflow.requirements) > 1
        else "",
        "timeline": _timeline(record),
        "phases": _phases(record),
        "conversations": conversations,
        "send_backs": send_backs,
        "send_back_counts": {
            kind: sum(1 for r in send_backs if r.handoff.kind == kind) for kind in SEND_BACK_KINDS
        },
        "controls": _controls(workflow),
        "totals": {
            "input_tokens": workflow.input_tokens,
            "output_tokens": workflow.output_tokens,
            "total_tokens": workflow.input_tokens + workflow.output_tokens,
            "cost_usd": workflow.cost_usd.quantize(Decimal("0.0001")),
            "messages": len(record.messages),
            "phase_results": len(record.phase_results),
            "handoffs": len(record.handoffs),
        },
        "usage_rows": _usage_rows(record),
        "check_runs": record.check_runs,
        "tests_note": tests_verification_note(_latest_result(record, State.TESTING)),
        "last_seq": workflow.last_event_seq,
        "board_url": reverse("dashboard:board"),
        "work_item_graph": work_item_graph(workflow),
    }


def _controls(workflow: Workflow) -> dict:
    """What the user may do here (the API checks it again): run the autopilot (start and
    cancel: owner or developer), approve or reject at a gate (owner)."""
    member_role = workflow.member_role
    transitions = available_transitions(workflow, member_role)
    can_run = member_role in TRANSITION_MEMBER_ROLES[Transition.COMPLETE]
    return {
        "member_role": member_role,
        "can_run": can_run,
        "can_start": can_run and Transition.COMPLETE in transitions,
        "can_approve": Transition.APPROVE in transitions,
        "can_reject": Transition.REJECT in transitions,
        "api_url": reverse("api:workflow-detail", args=[workflow.id]),
    }


def work_item_graph(workflow) -> dict:
    """The current plan's items in columns by dependency depth (one query)."""
    items = list(work_items_current(workflow_id=workflow.id))
    columns: list[list] = [[] for _ in range(1 + max((i.depth for i in items), default=-1))]
    for item in items:
        columns[item.depth].append(item)
    done = sum(item.status == "done" for item in items)
    return {"columns": columns, "summary": f"{done} of {len(items)} done" if items else ""}


def _latest_result(record: WorkflowRecord, phase: str) -> dict | None:
    accepted = [r for r in record.phase_results if r.phase == phase and r.status == "accepted"]
    return accepted[-1].result if accepted else None


def _usage_rows(record: WorkflowRecord) -> list[dict]:
    """Tokens and cost per role and per phase, from the messages already loaded."""
    rows: dict[tuple[str, str], dict] = {}
    for message in record.messages:
        if not (message.input_tokens or message.output_tokens):
            continue
        for kind, key in (("role", message.role), ("phase", message.phase)):
            row = rows.setdefault(
                (kind, key),
                {"kind": kind, "label": label(key), "input": 0, "output": 0, "cost": Decimal(0)},
            )
            row["input"] += message.input_tokens
            row["output"] += message.output_tokens
            row["cost"] += message.cost_usd
    return sorted(rows.values(), key=lambda r: (r["kind"] != "role", r["label"]))


def _timeline(record: WorkflowRecord) -> list[TimelineEntry]:
    """Events in seq order; a transition carries the handoff it recorded."""
    handoffs = {handoff.event_seq: handoff for handoff in record.handoffs}
    return [_timeline_entry(event, handoffs.get(event.seq)) for event in record.events]


def _timeline_entry(event: WorkflowEvent, handoff: Handoff | None) -> TimelineEntry:
    data = event.data or {}
    if event.type == EventType.WORKFLOW_CREATED:
        return TimelineEntry(
            event,
            f"Workflow opened in {label(data.get('state'))}",
            "neutral",
            detail=f"{label(data.get('role'))} owns it · model {data.get('model', '?')}",
        )
    if event.type == EventType.PHASE_COMPLETED:
        waiting = " — awaits approval" if data.get("status") == "pending_approval" else ""
        return TimelineEntry(
            event,
            f"{label(data.get('phase'))} evidence submitted{waiting}",
            "evidence",
            detail=f"{label(data.get('role'))} · attempt {data.get('attempt', '?')}",
        )
    if event.type == EventType.APPROVAL_REQUESTED:
        return TimelineEntry(event, f"{label(data.get('phase'))} waits for approval", "approval")
    if event.type == EventType.TRANSITIONED:
        kind = handoff.kind if handoff else data.get("kind", "")
        source, target = label(data.get("from_state")), label(data.get("to_state"))
        titles = {
            HandoffKind.FORWARD: f"Handoff {source} → {target}",
            HandoffKind.REGRESSION: f"Regression {source} → {target}",
            HandoffKind.APPROVAL: f"Approved {source} → {target}",
            HandoffKind.REJECTION: f"Rejected {source}; rework in {target}",
            HandoffKind.CANCEL: f"Cancelled in {source}",
            HandoffKind.FAIL: f"Failed in {source}",
        }
        roles = f"{label(data.get('from_role'))} → {label(data.get('to_role'))}"
        return TimelineEntry(
            event, titles.get(kind, f"{source} → {target}"), kind or "neutral", handoff, roles
        )
    if event.type in (EventType.CHECK_STARTED, EventType.CHECK_FINISHED):
        kind = data.get("kind", "test")
        if event.type == EventType.CHECK_STARTED:
            return TimelineEntry(event, f"{kind.title()} run started", "neutral")
        figures = (
            f"{data.get('tests_run')} run, {data.get('tests_failed')} failed"
            if data.get("tests_run") is not None
            else data.get("reason", "")
        )
        tone = "forward" if data.get("status") == "passed" else "regression"
        return TimelineEntry(
            event, f"{kind.title()} run {data.get('status')}", tone, detail=figures
        )
    if event.type == EventType.MESSAGE_CREATED:
        return TimelineEntry(event, f"Message from {label(data.get('role'))}", "neutral")
    return TimelineEntry(event, event.type, "neutral")


def _phases(record: WorkflowRecord) -> list[PhaseView]:
    workflow = record.workflow
    done = set(workflow.completed_phases())
    views = {}
    for phase in PHASES:
        if phase in done:
            status = "done"
        elif phase == workflow.last_phase:
            status = "stopped" if workflow.is_terminal else "current"
        else:
            status = "pending"
        views[phase] = PhaseView(phase, label(phase), label(PHASE_ROLE[phase]), status)
    for result in record.phase_results:
        views[result.phase].attempts.append(Attempt(result, _pretty(result.result)))
    return list(views.values())


def _conversations(record: WorkflowRecord) -> list[Conversation]:
    """One conversation per role that has a context or a message, in role order."""
    contexts = {context.role: context for context in record.role_contexts}
    by_role: dict[str, list[Message]] = {}
    for message in record.messages:
        by_role.setdefault(message.role, []).append(message)
    current = record.workflow.current_role
    return [
        Conversation(role, label(role), contexts.get(role), by_role.get(role, []), role == current)
        for role in Role.values
        if role in contexts or role in by_role
    ]


def _pretty(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)
