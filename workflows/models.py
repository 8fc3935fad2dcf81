"""Workflow data. Transition methods only change fields; services do everything else."""

import hashlib
import re
import secrets
import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from django_fsm import RETURN_VALUE, ConcurrentTransitionMixin, FSMField, transition

from workflows.crypto import EncryptedTextField
from workflows.models_catalog import MAX_NAME_LENGTH, role_setting_check
from workflows.states import (
    NEXT_STATE,
    PHASES,
    TERMINAL_STATES,
    EventType,
    HandoffKind,
    MemberRole,
    Role,
    Sender,
    State,
    phases_completed,
    role_for_state,
)

NON_TERMINAL = [*PHASES]


class Project(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.SlugField(max_length=80, unique=True)
    name = models.CharField(max_length=200)
    repository = models.CharField(
        max_length=200, blank=True, help_text="GitHub repository as owner/name."
    )
    default_branch = models.CharField(max_length=100, default="main")
    approval_gates = models.JSONField(
        default=list,
        blank=True,
        help_text="Phases whose result waits for a human approve before the workflow moves.",
    )
    regression_limit = models.PositiveSmallIntegerField(
        default=3, help_text="Regressions a workflow may take; the next one fails it."
    )
    quality_threshold = models.FloatField(
        default=0.0,
        help_text="A TESTING quality score or VERIFICATION score below this sends the work "
        "back to IMPLEMENTATION (0 turns the check off).",
    )
    budget_usd = models.DecimalField(
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="Per-workflow spending cap for the autopilot; empty means no cap.",
    )
    role_models = models.JSONField(
        default=dict,
        blank=True,
        help_text='Model per role, e.g. {"CODE_WRITER": "CLAUDE"}, or its settings, e.g. '
        '{"CODE_WRITER": {"model": "claude-sonnet-4-5", "temperature": 0.2, "max_tokens": '
        "8000}}; others use the workflow's model and the service's defaults.",
    )
    # Secrets: encrypted at rest, write-only in the API, never logged or broadcast.
    openai_api_key = EncryptedTextField(blank=True, help_text="Overrides OPENAI_API_KEY.")
    anthropic_api_key = EncryptedTextField(blank=True, help_text="Overrides ANTHROPIC_API_KEY.")
    github_token = EncryptedTextField(
        blank=True,
        help_text="Fine-grained token for the repository with contents:write and "
        "pull_requests:write (read-only scopes are enough for repository context).",
    )
    git_remote_url = models.CharField(
        max_length=500,
        blank=True,
        help_text="Without GitHub: an https git remote the change is pushed to.",
    )
    git_remote_token = EncryptedTextField(
        blank=True, help_text="Password or token for the git remote, if it needs one."
    )
    test_command = models.CharField(
        max_length=1000,
        blank=True,
        help_text="Runs the repository's tests in the sandbox; empty: detected from the tree "
        "(python -m pytest -q, or npm test).",
    )
    setup_command = models.CharField(
        max_length=1000,
        blank=True,
        help_text="Installs dependencies before the tests (into /deps, cached by the hash of "
        "the dependency files); empty: no setup step.",
    )
    sandbox_env = models.JSONField(
        default=dict,
        blank=True,
        help_text='Non-secret variables for the sandbox, e.g. {"DJANGO_SETTINGS_MODULE": '
        '"app.settings"}. Names that look secret are refused.',
    )
    max_work_items = models.PositiveSmallIntegerField(
        default=50, help_text="A plan with more work items than this is refused at PLANNING."
    )
    work_item_concurrency = models.PositiveSmallIntegerField(
        default=2, help_text="Work items the autopilot runs at once per workflow."
    )
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="projects"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    def clean(self) -> None:
        unknown = [gate for gate in self.approval_gates or [] if gate not in PHASES]
        if unknown:
            raise ValidationError(
                {"approval_gates": f"unknown phases {unknown}; choose from {list(PHASES)}"}
            )
        if not 0.0 <= self.quality_threshold <= 1.0:
            raise ValidationError({"quality_threshold": "must be between 0 and 1"})
        bad_roles = [role for role in self.role_models or {} if role not in Role.values]
        if bad_roles:
            raise ValidationError({"role_models": f"unknown roles {bad_roles}"})
        if not isinstance(self.role_models or {}, dict):
            raise ValidationError({"role_models": "an object of role → model or setting"})
        for role, value in (self.role_models or {}).items():
            try:
                role_setting_check(value)
            except ValueError as exc:
                raise ValidationError({"role_models": f"{role}: {exc}"}) from None
        problem = sandbox_env_problem(self.sandbox_env)
        if problem:
            raise ValidationError({"sandbox_env": problem})

    SECRET_FIELDS = ("openai_api_key", "anthropic_api_key", "github_token", "git_remote_token")

    def provider_api_key(self, provider: str) -> str:
        """The project's own key for `provider`, or "" to use the service's."""
        return {"openai": self.openai_api_key, "anthropic": self.anthropic_api_key}.get(
            provider, ""
        )

    def model_for(self, role: str, default: str) -> str:
        """The model name `role` uses: its `role_models` entry's, else `default`."""
        return self.role_setting(role).get("model") or default

    def role_setting(self, role: str) -> dict:
        """`role`'s entry of `role_models` as {model?, temperature?, max_tokens?}."""
        value = (self.role_models or {}).get(role)
        if isinstance(value, str):
            return {"model": value}
        return value if isinstance(value, dict) else {}

    def has_gate(self, phase: str) -> bool:
        return phase in (self.approval_gates or [])


SECRET_LOOKING_NAME = re.compile(
    r"(_TOKEN|_KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL)|^(DATABASE_URL|REDIS_URL|CACHE_URL)$",
    re.IGNORECASE,
)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")


def sandbox_env_problem(env: object) -> str:
    """Why `env` cannot be a project's sandbox environment, or "" when it can."""
    if not isinstance(env, dict):
        return "must be an object of NAME: value strings"
    if len(env) > 100:
        return "at most 100 variables"
    for name, value in env.items():
        if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
            return (
                f"{name!r} is not a variable name (letters, digits, _; not starting with a digit)"
            )
        if SECRET_LOOKING_NAME.search(name):
            return (
                f"{name} looks like a secret; the sandbox never receives secrets "
                "(tests run without tokens, keys or database URLs)"
            )
        if not isinstance(value, str) or len(value) > 4000 or "\x00" in value:
            return f"{name}: the value must be a string of at most 4000 characters without NUL"
    return ""


class Membership(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=20, choices=MemberRole.choices, default=MemberRole.DEVELOPER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="membership_unique_user"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.project} as {self.role}"


class ApiToken(models.Model):
    """An API token. Only its SHA-256 digest is stored; the token is shown once."""

    PREFIX = "td_"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, default="default")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    hint = models.CharField(max_length=12, editable=False, help_text="First characters.")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    def __str__(self) -> str:
        return f"{self.hint}… ({self.name}, {self.user})"

    @staticmethod
    def digest_of(raw: str) -> str:
        return hashlib.sha256(raw.encode()).hexdigest()

    @classmethod
    def generate(cls) -> tuple[str, str]:
        """A new raw token and its digest."""
        raw = cls.PREFIX + secrets.token_urlsafe(32)
        return raw, cls.digest_of(raw)


def _is_awaiting_approval(workflow: "Workflow") -> bool:
    return workflow.awaiting_approval


def _is_not_awaiting_approval(workflow: "Workflow") -> bool:
    return not workflow.awaiting_approval


class Workflow(ConcurrentTransitionMixin, models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of its own: workflow_project_recent serves lookups by project.
    project = models.ForeignKey(
        Project, on_delete=models.PROTECT, related_name="workflows", db_index=False
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    build_id = models.CharField(max_length=200, blank=True)
    external_user_id = models.CharField(max_length=200, blank=True)
    title = models.CharField(max_length=200)
    requirements = models.JSONField()
    model_name = models.CharField(
        max_length=MAX_NAME_LENGTH, help_text="As asked: a seed name, a model id or provider:model."
    )

    state = FSMField(max_length=20, choices=State.choices, default=State.DISCOVERY, protected=True)
    current_role = models.CharField(
        max_length=30, choices=Role.choices, null=True, blank=True, default=Role.Q_ASSISTANT
    )
    # The working phase the workflow is in, or was in when it reached a terminal state.
    last_phase = models.CharField(max_length=20, choices=State.choices, default=State.DISCOVERY)
    awaiting_approval = models.BooleanField(default=False)
    regression_count = models.PositiveSmallIntegerField(default=0)
    regression_limit = models.PositiveSmallIntegerField(default=3)
    terminal_reason = models.TextField(blank=True)
    # Whether the latest TESTING report is bound to a sandboxed test run (None: no report).
    tests_verified = models.BooleanField(null=True, blank=True)

    last_event_seq = models.PositiveIntegerField(default=0)
    last_message_seq = models.PositiveIntegerField(default=0)
    # Results submitted per phase ({"TESTING": 2}), so the next attempt number needs no
    # query.
    phase_attempts = models.JSONField(default=dict, blank=True)

    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["project", "-created_at", "-id"], name="workflow_project_recent"),
            models.Index(fields=["state"], name="workflow_state"),
        ]

    def __str__(self) -> str:
        return f"{self.title} ({self.state})"

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def is_complete(self) -> bool:
        return self.state == State.COMPLETE

    def completed_phases(self) -> list[str]:
        return phases_completed(state=self.state, last_phase=self.last_phase)

    def progress(self) -> float:
        return round(len(self.completed_phases()) / len(PHASES), 4)

    def next_event_seq(self) -> int:
        """The next gapless event seq. Callers hold the row lock."""
        self.last_event_seq += 1
        return self.last_event_seq

    def next_message_seq(self) -> int:
        self.last_message_seq += 1
        return self.last_message_seq

    def next_attempt(self, phase: str) -> int:
        attempts = dict(self.phase_attempts or {})
        attempts[phase] = attempts.get(phase, 0) + 1
        self.phase_attempts = attempts
        return attempts[phase]

    # Columns a transition may change; saves write only these (never the requirements).
    MUTABLE_FIELDS = (
        "state",
        "current_role",
        "last_phase",
        "awaiting_approval",
        "regression_count",
        "terminal_reason",
        "tests_verified",
        "last_event_seq",
        "last_message_seq",
        "phase_attempts",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "updated_at",
        "completed_at",
    )

    def _enter(self, state: str) -> str:
        self.current_role = role_for_state(state)
        if state in PHASES:
            self.last_phase = state
        else:
            self.completed_at = timezone.now()
        return state

    # --- transitions: field changes only ------------------------------------------------

    @transition(
        field=state,
        source=NON_TERMINAL,
        target=RETURN_VALUE(*NEXT_STATE.values()),
        conditions=[_is_not_awaiting_approval],
    )
    def advance(self) -> str:
        return self._enter(NEXT_STATE[self.state])

    @transition(
        field=state, source=NON_TERMINAL, target=None, conditions=[_is_not_awaiting_approval]
    )
    def hold_for_approval(self) -> None:
        self.awaiting_approval = True

    @transition(
        field=state,
        source=NON_TERMINAL,
        target=RETURN_VALUE(*NEXT_STATE.values()),
        conditions=[_is_awaiting_approval],
    )
    def approve(self) -> str:
        self.awaiting_approval = False
        return self._enter(NEXT_STATE[self.state])

    @transition(field=state, source=NON_TERMINAL, target=None, conditions=[_is_awaiting_approval])
    def reject(self) -> None:
        self.awaiting_approval = False

    @transition(
        field=state,
        source=[State.TESTING, State.VERIFICATION],
        target=State.IMPLEMENTATION,
        conditions=[_is_not_awaiting_approval],
    )
    def regress_to_implementation(self) -> None:
        self.regression_count += 1
        self._enter(State.IMPLEMENTATION)

    @transition(
        field=state,
        source=State.VERIFICATION,
        target=State.PLANNING,
        conditions=[_is_not_awaiting_approval],
    )
    def regress_to_planning(self) -> None:
        self.regression_count += 1
        self._enter(State.PLANNING)

    @transition(field=state, source=NON_TERMINAL, target=State.CANCELLED)
    def cancel(self, reason: str = "") -> None:
        self.awaiting_approval = False
        self.terminal_reason = reason
        self._enter(State.CANCELLED)

    @transition(field=state, source=NON_TERMINAL, target=State.FAILED)
    def fail(self, reason: str = "") -> None:
        self.awaiting_approval = False
        self.terminal_reason = reason
        self._enter(State.FAILED)


class PromptTemplate(models.Model):
    """A role's system prompt, versioned: every edit is a new version; old ones stay.

    The table keeps the name it had when the AI layer owned the model, so moving the
    model into the core moved no data."""

    role = models.CharField(max_length=30, choices=Role.choices)
    version = models.PositiveIntegerField()
    body = models.TextField(
        help_text="System prompt. Placeholders: $role, $state, $project, $repository, "
        "$requirements, $evidence_schema."
    )
    sha256 = models.CharField(max_length=64, editable=False)
    active = models.BooleanField(default=True)
    note = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "ai_orchestration_prompttemplate"
        ordering = ["role", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["role", "version"], name="prompt_unique_version"),
            models.UniqueConstraint(
                fields=["role"], condition=models.Q(active=True), name="prompt_one_active_per_role"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role} v{self.version}{' (active)' if self.active else ''}"

    @staticmethod
    def digest(body: str) -> str:
        return hashlib.sha256(body.encode()).hexdigest()


class RoleContext(models.Model):
    """What a role works with in one workflow: its rendered system prompt and settings."""

    # No index of its own: the (workflow, role) unique index serves lookups by workflow.
    workflow = models.ForeignKey(
        Workflow, on_delete=models.CASCADE, related_name="role_contexts", db_index=False
    )
    role = models.CharField(max_length=30, choices=Role.choices)
    system_prompt = models.TextField()
    prompt_template = models.ForeignKey(
        "PromptTemplate", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    prompt_version = models.CharField(max_length=64, help_text="sha256 of the template body.")
    model_settings = models.JSONField(default=dict)
    context_data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workflow", "role"], name="rolecontext_unique_role"),
        ]

    def __str__(self) -> str:
        return f"{self.role} @ {self.workflow_id}"


class Message(models.Model):
    # No index of its own: the (workflow, seq) unique index serves lookups by workflow.
    workflow = models.ForeignKey(
        Workflow, on_delete=models.CASCADE, related_name="messages", db_index=False
    )
    seq = models.PositiveIntegerField()
    role = models.CharField(max_length=30, choices=Role.choices)
    sender = models.CharField(max_length=10, choices=Sender.choices)
    phase = models.CharField(max_length=20, choices=State.choices)
    content = models.TextField()
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    provider = models.CharField(max_length=40, blank=True)
    model = models.CharField(max_length=100, blank=True)
    prompt_version = models.CharField(max_length=64, blank=True)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["workflow", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "seq"], name="message_unique_seq"),
        ]
        indexes = [models.Index(fields=["workflow", "role", "seq"], name="message_role_seq")]

    def __str__(self) -> str:
        return f"#{self.seq} {self.role}/{self.sender}"


class PhaseResult(models.Model):
    class Status(models.TextChoices):
        ACCEPTED = "accepted"
        PENDING_APPROVAL = "pending_approval"
        REJECTED = "rejected"
        WITHDRAWN = "withdrawn"  # pending when the workflow was cancelled or failed

    # No index of its own: the (workflow, phase, attempt) unique index serves lookups by workflow.
    workflow = models.ForeignKey(
        Workflow, on_delete=models.CASCADE, related_name="phase_results", db_index=False
    )
    phase = models.CharField(max_length=20, choices=State.choices)
    attempt = models.PositiveSmallIntegerField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACCEPTED)
    ai_response = models.TextField(blank=True)
    result = models.JSONField()
    artifacts = models.JSONField(default=list)
    content_hash = models.CharField(max_length=64)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["workflow", "created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["workflow", "phase", "attempt"], name="phaseresult_unique_attempt"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.phase} attempt {self.attempt} ({self.status})"


class AppendOnlyModel(models.Model):
    """Audit rows: written once, never changed or deleted through the ORM instance."""

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise ValidationError(f"{type(self).__name__} rows are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise ValidationError(f"{type(self).__name__} rows are append-only")


class Handoff(AppendOnlyModel):
    # No index of its own: the (workflow, event_seq) index serves lookups by workflow.
    workflow = models.ForeignKey(
        Workflow, on_delete=models.CASCADE, related_name="handoffs", db_index=False
    )
    kind = models.CharField(max_length=12, choices=HandoffKind.choices)
    from_role = models.CharField(max_length=30, choices=Role.choices, null=True, blank=True)
    to_role = models.CharField(max_length=30, choices=Role.choices, null=True, blank=True)
    from_state = models.CharField(max_length=20, choices=State.choices)
    to_state = models.CharField(max_length=20, choices=State.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150)
    reason = models.TextField(blank=True)
    feedback = models.TextField(blank=True)
    summary = models.TextField(blank=True, help_text="What the next role needs to know.")
    phase_result = models.ForeignKey(
        PhaseResult, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    event_seq = models.PositiveIntegerField(help_text="Seq of the event that recorded it.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["workflow", "event_seq"]
        indexes = [models.Index(fields=["workflow", "event_seq"], name="handoff_workflow_seq")]

    def __str__(self) -> str:
        return f"{self.kind}: {self.from_state} → {self.to_state}"


class WorkflowEvent(AppendOnlyModel):
    # No index of its own: the (workflow, seq) unique index serves lookups by workflow.
    workflow = models.ForeignKey(
        Workflow, on_delete=models.CASCADE, related_name="events", db_index=False
    )
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=40, choices=EventType.choices)
    data = models.JSONField(default=dict)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150)
    request_id = models.CharField(
        max_length=200, blank=True, help_text="X-Request-ID of the request (or task) that wrote it."
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["workflow", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "seq"], name="event_unique_seq"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.type}"


class IdempotencyKey(models.Model):
    class Status(models.TextChoices):
        IN_FLIGHT = "in_flight"
        DONE = "done"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="idempotency_keys"
    )
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="sha256 of method, path and body.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.IN_FLIGHT)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="idempotency_unique_key"),
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.status})"


class CheckRun(models.Model):
    """One check of a change set: its static checks, the setup step or the test run.

    The test kind runs the repository's tests on the change set of one IMPLEMENTATION
    attempt (`phase_result`) in a sandbox; TESTING evidence for that attempt is bound to
    the figures measured here."""

    class Kind(models.TextChoices):
        SYNTAX = "syntax"
        SETUP = "setup"
        TEST = "test"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        PASSED = "passed"
        FAILED = "failed"
        ERROR = "error"
        TIMEOUT = "timeout"
        CANCELLED = "cancelled"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="check_runs")
    phase_result = models.ForeignKey(
        PhaseResult,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="check_runs",
        help_text="The IMPLEMENTATION attempt whose change set was checked.",
    )
    attempt = models.PositiveSmallIntegerField(help_text="IMPLEMENTATION attempt number.")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    backend = models.CharField(max_length=40, blank=True)
    isolated = models.BooleanField(default=False)
    command = models.CharField(max_length=1000, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    reason = models.TextField(blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    tests_run = models.PositiveIntegerField(null=True, blank=True)
    tests_failed = models.PositiveIntegerField(null=True, blank=True)
    tests_errors = models.PositiveIntegerField(null=True, blank=True)
    tests_skipped = models.PositiveIntegerField(null=True, blank=True)
    failures = models.JSONField(
        default=list, blank=True, help_text="Failing tests (name, file, message, output)."
    )
    details = models.JSONField(
        default=dict, blank=True, help_text="Kind-specific: files checked and skipped, cache."
    )
    diff = models.TextField(blank=True, help_text="The change set as a diff against the base.")
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    output = models.TextField(blank=True, help_text="Tail of the output, secrets scrubbed.")
    output_truncated = models.BooleanField(default=False)
    log_sha256 = models.CharField(max_length=64, blank=True)
    junit_sha256 = models.CharField(max_length=64, blank=True)
    cancel_requested = models.BooleanField(default=False)
    requested_by = models.CharField(max_length=150, blank=True)
    request_id = models.CharField(
        max_length=200, blank=True, help_text="X-Request-ID of the request that started it."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["workflow", "-created_at"], name="checkrun_workflow_recent"),
        ]
        constraints = [
            # At most one queued or running test run per workflow: a second request is a 409.
            models.UniqueConstraint(
                fields=["workflow"],
                condition=models.Q(kind="test", status__in=["queued", "running"]),
                name="checkrun_one_active_test",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} check of attempt {self.attempt} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE


class WorkItem(models.Model):
    """One item of a PLANNING result's plan, as IMPLEMENTATION works it.

    A plan's items are written when PLANNING completes; a later plan supersedes them
    (`superseded`), and the old rows stay for the audit. An item is `ready` once every
    item it depends on is `done`. A running item is held by a worker's lease."""

    class Status(models.TextChoices):
        PENDING = "pending"
        READY = "ready"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"

    OPEN = (Status.PENDING, Status.READY, Status.RUNNING)

    # No index of its own: work_item_current serves lookups by workflow.
    workflow = models.ForeignKey(
        Workflow, on_delete=models.CASCADE, related_name="work_items", db_index=False
    )
    plan = models.ForeignKey(
        PhaseResult,
        on_delete=models.CASCADE,
        related_name="work_items",
        help_text="The PLANNING attempt whose plan this item is part of.",
    )
    key = models.CharField(max_length=40)
    title = models.CharField(max_length=300)
    description = models.TextField(blank=True)
    files = models.JSONField(default=list)
    depends_on = models.JSONField(default=list)
    depth = models.PositiveSmallIntegerField(default=0, help_text="Longest dependency chain.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    superseded = models.BooleanField(default=False)
    attempt = models.PositiveSmallIntegerField(default=0, help_text="Tries of the current run.")
    executions = models.PositiveIntegerField(
        default=0, help_text="Times a worker started it (all rounds)."
    )
    feedback = models.TextField(blank=True, help_text="Why it is being redone.")
    ai_response = models.TextField(blank=True, help_text="The answer that produced it.")
    result_message = models.TextField(blank=True)
    result_files = models.JSONField(default=list, blank=True)
    result_sha256 = models.CharField(max_length=64, blank=True)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    usage_booked = models.BooleanField(
        default=False, help_text="Its usage is on an IMPLEMENTATION message already."
    )
    error = models.TextField(blank=True)
    worker_id = models.CharField(max_length=100, blank=True)
    lease_token = models.UUIDField(
        null=True,
        blank=True,
        editable=False,
        help_text="Issued anew each time a worker takes it; only its holder may complete it.",
    )
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["workflow", "depth", "key"]
        indexes = [
            models.Index(fields=["workflow", "superseded", "status"], name="work_item_current"),
            models.Index(fields=["status", "lease_expires_at"], name="work_item_lease"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["plan", "key"], name="work_item_unique_key"),
        ]

    def __str__(self) -> str:
        return f"{self.key} {self.title} ({self.status})"


class WorkerBeat(models.Model):
    """A task worker or watchdog process saying it is alive (workflows/workers.py).

    Each process writes its row every few seconds while it runs and sets `stopped_at`
    when it stops cleanly. A task worker's `worker_id` is the id it gives `db_worker`,
    so the task rows it claims (DBTaskResult.worker_ids) name it."""

    class Kind(models.TextChoices):
        WORKER = "worker"
        WATCHDOG = "watchdog"

    worker_id = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["kind", "-last_seen_at"]
        indexes = [models.Index(fields=["kind", "last_seen_at"], name="worker_beat_seen")]

    def __str__(self) -> str:
        return f"{self.kind} {self.worker_id}"
