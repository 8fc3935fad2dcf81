"""The lease heartbeat shared by runs and work items: retried renewals, loss, cancel."""

import logging
import threading
import time
import uuid

import pytest
from django.db import OperationalError, connection

from ai_orchestration.autopilot.lease import Hold, LeaseHeartbeat, run_lease, work_item_lease
from ai_orchestration.autopilot.runner import _claim
from ai_orchestration.autopilot.services import autopilot_reap, autopilot_start
from ai_orchestration.models import AIRun
from tests.factories import evidence, workflow_for
from workflows.services import Actor, work_item_start, workflow_phase_complete
from workflows.work_items import work_item_release, work_items_claim

INTERVAL, LEASE = 0.1, 1.0


@pytest.fixture(autouse=True)
def short_lease(settings):
    settings.TOPDOG_AUTOPILOT_HEARTBEAT_SECONDS = INTERVAL
    settings.TOPDOG_AUTOPILOT_LEASE_SECONDS = LEASE


class Renewals:
    """A scripted `renew`: each call takes the next answer (an exception is raised)."""

    def __init__(self, *answers, then=Hold.HELD) -> None:
        self.answers = list(answers)
        self.then = then
        self.calls = 0

    def __call__(self) -> Hold:
        self.calls += 1
        answer = self.answers.pop(0) if self.answers else self.then
        if isinstance(answer, BaseException):
            raise answer
        if answer == "hang":
            threading.Event().wait(LEASE * 2)
        return answer


def heartbeat(renew) -> LeaseHeartbeat:
    return LeaseHeartbeat(name="test", token=uuid.uuid4(), renew=renew)


def wait_for(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_a_failed_renewal_is_retried_and_the_lease_kept(caplog):
    renew = Renewals(OperationalError("server closed the connection"), OperationalError("again"))

    with caplog.at_level(logging.WARNING), heartbeat(renew) as lease:
        wait_for(lambda: renew.calls >= 5)  # two failures, then renewals again
        assert not lease.lost
        assert not lease.should_stop()

    failures = [r for r in caplog.records if "renewing the lease failed" in r.getMessage()]
    assert len(failures) == 2  # every error is logged
    assert "server closed the connection" in failures[0].getMessage()


def test_renewals_failing_until_the_lease_runs_out_lose_it_one_interval_early(caplog):
    renew = Renewals(then=OperationalError("the database is gone"))
    started = time.monotonic()

    def reported() -> bool:
        return any("could not be renewed" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.WARNING), heartbeat(renew) as lease:
        wait_for(lambda: lease.lost)
        lost_after = time.monotonic() - started
        # `lost` answers by the clock at once; the thread says why when it next wakes
        wait_for(reported)

    assert lease.should_stop()
    assert renew.calls > 2  # retried, with backoff, until then
    # kept trying until one interval was left, then gave up (the call is cut within that
    # interval, before the lease expires in the database: test_stale_worker.py shows it)
    assert lost_after >= LEASE - INTERVAL - 0.02


def test_a_lease_taken_over_is_lost_at_once():
    renew = Renewals(Hold.TAKEN)

    with heartbeat(renew) as lease:
        wait_for(lambda: lease.lost)

    assert renew.calls == 1  # and never renewed again


def test_a_cancel_request_stops_the_work_but_keeps_the_lease():
    renew = Renewals(Hold.STOP)

    with heartbeat(renew) as lease:
        wait_for(lambda: lease.cancelled)
        assert lease.should_stop() and not lease.lost
        wait_for(lambda: renew.calls >= 3)  # still renewed while the worker winds down


def test_a_renewal_stuck_in_the_database_cannot_hold_the_lease():
    renew = Renewals("hang")

    with heartbeat(renew) as lease:
        # the heartbeat thread is blocked; the time rule still ends the lease
        wait_for(lambda: lease.lost, timeout=LEASE * 3)


def test_an_unexpected_error_is_logged_and_retried_too(caplog):
    renew = Renewals(RuntimeError("a bug"))

    with caplog.at_level(logging.WARNING), heartbeat(renew) as lease:
        wait_for(lambda: renew.calls >= 3)
        assert not lease.lost

    assert any("RuntimeError: a bug" in r.getMessage() for r in caplog.records)


# --- against the database ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_killed_heartbeat_connection_is_replaced_and_the_lease_renewed(project, user, caplog):
    """On PostgreSQL the heartbeat's own connection is ended by the server
    (pg_terminate_backend, as a restart does); SQLite has no server, so one renewal
    fails by injection instead."""
    workflow = workflow_for(project, user)
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user), scope="phase")
    held_since = time.monotonic()
    run = _claim(run.id, "worker-a")
    inner = run_lease(run_id=run.id, token=run.lease_token, held_since=held_since)
    inject = threading.Event()

    def renew() -> Hold:
        if inject.is_set():
            inject.clear()
            raise OperationalError("injected: the connection was lost")
        return inner._renew()

    def expiry():
        return AIRun.objects.get(pk=run.pk).lease_expires_at

    lease = LeaseHeartbeat(name="run", token=run.lease_token, renew=renew, held_since=held_since)
    with caplog.at_level(logging.WARNING), lease:
        first = expiry()
        wait_for(lambda: expiry() > first)  # the heartbeat renews on its own connection
        if connection.vendor == "postgresql":
            assert kill_backends_that_ran("lease_token") >= 1
        else:
            inject.set()
        wait_for(lambda: any("renewing the lease failed" in r.getMessage() for r in caplog.records))
        after_kill = expiry()
        wait_for(lambda: expiry() > after_kill)  # renewed again, on a fresh connection
        time.sleep(LEASE)  # longer than the lease: only renewals can have kept it
        assert not lease.lost
        assert autopilot_reap() == []  # nothing expired, nothing re-queued

    run.refresh_from_db()
    assert (run.status, run.recoveries) == (AIRun.Status.RUNNING, 0)


def kill_backends_that_ran(fragment: str) -> int:
    """pg_terminate_backend every other connection to this database whose last query
    contains `fragment`; how many."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND query LIKE %s",
            [f"%{fragment}%"],
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db
def test_a_runs_renewal_sees_a_cancel_and_a_takeover(project, user):
    workflow = workflow_for(project, user)
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
    run = _claim(run.id, "worker-a")
    renew = run_lease(run_id=run.id, token=run.lease_token, held_since=time.monotonic())._renew

    assert renew() is Hold.HELD
    AIRun.objects.filter(pk=run.pk).update(cancel_requested=True)
    assert renew() is Hold.STOP
    # the lease expired and the reaper gave the run to another worker
    AIRun.objects.filter(pk=run.pk).update(
        cancel_requested=False, lease_expires_at=run.lease_expires_at.replace(year=2000)
    )
    assert autopilot_reap() == [run.id]
    assert renew() is Hold.TAKEN
    taken = _claim(run.id, "worker-b")
    assert taken.lease_token != run.lease_token
    assert renew() is Hold.TAKEN


@pytest.mark.django_db
def test_a_work_items_renewal_sees_its_run_end_and_a_takeover(project, user):
    workflow = workflow_for(project, user)
    for phase in ("DISCOVERY", "PLANNING"):
        workflow_phase_complete(
            workflow_id=workflow.id, ai_response="", result=evidence(phase), actor=Actor.of(user)
        )
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
    [item_id, *_] = work_items_claim(workflow_id=workflow.id, limit=1, lease_seconds=30)
    token = work_item_start(
        workflow_id=workflow.id, item_id=item_id, worker_id="worker-a", actor=Actor.system()
    )
    lease = work_item_lease(
        run_id=run.id, item_id=item_id, token=token, held_since=time.monotonic()
    )

    assert lease._renew() is Hold.HELD
    AIRun.objects.filter(pk=run.pk).update(cancel_requested=True)
    assert lease._renew() is Hold.STOP
    assert work_item_release(item_id=item_id, lease_token=token)
    assert lease._renew() is Hold.TAKEN
