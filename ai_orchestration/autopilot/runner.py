"""Working a run: claim it, hold its lease with a heartbeat, and work the workflow's
current phase (build the prompt, call the model, validate, complete the phase).

Exactly-once: a claim issues the run a new lease token, and a heartbeat thread renews
the lease (lease.py); a run whose worker died is re-queued by the reaper once its lease
expires. A worker that loses its lease has its model call cut within one heartbeat
interval and discards the result (its usage is booked as failed attempts). A phase is
completed only under the run's row lock with the run still holding the worker's token
(fencing), with `expected_state` under the workflow's row lock, in the transaction that
books the run's progress: a stale or duplicate worker is refused, never applied.
Locks are taken run first, then workflow.
"""

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.db.models import F
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from ai_orchestration.accounting import budget_stop_reason, calls_usage
from ai_orchestration.autopilot.answers import parse_json as _parse_json
from ai_orchestration.autopilot.frames import DeltaBroadcaster, run_frame_send
from ai_orchestration.autopilot.items import work_items_step
from ai_orchestration.autopilot.lease import (
    LeaseHeartbeat,
    StopCheck,
    holder_write,
    run_lease,
    run_stop_check,
)
from ai_orchestration.autopilot.services import run_finish_by_id, run_held
from ai_orchestration.context import PromptRequest, prompt_request_build
from ai_orchestration.models import AIRun
from ai_orchestration.providers.base import (
    ChatMessage,
    ChatRequest,
    Completion,
    Provider,
    ProviderCancelled,
    ProviderError,
    complete_with_retries,
    provider_for,
)
from ai_orchestration.schemas import evidence_json_schema
from workflows.check_runs import check_run_event_data, check_run_for_testing
from workflows.errors import RepositoryUnavailable, TransitionConflict
from workflows.evidence import evidence_validate
from workflows.models import CheckRun, Workflow
from workflows.release import ReleaseFailed, release_make
from workflows.services import Actor, CallUsage, workflow_phase_complete
from workflows.states import State
from workflows.verification import change_set_verify, testing_evidence_from_run
from workflows.work_items import work_items_current, work_items_revive

logger = logging.getLogger(__name__)

AUTOPILOT = Actor.system("autopilot")


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


@dataclass(frozen=True)
class StepProgress:
    """What a step did, for progress displays (the CLI)."""

    run: AIRun
    phase: str
    new_state: str
    delta_chars: int


FrameHook = Callable[[dict], None]


@dataclass(frozen=True)
class StepHooks:
    """In-process observers of a step (the CLI), called on the worker's thread.

    `on_progress` gets a StepProgress when the step completed its phase; `on_delta` each
    `ai.delta` frame and `on_output` each `check.output` frame, as the websocket gets
    them (the same dicts), without going through the channel layer.
    """

    on_progress: Callable[[StepProgress], None] | None = None
    on_delta: FrameHook | None = None
    on_output: FrameHook | None = None


def autopilot_step(*, run_id: Any, worker_id: str, hooks: StepHooks | None = None) -> bool:
    """Claim the run and work the workflow's current phase. True: go on with the next."""
    hooks = hooks or StepHooks()
    held_since = time.monotonic()  # the lease the claim writes runs from a moment later
    run = _claim(run_id, worker_id)
    if run is None:
        return False
    with run_lease(run_id=run.id, token=run.lease_token, held_since=held_since) as lease:
        try:
            return _work_phase(run, lease, hooks)
        except (OperationalError, InterfaceError):
            # The database went away (a restart, a dropped connection): not the run's
            # fault. Its lease runs out and the reaper re-queues it; the worker restarts.
            logger.warning("autopilot run %s: database unavailable; left to its lease", run.id)
            raise
        except Exception as exc:  # an unexpected bug must not leave the run "running"
            logger.exception("autopilot run %s failed", run.id)
            _finish(run, lease, AIRun.Status.FAILED, error=f"internal error: {type(exc).__name__}")
            return False


def _claim(run_id: Any, worker_id: str) -> AIRun | None:
    """Take a queued run (or one whose worker's lease expired) with a new lease token."""
    now = timezone.now()
    with transaction.atomic():
        run = AIRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None:
            return None
        lease_lost = (
            run.status == AIRun.Status.RUNNING
            and run.lease_expires_at is not None
            and run.lease_expires_at < now
        )
        if run.status != AIRun.Status.QUEUED and not lease_lost:
            return None
        run.status = AIRun.Status.RUNNING
        run.worker_id = worker_id
        run.lease_token = uuid.uuid4()
        run.executions += 1
        run.heartbeat_at = now
        run.lease_expires_at = now + timedelta(seconds=settings.TOPDOG_AUTOPILOT_LEASE_SECONDS)
        run.started_at = run.started_at or now
        run.save()
        run_frame_send(run)
    return run


def _finish(
    run: AIRun, lease: LeaseHeartbeat, status: str, *, error: str = "", stop_reason: str = ""
) -> bool:
    """End the run as its lease holder (refused if the lease was taken over)."""
    return run_finish_by_id(
        run.id, status, error=error, stop_reason=stop_reason, lease_token=lease.token
    )


# --- one phase ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PhaseCall:
    """What a phase's model call needs: the provider, the request, the prompt it came from."""

    provider: Provider
    request: ChatRequest
    prompt: PromptRequest


def _work_phase(run: AIRun, lease: LeaseHeartbeat, hooks: StepHooks) -> bool:
    workflow = Workflow.objects.select_related("project").get(pk=run.workflow_id)
    if workflow.is_terminal:
        _finish(run, lease, _status_for_end(workflow), stop_reason=f"workflow is {workflow.state}")
        return False
    scope_end = _phase_scope_end(run, workflow)
    if scope_end is not None:
        _finish(run, lease, scope_end[0], stop_reason=scope_end[1])
        return False
    if workflow.awaiting_approval:
        _wait_at_gate(run, lease, workflow)
        return False
    phase, role = workflow.state, workflow.current_role
    if phase == State.IMPLEMENTATION and work_items_current(workflow_id=workflow.id).exists():
        return _work_items_phase(run, lease, hooks.on_progress)
    should_cancel = run_stop_check(run_id=run.id, lease=lease)
    check = None
    if phase == State.TESTING:
        # The auditor reviews a measured run: the change set's tests, run in the sandbox.
        check = check_run_for_testing(
            workflow=workflow, actor=AUTOPILOT, should_stop=should_cancel, on_output=hooks.on_output
        )
        if should_cancel():
            _stopped_by(run, lease, "cancelled")
            return False
    call = _call_prepare(run, workflow, check)
    budget_stop = budget_stop_reason(
        workflow=workflow,
        provider_name=call.provider.name,
        request=call.request,
        input_estimate=call.prompt.estimated_input_tokens,
    )
    if budget_stop:
        _finish(run, lease, AIRun.Status.STOPPED, stop_reason=budget_stop)
        return False
    deltas = DeltaBroadcaster(
        workflow_id=workflow.id, run_id=run.id, phase=phase, role=role, on_frame=hooks.on_delta
    )
    calls: list[Completion] = []
    evidence = _evidence_or_finish(run, workflow, call, deltas, should_cancel, calls)
    if evidence is None:
        return False
    submitted = _phase_submit(run, lease, workflow, check, evidence, calls, call.prompt)
    if submitted is None:
        return False
    run, new_state = submitted
    if new_state is not None and hooks.on_progress is not None:
        hooks.on_progress(StepProgress(run, phase, new_state, deltas.total_chars))
    return _continue_or_stop(run, lease)


def _phase_scope_end(run: AIRun, workflow: Workflow) -> tuple[str, str] | None:
    """How a `scope: phase` run ends before working anything: its phase was done (and
    approved at a gate), or the workflow left that phase without it. None: work on."""
    if run.scope != AIRun.Scope.PHASE:
        return None
    if run.phases_completed:
        return AIRun.Status.COMPLETED, "phase done"
    if workflow.state != run.phase:
        return AIRun.Status.STOPPED, _moved_on(run.phase, workflow.state)
    return None


def _moved_on(phase: str, state: str) -> str:
    return f"the run was for {phase}; the workflow moved on to {state} without it"


def _stopped_by(run: AIRun, lease: LeaseHeartbeat, reason: str) -> None:
    """The work stopped: a cancel request ends the run; a lost lease leaves it alone."""
    if lease.lost:
        logger.warning("run %s: lease lost; its work stopped, its result is discarded", run.id)
    else:
        _finish(run, lease, AIRun.Status.CANCELLED, stop_reason=reason)


def _work_items_phase(run: AIRun, lease: LeaseHeartbeat, on_progress: Any) -> bool:
    """IMPLEMENTATION item by item (items.py); the run goes on once the phase is done."""
    work_items_revive(workflow_id=run.workflow_id)
    if work_items_step(run, lease, on_progress) != "moved":
        return False
    with transaction.atomic():
        run = AIRun.objects.select_for_update().get(pk=run.id)
        if not run_held(run, lease.token):
            return False
        run.phases_completed += 1
        run.phase = Workflow.objects.values_list("state", flat=True).get(pk=run.workflow_id)
        run.save(update_fields=["phases_completed", "phase"])
    if on_progress is not None:
        on_progress(StepProgress(run, State.IMPLEMENTATION, run.phase, 0))
    return _continue_or_stop(run, lease)


def _call_prepare(run: AIRun, workflow: Workflow, check: CheckRun | None) -> _PhaseCall:
    """The chat request for the current phase, as get-ai-prompt serves it, and its provider."""
    phase, role = workflow.state, workflow.current_role
    prompt = prompt_request_build(workflow=workflow, model_name=run.model_name)
    provider = provider_for(
        prompt.provider, api_key=workflow.project.provider_api_key(prompt.provider)
    )
    request = ChatRequest(
        model=prompt.model,
        messages=tuple(ChatMessage(m["role"], m["content"]) for m in prompt.messages),
        temperature=prompt.temperature,
        max_tokens=prompt.max_tokens,
        json_schema=evidence_json_schema(phase),
        metadata={
            "phase": phase,
            "role": role,
            "requirements": workflow.requirements,
            "feedback": prompt.feedback,
            "workflow_id": str(workflow.id),
            "check": check_run_event_data(check) if check is not None else None,
        },
    )
    return _PhaseCall(provider, request, prompt)


def _evidence_or_finish(
    run: AIRun,
    workflow: Workflow,
    call: _PhaseCall,
    deltas: DeltaBroadcaster,
    should_cancel: StopCheck,
    calls: list[Completion],
) -> dict | None:
    """The model's valid evidence; None when the call ended the step (cancelled, lease
    lost, failed)."""
    phase = workflow.state
    lease = should_cancel.lease
    try:
        evidence = _evidence_from_model(
            call.provider, call.request, deltas, should_cancel, calls, verify=_verifier(workflow)
        )
    except ProviderCancelled as exc:
        _book_calls(run, calls, failed_attempts=exc.attempts)
        _stopped_by(run, lease, "cancelled during the call")
        return None
    except ProviderError as exc:
        _book_calls(run, calls, failed_attempts=exc.attempts)
        _finish(run, lease, AIRun.Status.FAILED, error=f"{phase}: {exc}")
        return None
    except RepositoryUnavailable as exc:
        _book_calls(run, calls)
        _finish(run, lease, AIRun.Status.FAILED, error=f"{phase}: {exc}")
        return None
    finally:
        deltas.flush()
    if lease.lost:  # the answer came as the lease went: another worker may be on it
        _book_calls(run, calls)
        _stopped_by(run, lease, "")
        return None
    return evidence


class LeaseLost(Exception):
    """The run is no longer this worker's: its completion is refused."""


def _phase_submit(
    run: AIRun,
    lease: LeaseHeartbeat,
    workflow: Workflow,
    check: CheckRun | None,
    evidence: dict,
    calls: list[Completion],
    prompt: PromptRequest,
) -> tuple[AIRun, str | None] | None:
    """Complete the phase with the evidence and book the run's progress with it. Returns
    the run and the new state (None if someone else completed the phase first), or None
    when the step ended (a failed release, a lost lease, a scope-phase run whose phase
    was completed elsewhere)."""
    phase = workflow.state
    final = calls[-1]
    usage = calls_usage(calls, prompt.prompt_version)
    if phase == State.TESTING:
        evidence = testing_evidence_from_run(evidence=evidence, run=check)
    ai_response = final.content
    if phase == State.DEPLOYMENT:
        # The RELEASE_MANAGER's record is replaced by the real one: push, pull request.
        # A push cannot be rolled back with the transaction that fences completions, so
        # a worker pushes only while the run is still its own.
        if not _still_held(run, lease):
            logger.warning("run %s: lease lost before the release; nothing pushed", run.id)
            _book_calls(run, calls)
            return None
        try:
            evidence, summary = release_make(workflow=workflow)
        except ReleaseFailed as exc:
            _book_calls(run, calls)
            _finish(run, lease, AIRun.Status.FAILED, error=f"DEPLOYMENT: {exc}")
            return None
        ai_response = f"{final.content}\n\n{summary}"
    booked = run.phases_completed

    def landed() -> tuple[AIRun, str] | None:
        """The completion committed though its connection failed at the COMMIT."""
        done = AIRun.objects.filter(
            pk=run.id, lease_token=lease.token, phases_completed__gt=booked
        ).first()
        return (done, done.phase) if done is not None else None

    try:
        return holder_write(
            lease,
            lambda: _phase_complete_and_book(
                run, lease, workflow, phase, ai_response, evidence, calls, usage
            ),
            what=f"completing {phase}",
            landed=landed,
        )
    except LeaseLost as exc:
        logger.warning("run %s: %s; its %s result is discarded", run.id, exc, phase)
        _book_calls(run, calls)
        return None
    except TransitionConflict:
        # Someone (a person, or a duplicate worker) completed this phase first.
        logger.info("run %s: %s was completed elsewhere", run.id, phase)
        _book_calls(run, calls)
        run.refresh_from_db()
        if run.scope == AIRun.Scope.PHASE:
            state = Workflow.objects.values_list("state", flat=True).get(pk=workflow.id)
            _finish(run, lease, AIRun.Status.STOPPED, stop_reason=_moved_on(phase, state))
            return None
        return run, None


def _still_held(run: AIRun, lease: LeaseHeartbeat) -> bool:
    """The worker's lease holds (in memory) and the run's row still names its token."""
    if lease.lost:
        return False
    current = AIRun.objects.filter(pk=run.id).first()
    return current is not None and run_held(current, lease.token)


def _phase_complete_and_book(
    run: AIRun,
    lease: LeaseHeartbeat,
    workflow: Workflow,
    phase: str,
    ai_response: str,
    evidence: dict,
    calls: list[Completion],
    usage: CallUsage,
) -> tuple[AIRun, str]:
    """Complete the phase and book the run's progress: in one transaction, never one
    without the other, and only while the run is still held with this worker's lease
    token (checked under the run's row lock, held until the commit)."""
    with transaction.atomic():
        run = AIRun.objects.select_for_update().get(pk=run.id)
        if not run_held(run, lease.token):
            raise LeaseLost(
                f"a stale worker's completion was refused (the run is {run.status}, "
                "its lease taken over)"
            )
        outcome = workflow_phase_complete(
            workflow_id=workflow.id,
            ai_response=ai_response,
            result=evidence,
            actor=AUTOPILOT,
            expected_state=phase,
            usage=usage,
        )
        _add_usage(run, calls, usage)
        run.phases_completed += 1
        run.phase = outcome.workflow.state
        run.save()
    return run, outcome.workflow.state


def _continue_or_stop(run: AIRun, lease: LeaseHeartbeat) -> bool:
    """After a phase: end the run, or queue it for the next (True). Made again on a fresh
    connection if the database connection fails, so a dropped connection does not leave
    a run whose phase is done to wait for its lease to expire."""

    def queued() -> bool | None:
        """The run was queued for its next phase though the connection failed at the
        COMMIT (no one else queues a running run)."""
        return AIRun.objects.filter(pk=run.pk, status=AIRun.Status.QUEUED).exists() or None

    return holder_write(
        lease, partial(_continue_or_stop_once, run, lease), what="handing on", landed=queued
    )


def _continue_or_stop_once(run: AIRun, lease: LeaseHeartbeat) -> bool:
    run.refresh_from_db()
    workflow = Workflow.objects.get(pk=run.workflow_id)
    if run.cancel_requested:
        _finish(run, lease, AIRun.Status.CANCELLED, stop_reason="cancelled")
        return False
    if workflow.is_terminal:
        _finish(run, lease, _status_for_end(workflow), stop_reason=f"workflow is {workflow.state}")
        return False
    if workflow.awaiting_approval:
        _wait_at_gate(run, lease, workflow)
        return False
    if run.scope == AIRun.Scope.PHASE:
        _finish(run, lease, AIRun.Status.COMPLETED, stop_reason="phase done")
        return False
    with transaction.atomic():
        requeued = AIRun.objects.filter(
            pk=run.pk, status=AIRun.Status.RUNNING, lease_token=lease.token
        ).update(status=AIRun.Status.QUEUED, worker_id="", lease_token=None)
    return bool(requeued)


def _status_for_end(workflow: Workflow) -> str:
    return {
        "COMPLETE": AIRun.Status.COMPLETED,
        "FAILED": AIRun.Status.FAILED,
    }.get(workflow.state, AIRun.Status.CANCELLED)


def _wait_at_gate(run: AIRun, lease: LeaseHeartbeat, workflow: Workflow) -> None:
    waiting = AIRun.objects.filter(
        pk=run.pk, status=AIRun.Status.RUNNING, lease_token=lease.token
    ).update(
        status=AIRun.Status.WAITING,
        worker_id="",
        lease_token=None,
        phase=workflow.state,
        stop_reason=f"waiting for approval of {workflow.state}",
    )
    if waiting:
        run.refresh_from_db()
        run_frame_send(run)


# --- the model call loop ----------------------------------------------------------------


def _verifier(workflow: Workflow):
    """What a phase's evidence must pass beyond its shape before it is submitted: a change
    set's static checks (so the CODE_WRITER is asked again with the errors)."""

    def verify(phase: str, evidence: dict) -> dict:
        if phase == State.IMPLEMENTATION:
            change_set_verify(workflow=workflow, evidence=evidence)
        return evidence

    return verify


def _evidence_from_model(provider, request, deltas, should_cancel, calls, verify) -> dict:
    """Call the model for evidence; on invalid output, once more with the errors."""
    deadline = settings.TOPDOG_LLM_DEADLINE_SECONDS
    for attempt in (1, 2):
        completion = complete_with_retries(
            provider,
            request,
            deadline_seconds=deadline,
            on_delta=deltas,
            should_cancel=should_cancel,
        )
        calls.append(completion)
        phase = request.metadata["phase"]
        try:
            evidence = evidence_validate(phase=phase, data=_parse_json(completion.content))
            return verify(phase, evidence)
        except ValidationError as exc:
            problems = json.dumps(exc.detail, default=str)[:4000]
            if attempt == 2:
                raise ProviderError(
                    f"the model's {request.metadata['phase']} evidence was invalid twice; "
                    f"last errors: {problems}",
                    attempts=0,  # both calls answered; they are booked from `calls`
                ) from exc
            request = _request_again(request, completion, problems)
    raise AssertionError("unreachable")


def _request_again(request: ChatRequest, completion: Completion, problems: str) -> ChatRequest:
    """`request` with the invalid answer and the problems found in it appended."""
    return ChatRequest(
        model=request.model,
        messages=(
            *request.messages,
            ChatMessage("assistant", completion.content),
            ChatMessage(
                "user",
                "That answer is not valid evidence. Fix these problems and answer "
                f"again with only the JSON object:\n{problems}",
            ),
        ),
        temperature=request.temperature,
        max_tokens=request.max_tokens,
        json_schema=request.json_schema,
        metadata=request.metadata,
    )


def _add_usage(run: AIRun, calls: list[Completion], usage: CallUsage) -> None:
    run.attempts += sum(c.attempts for c in calls)
    run.input_tokens += usage.input_tokens
    run.output_tokens += usage.output_tokens
    run.cost_usd += usage.cost_usd
    run.provider, run.model = usage.provider, usage.model


def _book_calls(run: AIRun, calls: list[Completion], *, failed_attempts: int = 0) -> None:
    """Count calls that produced no phase result (failed, cancelled, superseded)."""
    if not calls:
        if failed_attempts:
            AIRun.objects.filter(pk=run.pk).update(attempts=F("attempts") + failed_attempts)
        return
    usage = calls_usage(calls, "")
    AIRun.objects.filter(pk=run.pk).update(
        attempts=F("attempts") + sum(c.attempts for c in calls) + failed_attempts,
        input_tokens=F("input_tokens") + usage.input_tokens,
        output_tokens=F("output_tokens") + usage.output_tokens,
        cost_usd=F("cost_usd") + usage.cost_usd,
    )
