"""Work items: a plan's items as rows, and the data moves the transition runner and the
item services make on them (all under the workflow's row lock, in their transaction).

A PLANNING result's items become rows (`work_items_from_plan`); a later plan supersedes
them. IMPLEMENTATION works them item by item (the autopilot, or the IDE); the merged
results of all items complete the phase. A regression to IMPLEMENTATION resets only the
items the findings name, and their dependents (`work_items_reset`).
"""

import posixpath
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Q, Sum
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from workflows.evidence import (
    canonical_json,
    dependents_closure,
    sha256_text,
    topological_order,
)
from workflows.models import CheckRun, PhaseResult, Workflow, WorkItem
from workflows.states import State

Status = WorkItem.Status


def work_items_current(*, workflow_id: Any):
    """The items of the workflow's current plan, in dependency depth then key order."""
    return WorkItem.objects.filter(workflow_id=workflow_id, superseded=False).order_by(
        "depth", "key"
    )


def plan_check(*, workflow: Workflow, evidence: dict) -> None:
    """A 400 for a valid plan the project cannot execute (more items than it allows)."""
    limit = workflow.project.max_work_items
    count = len(evidence["work_items"])
    if count > limit:
        raise ValidationError(
            {
                "phase_result": {
                    "work_items": [
                        f"the plan has {count} work items; project {workflow.project.slug} "
                        f"allows at most {limit} (max_work_items): merge small items"
                    ]
                }
            }
        )


def work_items_from_plan(*, workflow: Workflow, phase_result: PhaseResult, evidence: dict) -> None:
    """The plan's items as rows; the previous plan's rows are superseded (kept).

    Items are made only from PLANNING results, so a workflow's first plan (attempt 1)
    has none to supersede, and skips the two UPDATEs that would find nothing."""
    if phase_result.attempt > 1:
        work_items_supersede(workflow=workflow)
    graph = {item["id"]: item["depends_on"] for item in evidence["work_items"]}
    depth: dict[str, int] = {}
    for key in topological_order(graph):
        depth[key] = 1 + max((depth[dep] for dep in graph[key]), default=-1)
    WorkItem.objects.bulk_create(
        WorkItem(
            workflow=workflow,
            plan=phase_result,
            key=item["id"],
            title=item["title"],
            description=item.get("description", ""),
            files=list(dict.fromkeys(item["files"])),
            depends_on=item["depends_on"],
            depth=depth[item["id"]],
            status=Status.PENDING if item["depends_on"] else Status.READY,
        )
        for item in evidence["work_items"]
    )


def work_items_supersede(*, workflow: Workflow) -> None:
    """Retire the current plan's items: open ones are cancelled; all are kept."""
    current = WorkItem.objects.filter(workflow=workflow, superseded=False)
    current.filter(status__in=WorkItem.OPEN).update(
        status=Status.CANCELLED, worker_id="", lease_token=None, lease_expires_at=None
    )
    current.update(superseded=True)


def work_items_cancel(*, workflow: Workflow) -> int:
    """Cancel every open item (the workflow ended); running ones stop at their next check."""
    return WorkItem.objects.filter(
        workflow=workflow, superseded=False, status__in=WorkItem.OPEN
    ).update(
        status=Status.CANCELLED,
        worker_id="",
        lease_token=None,
        lease_expires_at=None,
        finished_at=timezone.now(),
    )


def named_paths(*, evidence: dict) -> set[str]:
    """Files a TESTING or VERIFICATION result names: its findings' paths and the files of
    the failing tests of the run it is bound to."""
    paths = {f["path"] for f in evidence.get("findings", []) if f.get("path")}
    run_id = evidence.get("check_run_id")
    if run_id:
        failures = CheckRun.objects.filter(pk=run_id).values_list("failures", flat=True).first()
        paths |= {case["file"] for case in failures or [] if case.get("file")}
    return {posixpath.normpath(path) for path in paths}


def work_items_reset(*, workflow: Workflow, paths: set[str], feedback: str) -> list[str]:
    """Send back the items whose files `paths` names and their dependents (every item
    when no file is named, or none of the named files is an item's); the others keep
    their results. Returns the keys reset."""
    items = list(work_items_current(workflow_id=workflow.id).select_for_update())
    if not items:
        return []
    graph = {item.key: item.depends_on for item in items}
    named = {item.key for item in items if paths & set(item.files)}
    reset = dependents_closure(graph, named) if named else set(graph)
    for item in items:
        if item.key not in reset:
            continue
        item.status = (
            Status.PENDING if any(dep in reset for dep in item.depends_on) else Status.READY
        )
        item.feedback = feedback
        item.attempt = 0
        item.error = ""
        item.worker_id = ""
        item.lease_token = None
        item.lease_expires_at = None
        item.started_at = item.finished_at = None
        item.input_tokens = item.output_tokens = 0
        item.cost_usd = Decimal(0)
        item.usage_booked = False
    WorkItem.objects.bulk_update(
        [item for item in items if item.key in reset],
        [
            "status",
            "feedback",
            "attempt",
            "error",
            "worker_id",
            "lease_token",
            "lease_expires_at",
            "started_at",
            "finished_at",
            "input_tokens",
            "output_tokens",
            "cost_usd",
            "usage_booked",
        ],
    )
    return sorted(reset)


def work_items_settle(*, workflow: Workflow, evidence: dict) -> None:
    """IMPLEMENTATION completed (whole, or by its last item): items not done take their
    files from the change set; every item's usage is now booked."""
    by_path = {change["path"]: change for change in evidence["files"]}
    now = timezone.now()
    for item in work_items_current(workflow_id=workflow.id).select_for_update():
        fields = []
        if item.status != Status.DONE:
            files = [by_path[path] for path in item.files if path in by_path]
            item.status = Status.DONE
            item.result_files = files
            item.result_sha256 = sha256_text(canonical_json(files))
            item.result_message = "completed with the whole change set"
            item.worker_id = ""
            item.lease_token = None
            item.lease_expires_at = None
            item.finished_at = now
            fields += SETTLED_FIELDS
        if not item.usage_booked:
            item.usage_booked = True
            fields.append("usage_booked")
        if fields:  # one UPDATE per item, of what changed
            item.save(update_fields=fields)


SETTLED_FIELDS = (
    "status",
    "result_files",
    "result_sha256",
    "result_message",
    "worker_id",
    "lease_token",
    "lease_expires_at",
    "finished_at",
)


def work_items_unbooked_usage(*, workflow_id: Any) -> dict:
    """The items' usage not yet on an IMPLEMENTATION message."""
    totals = work_items_current(workflow_id=workflow_id).filter(usage_booked=False)
    found = totals.aggregate(
        input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens"), cost=Sum("cost_usd")
    )
    return {
        "input_tokens": found["input_tokens"] or 0,
        "output_tokens": found["output_tokens"] or 0,
        "cost_usd": found["cost"] or Decimal(0),
    }


def work_items_merged(*, workflow: Workflow) -> dict:
    """The change set of all done items, in dependency order, under one commit message."""
    items = list(work_items_current(workflow_id=workflow.id).order_by("id"))  # plan order
    order = topological_order({item.key: item.depends_on for item in items})
    by_key = {item.key: item for item in items}
    files = [change for key in order for change in by_key[key].result_files]
    lines = [
        f"- {key}: {by_key[key].result_message or by_key[key].title}".splitlines()[0][:200]
        for key in order
    ]
    return {
        "commit_message": f"feat: {workflow.title}\n\n" + "\n".join(lines),
        "files": files,
        "notes": f"Merged from {len(items)} work items.",
    }


def work_items_promote(*, workflow_id: Any) -> list[str]:
    """Pending items whose dependencies are all done become ready; their keys."""
    items = list(work_items_current(workflow_id=workflow_id))
    done = {item.key for item in items if item.status == Status.DONE}
    ready = [
        item.pk
        for item in items
        if item.status == Status.PENDING and all(dep in done for dep in item.depends_on)
    ]
    WorkItem.objects.filter(pk__in=ready, status=Status.PENDING).update(status=Status.READY)
    return [item.key for item in items if item.pk in ready]


def work_items_claim(*, workflow_id: Any, limit: int, lease_seconds: int) -> list[int]:
    """Claim ready items for workers, so that at most `limit` of the workflow's items
    run at once: under the workflow's row lock, count the running ones, then take the
    free slots' worth of ready items (`skip_locked`). A claimed item is `running` with a
    lease and no worker until a worker takes it (`services.work_item_start`, which
    issues its lease token)."""
    with transaction.atomic():
        locked = Workflow.objects.select_for_update().filter(
            pk=workflow_id, state=State.IMPLEMENTATION, awaiting_approval=False
        )
        if not locked.exists():
            return []
        current = work_items_current(workflow_id=workflow_id)
        running = current.filter(status=Status.RUNNING).count()
        slots = limit - running
        if slots <= 0:
            return []
        ids = list(
            current.filter(status=Status.READY)
            .select_for_update(skip_locked=True)
            .values_list("pk", flat=True)[:slots]
        )
        WorkItem.objects.filter(pk__in=ids).update(
            status=Status.RUNNING,
            worker_id="",
            lease_token=None,
            attempt=0,
            error="",
            lease_expires_at=timezone.now() + timedelta(seconds=lease_seconds),
        )
    return ids


def work_item_renew(*, item_id: Any, lease_token: Any, lease_seconds: float) -> bool:
    """Renew the lease of the item taken with `lease_token`; False: no longer the holder's."""
    now = timezone.now()
    return bool(
        WorkItem.objects.filter(pk=item_id, status=Status.RUNNING, lease_token=lease_token).update(
            heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds)
        )
    )


def work_item_release(*, item_id: Any, lease_token: Any) -> bool:
    """Give a running item back (its run stopped): ready again, for anyone."""
    return bool(
        WorkItem.objects.filter(pk=item_id, status=Status.RUNNING, lease_token=lease_token).update(
            status=Status.READY, worker_id="", lease_token=None, lease_expires_at=None
        )
    )


def work_items_reap(*, now: Any, max_recoveries: int) -> set[Any]:
    """Running items whose lease expired (their worker died, or the task that was to
    take them never ran) are ready again; after `max_recoveries` they fail. Returns the
    workflows whose items were made ready."""
    expired = WorkItem.objects.filter(
        status=Status.RUNNING, superseded=False, lease_expires_at__lt=now
    )
    workflows = set()
    for item_id in expired.values_list("pk", flat=True):
        with transaction.atomic():
            item = (
                WorkItem.objects.select_for_update(skip_locked=True)
                .filter(pk=item_id, status=Status.RUNNING, lease_expires_at__lt=now)
                .first()
            )
            if item is None:
                continue
            if item.executions > max_recoveries:
                item.status = Status.FAILED
                item.error = f"its worker stopped {item.executions} times; giving up"
                item.finished_at = now
            else:
                item.status = Status.READY
                workflows.add(item.workflow_id)
            item.worker_id = ""
            item.lease_token = None
            item.lease_expires_at = None
            item.save()
    return workflows


def work_items_revive(*, workflow_id: Any) -> int:
    """Failed items get another round (a new run starts on the workflow)."""
    return WorkItem.objects.filter(
        Q(status=Status.FAILED), workflow_id=workflow_id, superseded=False
    ).update(status=Status.READY, attempt=0, worker_id="", lease_token=None, lease_expires_at=None)
