"""The embedded default's task worker: `manage.py db_worker` inside the serve process.

With the in-memory channel layer, live frames only reach websocket clients of the
process that sends them. So on the embedded default `manage.py serve` runs the task
worker in its own process; with Redis, separate `db_worker` processes are used instead.

The worker is django_tasks_db's documented `db_worker` command, run with
`call_command`. It installs its SIGINT and SIGTERM handlers when it starts, and Python
lets only the main thread install signal handlers, so `worker_run` must be called on
the main thread (serve runs daphne in a thread beside it). Its documented shutdown then
applies: the first signal lets the running task finish and stops the worker, a second
one stops it at once. Frames its tasks send reach the server's event loop through
`workflows.broadcast`. Meanwhile a thread re-queues autopilot runs whose worker died,
as `manage.py autopilot_watchdog` does beside separate workers.
"""

import logging
import os
import signal
import socket
import threading

from django.core.management import call_command
from django.db import close_old_connections, connection

from ai_orchestration.autopilot.services import autopilot_reap

logger = logging.getLogger(__name__)

# The signals db_worker takes over while it runs (and that are put back after).
_WORKER_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGQUIT") if hasattr(signal, name)
)


def worker_run(
    *, interval: float = 0.25, reap_every: float = 5.0, batch: bool = False, verbosity: int = 1
) -> None:
    """Run `db_worker` on this thread (the main one) until SIGINT or SIGTERM, or with
    `batch` until no task is ready; reap orphaned autopilot runs every `reap_every`
    seconds meanwhile. The signal handlers found are put back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in _WORKER_SIGNALS}
    reaper = Reaper(every=reap_every)
    reaper.start()
    options = [
        "--no-reload",
        "--no-startup-delay",
        "--queue-name=default",
        f"--interval={interval}",
        f"--worker-id={worker_id()}",
    ]
    try:
        call_command("db_worker", *options, *(["--batch"] if batch else []), verbosity=verbosity)
    except SystemExit as exc:  # db_worker exits this way when a signal stops it idle
        if exc.code not in (None, 0):
            raise
    finally:
        reaper.stop()
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def worker_id() -> str:
    return f"inprocess-{socket.gethostname()}-{os.getpid()}"[:64]


class Reaper(threading.Thread):
    """Calls `autopilot_reap` now and then every `every` seconds until stopped."""

    def __init__(self, *, every: float) -> None:
        super().__init__(name="autopilot-reaper", daemon=True)
        self.every = every
        self._stopping = threading.Event()

    def run(self) -> None:
        try:
            while True:
                close_old_connections()
                try:
                    autopilot_reap()
                except Exception:
                    logger.exception("autopilot reaper error")
                if self._stopping.wait(self.every):
                    return
        finally:
            connection.close()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=10)
