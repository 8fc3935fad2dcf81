"""The fault matrix's world: real worker and watchdog processes on the test database, the
counted model they call, workflows on autopilot, and the checks and figures of a
scenario once every run has finished.

A scenario starts two task workers and one `autopilot_watchdog` (each its own
`manage.py` process, PostgreSQL `application_name` = its name), starts RUNS workflows on
autopilot with the `local` provider pointed at the counted model, injects its fault
while a call is held mid-stream, and then waits, with no manual action, for every run to
complete. `Scenario.verify()` checks the invariants and returns the figures.
"""

import os
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import connection
from django_tasks_db.models import DBTaskResult

from ai_orchestration.autopilot.services import autopilot_start
from ai_orchestration.models import AIRun
from tests.ai_orchestration.faults.counted_model import Call, CountedModel, client_pid
from tests.ai_orchestration.faults.procs import (
    Proc,
    backend_pids,
    start_task_worker,
    start_watchdog,
    wait_for,
)
from tests.factories import workflow_for
from workflows.models import Handoff, PhaseResult, Workflow, WorkflowEvent, WorkItem
from workflows.replay import workflow_replay
from workflows.services import Actor
from workflows.states import PHASES, State

RUNS = 3
HEARTBEAT_SECONDS, LEASE_SECONDS = 1, 3
# On top of procs.FAST: a heartbeat of a second, a lease of three, no offline delays.
PROCESS_ENV = {
    "TOPDOG_AUTOPILOT_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
    "TOPDOG_AUTOPILOT_LEASE_SECONDS": str(LEASE_SECONDS),
    "TOPDOG_LLM_TIMEOUT_SECONDS": "60",
    "TOPDOG_LLM_DEADLINE_SECONDS": "60",
    "TOPDOG_WORK_ITEM_BACKOFF_MS": "50",
}
# Work items' calls are a phase attempt each; IMPLEMENTATION itself is never called.
CALLED_PHASES = [p for p in PHASES if p != State.IMPLEMENTATION]
# The statements a lease heartbeat renews with (a run's or a work item's).
HEARTBEAT_SQL = ("%heartbeat_at%", "%lease_token%")


def backends_matching(proc: Proc, patterns: tuple[str, ...]) -> list[int]:
    """The backends of `proc` whose current or last statement matches a pattern."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s AND query ILIKE ANY(%s)",
            [proc.name, list(patterns)],
        )
        return [row[0] for row in cursor.fetchall()]


def pids_terminate(pids: list[int]) -> int:
    """pg_terminate_backend each of `pids`; how many were ended."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM unnest(%s::int[]) pid", [pids])
        return cursor.fetchone()[0]


class Fleet:
    """The processes the scenarios share: two task workers and a watchdog, started once
    (a start costs seconds of CPU on a small machine), pointed at the counted model and
    the matrix's Redis. A process a scenario ends on purpose is replaced by the next."""

    def __init__(self, *, model: CountedModel, redis_url: str, log_dir: Path) -> None:
        self.env = {
            **PROCESS_ENV,
            "LOCAL_LLM_BASE_URL": model.base_url,
            "REDIS_URL": redis_url,
        }
        if redis_url != os.environ.get("REDIS_URL"):
            self.env["CACHE_URL"] = ""  # the cache follows the matrix's Redis
        self.log_dir = log_dir
        self.workers: list[Proc] = []
        self.watchdog: Proc | None = None
        self.started: list[str] = []

    @property
    def procs(self) -> list[Proc]:
        return [*self.workers, *([self.watchdog] if self.watchdog else [])]

    def ensure(self) -> None:
        """Two live workers and a live watchdog (start what is missing)."""
        self.workers = [w for w in self.workers if w.alive()]
        while len(self.workers) < 2:
            self.workers.append(self._start(start_task_worker, "w"))
        if self.watchdog is None or not self.watchdog.alive():
            self.watchdog = self._start(start_watchdog, "wd")

    def _start(self, start, kind: str) -> Proc:
        proc = start(self.log_dir, name=f"fm-{kind}", env=self.env)
        self.started.append(proc.name)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.stop()


@dataclass
class Scenario:
    """One row of the matrix: its processes, its workflows, its fault, its figures."""

    name: str
    model: CountedModel
    fleet: Fleet
    workers: list[Proc] = field(default_factory=list)
    watchdog: Proc | None = None
    workflows: dict[str, Workflow] = field(default_factory=dict)  # by marker
    runs: dict[str, AIRun] = field(default_factory=dict)
    fault_at: float | None = None  # time.time() of the fault
    fault_key: tuple | None = None  # the phase attempt whose call it hit
    started: float = field(default_factory=time.monotonic)
    notes: dict[str, Any] = field(default_factory=dict)
    ended_on_purpose: set[str] = field(default_factory=set)
    errors_before: int = 0

    def __post_init__(self) -> None:
        self.errors_before = len(self.model.errors)

    def calls(self) -> list[Call]:
        """The model calls made for this scenario's workflows."""
        return [c for c in self.model.snapshot() if c.workflow in self.workflows]

    # --- setting up ------------------------------------------------------------------

    @property
    def procs(self) -> list[Proc]:
        return [*self.workers, *([self.watchdog] if self.watchdog else [])]

    def start_processes(self) -> None:
        """The fleet's processes, all alive, are this scenario's."""
        self.fleet.ensure()
        self.workers, self.watchdog = list(self.fleet.workers), self.fleet.watchdog

    def end_on_purpose(self, proc: Proc, sig: int) -> None:
        """Signal `proc`, which then need not be alive at the end."""
        self.ended_on_purpose.add(proc.name)
        if sig == signal.SIGTERM:
            proc.terminate()  # once: a second SIGTERM would stop a worker at once
        else:
            proc.signal(sig)

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
        self.fault_key = call.key if call is not None else None

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
        calls = [(c.serial, c.phase, c.item, c.outcome) for c in self.calls()]
        logs = "\n".join(f"--- {p.name}\n{p.output()[-2500:]}" for p in self.procs)
        return f"runs: {runs}\ntasks: {tasks}\nitems: {items}\ncalls: {calls}\n{logs}"

    def verify(self) -> dict:
        """Check every invariant; the scenario's figures."""
        calls = self.calls()
        errors = self.model.errors[self.errors_before :]
        assert not errors, errors
        figures = Counter()
        for marker, workflow in self.workflows.items():
            mine = [c for c in calls if c.workflow == marker]
            figures.update(self._verify_workflow(marker, workflow, mine))
        still = [
            p.name for p in self.procs if p.name not in self.ended_on_purpose and not p.alive()
        ]
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
            "recover_seconds": self._recovery(calls),
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

    def _recovery(self, calls: list[Call]) -> float | None:
        """Seconds from the fault to the end of the answered call of the phase attempt it
        hit (for a fault that hit no call: of the first call answered after it)."""
        if self.fault_at is None:
            return None
        ends = [
            c.ended_at
            for c in calls
            if c.outcome == "answered"
            and c.ended_at > self.fault_at
            and (self.fault_key is None or c.key == self.fault_key)
        ]
        return round(min(ends) - self.fault_at, 2) if ends else None
