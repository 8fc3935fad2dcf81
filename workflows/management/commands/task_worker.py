"""`manage.py task_worker`: django-tasks-db's `db_worker`, supervised.

Run this instead of a bare `db_worker`. It runs the real `db_worker` and, when a
database or Redis error makes it stop (a PostgreSQL restart, a dropped connection),
logs the error, pauses (TOPDOG_WORKER_BACKOFF_MS doubling up to
TOPDOG_WORKER_BACKOFF_MAX_MS) and runs it again: it never exits on such an error. It
records its beat every TOPDOG_WORKER_BEAT_SECONDS under the worker id it gives
db_worker, which `GET /api/health/` and the watchdog read. SIGINT and SIGTERM stop it
as they stop db_worker: the first lets the running task finish, a second stops it at
once.
"""

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from workflows.supervision import Backoff, SupervisedWorker


class Command(BaseCommand):
    help = (
        "Run a task worker (db_worker) that survives database and Redis errors and "
        "records its beat."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--queue-name",
            default="default",
            help="Queues to take tasks from (comma-separated; '*': all).",
        )
        parser.add_argument(
            "--interval", type=float, default=1.0, help="Seconds between looks at an empty queue."
        )
        parser.add_argument("--backend", default="default", help="The task backend's alias.")
        parser.add_argument(
            "--batch", action="store_true", help="Run the tasks that are ready, then exit."
        )
        parser.add_argument(
            "--no-startup-delay",
            action="store_false",
            dest="startup_delay",
            help="Do not wait up to a second before the first look at the queue.",
        )
        parser.add_argument(
            "--worker-id", help="This worker's id (at most 64 characters; default: a new one)."
        )
        parser.add_argument(
            "--backoff-ms",
            type=int,
            help="First pause after an error (default: TOPDOG_WORKER_BACKOFF_MS).",
        )
        parser.add_argument(
            "--backoff-max-ms",
            type=int,
            help="Longest pause (default: TOPDOG_WORKER_BACKOFF_MAX_MS).",
        )
        parser.add_argument(
            "--beat-seconds",
            type=float,
            help="Seconds between beats (default: TOPDOG_WORKER_BEAT_SECONDS).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        backoff = Backoff.from_settings(
            initial_ms=options["backoff_ms"], cap_ms=options["backoff_max_ms"]
        )
        worker = SupervisedWorker(
            options=[
                f"--queue-name={options['queue_name']}",
                f"--interval={options['interval']}",
                f"--backend={options['backend']}",
                *(["--batch"] if options["batch"] else []),
                *([] if options["startup_delay"] else ["--no-startup-delay"]),
            ],
            worker_id=options["worker_id"],
            backoff=backoff,
            beat_seconds=options["beat_seconds"],
            verbosity=options["verbosity"],
        )
        self.stdout.write(f"Task worker {worker.worker_id} starting.")
        worker.run()
        self.stdout.write(f"Task worker {worker.worker_id} stopped.")
