"""The autopilot: the service itself works a workflow through its phases.

A run advances one phase per task on the Tasks queue: build the same prompt the API
serves, call the provider (streaming `ai.delta` frames to the workflow's websocket),
validate the evidence (one retry with the errors fed back), and complete the phase
through the same service the API uses. Then it enqueues the next phase, or stops: at an
approval gate (resumed by approve/reject), at the budget cap, on cancel, or at the end.

Exactly-once: a step holds a lease on its run, renewed by a heartbeat thread. A run
whose worker died is re-queued by `autopilot_reap` once its lease expires. A phase is
completed with `expected_state`, under the workflow row lock, in the same transaction
that books the run's progress, so a late or duplicate worker gets a conflict instead of
completing the phase twice.
"""

import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from django_tasks import task
from rest_framework.exceptions import ValidationError

from ai_orchestration.accounting import call_cost
from ai_orchestration.context import prompt_request_build
from ai_orchestration.models import AIRun
from ai_orchestration.providers.base import (
    ChatMessage,
    ChatRequest,
    Completion,
    ProviderCancelled,
    ProviderError,
    complete_with_retries,
    provider_for,
)
from ai_orchestration.tokens import tokens_estimate
from workflows.broadcast import workflow_live_frame_send
from workflows.check_runs import check_run_event_data, check_run_for_testing, check_runs_reap
from workflows.errors import RepositoryUnavailable, TransitionConflict
from workflows.evidence import evidence_validate
from workflows.models import Workflow
from workflows.release import ReleaseFailed, release_make
from workflows.services import (
    Actor,
    CallUsage,
    transition_check,
    workflow_lock,
    workflow_phase_complete,
)
from workflows.states import State, Transition
from workflows.verification import change_set_verify, testing_evidence_from_run

logger = logging.getLogger(__name__)

AUTOPILOT = Actor.system("autopilot")


class RunConflict(TransitionConflict):
    """A run cannot start or be cancelled in the workflow's current situation."""


# --- starting, cancelling, resuming ------------------------------------------------------


def autopilot_start(
    *, workflow_id: Any, actor: Actor, scope: str = AIRun.Scope.WORKFLOW, model_name: str = ""
) -> AIRun:
    """Queue an autopilot run for the workflow's current phase (or all that remain)."""
    with transaction.atomic():
        workflow, member_role = workflow_lock(workflow_id=workflow_id, actor=actor)
        transition_check(workflow, member_role, Transition.COMPLETE)
        active = AIRun.objects.filter(workflow=workflow, status__in=AIRun.ACTIVE).first()
        if active is not None:
            raise RunConflict(
                f"run {active.id} is already {active.status} on this workflow; cancel it first",
                current_state=workflow.state,
                allowed=[],
            )
        if model_name and model_name not in settings.TOPDOG_MODELS:
            raise ValidationError({"model": [f"choose from {', '.join(settings.TOPDOG_MODELS)}"]})
        run = AIRun.objects.create(
            workflow=workflow,
            scope=scope,
            phase=workflow.state,
            model_name=model_name,
            created_by=actor.user,
        )
        _enqueue_after_commit(run.id)
    _run_frame(run)
    return run


def autopilot_cancel(*, run_id: Any, actor: Actor) -> AIRun:
    """Cancel a run: at once if it is not running, between chunks if it is."""
    with transaction.atomic():
        run = AIRun.objects.select_for_update().select_related("workflow").get(pk=run_id)
        workflow_lock(workflow_id=run.workflow_id, actor=actor)  # permission: a member
        if not run.is_active:
            raise RunConflict(
                f"run is {run.status}; only a queued, running or waiting run can be cancelled",
                current_state=run.workflow.state,
                allowed=[],
            )
        if run.status == AIRun.Status.RUNNING:
            run.cancel_requested = True
            run.save(update_fields=["cancel_requested"])
        else:
            _finish(run, AIRun.Status.CANCELLED, stop_reason=f"cancelled by {actor.name}")
    return run


def autopilot_resume_after_approval(*, workflow_id: Any) -> None:
    """A gate was approved or rejected: wake the run that was waiting there."""
    with transaction.atomic():
        run = (
            AIRun.objects.select_for_update()
            .filter(workflow_id=workflow_id, status=AIRun.Status.WAITING)
            .first()
        )
        if run is None:
            return
        run.status = AIRun.Status.QUEUED
        run.stop_reason = ""
        run.save(update_fields=["status", "stop_reason"])
        _enqueue_after_commit(run.id)


def autopilot_stop_for_workflow(*, workflow_id: Any) -> None:
    """The workflow ended (cancelled or failed): end its active run too."""
    with transaction.atomic():
        for run in AIRun.objects.select_for_update().filter(
            workflow_id=workflow_id, status__in=AIRun.ACTIVE
        ):
            if run.status == AIRun.Status.RUNNING:
                run.cancel_requested = True
                run.save(update_fields=["cancel_requested"])
            else:
                _finish(run, AIRun.Status.CANCELLED, stop_reason="workflow ended")


def autopilot_reap(*, now: Any = None) -> list[Any]:
    """Re-queue runs whose worker died (lease expired); fail those that died too often.
    Check runs whose worker died are ended too."""
    now = now or timezone.now()
    check_runs_reap(now=now)
    requeued = []
    expired = AIRun.objects.filter(status=AIRun.Status.RUNNING, lease_expires_at__lt=now)
    for run_id in expired.values_list("id", flat=True):
        with transaction.atomic():
            run = (
                AIRun.objects.select_for_update(skip_locked=True)
                .filter(pk=run_id, status=AIRun.Status.RUNNING, lease_expires_at__lt=now)
                .first()
            )
            if run is None:
                continue
            if run.recoveries >= settings.TOPDOG_AUTOPILOT_MAX_RECOVERIES:
                _finish(
                    run,
                    AIRun.Status.FAILED,
                    error=f"its worker stopped {run.recoveries + 1} times (last seen "
                    f"{run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC); giving up",
                )
                continue
            logger.warning("run %s lost its worker %s; re-queueing", run.id, run.worker_id)
            run.status = AIRun.Status.QUEUED
            run.worker_id = ""
            run.recoveries += 1
            run.save(update_fields=["status", "worker_id", "recoveries"])
            _enqueue_after_commit(run.id)
            requeued.append(run.id)
    return requeued


# --- the task ------------------------------------------------------------------------------


@task()
def autopilot_run_task(run_id: str) -> None:
    """Work one phase of a run; enqueue the next one if the run goes on."""
    autopilot_reap()
    if autopilot_step(run_id=run_id, worker_id=worker_identity()):
        autopilot_run_task.enqueue(run_id)


def _enqueue_after_commit(run_id: Any) -> None:
    transaction.on_commit(lambda: autopilot_run_task.enqueue(str(run_id)))


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


@dataclass(frozen=True)
class StepProgress:
    """What a step did, for progress displays (the CLI)."""

    run: AIRun
    phase: str
    new_state: str
    delta_chars: int


def autopilot_step(*, run_id: Any, worker_id: str, on_progress: Any = None) -> bool:
    """Claim the run and work the workflow's current phase. True: go on with the next."""
    run = _claim(run_id, worker_id)
    if run is None:
        return False
    heartbeat = _Heartbeat(run.id, worker_id)
    heartbeat.start()
    try:
        return _work_phase(run, heartbeat, on_progress)
    except Exception as exc:  # an unexpected bug must not leave the run "running"
        logger.exception("autopilot run %s failed", run.id)
        _finish_by_id(run.id, AIRun.Status.FAILED, error=f"internal error: {type(exc).__name__}")
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
    _run_frame(run)
    return run


def _work_phase(run: AIRun, heartbeat: "_Heartbeat", on_progress: Any) -> bool:
    workflow = Workflow.objects.select_related("project").get(pk=run.workflow_id)
    if workflow.is_terminal:
        _finish(run, _status_for_end(workflow), stop_reason=f"workflow is {workflow.state}")
        return False
    if workflow.awaiting_approval:
        _wait_at_gate(run, workflow)
        return False
    phase, role = workflow.state, workflow.current_role
    should_cancel = _CancelCheck(run.id, heartbeat)
    check = None
    if phase == State.TESTING:
        # The auditor reviews a measured run: the change set's tests, run in the sandbox.
        check = check_run_for_testing(workflow=workflow, actor=AUTOPILOT, should_stop=should_cancel)
        if should_cancel():
            if not heartbeat.lost:
                _finish_by_id(run.id, AIRun.Status.CANCELLED, stop_reason="cancelled")
            return False
    prompt = prompt_request_build(workflow=workflow)
    model_name = run.model_name or workflow.project.model_for(role, workflow.model_name)
    catalog = settings.TOPDOG_MODELS[model_name]
    provider = provider_for(
        catalog["provider"], api_key=workflow.project.provider_api_key(catalog["provider"])
    )
    request = ChatRequest(
        model=catalog["model"],
        messages=tuple(ChatMessage(m["role"], m["content"]) for m in prompt.messages),
        temperature=prompt.temperature,
        max_tokens=prompt.max_tokens,
        json_schema=_json_schema(phase),
        metadata={
            "phase": phase,
            "role": role,
            "requirements": workflow.requirements,
            "feedback": prompt.feedback,
            "workflow_id": str(workflow.id),
            "check": check_run_event_data(check) if check is not None else None,
        },
    )
    budget_stop = _budget_exceeded(workflow, provider.name, request, prompt.estimated_input_tokens)
    if budget_stop:
        _finish(run, AIRun.Status.STOPPED, stop_reason=budget_stop)
        return False

    deltas = _DeltaBroadcaster(workflow, run, phase, role)
    calls: list[Completion] = []
    try:
        evidence = _evidence_from_model(
            provider, request, deltas, should_cancel, calls, verify=_verifier(workflow)
        )
    except ProviderCancelled as exc:
        _book_calls(run, calls, failed_attempts=exc.attempts)
        if not heartbeat.lost:  # (a lost lease means another worker owns the run now)
            _finish_by_id(run.id, AIRun.Status.CANCELLED, stop_reason="cancelled during the call")
        return False
    except ProviderError as exc:
        _book_calls(run, calls, failed_attempts=exc.attempts)
        _finish_by_id(run.id, AIRun.Status.FAILED, error=f"{phase}: {exc}")
        return False
    except RepositoryUnavailable as exc:
        _book_calls(run, calls)
        _finish_by_id(run.id, AIRun.Status.FAILED, error=f"{phase}: {exc}")
        return False
    finally:
        deltas.flush()

    final = calls[-1]
    usage = _usage_of(calls, prompt.prompt_version)
    if phase == State.TESTING:
        evidence = testing_evidence_from_run(evidence=evidence, run=check)
    ai_response = final.content
    if phase == "DEPLOYMENT":
        # The RELEASE_MANAGER's record is replaced by the real one: push, pull request.
        try:
            evidence, summary = release_make(workflow=workflow)
        except ReleaseFailed as exc:
            _book_calls(run, calls)
            _finish_by_id(run.id, AIRun.Status.FAILED, error=f"DEPLOYMENT: {exc}")
            return False
        ai_response = f"{final.content}\n\n{summary}"
    try:
        with transaction.atomic():
            outcome = workflow_phase_complete(
                workflow_id=workflow.id,
                ai_response=ai_response,
                result=evidence,
                actor=AUTOPILOT,
                expected_state=phase,
                usage=usage,
            )
            # Booked with the phase, in one transaction: never one without the other.
            run = AIRun.objects.select_for_update().get(pk=run.id)
            _add_usage(run, calls, usage)
            run.phases_completed += 1
            run.phase = outcome.workflow.state
            run.save()
    except TransitionConflict:
        # Someone (a person, or a duplicate worker) completed this phase first.
        logger.info("run %s: %s was completed elsewhere; moving on", run.id, phase)
        run.refresh_from_db()
        _book_calls(run, calls)
        return _continue_or_stop(run)
    new_state = outcome.workflow.state
    if on_progress is not None:
        on_progress(StepProgress(run, phase, new_state, deltas.total_chars))
    return _continue_or_stop(run)


def _continue_or_stop(run: AIRun) -> bool:
    run.refresh_from_db()
    workflow = Workflow.objects.get(pk=run.workflow_id)
    if run.cancel_requested:
        _finish(run, AIRun.Status.CANCELLED, stop_reason="cancelled")
        return False
    if workflow.is_terminal:
        _finish(run, _status_for_end(workflow), stop_reason=f"workflow is {workflow.state}")
        return False
    if workflow.awaiting_approval:
        _wait_at_gate(run, workflow)
        return False
    if run.scope == AIRun.Scope.PHASE:
        _finish(run, AIRun.Status.COMPLETED, stop_reason="phase done")
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
    _run_frame(run)


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
            request = ChatRequest(
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
    raise AssertionError("unreachable")


def _parse_json(text: str) -> Any:
    """The JSON object in a model's answer (bare, or inside a ``` fence)."""
    fenced = re.search(r"```(?:json)?\s*(\{.*\})\s*```", text, re.DOTALL)
    candidate = fenced.group(1) if fenced else text.strip()
    try:
        return json.loads(candidate)
    except json.JSONDecodeError:
        start, end = candidate.find("{"), candidate.rfind("}")
        if start != -1 and end > start:
            try:
                return json.loads(candidate[start : end + 1])
            except json.JSONDecodeError:
                pass
        raise ValidationError({"phase_result": ["the answer is not a JSON object"]}) from None


def _json_schema(phase: str) -> dict | None:
    try:
        from ai_orchestration.schemas import evidence_json_schema
    except ImportError:  # pragma: no cover - schemas module is optional for offline runs
        return None
    return evidence_json_schema(phase)


def _usage_of(calls: list[Completion], prompt_version: str) -> CallUsage:
    last = calls[-1]
    input_tokens = sum(c.usage.input_tokens for c in calls)
    output_tokens = sum(c.usage.output_tokens for c in calls)
    return CallUsage(
        provider=last.provider,
        model=last.model,
        prompt_version=prompt_version,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=sum(
            (
                call_cost(
                    provider=c.provider,
                    model=c.model,
                    input_tokens=c.usage.input_tokens,
                    output_tokens=c.usage.output_tokens,
                )
                for c in calls
            ),
            Decimal(0),
        ),
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
    usage = _usage_of(calls, "")
    AIRun.objects.filter(pk=run.pk).update(
        attempts=F("attempts") + sum(c.attempts for c in calls) + failed_attempts,
        input_tokens=F("input_tokens") + usage.input_tokens,
        output_tokens=F("output_tokens") + usage.output_tokens,
        cost_usd=F("cost_usd") + usage.cost_usd,
    )


def _budget_exceeded(
    workflow: Workflow, provider_name: str, request: ChatRequest, input_estimate: int
) -> str:
    budget = workflow.project.budget_usd
    if budget is None:
        return ""
    worst = call_cost(
        provider=provider_name,
        model=request.model,
        input_tokens=input_estimate
        or tokens_estimate("".join(m.content for m in request.messages)),
        output_tokens=request.max_tokens,
    )
    if workflow.cost_usd + worst > budget:
        return (
            f"budget: spent ${workflow.cost_usd:.4f} of ${budget:.4f}; the next "
            f"{workflow.state} call could cost up to ${worst:.4f}"
        )
    return ""


def _finish(run: AIRun, status: str, *, error: str = "", stop_reason: str = "") -> None:
    run.status = status
    run.error = error or run.error
    run.stop_reason = stop_reason or run.stop_reason
    run.finished_at = timezone.now()
    run.worker_id = ""
    run.save()
    _run_frame(run)


def _finish_by_id(run_id: Any, status: str, *, error: str = "", stop_reason: str = "") -> None:
    with transaction.atomic():
        run = AIRun.objects.select_for_update().get(pk=run_id)
        _finish(run, status, error=error, stop_reason=stop_reason)


def run_summary(run: AIRun) -> dict:
    return {
        "id": str(run.id),
        "workflow_id": str(run.workflow_id),
        "status": run.status,
        "scope": run.scope,
        "phase": run.phase,
        "provider": run.provider,
        "model": run.model,
        "phases_completed": run.phases_completed,
        "attempts": run.attempts,
        "input_tokens": run.input_tokens,
        "output_tokens": run.output_tokens,
        "cost_usd": str(run.cost_usd),
        "error": run.error,
        "stop_reason": run.stop_reason,
    }


def _run_frame(run: AIRun) -> None:
    """Tell the workflow's websocket about the run (not persisted; no seq)."""
    _group_send(
        run.workflow_id,
        {"type": "ai.run", "workflow_id": str(run.workflow_id), "run": run_summary(run)},
    )


def _group_send(workflow_id: Any, frame: dict) -> None:
    workflow_live_frame_send(workflow_id=workflow_id, frame=frame)


class _DeltaBroadcaster:
    """Streams token deltas to the workflow's websocket, batched to ~10 frames a second."""

    INTERVAL = 0.1

    def __init__(self, workflow: Workflow, run: AIRun, phase: str, role: str) -> None:
        self.base = {
            "type": "ai.delta",
            "workflow_id": str(workflow.id),
            "run_id": str(run.id),
            "phase": phase,
            "role": role,
        }
        self.buffer: list[str] = []
        self.attempt = 1
        self.last_flush = time.monotonic()
        self.total_chars = 0

    def __call__(self, chunk: str, attempt: int) -> None:
        if attempt != self.attempt:
            self.flush()
            self.attempt = attempt
        self.buffer.append(chunk)
        self.total_chars += len(chunk)
        if time.monotonic() - self.last_flush >= self.INTERVAL:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            _group_send(
                self.base["workflow_id"],
                {**self.base, "attempt": self.attempt, "delta": "".join(self.buffer)},
            )
            self.buffer = []
        self.last_flush = time.monotonic()


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


__all__ = [
    "autopilot_cancel",
    "autopilot_reap",
    "autopilot_resume_after_approval",
    "autopilot_run_task",
    "autopilot_start",
    "autopilot_step",
]
