"""Leases and fencing with real processes: `db_worker`s and the `autopilot_watchdog`
against the test database, and a loopback OpenAI server (in this process) that times
every call, so it can tell whether two calls for one phase were ever live at once.

- A heartbeat connection killed once (pg_terminate_backend) is replaced: the run goes
  on, nothing is re-queued, one call.
- A worker whose heartbeat cannot renew (its connection killed and every renewal of its
  lease refused by the database, a trigger standing in for a database it cannot reach)
  gives the lease up one interval before it expires and cuts its call; the watchdog
  re-queues the run and a second worker completes the phase. A's call ended before B's
  began, the phase was completed once, and both calls are counted.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from ai_orchestration.autopilot.services import autopilot_start
from ai_orchestration.models import AIRun
from tests.ai_orchestration.fakes import FakeOpenAI, hang, ok
from tests.ai_orchestration.faults.procs import database_url
from tests.conftest import on_postgres
from tests.factories import evidence, workflow_for
from workflows.models import PhaseResult, Workflow
from workflows.services import Actor

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(settings.BASE_DIR)
API_KEY = "sk-test-faults-0123456789"
LABEL = "discovery_evidence"
HEARTBEAT, LEASE = 1, 4  # seconds: whole numbers, as the environment takes them
TRIGGER = "topdog_test_refuse_renewal"


@pytest.fixture
def fake_model():
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def processes(tmp_path, fake_model):
    """Start manage.py commands against the test database; all are stopped at the end."""
    started: list[subprocess.Popen] = []

    def spawn(name: str, *args: str) -> subprocess.Popen:
        env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "DJANGO_SETTINGS_MODULE": "topdog.settings",
            "OPENAI_BASE_URL": fake_model.base_url,
            "OPENAI_API_KEY": API_KEY,
            "TOPDOG_LLM_TIMEOUT_SECONDS": "120",
            "TOPDOG_LLM_DEADLINE_SECONDS": "120",
            "TOPDOG_AUTOPILOT_HEARTBEAT_SECONDS": str(HEARTBEAT),
            "TOPDOG_AUTOPILOT_LEASE_SECONDS": str(LEASE),
            "TOPDOG_SANDBOX": "off",
        }
        env.pop("REDIS_URL", None)  # live frames are not under test here
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), *args],
            cwd=ROOT,
            env=env,
            stdout=(tmp_path / f"{name}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        started.append(process)
        return process

    yield spawn
    for process in started:
        if process.poll() is None:
            process.terminate()
    for process in started:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def worker(spawn, name: str) -> subprocess.Popen:
    return spawn(name, "db_worker", "--no-reload", "--interval", "0.1", "--no-startup-delay")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def run_row(run) -> dict:
    return AIRun.objects.filter(pk=run.pk).values().get()


def renewed_once(run, claimed: dict) -> bool:
    row = run_row(run)
    return row["heartbeat_at"] > claimed["heartbeat_at"] and row["status"] == "running"


def kill_heartbeat_connections() -> int:
    """pg_terminate_backend every other connection whose last query renewed a lease
    (the heartbeats'): what a database restart does to them."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND query LIKE %s",
            ['%"lease_token" = %'],
        )
        return cursor.fetchone()[0]


def refuse_renewals_of(token) -> None:
    """From now on the database refuses every renewal of the lease `token` (the row's
    heartbeat moving while its token stays): a heartbeat that cannot reach it."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"""CREATE FUNCTION {TRIGGER}() RETURNS trigger AS $$
                BEGIN
                  IF OLD.lease_token = '{token}'::uuid AND NEW.lease_token = OLD.lease_token
                     AND NEW.heartbeat_at IS DISTINCT FROM OLD.heartbeat_at THEN
                    RAISE EXCEPTION 'injected: the heartbeat cannot reach the database';
                  END IF;
                  RETURN NEW;
                END $$ LANGUAGE plpgsql"""
            )
            cursor.execute(
                f"CREATE TRIGGER {TRIGGER} BEFORE UPDATE ON ai_orchestration_airun "
                f"FOR EACH ROW EXECUTE FUNCTION {TRIGGER}()"
            )
        else:
            cursor.execute(
                f"""CREATE TRIGGER {TRIGGER} BEFORE UPDATE ON ai_orchestration_airun
                WHEN OLD.lease_token = '{token.hex}' AND NEW.lease_token = OLD.lease_token
                     AND NEW.heartbeat_at IS NOT OLD.heartbeat_at
                BEGIN
                  SELECT RAISE(ABORT, 'injected: the heartbeat cannot reach the database');
                END"""
            )


@pytest.fixture
def renewals_refusable():
    """Drops the trigger `refuse_renewals_of` makes (DDL outlives the test's flush)."""
    yield refuse_renewals_of
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}" + _on_table())
        if connection.vendor == "postgresql":
            cursor.execute(f"DROP FUNCTION IF EXISTS {TRIGGER}()")


def _on_table() -> str:
    return " ON ai_orchestration_airun" if connection.vendor == "postgresql" else ""


def phase_results(workflow) -> list[str]:
    return list(PhaseResult.objects.filter(workflow=workflow).values_list("phase", flat=True))


def test_a_worker_that_cannot_renew_stops_its_call_before_another_takes_over(
    project, user, tmp_path, fake_model, processes, renewals_refusable
):
    # given worker A, blocked in DISCOVERY's model call (the server would not answer for
    # a minute), whose heartbeat has renewed once
    workflow = workflow_for(project, user, model_name="GPT4")
    fake_model.script(
        hang(60), ok(json=evidence("DISCOVERY", document="# From B\nThe requirements."))
    )
    a = worker(processes, "worker-a")
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user), scope="phase")
    wait_for(lambda: fake_model.exchanges, 60, "A's model call")
    claimed = run_row(run)
    assert f":{a.pid}:" in claimed["worker_id"]
    wait_for(lambda: renewed_once(run, claimed), 10, "A's first renewal")

    # when A's heartbeat loses the database: its connection is killed (PostgreSQL) and
    # every renewal of its lease is refused from now on
    renewals_refusable(claimed["lease_token"])
    if connection.vendor == "postgresql":
        assert kill_heartbeat_connections() >= 1
    # A cuts its call; it is then stopped (gracefully) so that B is the one to take over
    wait_for(lambda: fake_model.exchanges[0].ended, 3 * LEASE, "A to cut its call")
    a.send_signal(signal.SIGTERM)
    worker(processes, "worker-b")
    processes("watchdog", "autopilot_watchdog", "--interval", "0.2")
    wait_for(lambda: run_row(run)["status"] == "completed", 60, "the run to complete on worker B")

    # then A's call was over before B's began: never two live calls for the phase
    call_a, call_b = fake_model.exchanges
    assert call_a.hung_up and call_a.ended < call_b.started
    assert fake_model.peak_live(LABEL) == 1
    assert len(fake_model.requests) == 2
    # the phase was completed once, by B; both calls are counted, one per call made
    assert phase_results(workflow) == ["DISCOVERY"]
    assert "From B" in PhaseResult.objects.get(workflow=workflow).ai_response
    done = run_row(run)
    assert (done["phases_completed"], done["recoveries"], done["attempts"]) == (1, 1, 2)
    assert Workflow.objects.get(pk=workflow.pk).state == "PLANNING"
    log_a = (tmp_path / "worker-a.log").read_text()
    assert "renewing the lease failed" in log_a  # every failed renewal is logged
    assert "could not be renewed before it expires" in log_a
    assert "re-queued run" in (tmp_path / "watchdog.log").read_text()


@on_postgres
def test_a_killed_heartbeat_connection_is_replaced_and_the_run_goes_on(
    project, user, tmp_path, fake_model, processes
):
    # given worker A streaming DISCOVERY's answer slowly (longer than a lease), and the
    # watchdog ready to re-queue a run whose lease expires
    workflow = workflow_for(project, user, model_name="GPT4")
    text = json.dumps(evidence("DISCOVERY", document="# From A\nThe requirements."))
    pieces = [text[n : n + 8] for n in range(0, len(text), 8)]
    fake_model.script(ok(chunks=pieces, chunk_delay=(1.5 * LEASE) / len(pieces)))
    worker(processes, "worker-a")
    processes("watchdog", "autopilot_watchdog", "--interval", "0.2")
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user), scope="phase")
    wait_for(lambda: fake_model.exchanges, 60, "A's model call")
    claimed = run_row(run)
    wait_for(lambda: renewed_once(run, claimed), 10, "A's first renewal")

    # when its heartbeat's connection is killed, as a database restart would
    assert kill_heartbeat_connections() >= 1

    # then the heartbeat renews on a fresh connection: the run completes on A, never
    # re-queued, with one call
    wait_for(lambda: run_row(run)["status"] == "completed", 60, "the run to complete")
    done = run_row(run)
    assert (done["recoveries"], done["executions"], done["attempts"]) == (0, 1, 1)
    assert len(fake_model.exchanges) == 1
    assert phase_results(workflow) == ["DISCOVERY"]
    log_a = (tmp_path / "worker-a.log").read_text()
    assert "renewing the lease failed" in log_a
    assert "renewed again" in log_a
