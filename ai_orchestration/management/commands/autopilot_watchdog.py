"""`manage.py autopilot_watchdog`: re-queue autopilot runs whose worker died.

A run's step renews a lease while it works. If its worker is killed, the lease expires
and this loop puts the run back on the queue (or fails it after too many tries). Run
one or more next to the `db_worker` processes; `manage.py serve` starts one.
"""

import signal
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from ai_orchestration.autopilot.services import autopilot_reap


class Command(BaseCommand):
    help = "Re-queue autopilot runs whose worker stopped (expired lease)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--interval", type=float, default=5.0, help="Seconds between checks.")
        parser.add_argument("--once", action="store_true", help="Check once and exit.")

    def handle(self, *args: Any, **options: Any) -> None:
        stopping = False

        def stop(signum: int, frame: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        while not stopping:
            close_old_connections()
            requeued = autopilot_reap()
            for run_id in requeued:
                self.stdout.write(f"re-queued run {run_id} (its worker stopped)")
            if options["once"]:
                return
            deadline = time.monotonic() + options["interval"]
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.1)
