"""Autopilot runs in the admin: audited here, driven through the API (start/cancel)."""

from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest

from ai_orchestration.models import AIRun
from workflows.admin_base import NulSafeModelAdmin


@admin.register(AIRun)
class AIRunAdmin(NulSafeModelAdmin):
    """Autopilot runs: audited here, driven through the API (start/cancel)."""

    list_display = (
        "id",
        "workflow",
        "status",
        "scope",
        "phase",
        "provider",
        "model",
        "phases_completed",
        "attempts",
        "recoveries",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "created_at",
    )
    list_filter = ("status", "provider", "scope", "created_at")
    list_select_related = ("workflow",)
    search_fields = ("id", "workflow__id", "workflow__title")
    actions = None

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        return [field.name for field in AIRun._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False
