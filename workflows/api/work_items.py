"""A workflow's work items: the plan as the IDE drives it, item by item, in parallel.

`GET .../work-items/` lists the current plan's items (with `?superseded=true`, earlier
plans' too); `POST .../work-items/<key>/complete/` submits one item's files. The item's
prompt is the AI layer's (`ai_orchestration/api.py`)."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from workflows import selectors
from workflows.api.base import ApiView, NextActionField, validated_data
from workflows.api.pagination import PAGE_PARAMETERS, head, page_of, paginated
from workflows.api.schema import errors
from workflows.models import WorkItem
from workflows.serializer_fields import ChoiceField
from workflows.services import Actor, work_item_complete


class WorkItemOutputSerializer(serializers.Serializer):
    key = serializers.CharField()
    title = serializers.CharField()
    description = serializers.CharField()
    files = serializers.ListField(child=serializers.CharField())
    depends_on = serializers.ListField(child=serializers.CharField())
    depth = serializers.IntegerField()
    status = ChoiceField(choices=WorkItem.Status.choices)
    superseded = serializers.BooleanField()
    plan_id = serializers.IntegerField(help_text="The PLANNING phase result it belongs to.")
    attempt = serializers.IntegerField()
    executions = serializers.IntegerField()
    feedback = serializers.CharField()
    error = serializers.CharField()
    result_files = serializers.SerializerMethodField(
        help_text="The item's files; each content a preview (`truncated` when cut)."
    )
    result_sha256 = serializers.CharField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(max_digits=12, decimal_places=6)
    worker_id = serializers.CharField()
    lease_expires_at = serializers.DateTimeField(allow_null=True)
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)

    def get_result_files(self, item: WorkItem) -> list[dict]:
        shown = []
        for change in item.result_files:
            content, cut = head(change.get("content"))
            shown.append({**change, "content": content, "truncated": cut})
        return shown


class WorkItemListApi(ApiView):
    @extend_schema(
        parameters=[
            *PAGE_PARAMETERS,
            OpenApiParameter("superseded", bool, description="Include earlier plans' items."),
        ],
        responses={200: page_of(WorkItemOutputSerializer), **errors(400, 404)},
    )
    def get(self, request: Request, workflow_id: str) -> Response:
        workflow = selectors.workflow_get_for_user(user=request.user, workflow_id=workflow_id)
        items = WorkItem.objects.filter(workflow=workflow)
        if request.query_params.get("superseded") not in ("true", "1"):
            items = items.filter(superseded=False)
        return paginated(
            request,
            self,
            items,
            ("id",),
            lambda page: WorkItemOutputSerializer(page, many=True).data,
        )


class WorkItemCompleteApi(ApiView):
    class WorkItemCompleteInputSerializer(serializers.Serializer):
        ai_response = serializers.CharField(
            required=False, default="", allow_blank=True, max_length=1_000_000
        )
        files = serializers.JSONField(
            help_text="The item's change set: [{path, action, content}], only its own files."
        )
        commit_message = serializers.CharField(
            required=False, default="", allow_blank=True, max_length=5000
        )

    class WorkItemCompleteOutputSerializer(serializers.Serializer):
        # Renders {"item", "ready", "workflow" (as it now stands), "phase_completed"}.
        item = WorkItemOutputSerializer()
        ready = serializers.ListField(
            child=serializers.CharField(), help_text="Items this one made ready."
        )
        state = serializers.CharField(
            source="workflow.state", help_text="The workflow's state after it."
        )
        phase_completed = serializers.BooleanField(
            help_text="This was the last item: IMPLEMENTATION completed with all items."
        )
        next_action = NextActionField(source="workflow")

    @extend_schema(
        request=WorkItemCompleteInputSerializer,
        responses={200: WorkItemCompleteOutputSerializer, **errors(400, 403, 404, 409)},
    )
    def post(self, request: Request, workflow_id: str, key: str) -> Response:
        data = validated_data(self.WorkItemCompleteInputSerializer, request)
        done = work_item_complete(
            workflow_id=workflow_id,
            key=key,
            ai_response=data["ai_response"],
            files=data["files"],
            message=data["commit_message"],
            actor=Actor.of(request.user),
        )
        workflow = done.phase.workflow if done.phase else done.item.workflow
        workflow.refresh_from_db()
        done_now = {
            "item": done.item,
            "ready": done.promoted,
            "workflow": workflow,
            "phase_completed": done.phase is not None,
        }
        return Response(self.WorkItemCompleteOutputSerializer(done_now).data)
