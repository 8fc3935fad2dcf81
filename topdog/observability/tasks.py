"""Task worker hooks, on django-tasks' documented signals (`django_tasks.signals`).

`task_started` is sent by the worker process, on the thread that then runs the task:

- the first one starts this process's metrics server on TOPDOG_WORKER_METRICS_PORT (a
  worker's in-process metrics, the provider calls, only exist once it runs tasks; the
  autoreloader's parent process of `db_worker` never runs one, so never takes the port);
- each one binds the task's ids to the log lines the task writes: task_id, task, the
  run id (a `run_id` kwarg, else a first argument that is a UUID: autopilot and check
  tasks take their run's id first) and `request_id` when the enqueue site passed
  `request_id=request_id_current()` (workflows/request_ids.py) as a kwarg.
  `task_finished` unbinds them.
"""

import logging
import uuid
from contextvars import ContextVar
from typing import Any

import structlog
from django_tasks.signals import task_finished, task_started

from topdog.observability.metrics import worker_metrics_serve

logger = logging.getLogger(__name__)

_bound: ContextVar[tuple[str, ...]] = ContextVar("topdog_task_log_keys", default=())


def _run_id(task_result: Any) -> str | None:
    run_id = task_result.kwargs.get("run_id")
    if run_id is None and task_result.args:
        try:
            run_id = uuid.UUID(str(task_result.args[0]))
        except ValueError:
            return None
    return None if run_id is None else str(run_id)


def on_task_started(sender: Any, task_result: Any, **kwargs: Any) -> None:
    try:
        worker_metrics_serve()
    except Exception:
        logger.exception("worker metrics server did not start")
    values = {
        "task_id": str(task_result.id),
        "task": task_result.task.module_path,
        "run_id": _run_id(task_result),
        "request_id": task_result.kwargs.get("request_id"),
    }
    values = {key: value for key, value in values.items() if value}
    structlog.contextvars.bind_contextvars(**values)
    _bound.set(tuple(values))


def on_task_finished(sender: Any, task_result: Any, **kwargs: Any) -> None:
    keys = _bound.get()
    if keys:
        structlog.contextvars.unbind_contextvars(*keys)
        _bound.set(())


def connect() -> None:
    task_started.connect(on_task_started, dispatch_uid="topdog.observability.task_started")
    task_finished.connect(on_task_finished, dispatch_uid="topdog.observability.task_finished")
