"""Shared pieces of the API views: the base class, output shapes and next actions."""

from typing import Any

from django.urls import reverse
from rest_framework import serializers
from rest_framework.views import APIView

from workflows import selectors
from workflows.api.idempotency import IdempotentMixin
from workflows.api.throttling import auth_failure_throttle
from workflows.authentication import TooManyFailures
from workflows.models import Project, Workflow
from workflows.serializer_fields import RoleModelsField
from workflows.services import Actor, available_transitions, workflow_initialize


class ApiView(IdempotentMixin, APIView):
    """Base of every TopDog API view: JSON, authenticated, idempotent POSTs."""

    def permission_denied(self, request: Any, message: str | None = None, code: Any = None) -> None:
        """A request without credentials is a failed authentication too: it counts
        against its address like a bad token, and is 429 once the address is over."""
        if request.authenticators and not request.successful_authenticator:
            throttle = auth_failure_throttle()
            wait = throttle.blocked(request)
            if wait is not None:
                raise TooManyFailures(wait=wait)
            throttle.record(request)
        super().permission_denied(request, message=message, code=code)


def validated_data(serializer_class: type[serializers.Serializer], request: Any) -> dict:
    """The request body validated by `serializer_class` (400 with field errors if not)."""
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def workflow_open(
    *,
    user: Any,
    project_ref: Any,
    requirements: dict,
    model_name: str | None = None,
    build_id: str = "",
    external_user_id: str = "",
) -> Workflow:
    """Open a workflow in one of `user`'s projects (by id or slug): the one create path of
    `POST /api/ai-workflows/initialize`, `POST /api/workflows/` and the MCP tool. The
    workflow carries the user's project role as `member_role`."""
    project = selectors.project_get_for_user(user=user, project_ref=project_ref)
    workflow = workflow_initialize(
        project=project,
        requirements=requirements,
        actor=Actor.of(user),
        model_name=model_name,
        build_id=build_id,
        external_user_id=external_user_id,
    )
    workflow.member_role = project.member_role
    return workflow


def next_action(workflow: Workflow) -> dict[str, Any]:
    """What the caller should do next with `workflow`, machine-readable."""
    if workflow.is_terminal:
        return {"type": "none", "detail": f"workflow is {workflow.state}; nothing left to do"}
    if workflow.awaiting_approval:
        return {
            "type": "await_approval",
            "phase": workflow.state,
            "detail": f"a project owner must approve or reject the {workflow.state} result",
            "transitions_url": reverse("api:workflow-transitions", args=[workflow.id]),
        }
    return {
        "type": "call_model",
        "phase": workflow.state,
        "role": workflow.current_role,
        "detail": f"fetch the prompt, call the model as {workflow.current_role}, then submit "
        f"the {workflow.state} evidence to complete-phase",
        "prompt_url": reverse("api:ide-get-ai-prompt", args=[workflow.id]),
        "complete_url": reverse("api:ide-complete-phase"),
    }


class NextActionField(serializers.DictField):
    """`next_action` of the workflow the field's source points at (see `next_action`)."""

    def to_representation(self, workflow: Workflow) -> dict[str, Any]:
        return next_action(workflow)


class ProjectOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    slug = serializers.SlugField()
    name = serializers.CharField()
    repository = serializers.CharField()
    default_branch = serializers.CharField()
    approval_gates = serializers.ListField(child=serializers.CharField())
    regression_limit = serializers.IntegerField()
    quality_threshold = serializers.FloatField()
    budget_usd = serializers.DecimalField(max_digits=12, decimal_places=4, allow_null=True)
    role_models = RoleModelsField()
    test_command = serializers.CharField()
    setup_command = serializers.CharField()
    sandbox_env = serializers.DictField(child=serializers.CharField())
    secrets = serializers.SerializerMethodField(
        help_text="Which secrets are stored (never their values)."
    )
    member_role = serializers.CharField()
    created_at = serializers.DateTimeField()

    def get_secrets(self, project: Project) -> dict[str, bool]:
        return {name: bool(getattr(project, name)) for name in Project.SECRET_FIELDS}


class WorkflowSummarySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    project = serializers.SlugField(source="project.slug")
    project_id = serializers.UUIDField()
    title = serializers.CharField()
    state = serializers.CharField()
    current_role = serializers.CharField(allow_null=True)
    awaiting_approval = serializers.BooleanField()
    regression_count = serializers.IntegerField()
    progress = serializers.FloatField()
    build_id = serializers.CharField()
    model = serializers.CharField(source="model_name")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class WorkflowDetailSerializer(WorkflowSummarySerializer):
    requirements = serializers.JSONField()
    completed_phases = serializers.ListField(child=serializers.CharField())
    regression_limit = serializers.IntegerField()
    terminal_reason = serializers.CharField()
    tests_verified = serializers.BooleanField(
        allow_null=True,
        help_text="Whether the latest TESTING report is bound to a test run TopDog made in "
        "its sandbox (false: the figures are the auditor's claim; null: no report yet).",
    )
    last_event_seq = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(max_digits=12, decimal_places=6)
    completed_at = serializers.DateTimeField(allow_null=True)
    created_by = serializers.CharField(source="created_by.username", default=None)
    external_user_id = serializers.CharField()
    available_transitions = serializers.SerializerMethodField()
    next_action = serializers.SerializerMethodField()

    def get_available_transitions(self, workflow: Workflow) -> list[str]:
        return available_transitions(workflow, getattr(workflow, "member_role", None))

    def get_next_action(self, workflow: Workflow) -> dict:
        return next_action(workflow)
