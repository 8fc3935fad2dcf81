"""The fault matrix's world: real worker and watchdog processes on the test database, the
counted model they call, workflows on autopilot, and the checks and figures of a
scenario once every run has finished.

A scenario starts two task workers and one `autopilot_watchdog` (each its own
`manage.py` process, PostgreSQL `application_name` = its name), starts RUNS workflows on
autopilot with the `local` provider pointed at the counted model, injects its fault
while a call is held mid-stream, and then waits, with no manual action, for every run to
complete. `Scenario.verify()` checks the invariants and returns the figures.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import get_commands
from django.db import connection
from django_tasks_db.models import DBTaskResult

from ai_orchestration.autopilot.services import autopilot_start
from ai_orchestration.models import AIRun
from tests.ai_orchestration.faults.counted_model import Call, CountedModel, client_pid
from tests.factories import workflow_for
from workflows.models import Handoff, PhaseResult, Workflow, WorkflowEvent, WorkItem
from workflows.replay import workflow_replay
from workflows.services import Actor
from workflows.states import PHASES, EventType, State

ROOT = Path(settings.BASE_DIR)
RUNS = 3
HEARTBEAT_SECONDS, LEASE_SECONDS = 1, 3
# Settings of the processes: a heartbeat and lease of seconds, quick backoffs.
PROCESS_ENV = {
    "DJANGO_SETTINGS_MODULE": "topdog.settings",
    "PYTHONUNBUFFERED": "1",
    "TOPDOG_AUTOPILOT_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
    "TOPDOG_AUTOPILOT_LEASE_SECONDS": str(LEASE_SECONDS),
    "TOPDOG_WORKER_BEAT_SECONDS": "1",
    "TOPDOG_WORKER_BACKOFF_MS": "100",
    "TOPDOG_WORKER_BACKOFF_MAX_MS": "1000",
    "TOPDOG_LLM_TIMEOUT_SECONDS": "60",
    "TOPDOG_LLM_DEADLINE_SECONDS": "60",
    "TOPDOG_WORK_ITEM_BACKOFF_MS": "50",
    # the project's repository is not reachable from here; checks are not under test
    "TOPDOG_SANDBOX": "off",
}
# Work items' calls are a phase attempt each; IMPLEMENTATION itself is never called.
CALLED_PHASES = [p for p in PHASES if p != State.IMPLEMENTATION]
FORWARD_EVENTS = {EventType.PHASE_COMPLETED, EventType.WORK_ITEM_FINISHED}


def _database_url() -> str:
    db = connection.settings_dict
    user = db.get("USER") or "postgres"
    return (
        f"postgres://{user}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"
    )


def worker_command() -> str:
    """The supervised worker when the codebase has it, else django-tasks-db's own."""
    return "task_worker" if "task_worker" in get_commands() else "db_worker"


@dataclass
class Proc:
    """A `manage.py` command; `name` is also its PostgreSQL application_name."""

    name: str
    process: subprocess.Popen
    log: Path
    expect_alive: bool = True  # False once the scenario ends it on purpose

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig: int) -> None:
        self.expect_alive = False
        self.process.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def proc_start(command: str, *args: str, name: str, log_dir: Path, env: dict) -> Proc:
    name = f"fm-{name}-{os.getpid()}"
    environment = {
        **os.environ,
        **PROCESS_ENV,
        "DATABASE_URL": _database_url(),
        "PGAPPNAME": name,
        **env,
    }
    log = log_dir / f"{name}.log"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), command, *args],
        cwd=ROOT,
        env=environment,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    return Proc(name=name, process=process, log=log)


def backend_pids(*procs: Proc, query_like: str = "") -> list[int]:
    """The PostgreSQL backends serving `procs` (idle or busy); with `query_like`, only
    those whose current or last statement matches it."""
    sql = (
        "SELECT pid FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = ANY(%s)"
    )
    params: list[Any] = [[proc.name for proc in procs]]
    if query_like:
        sql += " AND query ILIKE %s"
        params.append(query_like)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


def backends_terminate(pids: list[int]) -> int:
    """pg_terminate_backend each of `pids`; how many were ended."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM unnest(%s::int[]) pid", [pids])
        return cursor.fetchone()[0]


def wait_for(predicate, timeout: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


@dataclass
class Scenario:
    """One row of the matrix: its processes, its workflows, its fault, its figures."""

    name: str
    model: CountedModel
    log_dir: Path
    redis_url: str
    workers: list[Proc] = field(default_factory=list)
    watchdog: Proc | None = None
    workflows: dict[str, Workflow] = field(default_factory=dict)  # by marker
    runs: dict[str, AIRun] = field(default_factory=dict)
    fault_at: float | None = None  # time.time() of the fault
    fault_workflow: str | None = None  # the marker of the workflow it hit (None: all)
    started: float = field(default_factory=time.monotonic)
    notes: dict[str, Any] = field(default_factory=dict)

    # --- setting up ------------------------------------------------------------------

    @property
    def procs(self) -> list[Proc]:
        return [*self.workers, *([self.watchdog] if self.watchdog else [])]

    def start_processes(self, extra_env: dict | None = None) -> None:
        env = {
            "LOCAL_LLM_BASE_URL": self.model.base_url,
            "REDIS_URL": self.redis_url,
            **(extra_env or {}),
        }
        if self.redis_url != os.environ.get("REDIS_URL"):
            env["CACHE_URL"] = ""  # the cache follows the scenario's Redis
        command = worker_command()
        worker_args = ["--interval=0.1", "--no-startup-delay"]
        if command == "db_worker":
            worker_args.append("--no-reload")
        self.workers = [
            proc_start(
                command, *worker_args, name=f"{self.name}-w{n}", log_dir=self.log_dir, env=env
            )
            for n in (1, 2)
        ]
        self.watchdog = proc_start(
            "autopilot_watchdog",
            "--interval=0.3",
            name=f"{self.name}-wd",
            log_dir=self.log_dir,
            env=env,
        )

    def wait_processes_ready(self, timeout: float = 30.0) -> None:
        """Every process has its database connections open (it is past its start)."""

        def ready() -> bool:
            for proc in self.procs:
                if not proc.alive():
                    raise AssertionError(f"{proc.name} exited:\n{proc.output()[-3000:]}")
            names = set()
            for proc in self.procs:
                if backend_pids(proc):
                    names.add(proc.name)
            return len(names) == len(self.procs)

        wait_for(ready, timeout, "the processes to connect", every=0.1)

    def start_runs(self, project, user, n: int = RUNS) -> None:
        for i in range(1, n + 1):
            marker = f"fm-{uuid.uuid4().hex[:8]}"
            description = f"Fault matrix {self.name} {i} {marker}. Survive the fault. Finish."
            requirements = self.model.requirements_for(marker, description)
            workflow = workflow_for(
                project, user, description=requirements["description"], model_name="LOCAL"
            )
            self.workflows[marker] = workflow
            self.runs[marker] = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))

    # --- faults --------------------------------------------------------------------------

    def holder(self, call: Call) -> Proc:
        """The worker process that made `call`."""
        pid = client_pid(call, self.model.port, [p.pid for p in self.workers])
        for proc in self.workers:
            if proc.pid == pid:
                return proc
        raise AssertionError(f"no worker holds call {call.serial} (client port {call.client_port})")

    def fault(self, call: Call | None = None) -> None:
        """Note the moment of the fault (and the workflow whose call it hit)."""
        self.fault_at = time.time()
        self.fault_workflow = call.workflow if call is not None else None

    # --- the end -----------------------------------------------------------------------

    def wait_finished(self, timeout: float) -> None:
        """Every run ended and no task row is left running."""

        def finished() -> bool:
            active = AIRun.objects.filter(
                pk__in=[r.pk for r in self.runs.values()], status__in=AIRun.ACTIVE
            ).exists()
            return not active and not DBTaskResult.objects.filter(status="RUNNING").exists()

        try:
            wait_for(finished, timeout, f"scenario {self.name}'s runs to finish", every=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnosis()}") from None

    def diagnosis(self) -> str:
        runs = list(
            AIRun.objects.filter(pk__in=[r.pk for r in self.runs.values()]).values(
                "status", "phase", "executions", "recoveries", "error", "stop_reason", "worker_id"
            )
        )
        tasks = list(DBTaskResult.objects.values("task_path", "status", "worker_ids"))
        items = list(WorkItem.objects.values("workflow_id", "key", "status", "worker_id"))
        calls = [(c.serial, c.phase, c.item, c.outcome) for c in self.model.snapshot()]
        logs = "\n".join(f"--- {p.name}\n{p.output()[-2500:]}" for p in self.procs)
        return f"runs: {runs}\ntasks: {tasks}\nitems: {items}\ncalls: {calls}\n{logs}"

    def verify(self) -> dict:
        """Check every invariant; the scenario's figures."""
        calls = self.model.snapshot()
        assert not self.model.errors, self.model.errors
        figures = Counter()
        for marker, workflow in self.workflows.items():
            mine = [c for c in calls if c.workflow == marker]
            figures.update(self._verify_workflow(marker, workflow, mine))
        still = [p.name for p in self.procs if p.expect_alive and not p.alive()]
        assert not still, f"processes that were to live exited: {still}\n{self.diagnosis()}"
        assert not DBTaskResult.objects.filter(status="RUNNING").exists()
        return {
            "scenario": self.name,
            "runs": len(self.runs),
            "phases": figures["phases"],
            "work_items": figures["work_items"],
            "model_calls": len(calls),
            "answered_calls": figures["answered"],
            "cut_calls": figures["cut"],
            "duplicate_calls": figures["duplicates"],
            "events": figures["events"],
            "recover_seconds": self._recovery(),
            "total_seconds": round(time.monotonic() - self.started, 2),
            **self.notes,
        }

    def _verify_workflow(self, marker: str, workflow: Workflow, calls: list[Call]) -> Counter:
        workflow.refresh_from_db()
        run = AIRun.objects.get(pk=self.runs[marker].pk)
        assert (workflow.state, run.status) == ("COMPLETE", AIRun.Status.COMPLETED), (
            f"{marker}: {workflow.state}, run {run.status} {run.error}\n{self.diagnosis()}"
        )
        # each phase completed once, in its first attempt, one forward handoff each
        results = list(
            PhaseResult.objects.filter(workflow=workflow).values_list("phase", "attempt")
        )
        assert sorted(results) == sorted((phase, 1) for phase in PHASES), results
        forward = Counter(
            Handoff.objects.filter(workflow=workflow, kind="forward").values_list(
                "from_state", flat=True
            )
        )
        assert forward == Counter(PHASES), forward
        items = {i.key: i for i in WorkItem.objects.filter(workflow=workflow)}
        assert items and all(i.status == WorkItem.Status.DONE for i in items.values()), items
        # one answered call per phase attempt, never two live at once
        expected = {(marker, p, "") for p in CALLED_PHASES} | {
            (marker, State.IMPLEMENTATION, key) for key in items
        }
        answered = [c for c in calls if c.outcome == "answered"]
        per_attempt = Counter(c.key for c in answered)
        duplicates = sum(n - 1 for n in per_attempt.values() if n > 1)
        assert set(per_attempt) == expected and duplicates == 0, (
            f"{marker}: answered calls per phase attempt {dict(per_attempt)}"
        )
        assert not [c for c in calls if c.outcome == "streaming"], "a call never ended"
        peaks = {k: n for k, n in self.model.peak_live().items() if k[0] == marker}
        assert max(peaks.values()) == 1, f"{marker}: calls live at once per attempt: {peaks}"
        # the run booked exactly the answered calls' usage (prompt tokens = serials)
        assert run.input_tokens == sum(c.input_tokens for c in answered), (
            run.input_tokens,
            [c.serial for c in answered],
        )
        assert run.output_tokens == sum(c.output_tokens for c in answered)
        assert len(answered) <= run.attempts <= len(calls), (run.attempts, len(calls))
        for key, item in items.items():
            (call,) = [c for c in answered if c.item == key]
            assert item.input_tokens == call.input_tokens, (key, item.input_tokens, call.serial)
        # events: gapless from 1, and replaying them gives the state
        events = list(WorkflowEvent.objects.filter(workflow=workflow).order_by("seq"))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert workflow_replay(events).state == workflow.state
        return Counter(
            phases=len(results),
            work_items=len(items),
            answered=len(answered),
            cut=sum(1 for c in calls if c.outcome == "cut"),
            duplicates=duplicates,
            events=len(events),
        )

    def _recovery(self) -> float | None:
        """Seconds from the fault to the next phase or work item completed by the
        workflow it hit (by any workflow for a fault that hit none)."""
        if self.fault_at is None:
            return None
        targets = (
            [self.workflows[self.fault_workflow]]
            if self.fault_workflow
            else list(self.workflows.values())
        )
        times = [
            e.created_at.timestamp()
            for e in WorkflowEvent.objects.filter(workflow__in=targets, type__in=FORWARD_EVENTS)
            if e.created_at.timestamp() > self.fault_at
        ]
        return round(min(times) - self.fault_at, 2) if times else None

    def stop(self) -> None:
        for proc in self.procs:
            if proc.alive():
                proc.process.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.stop()


def figures_write(path: Path, figures: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2))
