"""The supervised loop (workflows/supervision.py): backoff, going on after errors, beats."""

import os
import signal
import threading
from datetime import timedelta

import pytest
from django.core.management.base import CommandError
from django.db import OperationalError
from django.utils import timezone
from django_tasks_db.models import DBTaskResult
from redis.exceptions import ConnectionError as RedisConnectionError

from workflows import supervision
from workflows.models import WorkerBeat
from workflows.supervision import Backoff, BeatThread, SupervisedWorker, supervise


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeStopping(threading.Event):
    """A stop event whose waits return at once, recording how long they would have been."""

    def __init__(self):
        super().__init__()
        self.waits = []

    def wait(self, timeout=None):
        self.waits.append(timeout)
        return self.is_set()


# --- Backoff -------------------------------------------------------------------------------


def test_backoff_doubles_up_to_its_cap_with_jitter_between_half_and_all():
    top = Backoff(initial=0.5, cap=30, healthy_after=60, rng=lambda: 1.0)
    bottom = Backoff(initial=0.5, cap=30, healthy_after=60, rng=lambda: 0.0)

    highs = [top.delay() for _ in range(9)]
    lows = [bottom.delay() for _ in range(9)]

    assert highs == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert lows == [high / 2 for high in highs]


def test_backoff_starts_over_after_a_healthy_run():
    backoff = Backoff(initial=0.5, cap=30, healthy_after=60, rng=lambda: 1.0)
    for _ in range(5):
        backoff.delay(ran_for=1)

    assert backoff.delay(ran_for=61) == 0.5
    assert backoff.delay(ran_for=1) == 1


def test_backoff_takes_its_figures_from_settings(settings):
    settings.TOPDOG_WORKER_BACKOFF_MS = 200
    settings.TOPDOG_WORKER_BACKOFF_MAX_MS = 700
    settings.TOPDOG_WORKER_HEALTHY_SECONDS = 9

    backoff = Backoff.from_settings(cap_ms=None)

    assert (backoff.initial, backoff.cap, backoff.healthy_after) == (0.2, 0.7, 9)
    assert Backoff.from_settings(initial_ms=50).initial == 0.05


# --- supervise -------------------------------------------------------------------------------


def _failing(errors):
    """A fake command: raises each of `errors` in turn, then returns."""
    calls = []

    def run():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]

    return run, calls


def test_supervise_runs_a_failing_command_again_after_each_pause(caplog):
    run, calls = _failing(
        [OperationalError("server closed the connection"), RedisConnectionError("refused")] * 3
    )
    stopping = FakeStopping()

    supervise(
        run,
        name="fake worker",
        backoff=Backoff(initial=0.5, cap=2, healthy_after=60, rng=lambda: 1.0),
        stopping=stopping,
    )

    assert len(calls) == 7  # six failures, then a run that returned
    assert stopping.waits == [0.5, 1, 2, 2, 2, 2]
    assert caplog.text.count("fake worker failed") == 6
    assert "OperationalError: server closed the connection" in caplog.text


def test_supervise_resets_its_pause_after_a_run_that_lasted():
    clock = FakeClock()
    errors = iter([OperationalError("a"), OperationalError("b"), OperationalError("c")])

    def run():
        error = next(errors, None)
        if error is None:
            return
        if str(error) == "c":
            clock.now += 120  # a long healthy run before this failure
        raise error

    stopping = FakeStopping()
    supervise(
        run,
        name="w",
        backoff=Backoff(initial=0.5, cap=30, healthy_after=60, rng=lambda: 1.0),
        stopping=stopping,
        clock=clock,
    )

    assert stopping.waits == [0.5, 1, 0.5]


def test_supervise_stops_when_asked_during_a_pause():
    run, calls = _failing([OperationalError("down")] * 100)
    stopping = FakeStopping()
    stopping.set()

    supervise(run, name="w", backoff=Backoff(initial=1, cap=1, healthy_after=9), stopping=stopping)

    assert calls == []  # set before the first run: nothing runs


def test_supervise_lets_a_command_error_through():
    run, calls = _failing([CommandError("bad option")])

    with pytest.raises(CommandError):
        supervise(
            run,
            name="w",
            backoff=Backoff(initial=1, cap=1, healthy_after=9),
            stopping=FakeStopping(),
        )
    assert len(calls) == 1


# --- the beat ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_beat_goes_on_through_database_errors_and_records_the_stop(monkeypatch):
    record = supervision.worker_beat_record
    failures = iter([True, True])

    def flaky(**kwargs):
        if next(failures, False):
            raise OperationalError("the database is restarting")
        record(**kwargs)

    monkeypatch.setattr(supervision, "worker_beat_record", flaky)
    beat = BeatThread(kind="worker", worker_id="w-1", every=0.01)
    beat.start()
    try:
        deadline = timezone.now() + timedelta(seconds=10)
        while beat.beats < 3 and timezone.now() < deadline:
            threading.Event().wait(0.01)
    finally:
        beat.stop()

    assert beat.beats >= 3
    row = WorkerBeat.objects.get(worker_id="w-1")
    assert (row.kind, row.pid) == ("worker", os.getpid())
    assert row.stopped_at is not None


# --- the supervised db_worker ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_worker_runs_db_worker_again_under_one_id_and_fails_what_a_crash_left(monkeypatch):
    """The fake db_worker claims a task and loses the database mid-task twice; the
    supervisor fails the stranded row, starts it again under the same id, and stops when
    it returns."""
    row = DBTaskResult.objects.create(
        args_kwargs={"args": [], "kwargs": {}},
        task_path="tests.nothing",
        backend_name="default",
        run_after=timezone.now(),
    )
    seen = []

    def fake_call_command(name, *args, **kwargs):
        worker_id = next(a.split("=", 1)[1] for a in args if a.startswith("--worker-id="))
        seen.append(
            (name, worker_id, DBTaskResult.objects.get(pk=row.pk).status, "--no-reload" in args)
        )
        if len(seen) < 3:
            DBTaskResult.objects.filter(pk=row.pk).update(
                status="RUNNING", worker_ids=[worker_id], started_at=timezone.now()
            )
            raise OperationalError("terminating connection due to administrator command")

    monkeypatch.setattr(supervision, "call_command", fake_call_command)
    sigterm = signal.getsignal(signal.SIGTERM)
    worker = SupervisedWorker(
        options=["--interval=0.1"],
        backoff=Backoff(initial=0.01, cap=0.02, healthy_after=60),
        beat_seconds=0.05,
    )

    worker.run()

    assert [call[0] for call in seen] == ["db_worker"] * 3
    assert {call[1] for call in seen} == {worker.worker_id}
    assert all(call[3] for call in seen)
    # each new run found the row its predecessor left RUNNING failed
    assert [call[2] for call in seen] == ["READY", "FAILED", "FAILED"]
    failed = DBTaskResult.objects.get(pk=row.pk)
    assert failed.exception_class_path == "workflows.workers.WorkerLost"
    assert worker.worker_id in failed.traceback
    beat = WorkerBeat.objects.get(worker_id=worker.worker_id)
    assert beat.kind == "worker" and beat.stopped_at is not None
    assert signal.getsignal(signal.SIGTERM) is sigterm  # handlers put back


@pytest.mark.django_db(transaction=True)
def test_a_signal_while_db_worker_is_not_running_stops_the_worker_at_once(monkeypatch):
    calls = []

    def fake_call_command(name, *args, **kwargs):
        calls.append(name)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives after db_worker "ended"
        raise OperationalError("down")

    monkeypatch.setattr(supervision, "call_command", fake_call_command)
    worker = SupervisedWorker(backoff=Backoff(initial=30, cap=30, healthy_after=60))

    worker.run()  # would pause 15-30 s if the signal did not stop it

    assert calls == ["db_worker"]
    assert worker.stopping.is_set()
