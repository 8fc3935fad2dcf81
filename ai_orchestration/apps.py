from django.apps import AppConfig


class AiOrchestrationConfig(AppConfig):
    name = "ai_orchestration"
    verbose_name = "AI orchestration"
    default_auto_field = "django.db.models.BigAutoField"
