"""OpenTelemetry traces, only when OTEL_EXPORTER_OTLP_ENDPOINT is set.

`tracing_setup()` runs once per process from the app's ready() (daphne, `manage.py
serve`, `db_worker`: every entry point sets Django up, and ready() runs before the
request handler loads its middleware, which the Django instrumentation must precede).
It installs an SDK TracerProvider exporting over OTLP/HTTP (the exporter reads the
standard OTEL_EXPORTER_OTLP_* variables), the Django instrumentation and, on
PostgreSQL, the psycopg one. Without the variable nothing of the SDK is imported or
built, and `provider_span` is a no-op.
"""

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings

from topdog.observability.logs import scrub

logger = logging.getLogger(__name__)

_state: dict[str, Any] = {"tracer": None, "setup": False}


def tracing_enabled() -> bool:
    return _state["tracer"] is not None


def tracer_use(tracer_provider: Any | None) -> None:
    """Make provider spans with `tracer_provider` (None: stop). Tests use this with an
    SDK provider of their own."""
    _state["tracer"] = (
        tracer_provider.get_tracer("topdog.ai_orchestration") if tracer_provider else None
    )


def instrument(tracer_provider: Any) -> None:
    """Django's (and, on PostgreSQL, psycopg's) instrumentation with `tracer_provider`."""
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    options: dict[str, Any] = {
        "tracer_provider": tracer_provider,
        # Inside RequestObservabilityMiddleware, so every response has its X-Request-ID
        # and the server span can carry it.
        "middleware_position": 1,
        "request_hook": _request_hook,
    }
    if not os.environ.get("OTEL_PYTHON_DJANGO_EXCLUDED_URLS"):
        options["excluded_urls"] = "metrics"  # scrapes are not worth a trace each
    DjangoInstrumentor().instrument(**options)
    if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

        PsycopgInstrumentor().instrument(tracer_provider=tracer_provider)


def _request_hook(span: Any, request: Any) -> None:
    request_id = getattr(request, "request_id", None)
    if request_id and span is not None and span.is_recording():
        span.set_attribute("topdog.request_id", request_id)


def uninstrument() -> None:
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    DjangoInstrumentor().uninstrument()
    if PsycopgInstrumentor().is_instrumented_by_opentelemetry:
        PsycopgInstrumentor().uninstrument()


def tracing_setup() -> bool:
    """Set tracing up for this process if OTEL_EXPORTER_OTLP_ENDPOINT is set (once)."""
    if _state["setup"] or not settings.OTEL_EXPORTER_OTLP_ENDPOINT:
        return False
    _state["setup"] = True
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are honoured; "topdog" otherwise.
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "topdog"}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    instrument(provider)
    tracer_use(provider)
    logger.info("tracing: spans exported to %s", settings.OTEL_EXPORTER_OTLP_ENDPOINT)
    return True


def _messages_json(messages: Any) -> str:
    return json.dumps(
        [
            {"role": m.role, "parts": [{"type": "text", "content": scrub(m.content)}]}
            for m in messages
        ]
    )


class ProviderSpan:
    """What a provider call adds to its span (a no-op without tracing)."""

    def __init__(self, span: Any = None) -> None:
        self.span = span

    def completed(self, completion: Any) -> None:
        if self.span is None:
            return
        self.span.set_attributes(
            {
                "gen_ai.response.model": completion.model,
                "gen_ai.response.finish_reasons": [completion.finish_reason],
                "gen_ai.usage.input_tokens": completion.usage.input_tokens,
                "gen_ai.usage.output_tokens": completion.usage.output_tokens,
                "topdog.attempts": completion.attempts,
            }
        )
        if settings.TOPDOG_OTEL_CAPTURE_PROMPTS:
            self.span.set_attribute(
                "gen_ai.output.messages",
                _messages_json([_Said("assistant", completion.content)]),
            )

    def failed(self, exc: BaseException) -> None:
        if self.span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        self.span.set_attribute("error.type", type(exc).__qualname__)
        self.span.set_status(Status(StatusCode.ERROR, scrub(str(exc))[:500]))


class _Said:
    def __init__(self, role: str, content: str) -> None:
        self.role, self.content = role, content


@contextmanager
def provider_span(provider: str, request: Any) -> Iterator[ProviderSpan]:
    """One CLIENT span per model call (all its attempts), GenAI semantic conventions."""
    tracer = _state["tracer"]
    if tracer is None:
        yield ProviderSpan()
        return
    from opentelemetry.trace import SpanKind

    metadata = request.metadata or {}
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": provider,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": request.model,
        "gen_ai.request.temperature": request.temperature,
        "gen_ai.request.max_tokens": request.max_tokens,
    }
    for key in ("workflow_id", "phase", "role"):
        if metadata.get(key) is not None:
            attributes[f"topdog.{key}"] = str(metadata[key])
    if settings.TOPDOG_OTEL_CAPTURE_PROMPTS:
        attributes["gen_ai.input.messages"] = _messages_json(request.messages)
    with tracer.start_as_current_span(
        f"chat {request.model}",
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,  # exception text may quote a vendor's answer: see failed()
        set_status_on_exception=False,
    ) as span:
        yield ProviderSpan(span)
