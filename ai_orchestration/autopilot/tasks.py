"""The autopilot's task on the Tasks queue: work one phase of a run, then queue the next.

Queued rows store the task's dotted path. Rows queued before the autopilot became a
package name `ai_orchestration.autopilot.autopilot_run_task`; the package re-exports
this task under that name, so they still run.
"""

from django_tasks import task

from ai_orchestration.autopilot.items import work_items_work
from ai_orchestration.autopilot.runner import autopilot_step, worker_identity
from ai_orchestration.autopilot.services import autopilot_reap
from workflows.models import WorkItem


@task()
def autopilot_run_task(run_id: str, request_id: str | None = None) -> None:
    """Work one phase of a run; enqueue the next one if the run goes on. `request_id`
    (of the request that started or resumed the run) is bound by the worker's task hook
    and passed on to the next task."""
    autopilot_reap()
    if autopilot_step(run_id=run_id, worker_id=worker_identity()):
        autopilot_run_task.enqueue(run_id, request_id=request_id)


@task()
def work_item_run_task(run_id: str, item_id: int, request_id: str | None = None) -> None:
    """Work one work item of a run, then whatever else is ready for it (items.py)."""
    autopilot_reap()
    workflow_id = WorkItem.objects.filter(pk=item_id).values_list("workflow_id", flat=True).first()
    if workflow_id is not None:
        work_items_work(
            run_id=run_id, workflow_id=workflow_id, worker_id=worker_identity(), first=item_id
        )
