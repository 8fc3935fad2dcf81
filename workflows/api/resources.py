"""REST resources: projects, workflows and the audit trail of each workflow."""

import json
from datetime import datetime

from django.conf import settings
from django.http import HttpResponse
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder
from rest_framework.utils.urls import replace_query_param

from integrations.repository import (
    UnsafeRepositoryReference,
    git_remote_url_check,
    repository_ref_parse,
)
from integrations.secrets import secret_value_problem
from workflows import selectors
from workflows.api.base import (
    ApiView,
    ProjectOutputSerializer,
    WorkflowDetailSerializer,
    WorkflowSummarySerializer,
    validated_data,
    workflow_open,
)
from workflows.api.filters import WorkflowFilter
from workflows.api.ide import RequirementsField
from workflows.api.pagination import (
    MAX_PAGE_SIZE,
    PAGE_PARAMETERS,
    PAGE_SIZE,
    PREVIEW_CHARS,
    head,
    page_of,
    paginated,
)
from workflows.api.schema import PhaseResultField, errors
from workflows.errors import ActionForbidden, WorkflowNotFound
from workflows.models import Message, PhaseResult, Project, sandbox_env_problem
from workflows.release import workflow_release
from workflows.serializer_fields import ChoiceField, ModelNameField, RoleModelsField
from workflows.services import (
    Actor,
    project_create,
    project_update,
    workflow_approve,
    workflow_cancel,
    workflow_fail,
    workflow_phase_complete,
    workflow_regress,
    workflow_reject,
)
from workflows.states import PHASES, MemberRole, Role, State, Transition

# --- projects --------------------------------------------------------------------------


def _secret_problem(value: str) -> None:
    problem = secret_value_problem(value)
    if problem:
        raise serializers.ValidationError(problem)


def _secret_field(help_text: str) -> serializers.CharField:
    return serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        max_length=500,
        # Not trimmed: a pasted newline is refused with a message, not silently changed.
        trim_whitespace=False,
        validators=[_secret_problem],
        help_text=f"Write-only; stored encrypted; an empty string removes it; printable "
        f"ASCII without whitespace. {help_text}",
    )


class ProjectInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    repository = serializers.CharField(
        max_length=200,
        required=False,
        allow_blank=True,
        help_text="owner/name on an allowed host (TOPDOG_REPOSITORY_HOSTS).",
    )
    git_remote_url = serializers.CharField(
        max_length=500,
        required=False,
        allow_blank=True,
        help_text="Without GitHub: an https remote on TOPDOG_GIT_REMOTE_HOSTS.",
    )
    default_branch = serializers.CharField(max_length=100, required=False)
    approval_gates = serializers.ListField(child=ChoiceField(choices=list(PHASES)), required=False)
    regression_limit = serializers.IntegerField(min_value=0, max_value=50, required=False)
    quality_threshold = serializers.FloatField(min_value=0.0, max_value=1.0, required=False)
    budget_usd = serializers.DecimalField(
        max_digits=12, decimal_places=4, min_value=0, required=False, allow_null=True
    )
    role_models = RoleModelsField(required=False)
    test_command = serializers.CharField(
        max_length=1000,
        required=False,
        allow_blank=True,
        help_text="Runs the tests in the sandbox; empty: detected (python -m pytest -q, npm test).",
    )
    setup_command = serializers.CharField(
        max_length=1000,
        required=False,
        allow_blank=True,
        help_text="Installs dependencies into /deps before the tests; cached by the hash of the "
        "dependency files.",
    )
    sandbox_env = serializers.DictField(
        child=serializers.CharField(max_length=4000, allow_blank=True),
        required=False,
        help_text="Non-secret variables for the sandbox; secret-looking names are refused.",
    )
    openai_api_key = _secret_field("Overrides OPENAI_API_KEY for this project.")
    anthropic_api_key = _secret_field("Overrides ANTHROPIC_API_KEY for this project.")
    github_token = _secret_field("Needs contents:write and pull_requests:write.")
    git_remote_token = _secret_field("Password or token for git_remote_url.")

    def validate_repository(self, value: str) -> str:
        if not value:
            return value
        try:
            ref = repository_ref_parse(value, allowed_hosts=set(settings.TOPDOG_REPOSITORY_HOSTS))
        except UnsafeRepositoryReference as exc:
            raise serializers.ValidationError(str(exc)) from None
        return ref.full_name

    def validate_git_remote_url(self, value: str) -> str:
        if not value:
            return value
        try:
            return git_remote_url_check(
                value,
                allowed_hosts=set(settings.TOPDOG_GIT_REMOTE_HOSTS),
                allow_local_paths=settings.TOPDOG_GIT_ALLOW_LOCAL_REMOTES,
            )
        except UnsafeRepositoryReference as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate_sandbox_env(self, value: dict) -> dict:
        problem = sandbox_env_problem(value)
        if problem:
            raise serializers.ValidationError(problem)
        return value


class ProjectCreateSerializer(ProjectInputSerializer):
    slug = serializers.SlugField(max_length=80)

    def validate_slug(self, value: str) -> str:
        if Project.objects.filter(slug=value).exists():
            raise serializers.ValidationError("a project with this slug exists; pick another")
        return value


class ProjectListApi(ApiView):
    @extend_schema(
        operation_id="projects_list",
        parameters=PAGE_PARAMETERS,
        responses={200: page_of(ProjectOutputSerializer), **errors(404)},
    )
    def get(self, request: Request) -> Response:
        projects = selectors.project_list_for_user(user=request.user)
        return paginated(
            request,
            self,
            projects,
            ("slug",),
            lambda page: ProjectOutputSerializer(page, many=True).data,
        )

    @extend_schema(
        request=ProjectCreateSerializer, responses={201: ProjectOutputSerializer, **errors(400)}
    )
    def post(self, request: Request) -> Response:
        data = validated_data(ProjectCreateSerializer, request)
        project = project_create(actor=Actor.of(request.user), owner=request.user, **data)
        project.member_role = MemberRole.OWNER
        return Response(ProjectOutputSerializer(project).data, status=status.HTTP_201_CREATED)


class ProjectDetailApi(ApiView):
    @extend_schema(responses={200: ProjectOutputSerializer, **errors(404)})
    def get(self, request: Request, project_ref: str) -> Response:
        project = selectors.project_get_for_user(user=request.user, project_ref=project_ref)
        return Response(ProjectOutputSerializer(project).data)

    @extend_schema(
        request=ProjectInputSerializer,
        responses={200: ProjectOutputSerializer, **errors(400, 403, 404)},
    )
    def patch(self, request: Request, project_ref: str) -> Response:
        project = selectors.project_get_for_user(user=request.user, project_ref=project_ref)
        if project.member_role != MemberRole.OWNER:
            raise ActionForbidden("changing a project needs project role owner")
        serializer = ProjectInputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        project_update(project=project, actor=Actor.of(request.user), **serializer.validated_data)
        return Response(ProjectOutputSerializer(project).data)


# --- workflows -------------------------------------------------------------------------


class WorkflowPagination(CursorPagination):
    page_size = PAGE_SIZE
    max_page_size = MAX_PAGE_SIZE
    page_size_query_param = "page_size"
    ordering = ("-created_at", "-id")


class WorkflowListApi(ApiView):
    class WorkflowCreateSerializer(serializers.Serializer):
        project = serializers.CharField(help_text="Project id or slug.")
        requirements = RequirementsField()
        model = ModelNameField(required=False)
        build_id = serializers.CharField(required=False, allow_blank=True, max_length=200)

    @extend_schema(
        operation_id="workflows_list",
        parameters=[
            OpenApiParameter("project", str, description="Project id or slug."),
            OpenApiParameter("state", str, many=True, enum=[s.value for s in State]),
            OpenApiParameter("current_role", str, enum=[r.value for r in Role]),
            OpenApiParameter("awaiting_approval", bool),
            OpenApiParameter("build_id", str),
            OpenApiParameter("created_after", datetime),
            OpenApiParameter("created_before", datetime),
            OpenApiParameter("q", str, description="Text in the title."),
            *PAGE_PARAMETERS,
        ],
        responses={200: page_of(WorkflowSummarySerializer), **errors(400, 404)},
    )
    def get(self, request: Request) -> Response:
        queryset = selectors.workflow_list_for_user(user=request.user)
        filterset = WorkflowFilter(request.query_params, queryset=queryset, request=request)
        if not filterset.is_valid():
            raise serializers.ValidationError(filterset.errors)
        paginator = WorkflowPagination()
        page = paginator.paginate_queryset(filterset.qs, request, view=self)
        return paginator.get_paginated_response(WorkflowSummarySerializer(page, many=True).data)

    @extend_schema(
        request=WorkflowCreateSerializer,
        responses={201: WorkflowDetailSerializer, **errors(400, 403, 404)},
    )
    def post(self, request: Request) -> Response:
        data = validated_data(self.WorkflowCreateSerializer, request)
        workflow = workflow_open(
            user=request.user,
            project_ref=data["project"],
            requirements=data["requirements"],
            model_name=data.get("model"),
            build_id=data.get("build_id", ""),
        )
        return Response(WorkflowDetailSerializer(workflow).data, status=status.HTTP_201_CREATED)


class WorkflowDetailApi(ApiView):
    @extend_schema(responses={200: WorkflowDetailSerializer, **errors(404)})
    def get(self, request: Request, workflow_id: str) -> Response:
        workflow = selectors.workflow_get_for_user(user=request.user, workflow_id=workflow_id)
        return Response(WorkflowDetailSerializer(workflow).data)


class TransitionedSerializer(WorkflowDetailSerializer):
    """The workflow as it stands after a transition, and what it was before."""

    previous_state = serializers.CharField()
    handoff_id = serializers.IntegerField(allow_null=True)


class TransitionInputSerializer(serializers.Serializer):
    transition = ChoiceField(choices=Transition.choices)
    reason = serializers.CharField(required=False, allow_blank=True, max_length=5000)
    feedback = serializers.CharField(required=False, allow_blank=True, max_length=50_000)
    target = ChoiceField(
        choices=["IMPLEMENTATION", "PLANNING"], required=False, help_text="For regress."
    )
    ai_response = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    phase_result = PhaseResultField(required=False, help_text="For complete: the evidence.")
    phase = ChoiceField(choices=list(PHASES), required=False)

    def validate(self, attrs: dict) -> dict:
        wanted = attrs["transition"]
        if wanted == Transition.COMPLETE and "phase_result" not in attrs:
            raise serializers.ValidationError({"phase_result": "complete needs the evidence"})
        if wanted == Transition.REJECT and not attrs.get("feedback", "").strip():
            raise serializers.ValidationError({"feedback": "say what must change"})
        if wanted in (Transition.FAIL, Transition.REGRESS) and not attrs.get("reason", "").strip():
            raise serializers.ValidationError({"reason": f"{wanted} needs a reason"})
        return attrs


class WorkflowTransitionApi(ApiView):
    """Ask for any transition; the answer is the workflow as it now stands."""

    @extend_schema(
        request=TransitionInputSerializer,
        responses={200: TransitionedSerializer, **errors(400, 403, 404, 409, 502)},
    )
    def post(self, request: Request, workflow_id: str) -> Response:
        data = validated_data(TransitionInputSerializer, request)
        actor = Actor.of(request.user)
        wanted = data["transition"]
        if wanted == Transition.COMPLETE:
            outcome = workflow_phase_complete(
                workflow_id=workflow_id,
                ai_response=data.get("ai_response", ""),
                result=data["phase_result"],
                actor=actor,
                expected_state=data.get("phase"),
            )
        elif wanted == Transition.REGRESS:
            outcome = workflow_regress(
                workflow_id=workflow_id,
                target=data.get("target"),
                reason=data["reason"],
                feedback=data.get("feedback", ""),
                actor=actor,
            )
        elif wanted == Transition.APPROVE:
            outcome = workflow_approve(
                workflow_id=workflow_id, actor=actor, comment=data.get("reason", "")
            )
        elif wanted == Transition.REJECT:
            outcome = workflow_reject(
                workflow_id=workflow_id, actor=actor, feedback=data["feedback"]
            )
        elif wanted == Transition.CANCEL:
            outcome = workflow_cancel(
                workflow_id=workflow_id, actor=actor, reason=data.get("reason", "")
            )
        else:
            outcome = workflow_fail(workflow_id=workflow_id, actor=actor, reason=data["reason"])
        return _transitioned(request, outcome)


class WorkflowCancelApi(ApiView):
    class CancelInputSerializer(serializers.Serializer):
        reason = serializers.CharField(required=False, allow_blank=True, max_length=5000)

    @extend_schema(
        request=CancelInputSerializer,
        responses={200: TransitionedSerializer, **errors(400, 403, 404, 409)},
    )
    def post(self, request: Request, workflow_id: str) -> Response:
        data = validated_data(self.CancelInputSerializer, request)
        outcome = workflow_cancel(
            workflow_id=workflow_id, actor=Actor.of(request.user), reason=data.get("reason", "")
        )
        return _transitioned(request, outcome)


class WorkflowReleaseApi(ApiView):
    """DEPLOYMENT for real: push the change set and open the pull request (or store a
    patch when the project has nowhere to push), then complete the phase."""

    @extend_schema(
        request=None, responses={200: TransitionedSerializer, **errors(403, 404, 409, 502)}
    )
    def post(self, request: Request, workflow_id: str) -> Response:
        outcome = workflow_release(workflow_id=workflow_id, actor=Actor.of(request.user))
        return _transitioned(request, outcome)


class WorkflowPatchApi(ApiView):
    """The released change set as a unified diff (`git apply` it)."""

    @extend_schema(responses={(200, "text/x-diff"): str, **errors(404)})
    def get(self, request: Request, workflow_id: str) -> HttpResponse:
        workflow = selectors.workflow_get_for_user(user=request.user, workflow_id=workflow_id)
        release = (
            selectors.workflow_phase_results(workflow=workflow)
            .filter(phase="DEPLOYMENT", status="accepted")
            .last()
        )
        patch = (release.result.get("patch") if release else "") or ""
        if not patch:
            raise WorkflowNotFound(
                "no patch: the workflow has no release, or its change was pushed "
                "(see the release record's branch and pull request)"
            )
        response = HttpResponse(patch, content_type="text/x-diff; charset=utf-8")
        response["Content-Disposition"] = (
            f'attachment; filename="topdog-{workflow.id.hex[:8]}.patch"'
        )
        return response


def _transitioned(request: Request, outcome: object) -> Response:
    workflow = selectors.workflow_get_for_user(user=request.user, workflow_id=outcome.workflow.id)
    body = WorkflowDetailSerializer(workflow).data
    body["previous_state"] = outcome.previous_state
    body["handoff_id"] = outcome.handoff.pk if outcome.handoff else None
    return Response(body)


# --- the audit trail -------------------------------------------------------------------


class EventOutputSerializer(serializers.Serializer):
    seq = serializers.IntegerField()
    type = serializers.CharField()
    data = serializers.JSONField()
    actor = serializers.CharField(source="actor_name")
    request_id = serializers.CharField(
        help_text="X-Request-ID of the request (or autopilot task) that wrote it; may be empty."
    )
    at = serializers.DateTimeField(source="created_at")


class HandoffOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    from_role = serializers.CharField(allow_null=True)
    to_role = serializers.CharField(allow_null=True)
    from_state = serializers.CharField()
    to_state = serializers.CharField()
    actor = serializers.CharField(source="actor_name")
    reason = serializers.CharField()
    feedback = serializers.CharField()
    summary = serializers.CharField()
    phase_result_id = serializers.IntegerField(allow_null=True)
    event_seq = serializers.IntegerField()
    created_at = serializers.DateTimeField()


class MessageOutputSerializer(serializers.Serializer):
    seq = serializers.IntegerField()
    role = serializers.CharField()
    sender = serializers.CharField()
    phase = serializers.CharField()
    content = serializers.CharField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    provider = serializers.CharField()
    model = serializers.CharField()
    created_at = serializers.DateTimeField()


class MessageSummarySerializer(MessageOutputSerializer):
    """A message in a list: `content` is its first PREVIEW_CHARS characters."""

    content = serializers.SerializerMethodField(
        help_text=f"The first {PREVIEW_CHARS} characters; the whole text is at `url`."
    )
    truncated = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()

    def get_content(self, message: Message) -> str:
        return head(message.content)[0]

    def get_truncated(self, message: Message) -> bool:
        return head(message.content)[1]

    def get_url(self, message: Message) -> str:
        return reverse("api:workflow-message-detail", args=[message.workflow_id, message.seq])


class PhaseResultOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    phase = serializers.CharField()
    attempt = serializers.IntegerField()
    status = serializers.CharField()
    result = serializers.JSONField()
    artifacts = serializers.JSONField()
    content_hash = serializers.CharField()
    ai_response = serializers.CharField()
    created_at = serializers.DateTimeField()


class PhaseResultSummarySerializer(serializers.Serializer):
    """A phase result in a list: previews of `result` (as JSON text) and `ai_response`."""

    id = serializers.IntegerField()
    phase = serializers.CharField()
    attempt = serializers.IntegerField()
    status = serializers.CharField()
    artifacts = serializers.JSONField()
    content_hash = serializers.CharField()
    created_at = serializers.DateTimeField()
    result_preview = serializers.SerializerMethodField(
        help_text=f"The evidence as compact JSON text, cut at {PREVIEW_CHARS} characters."
    )
    ai_response = serializers.SerializerMethodField(
        help_text=f"The first {PREVIEW_CHARS} characters."
    )
    truncated = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()

    def get_result_preview(self, result: PhaseResult) -> str:
        return head(_compact_json(result.result))[0]

    def get_ai_response(self, result: PhaseResult) -> str:
        return head(result.ai_response)[0]

    def get_truncated(self, result: PhaseResult) -> bool:
        return head(_compact_json(result.result))[1] or head(result.ai_response)[1]

    def get_url(self, result: PhaseResult) -> str:
        return reverse("api:workflow-phase-result-detail", args=[result.workflow_id, result.pk])


def _compact_json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, cls=JSONEncoder)


EVENT_PAGE_MAX = 1000


class EventPageSerializer(serializers.Serializer):
    """A page of a workflow's events, oldest first; follow `next` (or ask again with
    `after=next_after`) until it is null."""

    workflow_id = serializers.UUIDField()
    last_seq = serializers.IntegerField(help_text="The seq of the workflow's latest event.")
    next_after = serializers.IntegerField(allow_null=True)
    next = serializers.URLField(allow_null=True)
    results = EventOutputSerializer(many=True)


class WorkflowEventListApi(ApiView):
    @extend_schema(
        operation_id="workflows_events_list",
        parameters=[
            OpenApiParameter(
                "after",
                {"type": "integer", "minimum": 0},
                description="Only events with a greater seq.",
            ),
            OpenApiParameter(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": EVENT_PAGE_MAX},
                description=f"At most this many (default and at most {EVENT_PAGE_MAX}).",
            ),
        ],
        responses={200: EventPageSerializer, **errors(400, 404)},
    )
    def get(self, request: Request, workflow_id: str) -> Response:
        workflow = selectors.workflow_get_for_user(user=request.user, workflow_id=workflow_id)
        after = _int_param(request, "after", 0, minimum=0)
        limit = _int_param(request, "limit", EVENT_PAGE_MAX, minimum=1, maximum=EVENT_PAGE_MAX)
        events = list(selectors.workflow_events(workflow=workflow, after=after)[:limit])
        last = events[-1].seq if events else after
        next_after = last if last < workflow.last_event_seq else None
        next_url = None
        if next_after is not None:
            next_url = replace_query_param(request.build_absolute_uri(), "after", next_after)
        return Response(
            {
                "workflow_id": workflow.id,
                "last_seq": workflow.last_event_seq,
                "next_after": next_after,
                "next": next_url,
                "results": EventOutputSerializer(events, many=True).data,
            }
        )


class WorkflowHandoffListApi(ApiView):
    @extend_schema(
        operation_id="workflows_handoffs_list",
        parameters=PAGE_PARAMETERS,
        responses={200: page_of(HandoffOutputSerializer), **errors(404)},
    )
    def get(self, request: Request, workflow_id: str) -> Response:
        workflow = selectors.workflow_get_for_user(user=request.user, workflow_id=workflow_id)
        handoffs = selectors.workflow_handoffs(workflow=workflow)
        return paginated(
            request,
            self,
            handoffs,
            ("event_seq", "id"),
            lambda page: HandoffOutputSerializer(page, many=True).data,
        )


class WorkflowMessageListApi(ApiView):
    @extend_schema(
        operation_id="workflows_messages_list",
        parameters=[OpenApiParameter("role", str, enum=[r.value for r in Role]), *PAGE_PARAMETERS],
        responses={200: page_of(MessageSummarySerializer), **errors(400, 404)},
    )
    def get(self, request: Request, workflow_id: str) -> Response:
        workflow = selectors.workflow_get_for_user(user=request.user, workflow_id=workflow_id)
        role = request.query_params.get("role")
        if role and role not in Role.values:
            raise serializers.ValidationError({"role": [f"choose from {', '.join(Role.values)}"]})
        messages = selectors.workflow_messages(workflow=workflow, role=role)
        return paginated(
            request,
            self,
            messages,
            ("seq",),
            lambda page: MessageSummarySerializer(page, many=True).data,
        )


class WorkflowMessageDetailApi(ApiView):
    @extend_schema(responses={200: MessageOutputSerializer, **errors(404)})
    def get(self, request: Request, workflow_id: str, seq: str) -> Response:
        workflow = selectors.workflow_get_for_user(user=request.user, workflow_id=workflow_id)
        message = (
            selectors.workflow_messages(workflow=workflow).filter(seq=_int_or_404(seq)).first()
        )
        if message is None:
            raise WorkflowNotFound("message not found")
        return Response(MessageOutputSerializer(message).data)


class WorkflowPhaseResultListApi(ApiView):
    @extend_schema(
        operation_id="workflows_phase_results_list",
        parameters=PAGE_PARAMETERS,
        responses={200: page_of(PhaseResultSummarySerializer), **errors(404)},
    )
    def get(self, request: Request, workflow_id: str) -> Response:
        workflow = selectors.workflow_get_for_user(user=request.user, workflow_id=workflow_id)
        results = selectors.workflow_phase_results(workflow=workflow)
        return paginated(
            request,
            self,
            results,
            ("created_at", "id"),
            lambda page: PhaseResultSummarySerializer(page, many=True).data,
        )


class WorkflowPhaseResultDetailApi(ApiView):
    @extend_schema(responses={200: PhaseResultOutputSerializer, **errors(404)})
    def get(self, request: Request, workflow_id: str, result_id: str) -> Response:
        workflow = selectors.workflow_get_for_user(user=request.user, workflow_id=workflow_id)
        result = (
            selectors.workflow_phase_results(workflow=workflow)
            .filter(pk=_int_or_404(result_id))
            .first()
        )
        if result is None:
            raise WorkflowNotFound("phase result not found")
        return Response(PhaseResultOutputSerializer(result).data)


def _int_or_404(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise WorkflowNotFound("not found") from None
    if number < 0 or number > 2**31:
        raise WorkflowNotFound("not found")
    return number


def _int_param(
    request: Request, name: str, default: int, *, minimum: int, maximum: int | None = None
) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise serializers.ValidationError({name: ["must be a whole number"]}) from exc
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise serializers.ValidationError({name: [f"must be {bound}"]})
    return value
