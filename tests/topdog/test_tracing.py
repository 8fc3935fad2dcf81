"""OpenTelemetry: one GenAI span per model call, server spans for requests."""

import pytest
from django.test import Client
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ai_orchestration.providers.base import (
    ChatMessage,
    ChatRequest,
    ProviderError,
    complete_with_retries,
    provider_for,
)
from topdog.observability import tracing

PROMPT = "Add a dark mode to the settings page"


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.tracer_use(provider)
    yield exporter, provider
    tracing.tracer_use(None)


def call(phase: str = "DISCOVERY"):
    return complete_with_retries(
        provider_for("offline"),
        ChatRequest(
            model="topdog-offline-1",
            messages=(ChatMessage("system", "You are a planner"), ChatMessage("user", PROMPT)),
            temperature=0.3,
            max_tokens=1024,
            metadata={"phase": phase, "workflow_id": "wf-7", "role": "Q_ASSISTANT"},
        ),
        deadline_seconds=10,
    )


def test_no_tracer_without_an_endpoint(settings):
    assert not settings.OTEL_EXPORTER_OTLP_ENDPOINT
    assert not tracing.tracing_enabled()
    assert not tracing.tracing_setup()


def test_a_provider_call_is_one_genai_span(spans, db):
    exporter, _ = spans
    completion = call()
    [span] = exporter.get_finished_spans()
    assert span.name == "chat topdog-offline-1"
    assert span.kind == SpanKind.CLIENT
    attributes = dict(span.attributes)
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.system"] == "offline"
    assert attributes["gen_ai.provider.name"] == "offline"
    assert attributes["gen_ai.request.model"] == "topdog-offline-1"
    assert attributes["gen_ai.response.model"] == "topdog-offline-1"
    assert attributes["gen_ai.request.temperature"] == 0.3
    assert attributes["gen_ai.request.max_tokens"] == 1024
    assert attributes["gen_ai.usage.input_tokens"] == completion.usage.input_tokens
    assert attributes["gen_ai.usage.output_tokens"] == completion.usage.output_tokens
    assert attributes["topdog.workflow_id"] == "wf-7"
    assert attributes["topdog.phase"] == "DISCOVERY"
    # No prompt or answer text by default.
    assert "gen_ai.input.messages" not in attributes
    assert "gen_ai.output.messages" not in attributes
    assert not any(PROMPT in str(v) for v in attributes.values())


def test_prompts_are_captured_only_when_asked_and_scrubbed(spans, settings, db):
    exporter, _ = spans
    settings.TOPDOG_OTEL_CAPTURE_PROMPTS = True
    settings.OPENAI_API_KEY = "sk-live-abcdefghijklmnop"
    complete_with_retries(
        provider_for("offline"),
        ChatRequest(
            model="topdog-offline-1",
            messages=(ChatMessage("user", f"{PROMPT} sk-live-abcdefghijklmnop"),),
            metadata={"phase": "DISCOVERY", "workflow_id": "wf-7"},
        ),
        deadline_seconds=10,
    )
    [span] = exporter.get_finished_spans()
    captured = span.attributes["gen_ai.input.messages"]
    assert PROMPT in captured
    assert "sk-live-abcdefghijklmnop" not in captured
    assert "gen_ai.output.messages" in span.attributes


def test_a_failed_call_is_an_error_span(spans, db):
    exporter, _ = spans
    with pytest.raises(ProviderError):
        call(phase="NO_SUCH_PHASE")
    [span] = exporter.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == "ProviderError"


@pytest.mark.django_db
def test_an_http_request_is_a_server_span_with_its_request_id(spans):
    exporter, provider = spans
    tracing.instrument(provider)
    try:
        response = Client().get("/api/health/", HTTP_X_REQUEST_ID="trace-me-1")
    finally:
        tracing.uninstrument()
    assert response.status_code == 200
    server = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert len(server) == 1
    assert server[0].name == "GET api/health/"
    assert server[0].attributes["topdog.request_id"] == "trace-me-1"
