"""Prompt templates for the AI roles. Every edit is a new version; old ones stay."""

import hashlib

from django.conf import settings
from django.db import models

from workflows.states import Role


class PromptTemplate(models.Model):
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
