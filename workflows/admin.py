"""The Django admin: an audit view of workflows, and the few settings staff manage by hand.

Workflows and their trail (handoffs, events, messages, phase results) are read-only here.
A workflow moves only through the services in `workflows.services`; the transition
buttons on its page call them with the admin user as the actor, so the Handoff records
who pressed the button, exactly as it would for an API call.
"""

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator
from django_fsm import ConcurrentTransition

from integrations.secrets import secret_value_problem
from workflows.admin_base import NulSafeModelAdmin
from workflows.admin_prompts import PromptTemplateAdmin  # noqa: F401 (registers it)
from workflows.errors import ActionForbidden, TransitionConflict, WorkflowNotFound
from workflows.models import (
    ApiToken,
    CheckRun,
    Handoff,
    Membership,
    Message,
    PhaseResult,
    Project,
    Workflow,
    WorkflowEvent,
    WorkItem,
)
from workflows.selectors import workflow_testing_result, workflow_usage
from workflows.services import (
    PROJECT_FIELDS,
    Actor,
    TransitionOutcome,
    available_transitions,
    project_create,
    project_update,
    workflow_approve,
    workflow_cancel,
    workflow_fail,
    workflow_regress,
    workflow_reject,
)
from workflows.states import PHASES, REGRESSION_TARGETS, State, Transition
from workflows.verification import tests_verification_note

admin.site.site_header = "TopDog audit"
admin.site.site_title = "TopDog audit"
admin.site.index_title = "Workflows, audit trail and settings"

TEXT_LIMIT = 10_000


# --- display helpers -------------------------------------------------------------------


def _pre(text: str) -> str:
    return format_html('<pre style="white-space: pre-wrap; margin: 0">{}</pre>', text)


def _folded(text: str, summary: str | None = None) -> str:
    """Long text folded under a one-line summary, so inlines stay scannable."""
    if not text:
        return "—"
    lines = text.strip().splitlines()
    if summary is None:
        summary = lines[0] if lines else ""
    summary = Truncator(summary).chars(80)
    if summary == text:
        return text
    return format_html("<details><summary>{}</summary>{}</details>", summary, _pre(text))


def _folded_json(value: Any) -> str:
    if not value:
        return "—"
    compact = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return compact if len(compact) <= 80 else _folded(_json(value), summary=compact)


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _uuid_in(search_term: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(search_term.strip())
    except ValueError:
        return None


def _may_view_trail(request: HttpRequest, opts: Any) -> bool:
    """Staff may read a workflow's audit trail if they may view that model or workflows."""
    user = request.user
    if not (user.is_active and user.is_staff):
        return False
    return any(
        user.has_perm(f"{opts.app_label}.{get_permission_codename(action, opts)}")
        for opts, action in (
            (opts, "view"),
            (opts, "change"),
            (Workflow._meta, "view"),
            (Workflow._meta, "change"),
        )
    )


# --- read-only audit inlines -----------------------------------------------------------


class _AuditInline(admin.TabularInline):
    """A workflow's trail, shown in order. Nothing can be added, changed or deleted."""

    extra = 0
    max_num = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return _may_view_trail(request, self.opts)


class HandoffInline(_AuditInline):
    model = Handoff
    ordering = ("event_seq",)
    fields = readonly_fields = (
        "event_seq",
        "kind",
        "from_state",
        "to_state",
        "from_role",
        "to_role",
        "actor_name",
        "reason_text",
        "feedback_text",
        "summary_text",
        "created_at",
    )

    @admin.display(description="reason")
    def reason_text(self, obj: Handoff) -> str:
        return _folded(obj.reason)

    @admin.display(description="feedback")
    def feedback_text(self, obj: Handoff) -> str:
        return _folded(obj.feedback)

    @admin.display(description="summary")
    def summary_text(self, obj: Handoff) -> str:
        return _folded(obj.summary)


class WorkflowEventInline(_AuditInline):
    model = WorkflowEvent
    ordering = ("seq",)
    verbose_name_plural = "events"
    fields = readonly_fields = ("seq", "type", "actor_name", "data_text", "created_at")

    @admin.display(description="data")
    def data_text(self, obj: WorkflowEvent) -> str:
        return _folded_json(obj.data)


class MessageInline(_AuditInline):
    model = Message
    ordering = ("seq",)
    fields = readonly_fields = (
        "seq",
        "role",
        "sender",
        "phase",
        "content_text",
        "input_tokens",
        "output_tokens",
        "provider",
        "model",
        "prompt_version_short",
        "created_at",
    )

    @admin.display(description="content")
    def content_text(self, obj: Message) -> str:
        return _folded(obj.content)

    @admin.display(description="prompt version")
    def prompt_version_short(self, obj: Message) -> str:
        return obj.prompt_version[:12]


class PhaseResultInline(_AuditInline):
    model = PhaseResult
    ordering = ("created_at", "id")
    fields = readonly_fields = (
        "phase",
        "attempt",
        "status",
        "result_text",
        "artifact_names",
        "content_hash_short",
        "created_by",
        "created_at",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("created_by")

    @admin.display(description="result")
    def result_text(self, obj: PhaseResult) -> str:
        return _folded_json(obj.result)

    @admin.display(description="artifacts")
    def artifact_names(self, obj: PhaseResult) -> str:
        names = [str(a.get("name", "?")) for a in obj.artifacts or [] if isinstance(a, dict)]
        return ", ".join(names) or "—"

    @admin.display(description="content hash")
    def content_hash_short(self, obj: PhaseResult) -> str:
        return obj.content_hash[:12]


class WorkItemInline(_AuditInline):
    model = WorkItem
    ordering = ("plan_id", "depth", "key")
    verbose_name_plural = "work items"
    fields = readonly_fields = (
        "key",
        "title",
        "status",
        "superseded",
        "depends_on",
        "files",
        "attempt",
        "executions",
        "error_text",
        "result_sha256_short",
        "input_tokens",
        "output_tokens",
        "worker_id",
        "lease_expires_at",
        "finished_at",
    )

    @admin.display(description="error")
    def error_text(self, obj: WorkItem) -> str:
        return _folded(obj.error)

    @admin.display(description="result sha256")
    def result_sha256_short(self, obj: WorkItem) -> str:
        return obj.result_sha256[:12]


class CheckRunInline(_AuditInline):
    model = CheckRun
    ordering = ("created_at", "id")
    fields = readonly_fields = (
        "kind",
        "attempt",
        "status",
        "backend",
        "isolated",
        "command",
        "figures",
        "reason",
        "output_text",
        "duration_ms",
        "created_at",
    )

    @admin.display(description="tests run / failed / errors / skipped")
    def figures(self, obj: CheckRun) -> str:
        if obj.tests_run is None:
            return "—"
        return f"{obj.tests_run} / {obj.tests_failed} / {obj.tests_errors} / {obj.tests_skipped}"

    @admin.display(description="output (tail)")
    def output_text(self, obj: CheckRun) -> str:
        return _folded(obj.output, f"{len(obj.output)} characters") if obj.output else "—"


# --- transitions from the admin --------------------------------------------------------


class _TransitionForm(forms.Form):
    def __init__(self, *args: Any, workflow: Workflow, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.workflow = workflow


class ApproveForm(_TransitionForm):
    comment = forms.CharField(
        required=False,
        max_length=TEXT_LIMIT,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Optional; recorded on the handoff as the reason.",
    )


class RejectForm(_TransitionForm):
    feedback = forms.CharField(
        max_length=TEXT_LIMIT,
        widget=forms.Textarea(attrs={"rows": 6}),
        help_text="What the role must change; it redoes the phase with this feedback.",
    )


class CancelForm(_TransitionForm):
    reason = forms.CharField(
        required=False,
        max_length=TEXT_LIMIT,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Optional. Cancelling is final.",
    )


class FailForm(_TransitionForm):
    reason = forms.CharField(
        max_length=TEXT_LIMIT,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Why the workflow failed. Failing is final.",
    )


class RegressForm(_TransitionForm):
    target = forms.ChoiceField(help_text="The phase the work goes back to.")
    reason = forms.CharField(
        max_length=TEXT_LIMIT,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Why the work goes back.",
    )
    feedback = forms.CharField(
        max_length=TEXT_LIMIT,
        widget=forms.Textarea(attrs={"rows": 6}),
        help_text="What the next role must fix; it sees this in its context.",
    )

    def __init__(self, *args: Any, workflow: Workflow, **kwargs: Any) -> None:
        super().__init__(*args, workflow=workflow, **kwargs)
        # Outside TESTING/VERIFICATION the service refuses the regression and says why.
        targets = REGRESSION_TARGETS.get(workflow.state) or tuple(
            dict.fromkeys(t for ts in REGRESSION_TARGETS.values() for t in ts)
        )
        self.fields["target"].choices = [(t, State(t).label) for t in targets]
        self.fields["target"].initial = targets[0]


@dataclass(frozen=True)
class AdminTransition:
    label: str
    done: str
    form: type[_TransitionForm]
    run: Callable[[Workflow, Actor, dict], TransitionOutcome]
    one_click: bool = False  # a POST button on the change page; the rest open a form


ADMIN_TRANSITIONS: dict[str, AdminTransition] = {
    Transition.APPROVE: AdminTransition(
        label="Approve",
        done="Approved",
        form=ApproveForm,
        one_click=True,
        run=lambda wf, actor, data: workflow_approve(
            workflow_id=wf.pk, actor=actor, comment=data.get("comment", "")
        ),
    ),
    Transition.REJECT: AdminTransition(
        label="Reject",
        done="Rejected",
        form=RejectForm,
        run=lambda wf, actor, data: workflow_reject(
            workflow_id=wf.pk, actor=actor, feedback=data["feedback"]
        ),
    ),
    Transition.REGRESS: AdminTransition(
        label="Regress",
        done="Regressed",
        form=RegressForm,
        run=lambda wf, actor, data: workflow_regress(
            workflow_id=wf.pk,
            target=data["target"],
            reason=data["reason"],
            feedback=data["feedback"],
            actor=actor,
        ),
    ),
    Transition.CANCEL: AdminTransition(
        label="Cancel workflow",
        done="Cancelled",
        form=CancelForm,
        run=lambda wf, actor, data: workflow_cancel(
            workflow_id=wf.pk, actor=actor, reason=data.get("reason", "")
        ),
    ),
    Transition.FAIL: AdminTransition(
        label="Fail workflow",
        done="Failed",
        form=FailForm,
        run=lambda wf, actor, data: workflow_fail(
            workflow_id=wf.pk, actor=actor, reason=data["reason"]
        ),
    ),
}


@admin.register(Workflow)
class WorkflowAdmin(NulSafeModelAdmin):
    list_display = (
        "title",
        "project",
        "state",
        "current_role",
        "awaiting_approval",
        "regression_count",
        "created_at",
    )
    list_filter = ("project", "state", "current_role", "awaiting_approval", "created_at")
    list_select_related = ("project",)
    date_hierarchy = "created_at"
    search_fields = ("title", "build_id")
    search_help_text = "Title, build id, or a workflow id (the full UUID)."
    actions = None
    inlines = (
        HandoffInline,
        WorkflowEventInline,
        MessageInline,
        PhaseResultInline,
        WorkItemInline,
        CheckRunInline,
    )
    change_form_template = "admin/workflows/workflow/change_form.html"
    transition_form_template = "admin/workflows/workflow/transition_form.html"
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "title",
                    "project",
                    "created_by",
                    "build_id",
                    "external_user_id",
                    "model_name",
                )
            },
        ),
        (
            "State",
            {
                "fields": (
                    "state",
                    "current_role",
                    "last_phase",
                    "awaiting_approval",
                    "regression_count",
                    "regression_limit",
                    "terminal_reason",
                    "last_event_seq",
                    "last_message_seq",
                    "tests_verified",
                )
            },
        ),
        ("Requirements", {"fields": ("requirements_text",)}),
        ("Usage", {"fields": ("input_tokens", "output_tokens", "cost_usd", "usage_breakdown")}),
        ("Times", {"fields": ("created_at", "updated_at", "completed_at")}),
    )
    readonly_fields = tuple(
        field for _, options in fieldsets for field in options["fields"]
    )  # never edited by hand; the services own every write

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("project", "created_by")

    @admin.display(description="tests")
    def tests_verified(self, obj: Workflow) -> str:
        report = workflow_testing_result(workflow=obj)
        return tests_verification_note(report) or "TESTING has not completed yet."

    @admin.display(description="by role and phase")
    def usage_breakdown(self, obj: Workflow) -> str:
        usage = workflow_usage(workflow=obj)
        rows = [
            (f"{kind}: {key}", t["calls"], t["input_tokens"], t["output_tokens"], t["cost_usd"])
            for kind, bucket in (("role", usage["by_role"]), ("phase", usage["by_phase"]))
            for key, t in bucket.items()
        ]
        if not rows:
            return "no model calls recorded"
        return format_html(
            "<table><tr><th></th><th>calls</th><th>input</th><th>output</th><th>USD</th></tr>"
            "{}</table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                rows,
            ),
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        found, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        wanted = _uuid_in(search_term)
        if wanted is not None:
            found |= queryset.filter(pk=wanted)
        return found, may_have_duplicates

    @admin.display(description="requirements")
    def requirements_text(self, obj: Workflow) -> str:
        return _pre(_json(obj.requirements))

    # Workflows are opened through the API and moved only by the services.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_transition_permission(self, request: HttpRequest) -> bool:
        """Transitions need staff and `change_workflow`; the form itself stays read-only."""
        user = request.user
        codename = get_permission_codename("change", self.opts)
        return user.is_active and user.is_staff and user.has_perm(f"workflows.{codename}")

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<path:object_id>/transition/<str:action>/",
                self.admin_site.admin_view(self.transition_view),
                name="{}_{}_transition".format(*info),
            ),
            *super().get_urls(),
        ]

    def _change_url(self, workflow: Workflow) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
            args=[quote(workflow.pk)],
            current_app=self.admin_site.name,
        )

    def _transition_url(self, workflow: Workflow, action: str) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_transition",
            args=[quote(workflow.pk), action],
            current_app=self.admin_site.name,
        )

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict | None = None,
    ) -> HttpResponse:
        workflow = self.get_object(request, unquote(object_id))
        context = dict(extra_context or {})
        if workflow is not None and self.has_transition_permission(request):
            context.update(self._transition_panel(request, workflow))
        return super().change_view(request, object_id, form_url, context)

    def _transition_panel(self, request: HttpRequest, workflow: Workflow) -> dict:
        allowed = available_transitions(workflow, None)
        member_role = (
            Membership.objects.filter(project_id=workflow.project_id, user=request.user)
            .values_list("role", flat=True)
            .first()
        )
        return {
            "transition_panel": True,
            "transition_buttons": [
                {
                    "action": action,
                    "label": ADMIN_TRANSITIONS[action].label,
                    "one_click": ADMIN_TRANSITIONS[action].one_click,
                    "url": self._transition_url(workflow, action),
                }
                for action in allowed
                if action in ADMIN_TRANSITIONS
            ],
            "can_complete": Transition.COMPLETE in allowed,
            "member_role": member_role,
        }

    def transition_view(self, request: HttpRequest, object_id: str, action: str) -> HttpResponse:
        """GET: the form for `action`; POST: ask the service for it, then go back."""
        spec = ADMIN_TRANSITIONS.get(action)
        if spec is None:
            raise Http404(f"no admin transition {action!r}")
        if not self.has_transition_permission(request):
            raise PermissionDenied
        workflow = self.get_object(request, unquote(object_id))
        if workflow is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)

        if request.method == "POST":
            form = spec.form(request.POST, workflow=workflow)
            if form.is_valid():
                self._transition(request, workflow, action, spec, form.cleaned_data)
                return HttpResponseRedirect(self._change_url(workflow))
        elif action not in available_transitions(workflow, None):
            self.message_user(
                request,
                f"'{action}' is not available: workflow is in {workflow.state}"
                f"{' awaiting approval' if workflow.awaiting_approval else ''}.",
                messages.ERROR,
            )
            return HttpResponseRedirect(self._change_url(workflow))
        else:
            form = spec.form(workflow=workflow)

        context = {
            **self.admin_site.each_context(request),
            "title": spec.label,
            "subtitle": str(workflow),
            "opts": self.opts,
            "original": workflow,
            "form": form,
            "action": action,
            "spec": spec,
            "change_url": self._change_url(workflow),
            "form_url": self._transition_url(workflow, action),
            "media": self.media + form.media,
            "has_view_permission": True,
            "is_popup": False,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.transition_form_template, context)

    def _transition(
        self,
        request: HttpRequest,
        workflow: Workflow,
        action: str,
        spec: AdminTransition,
        data: dict,
    ) -> None:
        try:
            outcome = spec.run(workflow, Actor.of(request.user), data)
        except WorkflowNotFound:
            self.message_user(request, self._not_found_text(request, workflow), messages.ERROR)
            return
        except (TransitionConflict, ActionForbidden) as exc:
            self.message_user(request, f"{spec.label} refused: {exc}", messages.ERROR)
            return
        except ValidationError as exc:
            self.message_user(
                request, f"{spec.label} refused: {'; '.join(exc.messages)}", messages.ERROR
            )
            return
        except ConcurrentTransition:
            self.message_user(
                request,
                f"{spec.label} lost a race with another change; reload the page and try again.",
                messages.ERROR,
            )
            return

        moved = outcome.workflow
        text = f"{spec.done}: {outcome.previous_state} → {moved.state}"
        if outcome.handoff is not None:
            text += (
                f" (handoff at event #{outcome.handoff.event_seq}, by {outcome.handoff.actor_name})"
            )
        self.log_change(request, moved, text)
        if action == Transition.REGRESS and moved.state == State.FAILED:
            self.message_user(
                request,
                f"Regression limit of {moved.regression_limit} reached: the workflow FAILED "
                f"instead of going back. {text}",
                messages.WARNING,
            )
        else:
            self.message_user(request, text, messages.SUCCESS)

    @staticmethod
    def _not_found_text(request: HttpRequest, workflow: Workflow) -> str:
        if not Membership.objects.filter(
            project_id=workflow.project_id, user=request.user
        ).exists():
            return (
                f"You are not a member of project {workflow.project}: the workflow services "
                f"act only for project members. Add yourself (as owner) under Projects first."
            )
        return "The workflow no longer exists."


# --- the audit log ---------------------------------------------------------------------


class _AuditLogAdmin(NulSafeModelAdmin):
    """Append-only audit rows: listed and viewed, never added, changed or deleted."""

    actions = None
    list_select_related = ("workflow", "workflow__project")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return _may_view_trail(request, self.opts)

    def get_actions(self, request: HttpRequest) -> dict:
        return {}

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        found, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        wanted = _uuid_in(search_term)
        if wanted is not None:
            found |= queryset.filter(workflow_id=wanted)
        return found, may_have_duplicates

    @admin.display(description="workflow", ordering="workflow__created_at")
    def workflow_link(self, obj: Any) -> str:
        url = reverse(
            "admin:workflows_workflow_change",
            args=[quote(obj.workflow_id)],
            current_app=self.admin_site.name,
        )
        return format_html('<a href="{}">{}</a>', url, obj.workflow.title)

    @admin.display(description="project", ordering="workflow__project__slug")
    def project(self, obj: Any) -> str:
        return str(obj.workflow.project)


@admin.register(Handoff)
class HandoffAdmin(_AuditLogAdmin):
    list_display = (
        "__str__",
        "workflow_link",
        "project",
        "event_seq",
        "kind",
        "from_role",
        "to_role",
        "actor_name",
        "created_at",
    )
    list_filter = ("kind", "workflow__project", "from_state", "to_state", "created_at")
    date_hierarchy = "created_at"
    search_fields = ("workflow__title", "actor_name", "reason", "feedback", "summary")
    search_help_text = "Workflow title, actor, reason, feedback, or a workflow id (full UUID)."
    ordering = ("-created_at", "-id")
    fields = (
        "workflow_link",
        "event_seq",
        "kind",
        "from_state",
        "to_state",
        "from_role",
        "to_role",
        "actor",
        "actor_name",
        "reason",
        "feedback",
        "summary",
        "phase_result",
        "created_at",
    )
    readonly_fields = fields


@admin.register(WorkflowEvent)
class WorkflowEventAdmin(_AuditLogAdmin):
    list_display = (
        "__str__",
        "workflow_link",
        "project",
        "seq",
        "type",
        "actor_name",
        "created_at",
    )
    list_filter = ("type", "workflow__project", "created_at")
    date_hierarchy = "created_at"
    search_fields = ("workflow__title", "actor_name", "type")
    search_help_text = "Workflow title, actor, type, or a workflow id (full UUID)."
    ordering = ("-created_at", "-id")
    fields = ("workflow_link", "seq", "type", "actor", "actor_name", "data_text", "created_at")
    readonly_fields = fields

    @admin.display(description="data")
    def data_text(self, obj: WorkflowEvent) -> str:
        return _pre(_json(obj.data))


# --- projects and API tokens -----------------------------------------------------------


SECRET_FIELDS = Project.SECRET_FIELDS


class ProjectAdminForm(forms.ModelForm):
    approval_gates = forms.MultipleChoiceField(
        choices=[(phase, State(phase).label) for phase in PHASES],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text=Project._meta.get_field("approval_gates").help_text,
    )

    class Meta:
        model = Project
        fields = (
            "slug",
            "name",
            "repository",
            "default_branch",
            "approval_gates",
            "regression_limit",
            "quality_threshold",
            "budget_usd",
            "role_models",
            "max_work_items",
            "work_item_concurrency",
            "git_remote_url",
            "test_command",
            "setup_command",
            "sandbox_env",
            *SECRET_FIELDS,
        )
        widgets = {
            # Secrets are write-only: the page never contains them; blank keeps the old one.
            name: forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"})
            for name in SECRET_FIELDS
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in SECRET_FIELDS:
            field = self.fields[name]
            stored = bool(self.instance.pk and getattr(self.instance, name))
            field.help_text = (
                "Stored (encrypted). Leave blank to keep it; type a new value to replace it."
                if stored
                else "Not set. Stored encrypted; never shown again."
            )
            field.required = False
            field.strip = False  # a pasted newline is refused below, not silently cut

    def clean(self) -> dict:
        cleaned = super().clean()
        for name in SECRET_FIELDS:
            problem = secret_value_problem(cleaned.get(name) or "")
            if problem:
                self.add_error(name, problem)
            elif not cleaned.get(name) and self.instance.pk:
                cleaned[name] = getattr(self.instance, name)
        return cleaned

    def clean_approval_gates(self) -> list[str]:
        chosen = set(self.cleaned_data["approval_gates"])
        return [phase for phase in PHASES if phase in chosen]


class MembershipInline(admin.TabularInline):
    model = Membership
    fields = ("user", "role")
    autocomplete_fields = ("user",)
    extra = 1


@admin.register(Project)
class ProjectAdmin(NulSafeModelAdmin):
    form = ProjectAdminForm
    inlines = (MembershipInline,)
    list_display = (
        "slug",
        "name",
        "repository",
        "gates",
        "regression_limit",
        "created_at",
    )
    search_fields = ("slug", "name", "repository")
    prepopulated_fields = {"slug": ("name",)}

    @admin.display(description="approval gates")
    def gates(self, obj: Project) -> str:
        return ", ".join(obj.approval_gates or []) or "—"

    def save_model(self, request: HttpRequest, obj: Project, form: Any, change: bool) -> None:
        """Through the project services (which validate, lock and audit); the members in
        the inline are saved after, as usual."""
        actor = Actor.of(request.user)
        fields = {name: getattr(obj, name) for name in form.fields if name in PROJECT_FIELDS}
        if change:
            project_update(project=obj, actor=actor, **fields)
            return
        created = project_create(actor=actor, **fields)
        # The form's instance becomes the created row, so the inline saves its members.
        obj.pk, obj.created_at = created.pk, created.created_at
        obj._state.adding, obj._state.db = False, created._state.db

    def log_addition(self, request: HttpRequest, obj: Project, message: Any) -> None:
        """project_create has recorded the addition."""

    def log_change(self, request: HttpRequest, obj: Project, message: Any) -> Any:
        """project_update has recorded the project's own fields; only the inline's
        changes (entries that name their object) are left to record here."""
        inline = [m for m in message if any("name" in detail for detail in m.values())]
        if inline:
            return super().log_change(request, obj, inline)
        return None


@admin.register(ApiToken)
class ApiTokenAdmin(NulSafeModelAdmin):
    """Tokens are created here; the raw token is shown once and never stored."""

    list_display = ("token_hint", "name", "user", "created_at", "last_used_at")
    list_filter = ("created_at", "last_used_at")
    list_select_related = ("user",)
    search_fields = ("user__username", "name", "hint")
    autocomplete_fields = ("user",)
    token_created_template = "admin/workflows/apitoken/token_created.html"

    @admin.display(description="token", ordering="hint")
    def token_hint(self, obj: ApiToken) -> str:
        return f"{obj.hint}…" if obj.hint else "—"

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("user", "name")
        return ("token_hint", "user", "name", "created_at", "last_used_at")

    def get_readonly_fields(
        self, request: HttpRequest, obj: ApiToken | None = None
    ) -> tuple[str, ...]:
        if obj is None:
            return ()
        # A token never moves to another user; only its label may be renamed.
        return ("token_hint", "user", "created_at", "last_used_at")

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        if not change:
            raw, obj.digest = ApiToken.generate()
            obj.hint = raw[:8]
            obj._raw_token = raw  # handed to response_add, never saved
        super().save_model(request, obj, form, change)

    def response_add(
        self, request: HttpRequest, obj: ApiToken, post_url_continue: str | None = None
    ) -> HttpResponse:
        # Rendered in this response rather than after a redirect: a queued message would be
        # kept in the message storage (a cookie or the session table) until the next page.
        raw = obj.__dict__.pop("_raw_token", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        self.message_user(
            request,
            format_html(
                "API token for {} created: <code>{}</code> — copy it now. Only its digest "
                "is stored, so it cannot be shown again.",
                obj.user,
                raw,
            ),
            messages.SUCCESS,
        )
        context = {
            **self.admin_site.each_context(request),
            "title": "API token created",
            "opts": self.opts,
            "token": obj,
            "changelist_url": reverse(
                f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist",
                current_app=self.admin_site.name,
            ),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.token_created_template, context)
