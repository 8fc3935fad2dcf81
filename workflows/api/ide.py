"""The IDE contract: initialize, complete-phase, status (get-ai-prompt: ai_orchestration.api)."""

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from workflows import selectors
from workflows.api.base import ApiView, NextActionField, validated_data, workflow_open
from workflows.api.schema import PhaseResultField, errors, phase_result_examples
from workflows.serializer_fields import ChoiceField, ModelNameField
from workflows.services import Actor, workflow_phase_complete
from workflows.states import PHASES


@extend_schema_field(
    {
        "type": "object",
        "properties": {
            "description": {
                "type": "string",
                "minLength": 1,
                "pattern": r"\S",
                "description": "What to build.",
            }
        },
        "required": ["description"],
        "additionalProperties": True,
        "example": {"description": "Add dark mode to settings", "priority": "high"},
    }
)
class RequirementsField(serializers.JSONField):
    """What to build: an object with at least a non-empty `description`; other keys are
    kept as given."""

    def to_internal_value(self, data: object) -> dict:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be an object with at least a description")
        description = value.get("description")
        if not isinstance(description, str) or not description.strip():
            raise serializers.ValidationError({"description": ["a non-empty string is required"]})
        return value


class InitializeApi(ApiView):
    class InitializeInputSerializer(serializers.Serializer):
        project_id = serializers.CharField(help_text="Project id (UUID) or slug.")
        build_id = serializers.CharField(required=False, allow_blank=True, max_length=200)
        user_id = serializers.CharField(required=False, allow_blank=True, max_length=200)
        requirements = RequirementsField()
        model = ModelNameField(required=False)

    class InitializeOutputSerializer(serializers.Serializer):
        # Renders {"workflow": the opened workflow, "role_context": its first role's}.
        workflow_id = serializers.UUIDField(source="workflow.id")
        initial_state = serializers.CharField(source="workflow.state")
        system_prompt = serializers.CharField(source="role_context.system_prompt")
        next_action = NextActionField(source="workflow")

    @extend_schema(
        request=InitializeInputSerializer,
        responses={201: InitializeOutputSerializer, **errors(400, 403, 404)},
    )
    def post(self, request: Request) -> Response:
        data = validated_data(self.InitializeInputSerializer, request)
        return Response(initialize_answer(user=request.user, data=data), status=201)


def initialize_answer(*, user: Any, data: dict) -> dict:
    """Open the workflow that validated initialize input asks for; the answer's body (the
    REST endpoint and the MCP tool answer the same)."""
    workflow = workflow_open(
        user=user,
        project_ref=data["project_id"],
        requirements=data["requirements"],
        model_name=data.get("model"),
        build_id=data.get("build_id", ""),
        external_user_id=data.get("user_id", ""),
    )
    role_context = selectors.role_context_get(workflow=workflow, role=workflow.current_role)
    opened = {"workflow": workflow, "role_context": role_context}
    return InitializeApi.InitializeOutputSerializer(opened).data


class CompletePhaseApi(ApiView):
    class CompletePhaseInputSerializer(serializers.Serializer):
        workflow_id = serializers.UUIDField()
        ai_response = serializers.CharField(allow_blank=True, trim_whitespace=False)
        phase_result = PhaseResultField()
        phase = ChoiceField(
            choices=list(PHASES),
            required=False,
            help_text="The phase this result is for. When given and the workflow has moved "
            "on, the answer is 409 instead of a validation error.",
        )

    class CompletePhaseOutputSerializer(serializers.Serializer):
        # Renders the service's TransitionOutcome.
        workflow_id = serializers.UUIDField(source="workflow.id")
        previous_state = serializers.CharField()
        new_state = serializers.CharField(source="workflow.state")
        next_role = serializers.CharField(source="workflow.current_role", allow_null=True)
        next_action = NextActionField(source="workflow")
        is_complete = serializers.BooleanField(source="workflow.is_complete")
        awaiting_approval = serializers.BooleanField(source="workflow.awaiting_approval")
        phase_result_id = serializers.IntegerField(source="phase_result.pk")

    @extend_schema(
        request=CompletePhaseInputSerializer,
        responses={200: CompletePhaseOutputSerializer, **errors(400, 403, 404, 409, 502)},
        examples=phase_result_examples(),
    )
    def post(self, request: Request) -> Response:
        data = validated_data(self.CompletePhaseInputSerializer, request)
        return Response(phase_complete_answer(user=request.user, data=data))


def phase_complete_answer(*, user: Any, data: dict) -> dict:
    """Complete the phase that validated complete-phase input names; the answer's body
    (the REST endpoint and the MCP tool answer the same)."""
    outcome = workflow_phase_complete(
        workflow_id=data["workflow_id"],
        ai_response=data["ai_response"],
        result=data["phase_result"],
        actor=Actor.of(user),
        expected_state=data.get("phase"),
    )
    return CompletePhaseApi.CompletePhaseOutputSerializer(outcome).data


class StatusApi(ApiView):
    class StatusOutputSerializer(serializers.Serializer):
        # Renders selectors.WorkflowStatus.
        workflow_id = serializers.UUIDField(source="id")
        current_state = serializers.CharField(source="state")
        progress = serializers.FloatField()
        completed_phases = serializers.ListField(child=serializers.CharField())
        next_role = serializers.CharField(source="current_role", allow_null=True)
        is_complete = serializers.BooleanField()
        awaiting_approval = serializers.BooleanField()
        regression_count = serializers.IntegerField()

    @extend_schema(responses={200: StatusOutputSerializer, **errors(404)})
    def get(self, request: Request, workflow_id: str) -> Response:
        return Response(status_answer(user=request.user, workflow_id=workflow_id))


def status_answer(*, user: Any, workflow_id: Any) -> dict:
    """The status body of one workflow the user may see (REST and MCP)."""
    status = selectors.workflow_status_get(user=user, workflow_id=workflow_id)
    return StatusApi.StatusOutputSerializer(status).data
