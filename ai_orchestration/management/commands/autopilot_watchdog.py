"""`manage.py autopilot_watchdog`: re-queue autopilot runs whose worker died.

A run's step renews a lease while it works. If its worker is killed, the lease expires
and this loop puts the run back on the queue (or fails it after too many tries). It
also fails the task rows that dead task workers left RUNNING and records its own beat
(ai_orchestration/watchdog.py). A database or Redis error in a round is logged and the
loop goes on after a pause; it never exits on one. Run one or more next to the
`task_worker` processes; `manage.py serve` starts one.
"""

import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from ai_orchestration.watchdog import Watchdog, WatchdogReport, watchdog_tick
from workflows.supervision import Backoff
from workflows.workers import worker_beat_stop


class Command(BaseCommand):
    help = (
        "Re-queue autopilot runs whose worker stopped (expired lease) and fail the task "
        "rows of dead task workers."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--interval", type=float, default=5.0, help="Seconds between checks.")
        parser.add_argument("--once", action="store_true", help="Check once and exit.")
        parser.add_argument(
            "--backoff-ms",
            type=int,
            help="First pause after a failed check (default: TOPDOG_WORKER_BACKOFF_MS).",
        )
        parser.add_argument(
            "--backoff-max-ms",
            type=int,
            help="Longest pause (default: TOPDOG_WORKER_BACKOFF_MAX_MS).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        watchdog = Watchdog(
            every=options["interval"],
            backoff=Backoff.from_settings(
                initial_ms=options["backoff_ms"], cap_ms=options["backoff_max_ms"]
            ),
            on_report=self._report,
        )
        if options["once"]:  # errors are the caller's to see
            self._report(watchdog_tick(worker_id=watchdog.worker_id, started_at=timezone.now()))
            worker_beat_stop(worker_id=watchdog.worker_id)
            return

        def stop(signum: int, frame: Any) -> None:
            watchdog.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write(f"Watchdog {watchdog.worker_id} starting.")
        watchdog.run()
        self.stdout.write(f"Watchdog {watchdog.worker_id} stopped.")

    def _report(self, report: WatchdogReport) -> None:
        for run_id in report.requeued:
            self.stdout.write(f"re-queued run {run_id} (its worker stopped)")
        for task_id in report.failed_tasks:
            self.stdout.write(f"failed task {task_id} (its worker is dead)")
