"""REST endpoints of the autopilot: a workflow's runs and its usage."""

import uuid
from decimal import Decimal

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from ai_orchestration.autopilot import autopilot_cancel, autopilot_start, run_summary
from ai_orchestration.models import AIRun
from workflows import selectors
from workflows.api.base import ApiView
from workflows.errors import WorkflowNotFound
from workflows.selectors import workflow_usage
from workflows.services import Actor


class RunOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    workflow_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=AIRun.Status.choices)
    scope = serializers.ChoiceField(choices=AIRun.Scope.choices)
    phase = serializers.CharField()
    provider = serializers.CharField()
    model = serializers.CharField()
    phases_completed = serializers.IntegerField()
    attempts = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = serializers.CharField()
    error = serializers.CharField()
    stop_reason = serializers.CharField()


class RunStartSerializer(serializers.Serializer):
    scope = serializers.ChoiceField(
        choices=AIRun.Scope.choices,
        default=AIRun.Scope.WORKFLOW,
        help_text="phase: only the current phase; workflow: every phase that remains.",
    )
    model = serializers.ChoiceField(
        choices=list(settings.TOPDOG_MODELS),
        required=False,
        help_text="Use this seed model for every role in this run.",
    )


class WorkflowRunListApi(ApiView):
    @extend_schema(responses=RunOutputSerializer(many=True))
    def get(self, request: Request, workflow_id: str) -> Response:
        workflow = selectors.workflow_get_for_user(user=request.user, workflow_id=workflow_id)
        runs = AIRun.objects.filter(workflow=workflow).order_by("-created_at")[:100]
        return Response({"results": [run_summary(run) for run in runs]})

    @extend_schema(request=RunStartSerializer, responses={202: RunOutputSerializer})
    def post(self, request: Request, workflow_id: str) -> Response:
        serializer = RunStartSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        run = autopilot_start(
            workflow_id=workflow_id,
            actor=Actor.of(request.user),
            scope=serializer.validated_data["scope"],
            model_name=serializer.validated_data.get("model", ""),
        )
        run.refresh_from_db()
        return Response(run_summary(run), status=status.HTTP_202_ACCEPTED)


class WorkflowRunCancelApi(ApiView):
    @extend_schema(request=None, responses=RunOutputSerializer)
    def post(self, request: Request, workflow_id: str, run_id: str) -> Response:
        workflow = selectors.workflow_get_for_user(user=request.user, workflow_id=workflow_id)
        if not AIRun.objects.filter(pk=_uuid_or_404(run_id), workflow=workflow).exists():
            raise WorkflowNotFound("run not found")
        run = autopilot_cancel(run_id=run_id, actor=Actor.of(request.user))
        run.refresh_from_db()
        return Response(run_summary(run))


class WorkflowUsageApi(ApiView):
    @extend_schema(responses=dict)
    def get(self, request: Request, workflow_id: str) -> Response:
        workflow = selectors.workflow_get_for_user(user=request.user, workflow_id=workflow_id)
        usage = workflow_usage(workflow=workflow)
        return Response(_stringify_money(usage))


def _uuid_or_404(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise WorkflowNotFound("run not found") from exc


def _stringify_money(value: object) -> object:
    if isinstance(value, dict):
        return {k: _stringify_money(v) for k, v in value.items()}
    if isinstance(value, Decimal):
        return str(value)
    return value
