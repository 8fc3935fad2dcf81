"""The embedded default's task worker: inside the ASGI server's event loop.

With the in-memory channel layer, live frames only reach websocket clients of the
process that sends them. So on the embedded default `manage.py serve` runs the task
queue here, in the server's own event loop (each task in a worker thread, as Django
runs sync views), instead of in a `db_worker` child process. With Redis, separate
`db_worker` processes are used instead.
"""

import asyncio
import contextlib
import logging
import os
import socket

from asgiref.sync import sync_to_async
from django.db import close_old_connections
from django.db.utils import OperationalError
from django_tasks_db.management.commands.db_worker import Worker
from django_tasks_db.models import DBTaskResult
from django_tasks_db.utils import exclusive_transaction, is_locked_database_exception

from ai_orchestration.autopilot import autopilot_reap

logger = logging.getLogger(__name__)


class InProcessWorker:
    def __init__(self, *, interval: float = 0.25, reap_every: float = 5.0) -> None:
        self.interval = interval
        self.reap_every = reap_every
        self.worker_id = f"inprocess-{socket.gethostname()}-{os.getpid()}"[:64]
        self._worker = Worker(
            queue_names=["default"],
            interval=interval,
            batch=False,
            backend_name="default",
            startup_delay=False,
            max_tasks=None,
            worker_id=self.worker_id,
            excluded_queue_names=[],
        )
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Take and run tasks until stopped; re-queue orphaned autopilot runs meanwhile."""
        logger.info("in-process task worker %s started", self.worker_id)
        loop = asyncio.get_running_loop()
        next_reap = 0.0
        while not self._stopping.is_set():
            try:
                if loop.time() >= next_reap:
                    await sync_to_async(autopilot_reap, thread_sensitive=False)()
                    next_reap = loop.time() + self.reap_every
                ran = await sync_to_async(self.run_one, thread_sensitive=False)()
            except Exception:
                logger.exception("in-process task worker error")
                ran = False
            if not ran:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.interval)

    def stop(self) -> None:
        self._stopping.set()

    def run_one(self) -> bool:
        """Claim and run one ready task; False when there was none."""
        close_old_connections()
        try:
            tasks = DBTaskResult.objects.ready().filter(backend_name="default")
            with exclusive_transaction(tasks.db):
                task_result = tasks.get_locked()
                if task_result is not None:
                    task_result.claim(self.worker_id)
        except OperationalError as exc:
            if is_locked_database_exception(exc):
                return False
            raise
        finally:
            close_old_connections()
        if task_result is None:
            return False
        self._worker.run_task(task_result)
        close_old_connections()
        return True
