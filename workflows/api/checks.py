"""Sandboxed checks of a workflow's change set: list, run, read one, cancel."""

import uuid

from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from workflows import selectors
from workflows.api.base import ApiView, validated_data
from workflows.api.pagination import PAGE_PARAMETERS, PREVIEW_CHARS, page_of, paginated, tail
from workflows.api.schema import errors
from workflows.check_runs import check_run_cancel, check_run_request
from workflows.errors import WorkflowNotFound
from workflows.models import CheckRun
from workflows.serializer_fields import ChoiceField
from workflows.services import Actor


class CheckRunOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    workflow_id = serializers.UUIDField()
    phase_result_id = serializers.IntegerField(
        allow_null=True, help_text="The IMPLEMENTATION result whose change set was checked."
    )
    attempt = serializers.IntegerField()
    kind = ChoiceField(choices=CheckRun.Kind.choices)
    backend = serializers.CharField()
    isolated = serializers.BooleanField()
    command = serializers.CharField()
    status = ChoiceField(choices=CheckRun.Status.choices)
    reason = serializers.CharField()
    exit_code = serializers.IntegerField(allow_null=True)
    tests_run = serializers.IntegerField(allow_null=True)
    tests_failed = serializers.IntegerField(allow_null=True)
    tests_errors = serializers.IntegerField(allow_null=True)
    tests_skipped = serializers.IntegerField(allow_null=True)
    failures = serializers.JSONField()
    details = serializers.JSONField()
    duration_ms = serializers.IntegerField(allow_null=True)
    output = serializers.CharField(help_text="Tail of the output, secrets scrubbed.")
    output_truncated = serializers.BooleanField()
    log_sha256 = serializers.CharField()
    junit_sha256 = serializers.CharField()
    requested_by = serializers.CharField()
    request_id = serializers.CharField(help_text="X-Request-ID of the request that started it.")
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class CheckRunSummarySerializer(CheckRunOutputSerializer):
    """A check run in a list: `output` is its last PREVIEW_CHARS characters."""

    output = serializers.SerializerMethodField(
        help_text=f"The last {PREVIEW_CHARS} characters of the stored output tail."
    )
    truncated = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()

    def get_output(self, run: CheckRun) -> str:
        return tail(run.output)[0]

    def get_truncated(self, run: CheckRun) -> bool:
        return tail(run.output)[1]

    def get_url(self, run: CheckRun) -> str:
        return reverse("api:workflow-check-detail", args=[run.workflow_id, run.pk])


class CheckRunDetailSerializer(CheckRunOutputSerializer):
    diff = serializers.CharField(help_text="The change set as a unified diff against the base.")


class CheckRunInputSerializer(serializers.Serializer):
    kind = ChoiceField(
        choices=[CheckRun.Kind.TEST], default=CheckRun.Kind.TEST, help_text="Only test runs."
    )


class WorkflowCheckListApi(ApiView):
    @extend_schema(
        operation_id="workflows_checks_list",
        parameters=PAGE_PARAMETERS,
        responses={200: page_of(CheckRunSummarySerializer), **errors(404)},
    )
    def get(self, request: Request, workflow_id: str) -> Response:
        workflow = selectors.workflow_get_for_user(user=request.user, workflow_id=workflow_id)
        runs = selectors.workflow_check_runs(workflow=workflow)
        return paginated(
            request,
            self,
            runs,
            ("-created_at", "-id"),
            lambda page: CheckRunSummarySerializer(page, many=True).data,
        )

    @extend_schema(
        request=CheckRunInputSerializer,
        responses={202: CheckRunOutputSerializer, **errors(400, 403, 404, 409)},
    )
    def post(self, request: Request, workflow_id: str) -> Response:
        data = validated_data(CheckRunInputSerializer, request)
        run = check_run_request(
            workflow_id=workflow_id, actor=Actor.of(request.user), kind=data["kind"]
        )
        return Response(CheckRunOutputSerializer(run).data, status=status.HTTP_202_ACCEPTED)


class WorkflowCheckDetailApi(ApiView):
    @extend_schema(responses={200: CheckRunDetailSerializer, **errors(404)})
    def get(self, request: Request, workflow_id: str, check_id: str) -> Response:
        workflow = selectors.workflow_get_for_user(user=request.user, workflow_id=workflow_id)
        run = selectors.workflow_check_runs(workflow=workflow).filter(pk=_uuid(check_id)).first()
        if run is None:
            raise WorkflowNotFound("check run not found")
        return Response(CheckRunDetailSerializer(run).data)


class WorkflowCheckCancelApi(ApiView):
    @extend_schema(request=None, responses={200: CheckRunOutputSerializer, **errors(403, 404, 409)})
    def post(self, request: Request, workflow_id: str, check_id: str) -> Response:
        workflow = selectors.workflow_get_for_user(user=request.user, workflow_id=workflow_id)
        if not selectors.workflow_check_runs(workflow=workflow).filter(pk=_uuid(check_id)).exists():
            raise WorkflowNotFound("check run not found")
        run = check_run_cancel(
            workflow_id=workflow.id, check_id=check_id, actor=Actor.of(request.user)
        )
        return Response(CheckRunOutputSerializer(run).data)


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise WorkflowNotFound("check run not found") from None
