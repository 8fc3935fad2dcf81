from django.apps import AppConfig

from workflows.health_checks import health_check_register
from workflows.listeners import transition_listener_register


class AiOrchestrationConfig(AppConfig):
    name = "ai_orchestration"
    verbose_name = "AI orchestration"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Follow the core's committed transitions (approve/reject wake a waiting run;
        cancel/fail end it) through the listener registry of `workflows.listeners`, and
        report the runs' leases in `GET /api/health/` through `workflows.health_checks`."""
        # Imported here, from this app only: models load once the app registry is ready.
        from ai_orchestration.autopilot.services import autopilot_transition_follow
        from ai_orchestration.health import AutopilotHealthSerializer, autopilot_health

        transition_listener_register(autopilot_transition_follow)
        health_check_register(
            name="autopilot", run=autopilot_health, serializer=AutopilotHealthSerializer
        )
