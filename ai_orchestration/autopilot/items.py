"""IMPLEMENTATION as a graph: the autopilot works the plan's items, each as its own task.

An item is ready when every item it depends on is done. `work_items_dispatch` claims
ready items up to the project's `work_item_concurrency` (under the workflow's row lock,
so the limit holds across workers) and queues `work_item_run_task` for each. A worker
takes a claimed item (exactly one can), holds it with a lease its heartbeat renews,
builds the item's prompt (`context.work_item_prompt_build`), calls the model, and
completes the item (`workflows.services.work_item_complete`: its files pass the static
checks and stay within the item's files). A failed attempt is retried with the errors,
after a backoff, up to TOPDOG_WORK_ITEM_MAX_ATTEMPTS; then the item and the run fail.
Taking an item issues it a new lease token; the worker's writes on the item (complete,
fail, release) need that token, so a worker whose lease was taken over is refused, and
its call is cut when its heartbeat finds the lease lost (lease.py).
The last item completes the phase with the merged change set. A worker that finishes an
item takes the next ready one itself (no queue round trip between an item and its
dependent); the reaper (`services.autopilot_reap`) gives an item whose worker died to
another.
"""

import json
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.db.models import F
from rest_framework.exceptions import ValidationError

from ai_orchestration.accounting import budget_stop_reason, calls_usage
from ai_orchestration.autopilot.answers import parse_json
from ai_orchestration.autopilot.frames import run_frame_send
from ai_orchestration.autopilot.lease import (
    LeaseHeartbeat,
    StopCheck,
    holder_write,
    work_item_lease,
    work_item_stop_check,
)
from ai_orchestration.autopilot.services import (
    WAITING_FOR_ITEMS,
    run_finish_by_id,
    run_held,
    work_items_dispatch,
)
from ai_orchestration.context import work_item_prompt_build
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
from ai_orchestration.schemas import evidence_json_schema
from workflows.errors import TransitionConflict, WorkflowNotFound
from workflows.evidence import evidence_validate
from workflows.models import Workflow, WorkItem
from workflows.services import (
    Actor,
    CallUsage,
    work_item_complete,
    work_item_fail,
    work_item_start,
)
from workflows.states import State
from workflows.work_items import work_item_release, work_items_current

logger = logging.getLogger(__name__)

AUTOPILOT = Actor.system("autopilot")


@dataclass(frozen=True)
class ItemProgress:
    """What happened to an item, for progress displays (the CLI)."""

    key: str
    title: str
    status: str
    attempt: int
    detail: str = ""


# --- scheduling -------------------------------------------------------------------------


def _claimed_untaken(workflow_id: Any) -> list[int]:
    """Claimed items no worker has taken yet (a worker with time may take them)."""
    return list(
        work_items_current(workflow_id=workflow_id)
        .filter(status=WorkItem.Status.RUNNING, worker_id="")
        .values_list("pk", flat=True)
    )


def work_items_work(
    *,
    run_id: Any,
    workflow_id: Any,
    worker_id: str,
    first: Any = None,
    on_progress: Any = None,
    should_stop: Any = None,
) -> None:
    """Work items for the run until none is left to take (or `should_stop()`): `first`,
    then whatever is claimed and untaken, claiming what becomes ready on the way."""
    item_id = first
    while _run_active(run_id) and not (should_stop and should_stop()):
        if item_id is not None:
            _item_work(run_id, item_id, worker_id, on_progress)
        work_items_dispatch(run_id=run_id, workflow_id=workflow_id)
        untaken = _claimed_untaken(workflow_id)
        if not untaken:
            return
        item_id = untaken[0]


def _run_active(run_id: Any) -> bool:
    return AIRun.objects.filter(pk=run_id, status__in=AIRun.ACTIVE, cancel_requested=False).exists()


def work_items_step(run: AIRun, lease: LeaseHeartbeat, on_progress: Any = None) -> str:
    """A run's step in an IMPLEMENTATION that has work items: dispatch the ready ones and
    work what this worker can take. Returns "moved" when the phase was completed (by
    anyone), "waiting" when the run now waits for items other workers hold (the phase's
    completion queues it again), "stopped" when the run ended or is no longer this
    worker's (`lease`)."""
    work_items_work(
        run_id=run.id,
        workflow_id=run.workflow_id,
        worker_id=run.worker_id,
        on_progress=on_progress,
        should_stop=lambda: lease.lost,
    )
    with transaction.atomic():
        current = AIRun.objects.select_for_update().get(pk=run.id)
        workflow = Workflow.objects.select_for_update().get(pk=run.workflow_id)
        if not run_held(current, lease.token) or current.cancel_requested:
            return "stopped"
        if workflow.state != State.IMPLEMENTATION or workflow.awaiting_approval:
            return "moved"
        open_items = work_items_current(workflow_id=workflow.id).exclude(
            status=WorkItem.Status.DONE
        )
        failed = open_items.filter(status=WorkItem.Status.FAILED).first()
        if failed is not None or not open_items.filter(status=WorkItem.Status.RUNNING).exists():
            reason = f"work item {failed.key} failed: {failed.error}" if failed else "no item runs"
            current.status = AIRun.Status.FAILED
            current.error = reason[:2000]
            current.worker_id = ""
            current.lease_token = None
            current.save()
            transaction.on_commit(partial(run_frame_send, current))
            return "stopped"
        current.status = AIRun.Status.WAITING
        current.worker_id = ""
        current.lease_token = None
        current.stop_reason = WAITING_FOR_ITEMS
        current.save()
        transaction.on_commit(partial(run_frame_send, current))
    return "waiting"


# --- one item ---------------------------------------------------------------------------


def _item_work(run_id: Any, item_id: Any, worker_id: str, on_progress: Any) -> None:
    """Take the item and work it to done, or to failure after its tries."""
    item = WorkItem.objects.filter(pk=item_id).only("workflow_id").first()
    held_since = time.monotonic()  # the lease the take writes runs from a moment later
    token = (
        work_item_start(
            workflow_id=item.workflow_id, item_id=item_id, worker_id=worker_id, actor=AUTOPILOT
        )
        if item is not None
        else None
    )
    if token is None:
        return
    with work_item_lease(
        run_id=run_id, item_id=item_id, token=token, held_since=held_since
    ) as lease:
        try:
            _item_tries(run_id, item_id, lease, on_progress)
        except (OperationalError, InterfaceError):
            # The database went away: the item's lease runs out and the reaper makes it ready.
            logger.warning("work item %s: database unavailable; left to its lease", item_id)
            raise
        except Exception as exc:  # a bug must not leave the item running until its lease ends
            logger.exception("work item %s failed", item_id)
            kept = work_item_fail(
                workflow_id=item.workflow_id,
                item_id=item_id,
                lease_token=token,
                error=f"internal error: {type(exc).__name__}",
                actor=AUTOPILOT,
                final=True,
            )
            if kept:
                run_finish_by_id(run_id, AIRun.Status.FAILED, error=f"internal error: {exc}"[:500])


def _item_tries(run_id: Any, item_id: Any, lease: LeaseHeartbeat, on_progress: Any) -> None:
    should_cancel = work_item_stop_check(run_id=run_id, item_id=item_id, lease=lease)
    # The run's model override, if any, as the runner's phases use it.
    run_model = AIRun.objects.filter(pk=run_id).values_list("model_name", flat=True).first()
    problems = ""
    while True:
        item = WorkItem.objects.select_related("plan", "workflow__project").get(pk=item_id)
        _report(on_progress, item, "running")
        calls: list[Completion] = []
        try:
            answer = _item_answer(item, problems, should_cancel, calls, run_model)
            if lease.lost:  # the answer came as the lease went: another worker may have it
                raise ProviderCancelled("the item's lease was lost", attempts=0)
            done = holder_write(
                lease,
                partial(_item_complete_and_book, run_id, item, answer, calls, lease),
                what=f"completing work item {item.key}",
                landed=partial(_item_landed, item.pk, calls[-1].content),
            )
            _report(on_progress, done, "done", ", ".join(item.files))
            return
        except ProviderCancelled as exc:
            _book(run_id, calls, failed_attempts=exc.attempts)
            if lease.lost:
                logger.warning("work item %s: lease lost; its result is discarded", item_id)
            else:
                work_item_release(item_id=item_id, lease_token=lease.token)
            return
        except _OverBudget as exc:
            # As for a phase: the run stops before a call that could exceed the budget.
            work_item_release(item_id=item_id, lease_token=lease.token)
            run_finish_by_id(run_id, AIRun.Status.STOPPED, stop_reason=str(exc))
            return
        except (TransitionConflict, WorkflowNotFound) as exc:
            # Taken from us (cancelled, reaped, superseded) or completed by someone else.
            logger.info("work item %s: completion refused: %s", item_id, exc)
            _book(run_id, calls)
            return
        except (ValidationError, ProviderError) as exc:
            failed = exc.attempts if isinstance(exc, ProviderError) else 0
            _book(run_id, calls, failed_attempts=failed)
            problems = _problems(exc)
            if _item_failed(run_id, item, lease.token, problems, calls, on_progress):
                return
            if _backoff(item.attempt, should_cancel):
                work_item_release(item_id=item_id, lease_token=lease.token)
                return


def _item_complete_and_book(
    run_id: Any, item: WorkItem, answer: dict, calls: list[Completion], lease: LeaseHeartbeat
) -> WorkItem:
    """Complete the item with the answer and count its calls on the run: in one
    transaction, so neither is booked without the other. The run's row is locked first
    (the lock order: a run before its workflow)."""
    with transaction.atomic():
        list(AIRun.objects.select_for_update().filter(pk=run_id).values_list("pk"))
        done = work_item_complete(
            workflow_id=item.workflow_id,
            key=item.key,
            ai_response=calls[-1].content,
            files=answer["files"],
            message=answer["commit_message"],
            actor=AUTOPILOT,
            usage=calls_usage(calls, "") if calls else CallUsage(),
            lease_token=lease.token,
        )
        _book(run_id, calls)
    return done.item


def _item_landed(item_id: Any, ai_response: str) -> WorkItem | None:
    """The item, if its completion with this answer committed though its connection
    failed at the COMMIT."""
    return WorkItem.objects.filter(
        pk=item_id, status=WorkItem.Status.DONE, ai_response=ai_response
    ).first()


class _OverBudget(Exception):
    """The next item call could take the workflow over its project's budget."""


def _item_answer(
    item: WorkItem,
    problems: str,
    should_cancel: StopCheck,
    calls: list[Completion],
    run_model: str | None = "",
) -> dict:
    """The model's answer for the item, as implementation evidence (a 400 if invalid)."""
    workflow = item.workflow
    prompt = work_item_prompt_build(workflow=workflow, item=item, model_name=run_model or "")
    role = workflow.current_role
    provider = provider_for(
        prompt.provider, api_key=workflow.project.provider_api_key(prompt.provider)
    )
    messages = [ChatMessage(m["role"], m["content"]) for m in prompt.messages]
    if problems:
        messages.append(
            ChatMessage(
                "user",
                "Your last answer for this item did not check. Fix these problems and "
                f"answer again with only the JSON object:\n{problems}",
            )
        )
    request = ChatRequest(
        model=prompt.model,
        messages=tuple(messages),
        temperature=prompt.temperature,
        max_tokens=prompt.max_tokens,
        json_schema=evidence_json_schema(State.IMPLEMENTATION),
        metadata={
            "phase": State.IMPLEMENTATION,
            "role": role,
            "requirements": workflow.requirements,
            "feedback": item.feedback,
            "workflow_id": str(workflow.id),
            "work_item": {"key": item.key, "title": item.title, "files": item.files},
            "problems": problems,
        },
    )
    stop = budget_stop_reason(
        workflow=workflow,
        provider_name=provider.name,
        request=request,
        input_estimate=prompt.estimated_input_tokens,
    )
    if stop:
        raise _OverBudget(stop)
    completion = complete_with_retries(
        provider,
        request,
        deadline_seconds=settings.TOPDOG_LLM_DEADLINE_SECONDS,
        on_delta=lambda chunk, attempt: None,
        should_cancel=should_cancel,
    )
    calls.append(completion)
    return evidence_validate(phase=State.IMPLEMENTATION, data=parse_json(completion.content))


def _problems(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return json.dumps(exc.detail, default=str)[:4000]
    return str(exc)[:4000]


def _item_failed(
    run_id: Any,
    item: WorkItem,
    lease_token: Any,
    problems: str,
    calls: list[Completion],
    on_progress: Any,
) -> bool:
    """Book a failed attempt. True: stop (the item failed for good, or is not ours)."""
    final = item.attempt >= settings.TOPDOG_WORK_ITEM_MAX_ATTEMPTS
    kept = work_item_fail(
        workflow_id=item.workflow_id,
        item_id=item.pk,
        lease_token=lease_token,
        error=problems,
        actor=AUTOPILOT,
        usage=calls_usage(calls, "") if calls else None,
        final=final,
    )
    _report(on_progress, item, "failed" if final else "retrying", problems[:200])
    if kept and final:
        run_finish_by_id(
            run_id,
            AIRun.Status.FAILED,
            error=f"work item {item.key} failed after {item.attempt} tries: {problems}"[:2000],
        )
    return final or not kept


def _backoff(attempt: int, should_cancel: Any) -> bool:
    """Wait before the next try (doubling); True when cancelled meanwhile."""
    pause = settings.TOPDOG_WORK_ITEM_BACKOFF_MS / 1000 * 2 ** max(0, attempt - 1)
    deadline = time.monotonic() + pause
    while time.monotonic() < deadline:
        if should_cancel():
            return True
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    return should_cancel()


def _book(run_id: Any, calls: list[Completion], *, failed_attempts: int = 0) -> None:
    """Count an item's calls on its run (and attempts that produced nothing)."""
    if not calls and not failed_attempts:
        return
    usage = calls_usage(calls, "") if calls else CallUsage()
    AIRun.objects.filter(pk=run_id).update(
        attempts=F("attempts") + sum(c.attempts for c in calls) + failed_attempts,
        input_tokens=F("input_tokens") + usage.input_tokens,
        output_tokens=F("output_tokens") + usage.output_tokens,
        cost_usd=F("cost_usd") + usage.cost_usd,
    )


def _report(on_progress: Any, item: WorkItem, status: str, detail: str = "") -> None:
    if on_progress is not None:
        on_progress(ItemProgress(item.key, item.title, status, item.attempt, detail))
