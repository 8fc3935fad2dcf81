"""Two workers, one run: a worker that loses its lease stops its model call before
another worker starts one, and a stale worker's completion is refused (fencing).

Workers are threads here, driving the real runner against a loopback OpenAI server
through the real SDK; tests/ai_orchestration/faults/ does the same with db_worker
processes."""

import logging
import threading
import time

import pytest
from django.db import OperationalError, connection

from ai_orchestration.autopilot import runner
from ai_orchestration.autopilot.lease import Hold, LeaseHeartbeat, run_lease
from ai_orchestration.autopilot.runner import autopilot_step
from ai_orchestration.autopilot.services import autopilot_reap, autopilot_start
from ai_orchestration.models import AIRun
from tests.ai_orchestration.fakes import hang, ok
from tests.factories import evidence, workflow_for
from workflows.models import PhaseResult, Workflow
from workflows.services import Actor

pytestmark = pytest.mark.django_db(transaction=True)

API_KEY = "sk-test-fencing-0123456789"
LABEL = "discovery_evidence"  # how the fake server tells DISCOVERY's calls apart


@pytest.fixture
def fake_model(settings, fake_openai):
    providers = {name: dict(config) for name, config in settings.TOPDOG_PROVIDERS.items()}
    providers["openai"].update(base_url=fake_openai.base_url, api_key=API_KEY, timeout=60)
    settings.TOPDOG_PROVIDERS = providers
    settings.TOPDOG_LLM_DEADLINE_SECONDS = 60
    settings.TOPDOG_AUTOPILOT_HEARTBEAT_SECONDS = 0.2
    settings.TOPDOG_AUTOPILOT_LEASE_SECONDS = 1.6
    return fake_openai


class Worker(threading.Thread):
    """One autopilot step on its own thread (its own database connection)."""

    def __init__(self, run_id, name: str) -> None:
        super().__init__(daemon=True, name=name)
        self.run_id, self.result, self.error = run_id, None, None

    def run(self) -> None:
        try:
            self.result = autopilot_step(run_id=self.run_id, worker_id=self.name)
        except Exception as exc:  # asserted on
            self.error = exc
        finally:
            connection.close()


def first_lease_made_with(monkeypatch, renew_for_a, *, unaware: bool = False):
    """The first run lease made (worker A's) renews with `renew_for_a(real_renew)`;
    `unaware`: A never learns that its lease ran out (as a paused process would not)."""
    made = []

    def lease(*, run_id, token, held_since):
        real = run_lease(run_id=run_id, token=token, held_since=held_since)
        made.append(real)
        if len(made) > 1:
            return real
        return LeaseHeartbeat(
            name=f"run {run_id} (A)",
            token=token,
            renew=lambda: renew_for_a(real._renew),
            held_since=held_since + (3600 if unaware else 0),
        )

    monkeypatch.setattr(runner, "run_lease", lease)


def wait_for(predicate, timeout: float = 20, what: str = "it"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


A_STALLS = 60  # far longer than the test: only cutting A's read can end its call early


@pytest.mark.parametrize(
    "a_answer",
    [
        hang(A_STALLS),
        ok(json=evidence("DISCOVERY", document="# From A"), chunk_delay=A_STALLS),
    ],
    ids=["waiting-for-the-first-byte", "stalled-stream"],
)
def test_a_lost_heartbeat_cuts_the_call_before_another_worker_calls(
    fake_model, project, user, monkeypatch, caplog, a_answer
):
    # given worker A, whose heartbeat cannot reach the database any more, blocked in a
    # model call that would not answer for a minute; and worker B, answered at once
    workflow = workflow_for(project, user, model_name="GPT4")
    fake_model.script(
        a_answer, ok(json=evidence("DISCOVERY", document="# From B\nThe requirements."))
    )

    def renew_fails(real_renew) -> Hold:
        raise OperationalError("injected: the heartbeat's connection is gone")

    first_lease_made_with(monkeypatch, renew_fails)
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user), scope="phase")

    # when A works the run, the reaper re-queues it once A's lease has expired, and B
    # takes it
    a = Worker(run.id, "worker-a")
    with caplog.at_level(logging.WARNING):
        a.start()
        wait_for(lambda: fake_model.exchanges, what="A's call")
        wait_for(lambda: autopilot_reap(), what="the reaper to re-queue the run")
        b_result = autopilot_step(run_id=run.id, worker_id="worker-b")
        a.join(20)

    # then A's call was over (the server saw it hang up) before B's began: never two
    # live calls for the phase
    assert a.error is None and a.result is False and b_result is False
    call_a, call_b = fake_model.exchanges
    assert call_a.hung_up
    assert call_a.ended < call_b.started
    assert fake_model.peak_live(LABEL) == 1
    # the phase was completed once, with B's answer; A's result was discarded
    results = PhaseResult.objects.filter(workflow=workflow)
    assert [r.phase for r in results] == ["DISCOVERY"]
    assert "From B" in results[0].ai_response
    run.refresh_from_db()
    assert (run.status, run.phases_completed, run.recoveries) == (AIRun.Status.COMPLETED, 1, 1)
    assert run.attempts == 2  # A's cut call is counted too: one per call made
    assert Workflow.objects.get(pk=workflow.pk).state == "PLANNING"
    assert any("could not be renewed" in r.getMessage() for r in caplog.records)


def test_a_stale_workers_completion_is_refused(fake_model, project, user, monkeypatch, caplog):
    """Worker A has its answer, then stalls (a pause, a stopped process: its heartbeat
    does not run either) past its lease; B takes the run and completes the phase; when A
    resumes, its completion is refused by the lease token."""
    workflow = workflow_for(project, user, model_name="GPT4")
    fake_model.script(
        ok(json=evidence("DISCOVERY", document="# From A\nStale.")),
        ok(json=evidence("DISCOVERY", document="# From B\nCurrent.")),
    )
    # A is paused: its heartbeat never renews, and A does not notice the time passing
    first_lease_made_with(monkeypatch, lambda real_renew: Hold.HELD, unaware=True)
    a_has_answer, a_resumes = threading.Event(), threading.Event()
    real_complete = runner._phase_complete_and_book

    def pause_a_first(run, lease, *args):
        if threading.current_thread().name == "worker-a":
            a_has_answer.set()
            assert a_resumes.wait(30)
        return real_complete(run, lease, *args)

    monkeypatch.setattr(runner, "_phase_complete_and_book", pause_a_first)
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user), scope="phase")

    a = Worker(run.id, "worker-a")
    with caplog.at_level(logging.WARNING):
        a.start()
        assert a_has_answer.wait(20)
        wait_for(lambda: autopilot_reap(), what="the reaper to re-queue the run")
        assert autopilot_step(run_id=run.id, worker_id="worker-b") is False
        a_resumes.set()
        a.join(20)

    assert a.error is None and a.result is False
    results = PhaseResult.objects.filter(workflow=workflow)
    assert [r.phase for r in results] == ["DISCOVERY"]
    assert "From B" in results[0].ai_response
    run.refresh_from_db()
    assert (run.status, run.phases_completed) == (AIRun.Status.COMPLETED, 1)
    assert run.stop_reason == "phase done"  # B's finish stands; A overwrote nothing
    assert run.attempts == 2  # A's discarded call is still counted
    assert any("stale worker's completion was refused" in r.getMessage() for r in caplog.records)
    assert Workflow.objects.get(pk=workflow.pk).state == "PLANNING"
