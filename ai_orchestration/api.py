"""REST endpoints of the AI layer: the IDE's get-ai-prompt, a workflow's runs and usage."""

from decimal import Decimal

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from ai_orchestration.autopilot.frames import run_summary
from ai_orchestration.autopilot.selectors import (
    run_get,
    run_get_for_workflow,
    run_list_for_workflow,
)
from ai_orchestration.autopilot.serializers import RunOutputSerializer
from ai_orchestration.autopilot.services import autopilot_cancel, autopilot_start
from ai_orchestration.context import (
    prompt_request_next,
    work_item_prompt_build,
)
from ai_orchestration.models import AIRun
from workflows import selectors
from workflows.api.base import ApiView
from workflows.api.pagination import PAGE_PARAMETERS, page_of, paginated
from workflows.api.schema import errors
from workflows.errors import TransitionConflict, WorkflowNotFound
from workflows.models import WorkItem
from workflows.selectors import workflow_usage
from workflows.serializer_fields import ChoiceField, ModelNameField
from workflows.services import Actor, available_transitions
from workflows.states import State
from workflows.work_items import work_items_current


class ChatMessageSerializer(serializers.Serializer):
    role = ChoiceField(choices=["system", "user", "assistant"])
    content = serializers.CharField(allow_blank=True)


class GetAiPromptApi(ApiView):
    class GetAiPromptOutputSerializer(serializers.Serializer):
        model = serializers.CharField(
            help_text='The model id the workflow asked for ("gpt-4" stays "gpt-4"; a seed '
            "name is its table's id; provider:model is the model part), or the role's."
        )
        messages = ChatMessageSerializer(many=True)
        temperature = serializers.FloatField(
            help_text="The role's setting in the project's role_models, else "
            "TOPDOG_DEFAULT_TEMPERATURE (0.2)."
        )
        max_tokens = serializers.IntegerField(
            help_text="The role's setting, else TOPDOG_DEFAULT_MAX_TOKENS (4096); at most "
            "half the model's context window."
        )

    @extend_schema(
        request=None, responses={200: GetAiPromptOutputSerializer, **errors(404, 409, 502)}
    )
    def post(self, request: Request, workflow_id: str) -> Response:
        workflow = selectors.workflow_get_for_user(user=request.user, workflow_id=workflow_id)
        prompt = prompt_request_next(workflow=workflow)
        return Response(self.GetAiPromptOutputSerializer(prompt.as_payload()).data)


class WorkItemPromptApi(ApiView):
    """The chat request for one work item (as get-ai-prompt for the whole phase); 409
    unless the item is ready (every item it depends on done)."""

    @extend_schema(
        request=None,
        responses={200: GetAiPromptApi.GetAiPromptOutputSerializer, **errors(403, 404, 409)},
    )
    def post(self, request: Request, workflow_id: str, key: str) -> Response:
        workflow = selectors.workflow_get_for_user(user=request.user, workflow_id=workflow_id)
        item = work_items_current(workflow_id=workflow.id).filter(key=key).first()
        if item is None:
            raise WorkflowNotFound(f"work item {key!r} is not in the workflow's current plan")
        if workflow.state != State.IMPLEMENTATION or item.status != WorkItem.Status.READY:
            raise TransitionConflict(
                f"work item {key} is {item.status} and the workflow in {workflow.state}; "
                "only a ready item of a workflow in IMPLEMENTATION has a prompt",
                current_state=workflow.state,
                allowed=available_transitions(workflow, workflow.member_role),
            )
        prompt = work_item_prompt_build(workflow=workflow, item=item)
        return Response(GetAiPromptApi.GetAiPromptOutputSerializer(prompt.as_payload()).data)


class RunStartSerializer(serializers.Serializer):
    scope = ChoiceField(
        choices=AIRun.Scope.choices,
        default=AIRun.Scope.WORKFLOW,
        help_text="phase: only the current phase; workflow: every phase that remains.",
    )
    model = ModelNameField(
        required=False,
        help_text="Use this model for every role in this run: a seed name, a model id or "
        "provider:model.",
    )


class WorkflowRunListApi(ApiView):
    @extend_schema(
        operation_id="workflows_runs_list",
        parameters=PAGE_PARAMETERS,
        responses={200: page_of(RunOutputSerializer), **errors(404)},
    )
    def get(self, request: Request, workflow_id: str) -> Response:
        workflow = selectors.workflow_get_for_user(user=request.user, workflow_id=workflow_id)
        return paginated(
            request,
            self,
            run_list_for_workflow(workflow=workflow),
            ("-created_at", "-id"),
            lambda runs: [run_summary(run) for run in runs],
        )

    @extend_schema(
        request=RunStartSerializer,
        responses={202: RunOutputSerializer, **errors(400, 403, 404, 409)},
    )
    def post(self, request: Request, workflow_id: str) -> Response:
        serializer = RunStartSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        run = autopilot_start(
            workflow_id=workflow_id,
            actor=Actor.of(request.user),
            scope=serializer.validated_data["scope"],
            model_name=serializer.validated_data.get("model", ""),
        )
        run = run_get(run_id=run.id)
        return Response(run_summary(run), status=status.HTTP_202_ACCEPTED)


class WorkflowRunCancelApi(ApiView):
    @extend_schema(request=None, responses={200: RunOutputSerializer, **errors(403, 404, 409)})
    def post(self, request: Request, workflow_id: str, run_id: str) -> Response:
        workflow = selectors.workflow_get_for_user(user=request.user, workflow_id=workflow_id)
        run = run_get_for_workflow(workflow=workflow, run_id=run_id)
        run = autopilot_cancel(run_id=run.id, actor=Actor.of(request.user))
        run = run_get(run_id=run.id)
        return Response(run_summary(run))


class UsageTotalsSerializer(serializers.Serializer):
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = serializers.CharField(help_text="USD, as a decimal string.")


class UsageBucketSerializer(UsageTotalsSerializer):
    calls = serializers.IntegerField()


class UsageSerializer(serializers.Serializer):
    total = UsageTotalsSerializer()
    by_role = serializers.DictField(child=UsageBucketSerializer())
    by_phase = serializers.DictField(child=UsageBucketSerializer())


class WorkflowUsageApi(ApiView):
    @extend_schema(responses={200: UsageSerializer, **errors(404)})
    def get(self, request: Request, workflow_id: str) -> Response:
        workflow = selectors.workflow_get_for_user(user=request.user, workflow_id=workflow_id)
        usage = workflow_usage(workflow=workflow)
        return Response(_stringify_money(usage))


def _stringify_money(value: object) -> object:
    if isinstance(value, dict):
        return {k: _stringify_money(v) for k, v in value.items()}
    if isinstance(value, Decimal):
        return str(value)
    return value
