"""The embedded default's task worker: `manage.py db_worker` inside the serve process.

With the in-memory channel layer, live frames only reach websocket clients of the
process that sends them. So on the embedded default `manage.py serve` runs the task
worker in its own process; with Redis, separate `task_worker` processes are used instead.

The worker is django_tasks_db's documented `db_worker` command, run by the same
supervised loop as `manage.py task_worker` (workflows/supervision.py): run again after a
database or Redis error, with its beat recorded. db_worker installs its SIGINT and
SIGTERM handlers when it starts, and Python lets only the main thread install signal
handlers, so `worker_run` must be called on the main thread (serve runs daphne in a
thread beside it). Its documented shutdown then applies: the first signal lets the
running task finish and stops the worker, a second one stops it at once. Frames its
tasks send reach the server's event loop through `workflows.broadcast`. Meanwhile a
thread runs the watchdog's loop (ai_orchestration/watchdog.py), as
`manage.py autopilot_watchdog` does beside separate workers.
"""

from ai_orchestration.watchdog import WatchdogThread
from workflows.supervision import SupervisedWorker
from workflows.workers import worker_id_new


def worker_run(
    *, interval: float = 0.25, reap_every: float = 5.0, batch: bool = False, verbosity: int = 1
) -> None:
    """Run `db_worker` on this thread (the main one) until SIGINT or SIGTERM, or with
    `batch` until no task is ready; run the watchdog every `reap_every` seconds
    meanwhile. The signal handlers found are put back afterwards."""
    watchdog = WatchdogThread(every=reap_every)
    watchdog.start()
    worker = SupervisedWorker(
        options=[
            "--no-startup-delay",
            "--queue-name=default",
            f"--interval={interval}",
            *(["--batch"] if batch else []),
        ],
        worker_id=worker_id_new(prefix="inprocess"),
        verbosity=verbosity,
    )
    try:
        worker.run()
    finally:
        watchdog.stop()
