from django.apps import AppConfig


class ObservabilityConfig(AppConfig):
    name = "topdog.observability"
    label = "topdog_observability"
    verbose_name = "Observability"

    def ready(self) -> None:
        from topdog.observability import tasks, tracing

        tasks.connect()
        tracing.tracing_setup()
