from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    name = "workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from workflows.api import schema  # noqa: F401  (registers the OpenAPI auth scheme)
        from workflows.signals import access_signals_connect

        access_signals_connect()
