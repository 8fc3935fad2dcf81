"""The IDE contract: initialize, complete-phase, status (get-ai-prompt: ai_orchestration.api)."""

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from workflows import selectors
from workflows.api.base import ApiView, next_action, validated_data
from workflows.api.schema import PhaseResultField, errors, phase_result_examples
from workflows.serializer_fields import ChoiceField, ModelNameField
from workflows.services import (
    Actor,
    workflow_initialize,
    workflow_phase_complete,
)
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
        workflow_id = serializers.UUIDField()
        initial_state = serializers.CharField()
        system_prompt = serializers.CharField()
        next_action = serializers.JSONField()

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
    project = selectors.project_get_for_user(user=user, project_ref=data["project_id"])
    workflow = workflow_initialize(
        project=project,
        requirements=data["requirements"],
        actor=Actor.of(user),
        model_name=data.get("model"),
        build_id=data.get("build_id", ""),
        external_user_id=data.get("user_id", ""),
    )
    role_context = selectors.role_context_get(workflow=workflow, role=workflow.current_role)
    body = {
        "workflow_id": workflow.id,
        "initial_state": workflow.state,
        "system_prompt": role_context.system_prompt,
        "next_action": next_action(workflow),
    }
    return InitializeApi.InitializeOutputSerializer(body).data


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
        workflow_id = serializers.UUIDField()
        previous_state = serializers.CharField()
        new_state = serializers.CharField()
        next_role = serializers.CharField(allow_null=True)
        next_action = serializers.JSONField()
        is_complete = serializers.BooleanField()
        awaiting_approval = serializers.BooleanField()
        phase_result_id = serializers.IntegerField()

    @extend_schema(
        request=CompletePhaseInputSerializer,
        responses={200: CompletePhaseOutputSerializer, **errors(400, 403, 404, 409, 502)},
        examples=phase_result_examples(),
    )
    def post(self, request: Request) -> Response:
        data = validated_data(self.CompletePhaseInputSerializer, request)
        outcome = workflow_phase_complete(
            workflow_id=data["workflow_id"],
            ai_response=data["ai_response"],
            result=data["phase_result"],
            actor=Actor.of(request.user),
            expected_state=data.get("phase"),
        )
        workflow = outcome.workflow
        # The body is built ready to render (the serializer above documents it for OpenAPI).
        return Response(
            {
                "workflow_id": str(workflow.id),
                "previous_state": outcome.previous_state,
                "new_state": workflow.state,
                "next_role": workflow.current_role,
                "next_action": next_action(workflow),
                "is_complete": workflow.is_complete,
                "awaiting_approval": workflow.awaiting_approval,
                "phase_result_id": outcome.phase_result.pk,
            }
        )


class StatusApi(ApiView):
    class StatusOutputSerializer(serializers.Serializer):
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
        # The IDE polls this: the selector returns the body ready-made (the serializer
        # above documents it for OpenAPI).
        return Response(selectors.workflow_status_get(user=request.user, workflow_id=workflow_id))
