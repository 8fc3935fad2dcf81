"""The AI layer's data: autopilot runs."""

import uuid

from django.conf import settings
from django.db import models

from workflows.models_catalog import MAX_NAME_LENGTH


class AIRun(models.Model):
    """One autopilot execution over a workflow: a phase, or the rest of the workflow."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        WAITING = "waiting"  # stopped at an approval gate; resumes on approve
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"
        # Ended before its work was done, for a reason in stop_reason: the budget cap, or
        # (scope phase) its phase was completed elsewhere.
        STOPPED = "stopped"

    class Scope(models.TextChoices):
        PHASE = "phase"
        WORKFLOW = "workflow"

    ACTIVE = (Status.QUEUED, Status.RUNNING, Status.WAITING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workflow = models.ForeignKey(
        "workflows.Workflow", on_delete=models.CASCADE, related_name="ai_runs"
    )
    scope = models.CharField(max_length=10, choices=Scope.choices, default=Scope.WORKFLOW)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    phase = models.CharField(max_length=20, blank=True, help_text="Phase being worked on.")
    model_name = models.CharField(
        max_length=MAX_NAME_LENGTH,
        blank=True,
        help_text="Model override for every role: a seed name, a model id or provider:model.",
    )
    provider = models.CharField(max_length=40, blank=True)
    model = models.CharField(max_length=100, blank=True)
    phases_completed = models.PositiveSmallIntegerField(default=0)
    attempts = models.PositiveIntegerField(default=0, help_text="Provider calls made.")
    executions = models.PositiveIntegerField(
        default=0, help_text="Steps workers have started on this run."
    )
    recoveries = models.PositiveSmallIntegerField(
        default=0, help_text="Times the run was picked up again after its worker died."
    )
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    error = models.TextField(blank=True)
    stop_reason = models.CharField(max_length=200, blank=True)
    cancel_requested = models.BooleanField(default=False)
    worker_id = models.CharField(max_length=100, blank=True)
    lease_token = models.UUIDField(
        null=True,
        blank=True,
        editable=False,
        help_text="Issued anew by each claim; only its holder may complete the run's phase.",
    )
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    request_id = models.CharField(
        max_length=200, blank=True, help_text="X-Request-ID of the request that started it."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["workflow"],
                condition=models.Q(status__in=["queued", "running", "waiting"]),
                name="airun_one_active_per_workflow",
            ),
        ]

    def __str__(self) -> str:
        return f"run {self.id} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE
