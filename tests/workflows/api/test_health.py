"""GET /api/health/: task workers, watchdogs, the queue, registered checks, and when it
answers 503 "degraded"."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django_tasks_db.models import DBTaskResult
from drf_spectacular.generators import SchemaGenerator
from rest_framework import serializers

from workflows.api.health import HealthCheckSerializer
from workflows.health_checks import health_check_register, health_check_unregister
from workflows.models import WorkerBeat

pytestmark = pytest.mark.django_db

LEASE = 30


@pytest.fixture(autouse=True)
def _lease(settings):
    settings.TOPDOG_AUTOPILOT_LEASE_SECONDS = LEASE


def _beat(worker_id, *, seen_ago, kind="worker", stopped=False):
    now = timezone.now()
    return WorkerBeat.objects.create(
        worker_id=worker_id,
        kind=kind,
        host="node-1",
        pid=4242,
        started_at=now - timedelta(hours=1),
        last_seen_at=now - timedelta(seconds=seen_ago),
        stopped_at=now if stopped else None,
    )


def _queued(*, ago):
    row = DBTaskResult.objects.create(
        args_kwargs={"args": [], "kwargs": {}},
        task_path="tests.nothing",
        backend_name="default",
        run_after=timezone.now() - timedelta(seconds=ago),
    )
    DBTaskResult.objects.filter(pk=row.pk).update(
        enqueued_at=timezone.now() - timedelta(seconds=ago)
    )


def test_health_reports_live_workers_the_watchdog_and_the_queue(client):
    _beat("worker-a", seen_ago=2)
    _beat("worker-gone", seen_ago=LEASE + 10)  # not alive any more
    _beat("watchdog-a", seen_ago=1, kind="watchdog")
    _queued(ago=12)

    response = client.get("/api/health/")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    workers = body["workers"]
    assert workers["ok"] is True and workers["alive"] == 1
    (worker,) = workers["workers"]
    assert (worker["worker_id"], worker["host"], worker["pid"]) == ("worker-a", "node-1", 4242)
    assert 1 <= worker["last_seen_seconds_ago"] < 10
    assert worker["last_seen_at"] and worker["started_at"]
    assert body["watchdog"]["alive"] == 1 and body["watchdog"]["last_seen_seconds_ago"] < 10
    queue = body["task_backend"]
    assert (queue["queued"], queue["running"]) == (1, 0)
    assert 11 <= queue["oldest_queued_age_seconds"] < 30


def test_health_with_nobody_and_nothing_queued_is_ok(client):
    body = client.get("/api/health/").json()

    assert body["status"] == "ok"
    assert body["workers"] == {**body["workers"], "ok": True, "alive": 0, "workers": []}
    assert body["workers"]["last_seen_at"] is None
    assert body["watchdog"]["alive"] == 0 and body["watchdog"]["last_seen_at"] is None


@pytest.mark.parametrize(
    ("beats", "status"),
    [
        ([], 503),  # never a worker
        ([("dead", 2 * LEASE + 10, False)], 503),  # its last worker died long ago
        ([("stopped", 2 * LEASE + 10, True)], 503),
        ([("live", 1, False)], 200),  # busy, but alive
        ([("late", LEASE + 10, False)], 200),  # not alive, but seen within two leases
    ],
)
def test_queued_work_without_a_live_worker_for_two_leases_is_degraded(client, beats, status):
    for worker_id, ago, stopped in beats:
        _beat(worker_id, seen_ago=ago, stopped=stopped)
    _queued(ago=2 * LEASE + 5)

    response = client.get("/api/health/")

    assert response.status_code == status
    body = response.json()
    assert body["status"] == ("ok" if status == 200 else "degraded")
    assert body["workers"]["ok"] is (status == 200)
    if status == 503:
        assert "task_worker" in body["workers"]["reason"]


def test_fresh_queued_work_without_a_worker_is_not_yet_degraded(client):
    _queued(ago=LEASE)

    assert client.get("/api/health/").status_code == 200


class _ProbeSerializer(HealthCheckSerializer):
    depth = serializers.IntegerField(required=False)


@pytest.fixture
def probe():
    answers = {"depth": 3}
    health_check_register(name="probe", run=lambda: dict(answers), serializer=_ProbeSerializer)
    yield answers
    health_check_unregister("probe")


def test_a_registered_check_is_reported_and_can_degrade_health(client, probe):
    body = client.get("/api/health/").json()
    assert body["probe"] == {**body["probe"], "ok": True, "depth": 3}

    probe["ok"] = False
    response = client.get("/api/health/")
    assert response.status_code == 503
    assert response.json()["probe"]["ok"] is False


def test_a_registered_check_that_raises_is_reported_not_raised(client):
    def broken():
        raise RuntimeError("boom")

    health_check_register(name="broken", run=broken, serializer=HealthCheckSerializer)
    try:
        response = client.get("/api/health/")
    finally:
        health_check_unregister("broken")

    assert response.status_code == 503
    assert response.json()["broken"] == {"ok": False, "error": "RuntimeError"}


def test_the_document_describes_workers_the_watchdog_and_registered_checks(probe):
    document = SchemaGenerator().get_schema(request=None, public=True)
    schemas = document["components"]["schemas"]

    health = schemas["Health"]["properties"]
    assert {"workers", "watchdog", "task_backend", "probe"} <= set(health)
    workers = schemas["WorkersHealth"]["properties"]
    assert {"alive", "last_seen_at", "workers", "reason"} <= set(workers)
    assert "oldest_queued_age_seconds" in schemas["TaskBackendHealth"]["properties"]
    assert "depth" in schemas[health["probe"]["$ref"].rsplit("/", 1)[1]]["properties"]
