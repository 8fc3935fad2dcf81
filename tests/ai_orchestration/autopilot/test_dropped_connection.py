"""A worker whose database connection dies while it waits for the model keeps the answer:
the phase (or work item) is completed on a fresh connection, and the model is not
called again for the same attempt (found by the fault matrix: the answer was dropped,
the run left to its lease, and a second worker called the model again)."""

import threading
import uuid

import pytest
from django.db import OperationalError, connection

from ai_orchestration.autopilot import items, runner
from ai_orchestration.autopilot.lease import holder_write
from ai_orchestration.autopilot.runner import autopilot_step
from ai_orchestration.autopilot.services import autopilot_start
from ai_orchestration.models import AIRun
from tests.conftest import on_postgres
from tests.factories import workflow_for
from workflows.models import PhaseResult, Workflow, WorkItem
from workflows.services import Actor


def _end_my_connection() -> None:
    """pg_terminate_backend this thread's connection, from another one, and wait until
    the server has ended it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()

    def terminate() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
                while True:
                    cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
                    if cursor.fetchone()[0] == 0:
                        return
        finally:
            connection.close()

    thread = threading.Thread(target=terminate)
    thread.start()
    thread.join(10)


def _calls_that_end_the_connection(monkeypatch, module, name: str, *, times: int = 1) -> list:
    """Wrap the model call `module.name`: count its calls; after the first `times`
    answers, end the worker's database connection before it goes on."""
    real = getattr(module, name)
    calls: list = []

    def call(*args, **kwargs):
        answer = real(*args, **kwargs)
        calls.append(args)
        if len(calls) <= times:
            _end_my_connection()
        return answer

    monkeypatch.setattr(module, name, call)
    return calls


@on_postgres
@pytest.mark.django_db(transaction=True)
def test_a_phase_answer_outlives_a_dropped_connection(project, user, monkeypatch):
    workflow = workflow_for(project, user, description="Keep the answer. Finish anyway.")
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
    calls = _calls_that_end_the_connection(monkeypatch, runner, "_evidence_from_model")

    # when the connection dies while DISCOVERY's model call is answered
    went_on = autopilot_step(run_id=run.id, worker_id="test-worker")

    # then the phase was completed with that answer, once, with no second call
    assert went_on is True
    assert len(calls) == 1
    assert Workflow.objects.get(pk=workflow.pk).state == "PLANNING"
    assert list(PhaseResult.objects.filter(workflow=workflow).values_list("phase", flat=True)) == [
        "DISCOVERY"
    ]
    run.refresh_from_db()
    assert (run.status, run.phases_completed, run.attempts) == (AIRun.Status.QUEUED, 1, 1)
    assert run.input_tokens > 0


@on_postgres
@pytest.mark.django_db(transaction=True)
def test_a_run_whose_phase_is_done_is_handed_on_over_a_dropped_connection(
    project, user, monkeypatch
):
    workflow = workflow_for(project, user, description="Hand it on. Finish anyway.")
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
    # the connection dies right after DISCOVERY's completion committed
    _calls_that_end_the_connection(monkeypatch, runner, "_phase_complete_and_book")

    went_on = autopilot_step(run_id=run.id, worker_id="test-worker")

    # then the run is queued for PLANNING at once (not left to its lease)
    run.refresh_from_db()
    assert went_on is True
    assert (run.status, run.phases_completed, run.lease_token) == (AIRun.Status.QUEUED, 1, None)


@on_postgres
@pytest.mark.django_db(transaction=True)
def test_a_work_items_answer_outlives_a_dropped_connection(project, user, monkeypatch):
    workflow = workflow_for(project, user, description="Keep the item. Finish anyway.")
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
    assert autopilot_step(run_id=run.id, worker_id="test-worker")  # DISCOVERY
    assert autopilot_step(run_id=run.id, worker_id="test-worker")  # PLANNING
    calls = _calls_that_end_the_connection(monkeypatch, items, "_item_answer")

    # when the connection dies as the first item's call is answered
    while autopilot_step(run_id=run.id, worker_id="test-worker"):
        pass

    # then every item was called for once and done once; the run booked every call
    workflow.refresh_from_db()
    run.refresh_from_db()
    assert workflow.state == "COMPLETE"
    done = list(WorkItem.objects.filter(workflow=workflow))
    assert len(calls) == len(done) == 4
    assert {(i.status, i.executions) for i in done} == {(WorkItem.Status.DONE, 1)}
    assert run.input_tokens == workflow.input_tokens
    assert run.output_tokens == workflow.output_tokens


# --- holder_write on its own -------------------------------------------------------------


class _Lease:
    label = "test lease"
    interval = 0.01

    def __init__(self) -> None:
        self.lost = False


def _failing(times: int, result: object = "written"):
    tries: list[int] = []

    def write():
        tries.append(1)
        if len(tries) <= times:
            raise OperationalError("the connection is closed")
        return result

    return write, tries


def test_a_write_is_tried_again_while_the_lease_is_held():
    write, tries = _failing(2)

    assert holder_write(_Lease(), write, what="writing") == "written"
    assert len(tries) == 3


def test_a_write_that_committed_before_its_connection_failed_is_not_made_again():
    write, tries = _failing(1)
    committed = uuid.uuid4()

    result = holder_write(_Lease(), write, what="writing", landed=lambda: committed)

    assert result == committed
    assert len(tries) == 1


def test_once_the_lease_is_lost_the_error_is_raised():
    lease = _Lease()
    lease.lost = True
    write, tries = _failing(5)

    with pytest.raises(OperationalError):
        holder_write(lease, write, what="writing")
    assert len(tries) == 1


def test_other_errors_are_not_tried_again():
    tries: list[int] = []

    def write():
        tries.append(1)
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        holder_write(_Lease(), write, what="writing")
    assert len(tries) == 1
