from django.apps import AppConfig


class ObservabilityConfig(AppConfig):
    name = "topdog.observability"
    label = "topdog_observability"
    verbose_name = "Observability"

    def ready(self) -> None:
        from topdog.observability import provider_calls, tasks, tracing  # noqa: F401

        tasks.connect()
        tracing.tracing_setup()
