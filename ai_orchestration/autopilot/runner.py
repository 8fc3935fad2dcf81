"""Working a run: claim it, hold its lease with a heartbeat, and work the workflow's
current phase (build the prompt, call the model, validate, complete the phase).

Exactly-once: a step holds a lease on its run, renewed by a heartbeat thread; a run whose
worker died is re-queued by the reaper once its lease expires. A phase is completed with
`expected_state`, under the workflow row lock, in the same transaction that books the
run's progress, so a late or duplicate worker gets a conflict instead of completing the
phase twice.
"""

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import F
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from ai_orchestration.accounting import budget_stop_reason, calls_usage
from ai_orchestration.autopilot.answers import parse_json as _parse_json
from ai_orchestration.autopilot.frames import DeltaBroadcaster, run_frame_send
from ai_orchestration.autopilot.items import work_items_step
from ai_orchestration.autopilot.services import run_finish, run_finish_by_id
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
    run = _claim(run_id, worker_id)
    if run is None:
        return False
    heartbeat = _Heartbeat(run.id, worker_id)
    heartbeat.start()
    try:
        return _work_phase(run, heartbeat, hooks)
    except (OperationalError, InterfaceError):
        # The database went away (a restart, a dropped connection): not the run's fault.
        # Its lease runs out and the reaper re-queues it; the task worker starts again.
        logger.warning("autopilot run %s: database unavailable; left to its lease", run.id)
        raise
    except Exception as exc:  # an unexpected bug must not leave the run "running"
        logger.exception("autopilot run %s failed", run.id)
        run_finish_by_id(run.id, AIRun.Status.FAILED, error=f"internal error: {type(exc).__name__}")
        return False
    finally:
        heartbeat.stop()


def _claim(run_id: Any, worker_id: str) -> AIRun | None:
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
        run.executions += 1
        run.heartbeat_at = now
        run.lease_expires_at = now + timedelta(seconds=settings.TOPDOG_AUTOPILOT_LEASE_SECONDS)
        run.started_at = run.started_at or now
        run.save()
        run_frame_send(run)
    return run


# --- one phase ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PhaseCall:
    """What a phase's model call needs: the provider, the request, the prompt it came from."""

    provider: Provider
    request: ChatRequest
    prompt: PromptRequest


def _work_phase(run: AIRun, heartbeat: "_Heartbeat", hooks: StepHooks) -> bool:
    workflow = Workflow.objects.select_related("project").get(pk=run.workflow_id)
    if workflow.is_terminal:
        run_finish(run, _status_for_end(workflow), stop_reason=f"workflow is {workflow.state}")
        return False
    if workflow.awaiting_approval:
        _wait_at_gate(run, workflow)
        return False
    phase, role = workflow.state, workflow.current_role
    if phase == State.IMPLEMENTATION and work_items_current(workflow_id=workflow.id).exists():
        return _work_items_phase(run, heartbeat, hooks.on_progress)
    should_cancel = _CancelCheck(run.id, heartbeat)
    check = None
    if phase == State.TESTING:
        # The auditor reviews a measured run: the change set's tests, run in the sandbox.
        check = check_run_for_testing(
            workflow=workflow, actor=AUTOPILOT, should_stop=should_cancel, on_output=hooks.on_output
        )
        if should_cancel():
            if not heartbeat.lost:
                run_finish_by_id(run.id, AIRun.Status.CANCELLED, stop_reason="cancelled")
            return False
    call = _call_prepare(run, workflow, check)
    budget_stop = budget_stop_reason(
        workflow=workflow,
        provider_name=call.provider.name,
        request=call.request,
        input_estimate=call.prompt.estimated_input_tokens,
    )
    if budget_stop:
        run_finish(run, AIRun.Status.STOPPED, stop_reason=budget_stop)
        return False
    deltas = DeltaBroadcaster(
        workflow_id=workflow.id, run_id=run.id, phase=phase, role=role, on_frame=hooks.on_delta
    )
    calls: list[Completion] = []
    evidence = _evidence_or_finish(run, workflow, call, deltas, should_cancel, calls)
    if evidence is None:
        return False
    submitted = _phase_submit(run, workflow, check, evidence, calls, call.prompt)
    if submitted is None:
        return False
    run, new_state = submitted
    if new_state is not None and hooks.on_progress is not None:
        hooks.on_progress(StepProgress(run, phase, new_state, deltas.total_chars))
    return _continue_or_stop(run)


def _work_items_phase(run: AIRun, heartbeat: "_Heartbeat", on_progress: Any) -> bool:
    """IMPLEMENTATION item by item (items.py); the run goes on once the phase is done."""
    work_items_revive(workflow_id=run.workflow_id)
    if work_items_step(run, heartbeat.worker_id, on_progress) != "moved":
        return False
    with transaction.atomic():
        run = AIRun.objects.select_for_update().get(pk=run.id)
        run.phases_completed += 1
        run.phase = Workflow.objects.values_list("state", flat=True).get(pk=run.workflow_id)
        run.save(update_fields=["phases_completed", "phase"])
    if on_progress is not None:
        on_progress(StepProgress(run, State.IMPLEMENTATION, run.phase, 0))
    return _continue_or_stop(run)


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
    should_cancel: "_CancelCheck",
    calls: list[Completion],
) -> dict | None:
    """The model's valid evidence; None when the call ended the run (cancelled, failed)."""
    phase = workflow.state
    try:
        return _evidence_from_model(
            call.provider, call.request, deltas, should_cancel, calls, verify=_verifier(workflow)
        )
    except ProviderCancelled as exc:
        _book_calls(run, calls, failed_attempts=exc.attempts)
        if not should_cancel.heartbeat.lost:  # (a lost lease: another worker owns the run)
            run_finish_by_id(
                run.id, AIRun.Status.CANCELLED, stop_reason="cancelled during the call"
            )
        return None
    except ProviderError as exc:
        _book_calls(run, calls, failed_attempts=exc.attempts)
        run_finish_by_id(run.id, AIRun.Status.FAILED, error=f"{phase}: {exc}")
        return None
    except RepositoryUnavailable as exc:
        _book_calls(run, calls)
        run_finish_by_id(run.id, AIRun.Status.FAILED, error=f"{phase}: {exc}")
        return None
    finally:
        deltas.flush()


def _phase_submit(
    run: AIRun,
    workflow: Workflow,
    check: CheckRun | None,
    evidence: dict,
    calls: list[Completion],
    prompt: PromptRequest,
) -> tuple[AIRun, str | None] | None:
    """Complete the phase with the evidence and book the run's progress with it. Returns
    the run and the new state (None if someone else completed the phase first), or None
    when the run ended (a failed release)."""
    phase = workflow.state
    final = calls[-1]
    usage = calls_usage(calls, prompt.prompt_version)
    if phase == State.TESTING:
        evidence = testing_evidence_from_run(evidence=evidence, run=check)
    ai_response = final.content
    if phase == "DEPLOYMENT":
        # The RELEASE_MANAGER's record is replaced by the real one: push, pull request.
        try:
            evidence, summary = release_make(workflow=workflow)
        except ReleaseFailed as exc:
            _book_calls(run, calls)
            run_finish_by_id(run.id, AIRun.Status.FAILED, error=f"DEPLOYMENT: {exc}")
            return None
        ai_response = f"{final.content}\n\n{summary}"
    try:
        return _phase_complete_and_book(run, workflow, phase, ai_response, evidence, calls, usage)
    except TransitionConflict:
        # Someone (a person, or a duplicate worker) completed this phase first.
        logger.info("run %s: %s was completed elsewhere; moving on", run.id, phase)
        run.refresh_from_db()
        _book_calls(run, calls)
        return run, None


def _phase_complete_and_book(
    run: AIRun,
    workflow: Workflow,
    phase: str,
    ai_response: str,
    evidence: dict,
    calls: list[Completion],
    usage: CallUsage,
) -> tuple[AIRun, str]:
    """Complete the phase and book the run's progress: in one transaction, never one
    without the other."""
    with transaction.atomic():
        outcome = workflow_phase_complete(
            workflow_id=workflow.id,
            ai_response=ai_response,
            result=evidence,
            actor=AUTOPILOT,
            expected_state=phase,
            usage=usage,
        )
        run = AIRun.objects.select_for_update().get(pk=run.id)
        _add_usage(run, calls, usage)
        run.phases_completed += 1
        run.phase = outcome.workflow.state
        run.save()
    return run, outcome.workflow.state


def _continue_or_stop(run: AIRun) -> bool:
    run.refresh_from_db()
    workflow = Workflow.objects.get(pk=run.workflow_id)
    if run.cancel_requested:
        run_finish(run, AIRun.Status.CANCELLED, stop_reason="cancelled")
        return False
    if workflow.is_terminal:
        run_finish(run, _status_for_end(workflow), stop_reason=f"workflow is {workflow.state}")
        return False
    if workflow.awaiting_approval:
        _wait_at_gate(run, workflow)
        return False
    if run.scope == AIRun.Scope.PHASE:
        run_finish(run, AIRun.Status.COMPLETED, stop_reason="phase done")
        return False
    with transaction.atomic():
        AIRun.objects.filter(pk=run.pk, status=AIRun.Status.RUNNING).update(
            status=AIRun.Status.QUEUED, worker_id=""
        )
    return True


def _status_for_end(workflow: Workflow) -> str:
    return {
        "COMPLETE": AIRun.Status.COMPLETED,
        "FAILED": AIRun.Status.FAILED,
    }.get(workflow.state, AIRun.Status.CANCELLED)


def _wait_at_gate(run: AIRun, workflow: Workflow) -> None:
    AIRun.objects.filter(pk=run.pk).update(
        status=AIRun.Status.WAITING,
        worker_id="",
        phase=workflow.state,
        stop_reason=f"waiting for approval of {workflow.state}",
    )
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


# --- liveness -----------------------------------------------------------------------------


class _CancelCheck:
    """should_cancel for providers: a cancel request, or a lost lease, stops the call."""

    INTERVAL = 0.5

    def __init__(self, run_id: Any, heartbeat: "_Heartbeat") -> None:
        self.run_id = run_id
        self.heartbeat = heartbeat
        self.checked = 0.0
        self.cancelled = False

    def __call__(self) -> bool:
        if self.heartbeat.lost:
            return True
        now = time.monotonic()
        if not self.cancelled and now - self.checked >= self.INTERVAL:
            self.checked = now
            self.cancelled = AIRun.objects.filter(pk=self.run_id, cancel_requested=True).exists()
        return self.cancelled


class _Heartbeat(threading.Thread):
    """Renews the run's lease while the step works; notices if the lease was taken."""

    def __init__(self, run_id: Any, worker_id: str) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{run_id}")
        self.run_id = run_id
        self.worker_id = worker_id
        self.stopped = threading.Event()
        self.lost = False

    def run(self) -> None:
        interval = settings.TOPDOG_AUTOPILOT_HEARTBEAT_SECONDS
        lease = timedelta(seconds=settings.TOPDOG_AUTOPILOT_LEASE_SECONDS)
        try:
            while not self.stopped.wait(interval):
                now = timezone.now()
                renewed = AIRun.objects.filter(
                    pk=self.run_id, worker_id=self.worker_id, status=AIRun.Status.RUNNING
                ).update(heartbeat_at=now, lease_expires_at=now + lease)
                if not renewed:
                    self.lost = True
                    return
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)
