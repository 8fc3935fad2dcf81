"""The fault matrix: real task workers and a watchdog, faults injected with runs in
flight, every run completing with no manual action.

Each scenario runs two task workers and one `autopilot_watchdog` as processes on the
test database (PostgreSQL) and a Redis channel layer, starts three workflows on
autopilot with the `local` provider pointed at a counted loopback model
(counted_model.py), holds one call mid-stream, injects its fault there, and lets go:

- kill9: the worker making a work item's call is SIGKILLed;
- sigterm: the worker making a phase's call gets SIGTERM (it finishes, then exits);
- pg_idle: `pg_terminate_backend` of every connection of the workers and the watchdog
  while no run is in flight (what a PostgreSQL restart does to idle processes);
- pg_midcall: the same while a call is in flight;
- redis_restart: the Redis server is stopped mid-call and started again on its port;
- heartbeat_conn: the database connection of the lease heartbeat of the worker making a
  call is ended, and the call held past the lease's length.

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
    Scenario,
    backends_matching,
    pids_terminate,
)
from tests.ai_orchestration.faults.procs import backends_terminate, wait_for
from tests.ai_orchestration.faults.redis_server import PrivateRedis, redis_server_binary

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
def _figures():
    yield
    if FIGURES:
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        ARTIFACT.write_text(json.dumps(FIGURES, indent=2))
        print(f"\nfault matrix figures ({ARTIFACT}):")
        for row in FIGURES:
            print(json.dumps(row))


@pytest.fixture
def model():
    with CountedModel() as server:
        yield server


@pytest.fixture
def scenarios(transactional_db, model, tmp_path):
    """Make a scenario; its processes are stopped at the end, whatever happened."""
    made: list[Scenario] = []

    def make(name: str, redis_url: str | None = None) -> Scenario:
        scenario = Scenario(
            name=name,
            model=model,
            log_dir=tmp_path,
            redis_url=redis_url or os.environ["REDIS_URL"],
        )
        made.append(scenario)
        return scenario

    yield make
    for scenario in made:
        scenario.stop()


def _finish(scenario: Scenario) -> dict:
    scenario.wait_finished(FINISH_SECONDS)
    figures = scenario.verify()
    FIGURES.append(figures)
    print(json.dumps(figures))
    return figures


def _started(scenarios, project, user, name: str, redis_url: str | None = None) -> Scenario:
    scenario = scenarios(name, redis_url)
    scenario.start_processes()
    scenario.start_runs(project, user)
    return scenario


def test_worker_sigkilled_mid_call(scenarios, model, project, user):
    hold = model.hold(item=True)
    scenario = _started(scenarios, project, user, "kill9")
    call = hold.wait_held(30)
    victim = scenario.holder(call)

    scenario.fault(call)
    scenario.end_on_purpose(victim, signal.SIGKILL)
    victim.process.wait(10)

    figures = _finish(scenario)
    assert model.calls[call.serial - 1].outcome == "cut"
    assert figures["cut_calls"] >= 1


def test_worker_sigterm_mid_call_finishes_its_call_then_exits(scenarios, model, project, user):
    scenario = _started(scenarios, project, user, "sigterm")
    first = next(iter(scenario.workflows))
    hold = model.hold(phase="PLANNING", workflow=first)
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
    hold = model.hold(phase="PLANNING", workflow=next(iter(scenario.workflows)))
    call = hold.wait_held(30)

    scenario.fault(call)
    ended = backends_terminate(*scenario.procs)
    assert ended >= len(scenario.procs)
    scenario.notes["backends_ended"] = ended
    time.sleep(1.5 * HEARTBEAT_SECONDS)  # a renewal of the held call's lease meets it
    hold.release()

    _finish(scenario)


@pytest.mark.skipif(redis_server_binary() is None, reason="redis-server is not installed")
def test_redis_restarted_mid_call(scenarios, model, project, user, tmp_path):
    with PrivateRedis(tmp_path) as redis:
        scenario = _started(scenarios, project, user, "redis_restart", redis_url=redis.url)
        hold = model.hold(phase="PLANNING", workflow=next(iter(scenario.workflows)))
        call = hold.wait_held(30)

        scenario.fault(call)
        redis.stop()
        hold.release()  # the call's deltas and the phase's broadcasts meet a dead Redis
        time.sleep(1.0)
        redis.start()

        _finish(scenario)


def test_heartbeat_connection_ended_mid_call(scenarios, model, project, user):
    scenario = _started(scenarios, project, user, "heartbeat_conn")
    hold = model.hold(phase="PLANNING", workflow=next(iter(scenario.workflows)))
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
    # held past the lease: unless renewed on a new connection, the lease expires and the
    # run is re-queued (which may only happen once this call was cut)
    time.sleep(LEASE_SECONDS + 1.5)
    hold.release()

    _finish(scenario)
