"""GET /api/health/: whether the database, channel layer and task backend answer."""

import asyncio
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django_tasks import task_backends
from django_tasks_db.backend import DatabaseBackend
from django_tasks_db.models import DBTaskResult
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from workflows.api.base import ApiView
from workflows.serializer_fields import ChoiceField
from workflows.verification import sandbox_health


def _check(fn) -> dict:
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
    layer = get_channel_layer()

    async def roundtrip() -> None:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "health.ping"})
        await asyncio.wait_for(layer.receive(channel), timeout=2)

    async_to_sync(roundtrip)()
    return {"backend": type(layer).__name__}


def _task_backend() -> dict:
    backend = task_backends["default"]
    detail = {"backend": type(backend).__name__}
    if isinstance(backend, DatabaseBackend):
        detail["queued"] = DBTaskResult.objects.filter(status="READY").count()
    return detail


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


class HealthSerializer(serializers.Serializer):
    """Each dependency's check (with details such as `vendor` or `backend`)."""

    status = ChoiceField(choices=["ok", "degraded"])
    database = HealthCheckSerializer()
    channel_layer = HealthCheckSerializer()
    task_backend = HealthCheckSerializer()
    sandbox = HealthCheckSerializer()
    llm_providers = serializers.DictField(child=serializers.BooleanField())


class HealthApi(ApiView):
    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        responses={
            200: HealthSerializer,
            503: OpenApiResponse(HealthSerializer, description="A dependency is down."),
        }
    )
    def get(self, request: Request) -> Response:
        checks = {
            "database": _check(_database),
            "channel_layer": _check(_channel_layer),
            "task_backend": _check(_task_backend),
            "sandbox": _check(sandbox_health),
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
