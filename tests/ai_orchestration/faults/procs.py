"""Real worker processes for fault tests: start them on the test database, find and end
their PostgreSQL connections, wait for what they do.

Each process is a `manage.py` command in its own process, with the test database's URL
and short leases, beats and backoffs (FAST), so that a fault and its recovery take
seconds. Its PostgreSQL connections carry its name as `application_name` (libpq's
PGAPPNAME), so `backend_pids(proc)` finds exactly them. Use `running(...)` to be sure the
processes are stopped when the test ends, whatever happens.
"""

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings
from django.db import connection
from django_tasks_db.models import DBTaskResult

from ai_orchestration.models import AIRun
from workflows.models import WorkerBeat, Workflow

ROOT = Path(settings.BASE_DIR)
T = TypeVar("T")

# Settings of the processes: leases, beats and backoffs in the order of a second.
FAST = {
    "TOPDOG_AUTOPILOT_HEARTBEAT_SECONDS": "1",
    "TOPDOG_AUTOPILOT_LEASE_SECONDS": "2",
    "TOPDOG_WORKER_BEAT_SECONDS": "1",
    "TOPDOG_WORKER_BACKOFF_MS": "100",
    "TOPDOG_WORKER_BACKOFF_MAX_MS": "1000",
    # slow enough to be caught mid-stream, fast enough for CI
    "TOPDOG_OFFLINE_DELAY_MS": "20",
    # the project's repository is not reachable from here; checks are not under test
    "TOPDOG_SANDBOX": "off",
}
LEASE_SECONDS = int(FAST["TOPDOG_AUTOPILOT_LEASE_SECONDS"])

_names = itertools.count(1)


@dataclass
class Proc:
    """A running `manage.py` command; `name` is also its PostgreSQL application_name."""

    name: str
    process: subprocess.Popen
    log: Path
    env: dict[str, str] = field(repr=False, default_factory=dict)
    terminated: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig: int) -> None:
        if self.alive():
            self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        self.signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> None:
        """One SIGTERM (a second one would stop a task worker at once, not gracefully)."""
        if not self.terminated:
            self.terminated = True
            self.signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait (SIGKILL after `timeout`); its exit code."""
        self.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.returncode


def database_url() -> str:
    """The URL of the test database (the processes must use the one the test sees)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    return (
        f"postgres://{user}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"
    )


def free_port() -> int:
    """A TCP port nothing listens on (for a Redis that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_manage(
    command: str, *args: str, log_dir: Path, name: str = "", env: dict[str, str] | None = None
) -> Proc:
    """`manage.py command args` on the test database with FAST settings (plus `env`; no
    Redis unless `env` names one)."""
    name = f"{name or command}-{os.getpid()}-{next(_names)}"
    environment = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "topdog.settings",
        "PGAPPNAME": name,
        "PYTHONUNBUFFERED": "1",
        **FAST,
    }
    environment.pop("REDIS_URL", None)
    environment.update(env or {})
    log = log_dir / f"{name}.log"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), command, *args],
        cwd=ROOT,
        env=environment,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    return Proc(name=name, process=process, log=log, env=environment)


def start_task_worker(
    log_dir: Path, *args: str, name: str = "worker", env: dict[str, str] | None = None
) -> Proc:
    return start_manage(
        "task_worker",
        "--interval=0.1",
        "--no-startup-delay",
        *args,
        log_dir=log_dir,
        name=name,
        env=env,
    )


def start_watchdog(
    log_dir: Path, *args: str, name: str = "watchdog", env: dict[str, str] | None = None
) -> Proc:
    return start_manage(
        "autopilot_watchdog", "--interval=0.3", *args, log_dir=log_dir, name=name, env=env
    )


@contextmanager
def running(*procs: Proc) -> Iterator[tuple[Proc, ...]]:
    """The processes, stopped (and their output printed, for a failing test) at the end."""
    try:
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.stop()
            print(f"--- {proc.name} (exit {proc.process.returncode}) ---\n{proc.output()[-4000:]}")


def beat_of(proc: Proc, kind: str = "") -> WorkerBeat | None:
    """The live beat row `proc` writes (by its pid), if it has written one."""
    beats = WorkerBeat.objects.filter(pid=proc.pid, stopped_at__isnull=True)
    if kind:
        beats = beats.filter(kind=kind)
    return beats.order_by("-last_seen_at").first()


def backend_pids(*procs: Proc) -> list[int]:
    """The PostgreSQL backends serving `procs` (their connections, idle or busy)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = ANY(%s)",
            [[proc.name for proc in procs]],
        )
        return [row[0] for row in cursor.fetchall()]


def backends_terminate(*procs: Proc) -> int:
    """`pg_terminate_backend` every connection of `procs` (what a PostgreSQL restart does
    to them); how many were ended."""
    pids = backend_pids(*procs)
    with connection.cursor() as cursor:
        for pid in pids:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    return len(pids)


def wait_for(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.1) -> T:
    """The first truthy value of `predicate()`; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def run_wait_finished(run_id: Any, timeout: float = 60.0) -> AIRun:
    """The run once it has ended (completed, failed, cancelled or stopped)."""
    try:
        return wait_for(
            lambda: AIRun.objects.exclude(status__in=AIRun.ACTIVE).filter(pk=run_id).first(),
            timeout,
            f"run {run_id} to finish",
        )
    except AssertionError as exc:
        run = AIRun.objects.filter(pk=run_id).values().first() or {}
        state = Workflow.objects.filter(pk=run.get("workflow_id")).values("state").first()
        tasks = list(DBTaskResult.objects.values("task_path", "status", "worker_ids"))
        raise AssertionError(
            f"{exc}; the run: {run}; its workflow: {state}; tasks: {tasks}"
        ) from None
