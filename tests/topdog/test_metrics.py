"""GET /metrics: who may read it, and what it says."""

import socket
import urllib.request
from datetime import timedelta
from types import SimpleNamespace

import pytest
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.utils import timezone
from django_tasks import TaskResultStatus
from django_tasks_db.models import DBTaskResult
from prometheus_client import REGISTRY

from ai_orchestration.models import AIRun
from ai_orchestration.providers.base import (
    ChatMessage,
    ChatRequest,
    ProviderError,
    complete_with_retries,
    provider_for,
)
from tests.factories import UserFactory, api_token_for, evidence, workflow_for
from topdog.asgi import application
from topdog.observability import metrics, tasks
from topdog.observability.context import log_context
from workflows.models import CheckRun
from workflows.services import Actor, workflow_phase_complete

TOKEN = "metrics-token-0123456789"


@pytest.fixture
def staff(db):
    return UserFactory(username="ops", is_staff=True)


def scrape(settings, **headers) -> str:
    settings.TOPDOG_METRICS = "open"
    response = Client().get("/metrics", **headers)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    return response.content.decode()


def value(text: str, sample: str) -> float:
    """The value of the sample line starting with `sample` (name{labels})."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{sample} not in the exposition")


# --- who may read it ------------------------------------------------------------------


@pytest.mark.django_db
def test_anonymous_is_refused_with_401(settings):
    settings.TOPDOG_METRICS_TOKEN = TOKEN
    response = Client().get("/metrics")
    assert response.status_code == 401
    assert "detail" in response.json()
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_staff_may_read_and_others_may_not(settings, staff, user):
    client = Client()
    client.force_login(user)
    assert client.get("/metrics").status_code == 403
    client.force_login(staff)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert b"topdog_http_request_duration_seconds" in response.content


@pytest.mark.django_db
def test_the_metrics_token_is_accepted_and_a_wrong_one_is_not(settings):
    settings.TOPDOG_METRICS_TOKEN = TOKEN
    client = Client()
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}x").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 401
    settings.TOPDOG_METRICS_TOKEN = ""  # no token configured: none is accepted
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 401


@pytest.mark.django_db
def test_off_answers_404_and_open_answers_anyone(settings, staff):
    client = Client()
    client.force_login(staff)
    settings.TOPDOG_METRICS = "off"
    assert client.get("/metrics").status_code == 404
    settings.TOPDOG_METRICS = "open"
    assert Client().get("/metrics").status_code == 200


# --- what it says ---------------------------------------------------------------------


def test_http_latency_is_labelled_by_route_not_path(settings, api, project, user):
    workflow = workflow_for(project, user)
    assert api.get(f"/api/workflows/{workflow.id}/").status_code == 200
    text = scrape(settings)
    route = "api/workflows/<str:workflow_id>/"
    assert (
        value(
            text,
            f'topdog_http_request_duration_seconds_count{{method="GET",route="{route}",status="200"}}',
        )
        >= 1
    )
    assert str(workflow.id) not in text


def test_transitions_are_counted_by_kind_from_the_handoffs(settings, project, user):
    before = value(scrape(settings), 'topdog_workflow_transitions_total{kind="forward"}')
    workflow = workflow_for(project, user)
    workflow_phase_complete(
        workflow_id=workflow.id,
        ai_response="ok",
        result=evidence("DISCOVERY"),
        actor=Actor.of(user),
    )
    text = scrape(settings)
    assert value(text, 'topdog_workflow_transitions_total{kind="forward"}') == before + 1
    assert value(text, 'topdog_workflow_transitions_total{kind="regression"}') == 0


def test_runs_check_runs_and_the_task_queue_are_read_from_the_database(settings, project, user):
    workflow = workflow_for(project, user)
    AIRun.objects.create(workflow=workflow, status=AIRun.Status.RUNNING)
    AIRun.objects.create(workflow=workflow, status=AIRun.Status.FAILED)
    CheckRun.objects.create(
        workflow=workflow, attempt=1, kind=CheckRun.Kind.TEST, status=CheckRun.Status.PASSED
    )
    DBTaskResult.objects.all().delete()
    for age in (30, 300):
        task = DBTaskResult.objects.create(
            args_kwargs={"args": [], "kwargs": {}},
            task_path="ai_orchestration.autopilot.autopilot_run_task",
            backend_name="default",
            run_after=timezone.now(),
            status=TaskResultStatus.READY,
        )
        DBTaskResult.objects.filter(id=task.id).update(
            enqueued_at=timezone.now() - timedelta(seconds=age)
        )
    text = scrape(settings)
    assert value(text, 'topdog_autopilot_runs{status="running"}') == 1
    assert value(text, 'topdog_autopilot_runs{status="failed"}') == 1
    assert value(text, 'topdog_autopilot_runs{status="completed"}') == 0
    assert value(text, 'topdog_check_runs{kind="test",status="passed"}') == 1
    assert value(text, 'topdog_task_queue_depth{queue="default"}') == 2
    assert 300 <= value(text, 'topdog_task_queue_oldest_age_seconds{queue="default"}') < 400


def test_a_failing_collector_is_logged_and_left_out(settings, monkeypatch, caplog, db):
    def broken():
        raise RuntimeError("database away")

    monkeypatch.setattr(
        metrics.DatabaseCollector, "sources", (broken, *metrics.DatabaseCollector.sources[1:])
    )
    text = scrape(settings)
    assert "topdog_workflow_transitions_total" not in text
    assert "topdog_autopilot_runs" in text
    assert "metrics collector" in caplog.text and "database away" in caplog.text


def offline_call(**metadata):
    return complete_with_retries(
        provider_for("offline"),
        ChatRequest(
            model="topdog-offline-1",
            messages=(ChatMessage("user", "Add a dark mode"),),
            metadata={"phase": "DISCOVERY", "workflow_id": "wf-1", **metadata},
        ),
        deadline_seconds=10,
    )


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_provider_calls_are_measured(settings, db):
    labels = {"provider": "offline", "model": "topdog-offline-1"}
    calls = sample("topdog_provider_calls_total", **labels, outcome="ok")
    tokens_in = sample("topdog_provider_input_tokens_total", **labels)
    tokens_out = sample("topdog_provider_output_tokens_total", **labels)
    latency = sample("topdog_provider_call_duration_seconds_count", **labels)
    completion = offline_call()
    assert sample("topdog_provider_calls_total", **labels, outcome="ok") == calls + 1
    assert sample("topdog_provider_call_duration_seconds_count", **labels) == latency + 1
    assert sample("topdog_provider_input_tokens_total", **labels) == (
        tokens_in + completion.usage.input_tokens
    )
    assert sample("topdog_provider_output_tokens_total", **labels) == (
        tokens_out + completion.usage.output_tokens
    )
    errors = sample("topdog_provider_errors_total", **labels, kind="fatal")
    with pytest.raises(ProviderError):
        offline_call(phase="NO_SUCH_PHASE")
    assert sample("topdog_provider_errors_total", **labels, kind="fatal") == errors + 1
    assert 'topdog_provider_calls_total{model="topdog-offline-1",outcome="error"' in scrape(
        settings
    )


def test_the_cost_of_a_priced_model_is_counted(settings):
    from topdog.observability.provider_calls import ProviderCall
    from topdog.observability.tracing import ProviderSpan

    settings.TOPDOG_PRICES = {"gpt-test": [2.0, 10.0]}
    request = ChatRequest(model="gpt-test", messages=())
    before = sample("topdog_provider_cost_usd_total", provider="openai", model="gpt-test")
    usage = SimpleNamespace(input_tokens=1_000_000, output_tokens=100_000)
    completion = SimpleNamespace(
        provider="openai", model="gpt-test", usage=usage, finish_reason="stop", attempts=1
    )
    ProviderCall("openai", request, ProviderSpan()).completed(completion)
    after = sample("topdog_provider_cost_usd_total", provider="openai", model="gpt-test")
    assert after == pytest.approx(before + 3.0)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_open_websockets_are_a_gauge(user):
    from channels.db import database_sync_to_async

    channel_layers.backends.clear()
    token = await database_sync_to_async(api_token_for)(user)
    before = sample("topdog_websockets_open")
    communicator = WebsocketCommunicator(
        application, "/ws/dashboard/", headers=[(b"authorization", f"Token {token}".encode())]
    )
    connected, _ = await communicator.connect()
    assert connected
    await communicator.receive_json_from()  # the snapshot
    assert sample("topdog_websockets_open") == before + 1
    await communicator.disconnect()
    assert sample("topdog_websockets_open") == before
    # A refused handshake never counts.
    refused = WebsocketCommunicator(application, "/ws/dashboard/")
    await refused.connect()
    await refused.disconnect()
    assert sample("topdog_websockets_open") == before
    channel_layers.backends.clear()


# --- task workers ---------------------------------------------------------------------


def test_a_worker_serves_its_metrics_on_the_first_free_port_of_its_range(settings, monkeypatch):
    monkeypatch.setattr(metrics, "_worker_port", {})
    settings.TOPDOG_WORKER_METRICS_ADDR = "127.0.0.1"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        settings.TOPDOG_WORKER_METRICS_PORT = f"{busy}-{busy + 8}"  # the first one is taken
        task_result = SimpleNamespace(
            id="t1",
            task=SimpleNamespace(module_path="ai_orchestration.autopilot.autopilot_run_task"),
            args=["7b0c7d5e-1d7e-4f4e-9a3c-4d2b1f1a2b3c"],
            kwargs={"request_id": "req-1"},
        )
        tasks.on_task_started(sender=None, task_result=task_result)
        try:
            port = metrics.worker_metrics_serve()
            assert port is not None and busy < port <= busy + 8
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                body = r.read().decode()
            assert "topdog_provider_call_duration_seconds" in body
            assert "topdog_workflow_transitions" not in body  # the database's are the web's
            bound = log_context()
            assert bound["run_id"] == "7b0c7d5e-1d7e-4f4e-9a3c-4d2b1f1a2b3c"
            assert bound["request_id"] == "req-1"
            assert bound["task"].endswith("autopilot_run_task")
        finally:
            tasks.on_task_finished(sender=None, task_result=task_result)
    assert "run_id" not in log_context()


def test_no_worker_port_unless_asked(settings, monkeypatch):
    monkeypatch.setattr(metrics, "_worker_port", {})
    settings.TOPDOG_WORKER_METRICS_PORT = ""
    assert metrics.worker_metrics_serve() is None
    assert metrics.worker_ports("9101-9103") == [9101, 9102, 9103]
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured):
        metrics.worker_ports("ninety")
