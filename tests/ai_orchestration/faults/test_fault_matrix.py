"""The fault matrix: real task workers and a watchdog, faults injected with runs in
flight, every run completing with no manual action.

The scenarios share two task workers and one `autopilot_watchdog`, processes on the
test database (PostgreSQL) with a Redis channel layer of their own (a worker a scenario
ends on purpose is replaced before the next; the others live through every scenario).
Each scenario starts three workflows on autopilot with the `local` provider pointed at a
counted loopback model (counted_model.py), holds one call mid-stream, injects its fault
there, and lets go:

- kill9: the worker making a work item's call is SIGKILLed;
- sigterm: the worker making a phase's call gets SIGTERM (it finishes, then exits);
- pg_idle: `pg_terminate_backend` of every connection of the workers and the watchdog
  while no run is in flight (what a PostgreSQL restart does to idle processes);
- pg_midcall: the same while a call is in flight;
- redis_restart: the Redis server is stopped mid-call and started again on its port;
- heartbeat_conn: the database connection of the lease heartbeat of the worker making a
  call is ended, and the call held for a whole lease: the lease is renewed on a new
  connection, so that call is answered (a lease not renewed would have cut it).

Then, for every workflow: COMPLETE, its run COMPLETED; each phase completed once (one
PhaseResult, attempt 1, and one forward Handoff per phase); each work item done.

Model calls, defined precisely: a call is *answered* when the model streamed it to the
end (`[DONE]`); *cut* when the client went away first (the worker was killed, or it
cancelled the call because its lease was lost). A cut call produced nothing and
reported no usage; a killed worker books nothing of it, a cancelling one counts it in
AIRun.attempts with no tokens. So, per workflow: exactly one answered call per phase
attempt (each phase but IMPLEMENTATION, and each work item), never two calls of one
phase attempt live at once, no call left streaming; the run's input and output tokens
equal the sums over its answered calls (the model reports a call's serial number as its
prompt tokens, so the booked calls are named exactly, and each work item's tokens are
its own call's); AIRun.attempts is at least the answered calls and at most all calls.
Events are gapless from seq 1 and replay to the workflow's state; no task row is left
RUNNING; every process not ended on purpose is still alive.

The figures of each scenario (runs, phases, model calls, duplicate calls, events,
seconds from the fault to the end of the answered call of the phase attempt it hit,
total seconds) are printed and written to test-artifacts/fault-matrix.json.
"""

import json
import os
import signal
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from tests.ai_orchestration.faults.counted_model import CountedModel
from tests.ai_orchestration.faults.matrix import (
    HEARTBEAT_SECONDS,
    HEARTBEAT_SQL,
    LEASE_SECONDS,
    Fleet,
    Scenario,
    backends_matching,
    pids_terminate,
)
from tests.ai_orchestration.faults.procs import backends_terminate, wait_for
from tests.ai_orchestration.faults.redis_server import (
    GroupListener,
    PrivateRedis,
    redis_server_binary,
)
from workflows.broadcast import workflow_group
from workflows.models import WorkflowEvent

pytestmark = [
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="the fault matrix needs PostgreSQL (DATABASE_URL)"
    ),
    pytest.mark.skipif(
        not os.environ.get("REDIS_URL"), reason="the fault matrix needs Redis (REDIS_URL)"
    ),
    pytest.mark.django_db(transaction=True),
]

FINISH_SECONDS = 60
ARTIFACT = Path(settings.BASE_DIR) / "test-artifacts" / "fault-matrix.json"
FIGURES: list[dict] = []


@pytest.fixture(scope="module", autouse=True)
def _figures(pytestconfig):
    """The figures, written to ARTIFACT and shown in the test run's output."""
    yield
    if FIGURES:
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        ARTIFACT.write_text(json.dumps(FIGURES, indent=2))
        reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
        write = reporter.write_line if reporter is not None else print
        write(f"\nfault matrix figures ({ARTIFACT}):")
        for row in FIGURES:
            write(json.dumps(row))


@pytest.fixture(scope="module")
def model():
    with CountedModel() as server:
        yield server


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    """The matrix's own Redis (restarted by one scenario), or REDIS_URL's without
    redis-server (that scenario is then skipped)."""
    if redis_server_binary() is None:
        yield None
        return
    with PrivateRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def fleet(django_db_setup, model, redis, tmp_path_factory):
    """The workers and the watchdog, shared by the scenarios, stopped at the end."""
    processes = Fleet(
        model=model,
        redis_url=redis.url if redis is not None else os.environ["REDIS_URL"],
        log_dir=tmp_path_factory.mktemp("processes"),
    )
    try:
        yield processes
    finally:
        processes.stop()
        for proc in processes.procs:
            print(f"--- {proc.name} (exit {proc.process.returncode})\n{proc.output()[-3000:]}")


@pytest.fixture
def scenarios(transactional_db, model, fleet):
    """Make a scenario on the shared processes; held calls are let go at the end."""

    def make(name: str) -> Scenario:
        return Scenario(name=name, model=model, fleet=fleet)

    yield make
    model.release_holds()


def _finish(scenario: Scenario) -> dict:
    scenario.wait_finished(FINISH_SECONDS)
    figures = scenario.verify()
    FIGURES.append(figures)
    print(json.dumps(figures))
    return figures


def _started(scenarios, project, user, name: str) -> Scenario:
    scenario = scenarios(name)
    scenario.start_processes()
    scenario.start_runs(project, user)
    return scenario


def _hold_first(scenario: Scenario, model: CountedModel, **match):
    """Hold a call of the scenario's first workflow mid-stream."""
    return model.hold(workflow=next(iter(scenario.workflows)), **match)


def test_every_database_connection_ended_while_idle(scenarios, model, project, user):
    scenario = scenarios("pg_idle")
    scenario.start_processes()
    scenario.wait_processes_ready()

    scenario.fault()
    ended = backends_terminate(*scenario.procs)
    assert ended >= len(scenario.procs)
    scenario.notes["backends_ended"] = ended
    time.sleep(0.5)  # the processes meet their dead connections before any work comes
    scenario.start_runs(project, user)

    _finish(scenario)


def test_every_database_connection_ended_mid_call(scenarios, model, project, user):
    scenario = _started(scenarios, project, user, "pg_midcall")
    hold = _hold_first(scenario, model, phase="PLANNING")
    call = hold.wait_held(30)

    scenario.fault(call)
    ended = backends_terminate(*scenario.procs)
    assert ended >= len(scenario.procs)
    scenario.notes["backends_ended"] = ended
    time.sleep(1.5 * HEARTBEAT_SECONDS)  # a renewal of the held call's lease meets it
    hold.release()

    _finish(scenario)


def test_redis_restarted_mid_call(scenarios, model, redis, project, user):
    if redis is None:
        pytest.skip("redis-server is not installed: no private Redis to restart")
    scenario = _started(scenarios, project, user, "redis_restart")
    marker = next(iter(scenario.workflows))
    hold = _hold_first(scenario, model, phase="PLANNING")
    call = hold.wait_held(30)
    # the hit workflow's last call waits until a listener has joined after the restart
    last = _hold_first(scenario, model, phase="DEPLOYMENT", after_chunks=1)

    scenario.fault(call)
    redis.stop()
    hold.release()  # the call's deltas and the phase's broadcasts meet a dead Redis
    time.sleep(1.0)
    redis.start()  # empty: every group membership is gone with it
    listener = GroupListener(redis.url)
    listener.join(*(workflow_group(w.id) for w in scenario.workflows.values()))
    last.wait_held(30)
    last.release()

    figures = _finish(scenario)
    # the workers broadcast again on the restarted Redis: every event committed after
    # the listener joined reached it, in order, once (seq contiguous to the last)
    listener.drain()
    for workflow in scenario.workflows.values():
        seqs = listener.seqs(str(workflow.id))
        final = WorkflowEvent.objects.filter(workflow=workflow).count()
        if seqs:
            assert seqs == list(range(seqs[0], final + 1)), (workflow.id, seqs, final)
    hit = scenario.workflows[marker]
    assert listener.seqs(str(hit.id)), "nothing reached the listener after the restart"
    figures["frames_after_restart"] = sum(
        len(listener.seqs(str(w.id))) for w in scenario.workflows.values()
    )


def test_heartbeat_connection_ended_mid_call(scenarios, model, project, user):
    scenario = _started(scenarios, project, user, "heartbeat_conn")
    hold = _hold_first(scenario, model, phase="PLANNING")
    call = hold.wait_held(30)
    holder = scenario.holder(call)

    # the heartbeat's own connection: its last statement renewed the lease
    heartbeat = wait_for(
        lambda: backends_matching(holder, HEARTBEAT_SQL),
        3 * HEARTBEAT_SECONDS,
        "the heartbeat's connection",
    )
    scenario.fault(call)
    assert pids_terminate(heartbeat) == len(heartbeat)
    # held for a whole lease: had it not been renewed on a new connection, its holder
    # would have cut the call one heartbeat before it expired (and another worker
    # would then have called again)
    time.sleep(LEASE_SECONDS)
    hold.release()

    _finish(scenario)
    assert model.calls[call.serial - 1].outcome == "answered"


def test_worker_sigkilled_mid_call(scenarios, model, project, user):
    scenario = _started(scenarios, project, user, "kill9")
    hold = _hold_first(scenario, model, item=True)
    call = hold.wait_held(30)
    victim = scenario.holder(call)

    scenario.fault(call)
    scenario.end_on_purpose(victim, signal.SIGKILL)
    victim.process.wait(10)

    figures = _finish(scenario)
    assert model.calls[call.serial - 1].outcome == "cut"
    assert figures["cut_calls"] == 1


def test_worker_sigterm_mid_call_finishes_its_call_then_exits(scenarios, model, project, user):
    scenario = _started(scenarios, project, user, "sigterm")
    hold = _hold_first(scenario, model, phase="PLANNING")
    call = hold.wait_held(30)
    victim = scenario.holder(call)

    scenario.fault(call)
    scenario.end_on_purpose(victim, signal.SIGTERM)
    time.sleep(0.5)
    hold.release()
    # graceful: the running task ends (its call is answered and booked), then it exits
    assert victim.process.wait(30) == 0, victim.output()[-3000:]

    _finish(scenario)
    assert model.calls[call.serial - 1].outcome == "answered"
