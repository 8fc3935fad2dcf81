"""The graph part: IMPLEMENTATION as work items on real task workers.

Real `manage.py db_worker` processes on the bench database work the items of a plan with
the offline provider pausing TOPDOG_OFFLINE_CALL_DELAY_MS (500 ms) per call, as a model
would:

1. Eight independent items at work_item_concurrency 1, then 4 (four workers each time,
   interleaved rounds): wall time from the run's start to the phase's completion.
   Target: concurrency 4 takes <= 0.35x the time of concurrency 1.
2. Two chains of five items each at concurrency 2 on two workers: for every item with a
   dependency, the time from its dependency's `work_item.finished` event to its own
   `work_item.started` event. Target: p50 <= 100 ms.
"""

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from django.contrib.auth import get_user_model

from ai_orchestration.autopilot.services import autopilot_start
from workflows.evidence import EVIDENCE_EXAMPLES
from workflows.models import Membership, Project, Workflow, WorkflowEvent
from workflows.services import Actor, workflow_initialize, workflow_phase_complete
from workflows.states import MemberRole

REPO = Path(__file__).resolve().parent.parent
CALL_DELAY_MS = 500
LIMITS = {"concurrency_ratio": 0.35, "overhead_p50_ms": 100.0}


@dataclass(frozen=True)
class GraphConfig:
    rounds: int  # interleaved rounds of (concurrency 1, concurrency 4)
    chains: int  # chained workflows measured for the overhead

    @classmethod
    def full(cls) -> "GraphConfig":
        return cls(rounds=3, chains=3)

    @classmethod
    def quick(cls) -> "GraphConfig":
        return cls(rounds=1, chains=1)


def _plan(items: list[tuple[str, list[str]]]) -> dict:
    return {
        "summary": "bench plan",
        "work_items": [
            {
                "id": key,
                "title": f"item {key}",
                "files": [f"src/{key.lower()}.py"],
                "depends_on": deps,
            }
            for key, deps in items
        ],
    }


INDEPENDENT = _plan([(f"I{n}", []) for n in range(8)])
CHAINS = _plan(
    [(f"A{n}", [f"A{n - 1}"] if n else []) for n in range(5)]
    + [(f"B{n}", [f"B{n - 1}"] if n else []) for n in range(5)]
)


def _project(slug: str, concurrency: int, user) -> Project:
    project, _ = Project.objects.get_or_create(slug=slug, defaults={"name": slug})
    project.work_item_concurrency = concurrency
    project.repository = ""
    project.save()
    Membership.objects.get_or_create(
        project=project, user=user, defaults={"role": MemberRole.OWNER}
    )
    return project


def _at_implementation(project: Project, user, plan: dict) -> Workflow:
    actor = Actor.of(user)
    workflow = workflow_initialize(
        project=project, requirements={"description": "bench"}, actor=actor
    )
    for result in (EVIDENCE_EXAMPLES["DISCOVERY"], plan):
        workflow_phase_complete(workflow_id=workflow.id, ai_response="", result=result, actor=actor)
    return workflow


def _workers(count: int, logs: Path) -> list[subprocess.Popen]:
    env = {
        **os.environ,
        "TOPDOG_OFFLINE_CALL_DELAY_MS": str(CALL_DELAY_MS),
        "TOPDOG_SANDBOX": "off",
        "LOG_LEVEL": "WARNING",
    }
    return [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO / "manage.py"),
                "db_worker",
                "--no-reload",
                "--interval",
                "0.02",
                "--no-startup-delay",
            ],
            cwd=REPO,
            env=env,
            stdout=(logs / f"graph-worker-{n}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        for n in range(count)
    ]


def _stop(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()


def _run_phase(workflow: Workflow, user, timeout: float = 120) -> float:
    """Start a one-phase run; seconds until IMPLEMENTATION is completed."""
    started = time.monotonic()
    autopilot_start(workflow_id=workflow.id, actor=Actor.of(user), scope="phase")
    while time.monotonic() - started < timeout:
        if Workflow.objects.filter(pk=workflow.pk).exclude(state="IMPLEMENTATION").exists():
            return time.monotonic() - started
        time.sleep(0.01)
    raise RuntimeError(f"bench graph: workflow {workflow.id} did not finish IMPLEMENTATION")


def _overheads_ms(workflow: Workflow) -> list[float]:
    """Per dependent item: its start minus its dependency's finish, in ms."""
    events = WorkflowEvent.objects.filter(workflow=workflow, type__startswith="work_item.")
    finished, started = {}, {}
    for event in events.order_by("seq"):
        if event.type == "work_item.finished":
            finished[event.data["key"]] = event.created_at
        elif event.type == "work_item.started":
            started[event.data["key"]] = event.created_at
    found = []
    for item in CHAINS["work_items"]:
        for dep in item["depends_on"]:
            found.append((started[item["id"]] - finished[dep]).total_seconds() * 1000)
    return found


def run(*, config: GraphConfig, user_id: int, logs: Path) -> dict:
    user = get_user_model().objects.get(pk=user_id)
    serial, parallel = _project("graph-c1", 1, user), _project("graph-c4", 4, user)
    walls: dict[str, list[float]] = {"c1": [], "c4": []}
    workers = _workers(4, logs)
    try:
        time.sleep(2)  # the workers start
        for _ in range(config.rounds):
            walls["c1"].append(_run_phase(_at_implementation(serial, user, INDEPENDENT), user))
            walls["c4"].append(_run_phase(_at_implementation(parallel, user, INDEPENDENT), user))
    finally:
        _stop(workers)
    chained = _project("graph-chains", 2, user)
    overheads: list[float] = []
    workers = _workers(2, logs)
    try:
        time.sleep(2)
        for _ in range(config.chains):
            workflow = _at_implementation(chained, user, CHAINS)
            _run_phase(workflow, user)
            overheads += _overheads_ms(workflow)
    finally:
        _stop(workers)
    c1, c4 = statistics.median(walls["c1"]), statistics.median(walls["c4"])
    ratio = round(c4 / c1, 3)
    p50 = round(statistics.median(overheads), 1)
    return {
        "call_delay_ms": CALL_DELAY_MS,
        "wall_s": {key: [round(v, 3) for v in values] for key, values in walls.items()},
        "overhead_ms": {
            "p50": p50,
            "p90": round(statistics.quantiles(overheads, n=10)[-1], 1)
            if len(overheads) > 1
            else p50,
            "max": round(max(overheads), 1),
            "samples": len(overheads),
        },
        "targets": [
            {
                "ratio": "graph_concurrency_4_vs_1",
                "measured": "8 independent items, concurrency 4",
                "baseline": "the same at concurrency 1",
                "value": ratio,
                "op": "<=",
                "limit": LIMITS["concurrency_ratio"],
                "passed": ratio <= LIMITS["concurrency_ratio"],
                "note": f"median wall {c4:.2f} s vs {c1:.2f} s, {CALL_DELAY_MS} ms per call",
            },
            {
                "ratio": "graph_schedule_overhead_ms",
                "measured": "dependency finished -> dependent started, 2 workers",
                "value": p50,
                "op": "<=",
                "limit": LIMITS["overhead_p50_ms"],
                "passed": p50 <= LIMITS["overhead_p50_ms"],
            },
        ],
    }
