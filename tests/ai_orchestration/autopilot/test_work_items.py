"""The autopilot works IMPLEMENTATION item by item: retries, a dead worker's item,
cancel mid-graph, and the concurrency limit under racing workers."""

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from ai_orchestration.autopilot.items import work_items_work
from ai_orchestration.autopilot.runner import autopilot_step
from ai_orchestration.autopilot.services import (
    autopilot_reap,
    autopilot_start,
    work_items_dispatch,
)
from ai_orchestration.models import AIRun
from tests.ai_orchestration.autopilot.test_autopilot_models import item_answer
from tests.ai_orchestration.fakes import ok
from tests.conftest import on_postgres
from tests.factories import evidence, workflow_for
from workflows.default_prompts import DEFAULT_PROMPTS
from workflows.models import PromptTemplate, Workflow, WorkflowEvent, WorkItem
from workflows.services import Actor, work_item_start, workflow_cancel, workflow_phase_complete
from workflows.work_items import work_items_current

API_KEY = "sk-test-items-0123456789"


@pytest.fixture
def fast_retries(settings):
    settings.TOPDOG_WORK_ITEM_BACKOFF_MS = 1
    settings.TOPDOG_WORK_ITEM_MAX_ATTEMPTS = 3


@pytest.fixture
def openai_at_fake(settings, fake_openai):
    providers = {name: dict(config) for name, config in settings.TOPDOG_PROVIDERS.items()}
    providers["openai"].update(base_url=fake_openai.base_url, api_key=API_KEY, timeout=1)
    settings.TOPDOG_PROVIDERS = providers
    settings.TOPDOG_LLM_DEADLINE_SECONDS = 3
    return fake_openai


def offline_delay(settings, ms: int) -> None:
    providers = {name: dict(config) for name, config in settings.TOPDOG_PROVIDERS.items()}
    providers["offline"]["call_delay_ms"] = ms
    settings.TOPDOG_PROVIDERS = providers


def run_to_end(run_id, worker_id="test-worker") -> None:
    for _ in range(50):
        if not autopilot_step(run_id=run_id, worker_id=worker_id):
            return
    raise AssertionError("the run did not stop")


def executions(workflow) -> dict[str, int]:
    return {i.key: i.executions for i in work_items_current(workflow_id=workflow.id)}


def event_types(workflow) -> list[str]:
    return list(
        WorkflowEvent.objects.filter(workflow=workflow, type__startswith="work_item.")
        .order_by("seq")
        .values_list("type", flat=True)
    )


# --- retries ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_item_that_never_checks_fails_itself_and_the_run_at_the_limit(
    openai_at_fake, fast_retries, project, user
):
    # given a model that answers W1 (src/app.py) with another file, every time
    workflow = workflow_for(project, user, model_name="GPT4")
    wrong = ok(json=item_answer("src/other.py"))
    openai_at_fake.script(
        ok(json=evidence("DISCOVERY")), ok(json=evidence("PLANNING")), wrong, wrong, wrong
    )

    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
    run_to_end(run.id)

    run.refresh_from_db()
    item = WorkItem.objects.get(workflow=workflow, key="W1")
    assert (item.status, item.attempt) == ("failed", 3)
    assert "src/other.py is not one of the work item's files" in item.error
    assert run.status == AIRun.Status.FAILED
    assert "work item W1 failed after 3 tries" in run.error
    assert event_types(workflow) == ["work_item.started"] + ["work_item.failed"] * 3
    final = WorkflowEvent.objects.filter(workflow=workflow, type="work_item.failed").last()
    assert final.data["final"] is True
    # the retries were asked with the errors
    assert "src/other.py" in str(openai_at_fake.requests[3].json["messages"][-1])
    assert Workflow.objects.get(pk=workflow.pk).state == "IMPLEMENTATION"


@pytest.mark.django_db
def test_an_item_that_checks_on_its_second_try_is_done(openai_at_fake, fast_retries, project, user):
    workflow = workflow_for(project, user, model_name="GPT4")
    openai_at_fake.script(
        ok(json=evidence("DISCOVERY")),
        ok(json=evidence("PLANNING")),
        ok(json=_broken("src/app.py")),
        ok(json=item_answer("src/app.py")),
        ok(json=item_answer("tests/test_app.py")),
    )

    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user), scope="phase")
    run_to_end(run.id)  # DISCOVERY
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user), scope="phase")
    run_to_end(run.id)  # PLANNING
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user), scope="phase")
    run_to_end(run.id)  # IMPLEMENTATION, item by item

    workflow.refresh_from_db()
    run.refresh_from_db()
    assert workflow.state == "TESTING", run.error
    items = {i.key: i for i in work_items_current(workflow_id=workflow.id)}
    assert (items["W1"].status, items["W1"].attempt) == ("done", 2)
    assert (items["W2"].status, items["W2"].attempt) == ("done", 1)
    assert run.status == AIRun.Status.COMPLETED


def _broken(path: str) -> dict:
    return {
        "commit_message": "x",
        "files": [{"path": path, "action": "create", "content": "def broken(:\n"}],
    }


# --- a worker that died mid-item -------------------------------------------------------


@pytest.mark.django_db
def test_a_dead_workers_item_is_run_again_once_and_every_other_item_once(project, user):
    """The kill is simulated: a worker takes W1 and never comes back; its lease is then
    expired in the database (the SIGKILL of a real worker process is
    test_worker_killed.py)."""
    workflow = workflow_for(project, user, description="Survive a crash. Finish anyway.")
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user), scope="phase")
    run_to_end(run.id)
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user), scope="phase")
    run_to_end(run.id)
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
    # a worker claims the ready items and takes W1, then dies
    work_items_dispatch(run_id=run.id, workflow_id=workflow.id)
    w1 = WorkItem.objects.get(workflow=workflow, key="W1", superseded=False)
    assert work_item_start(
        workflow_id=workflow.id, item_id=w1.pk, worker_id="dead", actor=Actor.system()
    )
    WorkItem.objects.filter(pk=w1.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    autopilot_reap()
    w1.refresh_from_db()
    assert (w1.status, w1.worker_id) == ("running", "")  # ready again, claimed anew
    run_to_end(run.id)

    workflow.refresh_from_db()
    assert workflow.state == "COMPLETE"
    assert executions(workflow) == {"W1": 2, "W3": 1, "W2": 1, "W4": 1}


# --- the IDE drives it too: two clients at once --------------------------------------------

race_db = pytest.mark.django_db(transaction=True)


@pytest.fixture
def prompt_templates(transactional_db):
    for role, body in DEFAULT_PROMPTS.items():
        if not PromptTemplate.objects.filter(role=role, active=True).exists():
            PromptTemplate.objects.create(
                role=role, version=1, body=body, sha256=PromptTemplate.digest(body), active=True
            )


def in_threads(calls) -> list:
    barrier = threading.Barrier(len(calls), timeout=30)
    outcomes: list = [None] * len(calls)

    def run(index):
        try:
            barrier.wait()
            outcomes[index] = calls[index]()
        except Exception as exc:  # collected and asserted on
            outcomes[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


def independent_plan(count: int) -> dict:
    return evidence(
        "PLANNING",
        work_items=[
            {"id": f"I{n}", "title": f"item {n}", "files": [f"src/m{n}.py"], "depends_on": []}
            for n in range(count)
        ],
    )


def at_implementation(project, user, the_plan) -> Workflow:
    workflow = workflow_for(project, user)
    for result in (evidence("DISCOVERY"), the_plan):
        workflow_phase_complete(
            workflow_id=workflow.id, ai_response="", result=result, actor=Actor.of(user)
        )
    return workflow


@on_postgres
@race_db
def test_two_ide_clients_complete_two_independent_items_at_once(prompt_templates, project, user):
    from rest_framework.test import APIClient

    from tests.factories import api_token_for

    workflow = at_implementation(project, user, independent_plan(2))
    token = api_token_for(user)

    def client_completes(key, path):
        def call():
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
            body = {"files": [{"path": path, "action": "create", "content": f"X = {key!r}\n"}]}
            return client.post(
                f"/api/workflows/{workflow.id}/work-items/{key}/complete/", body, format="json"
            )

        return call

    responses = in_threads(
        [client_completes("I0", "src/m0.py"), client_completes("I1", "src/m1.py")]
    )

    assert sorted(r.status_code for r in responses) == [200, 200], responses
    assert sorted(r.json()["phase_completed"] for r in responses) == [False, True]
    workflow.refresh_from_db()
    assert workflow.state == "TESTING"
    files = workflow.phase_results.get(phase="IMPLEMENTATION").result["files"]
    assert sorted(f["path"] for f in files) == ["src/m0.py", "src/m1.py"]


# --- racing workers: the limit holds, every item runs once --------------------------------


@on_postgres
@race_db
def test_racing_workers_never_run_more_items_than_the_limit(
    prompt_templates, settings, project, user
):
    offline_delay(settings, 300)
    project.work_item_concurrency = 2
    project.save()
    workflow = at_implementation(project, user, independent_plan(8))
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
    seen: list[int] = []
    stop = threading.Event()

    def sample():
        try:
            while not stop.is_set():
                seen.append(
                    WorkItem.objects.filter(
                        workflow=workflow, superseded=False, status="running"
                    ).count()
                )
                time.sleep(0.02)
        finally:
            connection.close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        in_threads(
            [
                lambda n=n: work_items_work(
                    run_id=run.id, workflow_id=workflow.id, worker_id=f"racer-{n}"
                )
                for n in range(4)
            ]
        )
    finally:
        stop.set()
        sampler.join(10)

    workflow.refresh_from_db()
    assert workflow.state == "TESTING"
    assert max(seen) == 2  # the limit was reached, never passed
    assert set(executions(workflow).values()) == {1}
    # and no two items' runs overlapped more than the limit allows
    spans = [(i.started_at, i.finished_at) for i in work_items_current(workflow_id=workflow.id)]
    for started, _ in spans:
        assert sum(1 for s, f in spans if s <= started < f) <= 2


@on_postgres
@race_db
def test_cancel_mid_graph_leaves_no_running_item(prompt_templates, settings, project, user):
    offline_delay(settings, 3000)
    workflow = at_implementation(project, user, independent_plan(4))
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
    worker = threading.Thread(
        target=lambda: (
            work_items_work(run_id=run.id, workflow_id=workflow.id, worker_id="w"),
            connection.close(),
        )
    )
    worker.start()
    deadline = time.monotonic() + 20
    while not WorkItem.objects.filter(workflow=workflow, worker_id="w").exists():
        assert time.monotonic() < deadline, "no item started"
        time.sleep(0.05)

    started = time.monotonic()
    workflow_cancel(workflow_id=workflow.id, actor=Actor.of(user))
    worker.join(15)

    assert not worker.is_alive()
    assert time.monotonic() - started < 3  # it stopped at its next cancel check
    statuses = set(WorkItem.objects.filter(workflow=workflow).values_list("status", flat=True))
    assert statuses == {"cancelled"}
    assert not event_types(workflow).count("work_item.finished")


def test_items_use_the_model_the_ide_named_and_the_runs_override(project, user, settings):
    # given a workflow opened with a concrete model id and a run that overrides it
    settings.TOPDOG_AUTOPILOT_HEARTBEAT_SECONDS = 120
    workflow = workflow_for(project, user, model_name="gpt-4")
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user), model_name="OFFLINE")

    # when the autopilot works it (IMPLEMENTATION item by item)
    for _ in range(60):
        if not autopilot_step(run_id=run.id, worker_id="t"):
            break

    # then every item was called on the override's provider and the workflow completes
    workflow.refresh_from_db()
    assert workflow.state == "COMPLETE", AIRun.objects.get(pk=run.pk).error
    items = list(WorkItem.objects.filter(workflow=workflow))
    assert items and all(item.status == "done" for item in items)


def test_an_item_call_that_could_pass_the_budget_stops_the_run(
    openai_at_fake, project, user, settings
):
    # given a workflow in IMPLEMENTATION on a priced model and a budget already spent
    settings.TOPDOG_AUTOPILOT_HEARTBEAT_SECONDS = 120
    project.budget_usd = 0
    project.save()
    workflow = workflow_for(project, user, model_name="GPT4")
    for phase in ("DISCOVERY", "PLANNING"):
        workflow_phase_complete(
            workflow_id=workflow.id, ai_response="", result=evidence(phase), actor=Actor.of(user)
        )
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))

    # when the autopilot reaches the items
    run_to_end(run.id)

    # then no model was called, the run stopped on the budget, and no item was done or
    # failed (one may still be held by a dispatched task, which gives it back on its turn)
    run.refresh_from_db()
    assert run.status == AIRun.Status.STOPPED and "budget" in run.stop_reason
    assert openai_at_fake.requests == []
    statuses = {i.status for i in work_items_current(workflow_id=workflow.id)}
    assert not statuses & {"done", "failed"}
