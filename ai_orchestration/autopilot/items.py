"""IMPLEMENTATION as a graph: the autopilot works the plan's items, each as its own task.

An item is ready when every item it depends on is done. `work_items_dispatch` claims
ready items up to the project's `work_item_concurrency` (under the workflow's row lock,
so the limit holds across workers) and queues `work_item_run_task` for each. A worker
takes a claimed item (exactly one can), holds it with a lease its heartbeat renews,
builds the item's prompt (`context.work_item_prompt_build`), calls the model, and
completes the item (`workflows.services.work_item_complete`: its files pass the static
checks and stay within the item's files). A failed attempt is retried with the errors,
after a backoff, up to TOPDOG_WORK_ITEM_MAX_ATTEMPTS; then the item and the run fail.
The last item completes the phase with the merged change set. A worker that finishes an
item takes the next ready one itself (no queue round trip between an item and its
dependent); the reaper (`services.autopilot_reap`) gives an item whose worker died to
another.
"""

import json
import logging
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import F
from rest_framework.exceptions import ValidationError

from ai_orchestration.accounting import budget_stop_reason, calls_usage
from ai_orchestration.autopilot.answers import parse_json
from ai_orchestration.autopilot.frames import run_frame_send
from ai_orchestration.autopilot.services import (
    WAITING_FOR_ITEMS,
    run_finish_by_id,
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
from workflows.work_items import (
    work_item_release,
    work_item_renew,
    work_items_current,
)

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
    *, run_id: Any, workflow_id: Any, worker_id: str, first: Any = None, on_progress: Any = None
) -> None:
    """Work items for the run until none is left to take: `first`, then whatever is
    claimed and untaken, claiming what becomes ready on the way."""
    item_id = first
    while _run_active(run_id):
        if item_id is not None:
            _item_work(run_id, item_id, worker_id, on_progress)
        work_items_dispatch(run_id=run_id, workflow_id=workflow_id)
        untaken = _claimed_untaken(workflow_id)
        if not untaken:
            return
        item_id = untaken[0]


def _run_active(run_id: Any) -> bool:
    return AIRun.objects.filter(pk=run_id, status__in=AIRun.ACTIVE, cancel_requested=False).exists()


def work_items_step(run: AIRun, worker_id: str, on_progress: Any = None) -> str:
    """A run's step in an IMPLEMENTATION that has work items: dispatch the ready ones and
    work what this worker can take. Returns "moved" when the phase was completed (by
    anyone), "waiting" when the run now waits for items other workers hold (the phase's
    completion queues it again), "stopped" when the run ended."""
    work_items_work(
        run_id=run.id, workflow_id=run.workflow_id, worker_id=worker_id, on_progress=on_progress
    )
    with transaction.atomic():
        workflow = Workflow.objects.select_for_update().get(pk=run.workflow_id)
        current = AIRun.objects.select_for_update().get(pk=run.id)
        if current.status != AIRun.Status.RUNNING or current.cancel_requested:
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
            current.save()
            transaction.on_commit(partial(run_frame_send, current))
            return "stopped"
        current.status = AIRun.Status.WAITING
        current.worker_id = ""
        current.stop_reason = WAITING_FOR_ITEMS
        current.save()
        transaction.on_commit(partial(run_frame_send, current))
    return "waiting"


# --- one item ---------------------------------------------------------------------------


def _item_work(run_id: Any, item_id: Any, worker_id: str, on_progress: Any) -> None:
    """Take the item and work it to done, or to failure after its tries."""
    item = WorkItem.objects.filter(pk=item_id).only("workflow_id").first()
    if item is None or not work_item_start(
        workflow_id=item.workflow_id, item_id=item_id, worker_id=worker_id, actor=AUTOPILOT
    ):
        return
    heartbeat = _ItemHeartbeat(item_id, worker_id)
    heartbeat.start()
    try:
        _item_tries(run_id, item_id, worker_id, heartbeat, on_progress)
    except (OperationalError, InterfaceError):
        # The database went away: the item's lease runs out and the reaper makes it ready.
        logger.warning("work item %s: database unavailable; left to its lease", item_id)
        raise
    except Exception as exc:  # a bug must not leave the item running until its lease ends
        logger.exception("work item %s failed", item_id)
        work_item_fail(
            workflow_id=item.workflow_id,
            item_id=item_id,
            worker_id=worker_id,
            error=f"internal error: {type(exc).__name__}",
            actor=AUTOPILOT,
            final=True,
        )
        run_finish_by_id(run_id, AIRun.Status.FAILED, error=f"internal error: {exc}"[:500])
    finally:
        heartbeat.stop()


def _item_tries(
    run_id: Any, item_id: Any, worker_id: str, heartbeat: "_ItemHeartbeat", on_progress: Any
) -> None:
    should_cancel = _ItemCancelCheck(run_id, item_id, worker_id, heartbeat)
    # The run's model override, if any, as the runner's phases use it.
    run_model = AIRun.objects.filter(pk=run_id).values_list("model_name", flat=True).first()
    problems = ""
    while True:
        item = WorkItem.objects.select_related("plan", "workflow__project").get(pk=item_id)
        _report(on_progress, item, "running")
        calls: list[Completion] = []
        try:
            answer = _item_answer(item, problems, should_cancel, calls, run_model)
            usage = calls_usage(calls, "") if calls else CallUsage()
            done = work_item_complete(
                workflow_id=item.workflow_id,
                key=item.key,
                ai_response=calls[-1].content,
                files=answer["files"],
                message=answer["commit_message"],
                actor=AUTOPILOT,
                usage=usage,
                worker_id=worker_id,
            )
            _book(run_id, calls)
            _report(on_progress, done.item, "done", ", ".join(item.files))
            return
        except ProviderCancelled:
            _book(run_id, calls)
            work_item_release(item_id=item_id, worker_id=worker_id)
            return
        except _OverBudget as exc:
            # As for a phase: the run stops before a call that could exceed the budget.
            work_item_release(item_id=item_id, worker_id=worker_id)
            run_finish_by_id(run_id, AIRun.Status.STOPPED, stop_reason=str(exc))
            return
        except (TransitionConflict, WorkflowNotFound):
            # Taken from us (cancelled, reaped, superseded) or completed by someone else.
            _book(run_id, calls)
            return
        except (ValidationError, ProviderError) as exc:
            _book(run_id, calls)
            problems = _problems(exc)
            if _item_failed(run_id, item, worker_id, problems, calls, on_progress):
                return
            if _backoff(item.attempt, should_cancel):
                work_item_release(item_id=item_id, worker_id=worker_id)
                return


class _OverBudget(Exception):
    """The next item call could take the workflow over its project's budget."""


def _item_answer(
    item: WorkItem,
    problems: str,
    should_cancel: Any,
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
    worker_id: str,
    problems: str,
    calls: list[Completion],
    on_progress: Any,
) -> bool:
    """Book a failed attempt. True: stop (the item failed for good, or is not ours)."""
    final = item.attempt >= settings.TOPDOG_WORK_ITEM_MAX_ATTEMPTS
    kept = work_item_fail(
        workflow_id=item.workflow_id,
        item_id=item.pk,
        worker_id=worker_id,
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


def _book(run_id: Any, calls: list[Completion]) -> None:
    """Count an item's calls on its run."""
    if not calls:
        return
    usage = calls_usage(calls, "")
    AIRun.objects.filter(pk=run_id).update(
        attempts=F("attempts") + sum(c.attempts for c in calls),
        input_tokens=F("input_tokens") + usage.input_tokens,
        output_tokens=F("output_tokens") + usage.output_tokens,
        cost_usd=F("cost_usd") + usage.cost_usd,
    )


def _report(on_progress: Any, item: WorkItem, status: str, detail: str = "") -> None:
    if on_progress is not None:
        on_progress(ItemProgress(item.key, item.title, status, item.attempt, detail))


# --- liveness ---------------------------------------------------------------------------


class _ItemCancelCheck:
    """should_cancel for an item's call: the item is no longer this worker's (cancelled,
    reaped, completed elsewhere), or its run was cancelled or ended."""

    INTERVAL = 0.5

    def __init__(self, run_id: Any, item_id: Any, worker_id: str, heartbeat: Any) -> None:
        self.run_id, self.item_id, self.worker_id = run_id, item_id, worker_id
        self.heartbeat = heartbeat
        self.checked = 0.0
        self.cancelled = False

    def __call__(self) -> bool:
        if self.heartbeat.lost:
            return True
        now = time.monotonic()
        if not self.cancelled and now - self.checked >= self.INTERVAL:
            self.checked = now
            mine = WorkItem.objects.filter(
                pk=self.item_id, status=WorkItem.Status.RUNNING, worker_id=self.worker_id
            ).exists()
            self.cancelled = not mine or not _run_active(self.run_id)
        return self.cancelled


class _ItemHeartbeat(threading.Thread):
    """Renews the item's lease while a worker works it; notices if it was taken."""

    def __init__(self, item_id: Any, worker_id: str) -> None:
        super().__init__(daemon=True, name=f"heartbeat-item-{item_id}")
        self.item_id = item_id
        self.worker_id = worker_id
        self.stopped = threading.Event()
        self.lost = False

    def run(self) -> None:
        interval = settings.TOPDOG_AUTOPILOT_HEARTBEAT_SECONDS
        lease = settings.TOPDOG_AUTOPILOT_LEASE_SECONDS
        try:
            while not self.stopped.wait(interval):
                if not work_item_renew(
                    item_id=self.item_id, worker_id=self.worker_id, lease_seconds=lease
                ):
                    self.lost = True
                    return
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)
