"""GET /api/health/: the dependencies, the task workers and watchdogs, and the queue.

503 "degraded" when a check fails: the database, the channel layer or the task backend
does not answer, a configured sandbox cannot run, queued work has had no live task
worker for longer than two lease periods, or a check a layer above registered
(workflows/health_checks.py; the autopilot's) says so.
"""

import time
from collections.abc import Callable
from datetime import datetime
from functools import partial

from django.conf import settings
from django.db import connection
from django.utils import timezone
from django_tasks import task_backends
from django_tasks_db.backend import DatabaseBackend
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from workflows.api.base import ApiView
from workflows.broadcast import channel_layer_roundtrip
from workflows.health_checks import health_checks
from workflows.models import WorkerBeat
from workflows.serializer_fields import ChoiceField
from workflows.verification import sandbox_health
from workflows.workers import (
    lease_period,
    task_queue_summary,
    worker_beats_alive,
    worker_last_seen,
)


def _check(fn: Callable[[], dict | None]) -> dict:
    started = time.perf_counter()
    try:
        detail = fn()
    except Exception as exc:  # reported, not raised: health must answer
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2), **(detail or {})}


def _database() -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"vendor": connection.vendor}


def _channel_layer() -> dict:
    return {"backend": channel_layer_roundtrip(timeout=2.0)}


def _task_backend(now: datetime) -> dict:
    backend = task_backends["default"]
    detail = {"backend": type(backend).__name__}
    if isinstance(backend, DatabaseBackend):
        queue = task_queue_summary(now=now)
        detail.update(
            queued=queue.queued,
            oldest_queued_age_seconds=queue.oldest_queued_age_seconds,
            running=queue.running,
        )
    return detail


def _ago(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else round(max(0.0, (now - then).total_seconds()), 3)


def _workers(now: datetime, oldest_queued_age: float) -> dict:
    """Live task workers; not ok when queued work has waited longer than two lease
    periods and no worker has been seen for as long."""
    alive = worker_beats_alive(kind=WorkerBeat.Kind.WORKER, now=now)
    last_seen = worker_last_seen(kind=WorkerBeat.Kind.WORKER)
    unseen_for = _ago(now, last_seen)
    limit = 2 * lease_period().total_seconds()
    detail = {
        "alive": len(alive),
        "last_seen_at": last_seen,
        "last_seen_seconds_ago": unseen_for,
        "workers": [
            {
                "worker_id": beat.worker_id,
                "host": beat.host,
                "pid": beat.pid,
                "started_at": beat.started_at,
                "last_seen_at": beat.last_seen_at,
                "last_seen_seconds_ago": _ago(now, beat.last_seen_at),
            }
            for beat in alive
        ],
    }
    if oldest_queued_age > limit and (unseen_for is None or unseen_for > limit):
        detail["ok"] = False
        detail["reason"] = (
            f"queued work has waited {oldest_queued_age:.0f} s and no task worker has been "
            f"seen for {'ever' if unseen_for is None else f'{unseen_for:.0f} s'} "
            f"(limit {limit:.0f} s): start `manage.py task_worker`"
        )
    return detail


def _watchdog(now: datetime) -> dict:
    last_seen = worker_last_seen(kind=WorkerBeat.Kind.WATCHDOG)
    return {
        "alive": len(worker_beats_alive(kind=WorkerBeat.Kind.WATCHDOG, now=now)),
        "last_seen_at": last_seen,
        "last_seen_seconds_ago": _ago(now, last_seen),
    }


def providers_configured() -> dict[str, bool]:
    return {
        "offline": True,
        "openai": bool(settings.OPENAI_API_KEY),
        "anthropic": bool(settings.ANTHROPIC_API_KEY),
        "local": bool(settings.LOCAL_LLM_BASE_URL),
    }


class HealthCheckSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    ms = serializers.FloatField(required=False)
    error = serializers.CharField(required=False, help_text="The exception's class name.")


class TaskBackendHealthSerializer(HealthCheckSerializer):
    backend = serializers.CharField(required=False)
    queued = serializers.IntegerField(required=False, help_text="Tasks ready to run now.")
    oldest_queued_age_seconds = serializers.FloatField(
        required=False, help_text="How long the oldest of them has waited (0 when none)."
    )
    running = serializers.IntegerField(required=False)


class WorkerSerializer(serializers.Serializer):
    worker_id = serializers.CharField(help_text="The id its task rows carry (worker_ids).")
    host = serializers.CharField()
    pid = serializers.IntegerField()
    started_at = serializers.DateTimeField()
    last_seen_at = serializers.DateTimeField()
    last_seen_seconds_ago = serializers.FloatField()


class WorkersHealthSerializer(HealthCheckSerializer):
    """Task workers seen within one lease period (TOPDOG_AUTOPILOT_LEASE_SECONDS)."""

    alive = serializers.IntegerField(required=False)
    last_seen_at = serializers.DateTimeField(
        required=False, allow_null=True, help_text="Any worker's latest beat; null: never."
    )
    last_seen_seconds_ago = serializers.FloatField(required=False, allow_null=True)
    workers = WorkerSerializer(many=True, required=False)
    reason = serializers.CharField(
        required=False, help_text="Why queued work is stuck (when not ok)."
    )


class WatchdogHealthSerializer(HealthCheckSerializer):
    """Watchdogs (`autopilot_watchdog`, serve's) seen within one lease period."""

    alive = serializers.IntegerField(required=False)
    last_seen_at = serializers.DateTimeField(required=False, allow_null=True)
    last_seen_seconds_ago = serializers.FloatField(required=False, allow_null=True)


class HealthSerializer(serializers.Serializer):
    """Each dependency's check (with details such as `vendor` or `backend`), plus the
    checks registered by the layers above the core (the autopilot's)."""

    status = ChoiceField(choices=["ok", "degraded"])
    database = HealthCheckSerializer()
    channel_layer = HealthCheckSerializer()
    task_backend = TaskBackendHealthSerializer()
    workers = WorkersHealthSerializer()
    watchdog = WatchdogHealthSerializer()
    sandbox = HealthCheckSerializer()
    llm_providers = serializers.DictField(child=serializers.BooleanField())

    def get_fields(self) -> dict:
        fields = super().get_fields()
        for check in health_checks():
            fields[check.name] = check.serializer()
        return fields


class HealthApi(ApiView):
    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        responses={
            200: HealthSerializer,
            503: OpenApiResponse(
                HealthSerializer,
                description="Degraded: a dependency is down, or queued work has no live worker.",
            ),
        }
    )
    def get(self, request: Request) -> Response:
        now = timezone.now()
        queue = _check(partial(_task_backend, now))
        checks = {
            "database": _check(_database),
            "channel_layer": _check(_channel_layer),
            "task_backend": queue,
            "workers": _check(
                partial(_workers, now, queue.get("oldest_queued_age_seconds") or 0.0)
            ),
            "watchdog": _check(partial(_watchdog, now)),
            "sandbox": _check(sandbox_health),
            **{check.name: _check(check.run) for check in health_checks()},
        }
        # A sandbox that is off is a choice; a configured one that cannot run is not.
        checks["sandbox"]["ok"] = checks["sandbox"]["ok"] and checks["sandbox"].pop("healthy")
        healthy = all(check["ok"] for check in checks.values())
        body = {
            "status": "ok" if healthy else "degraded",
            **checks,
            "llm_providers": providers_configured(),
        }
        return Response(body, status=200 if healthy else 503)
