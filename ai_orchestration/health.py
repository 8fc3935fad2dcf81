"""The autopilot's part of `GET /api/health/` (registered in AiOrchestrationConfig.ready()).

Runs whose lease has expired have lost their worker; the watchdog re-queues them within
its interval. Many of them, or an old expiry, mean no watchdog is running.
"""

from typing import Any

from django.utils import timezone
from rest_framework import serializers

from ai_orchestration.autopilot.selectors import runs_lease_summary
from workflows.api.health import HealthCheckSerializer


def autopilot_health() -> dict[str, Any]:
    """Running runs and those among them whose lease expired (how long ago, the oldest)."""
    now = timezone.now()
    summary = runs_lease_summary(now=now)
    oldest = summary["oldest_expiry"]
    return {
        "running": summary["running"],
        "expired_leases": summary["expired_leases"],
        "oldest_expired_lease_seconds": round((now - oldest).total_seconds(), 3) if oldest else 0.0,
    }


class AutopilotHealthSerializer(HealthCheckSerializer):
    """Autopilot runs: running, and running with an expired lease (their worker died)."""

    running = serializers.IntegerField(required=False)
    expired_leases = serializers.IntegerField(
        required=False,
        help_text="Running runs whose lease has expired; the watchdog re-queues them.",
    )
    oldest_expired_lease_seconds = serializers.FloatField(
        required=False, help_text="Since when the oldest of those leases has expired (0: none)."
    )
