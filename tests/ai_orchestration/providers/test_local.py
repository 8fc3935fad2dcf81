"""The local (OpenAI-compatible server) adapter against a loopback fake server."""

import json

import pytest

from ai_orchestration.providers.base import (
    ChatMessage,
    ChatRequest,
    ProviderError,
    complete_with_retries,
    provider_for,
)
from ai_orchestration.providers.local import LocalProvider
from ai_orchestration.schemas import evidence_json_schema
from ai_orchestration.tokens import tokens_estimate
from tests.ai_orchestration.fakes import DeltaRecorder, SleepRecorder, cut_after, ok, status
from workflows.evidence import EVIDENCE_EXAMPLES
from workflows.states import State

TEXT = "A local model answered."


def make_request(**kwargs) -> ChatRequest:
    return ChatRequest(
        model="llama3.1",
        messages=(ChatMessage("system", "You write code."), ChatMessage("user", "Write it.")),
        **kwargs,
    )


def call(provider, request=None, **kwargs):
    kwargs.setdefault("deadline_seconds", 10)
    kwargs.setdefault("sleep", SleepRecorder())
    return complete_with_retries(provider, request or make_request(), **kwargs)


def test_streams_from_the_server_with_a_placeholder_key(fake_openai):
    fake_openai.script(ok(TEXT, usage=(12, 5)))
    deltas = DeltaRecorder()

    completion = call(LocalProvider(base_url=fake_openai.base_url), on_delta=deltas)

    assert (completion.content, completion.provider, completion.model) == (
        TEXT,
        "local",
        "llama3.1",
    )
    assert deltas.text() == TEXT
    assert completion.usage.reported is True
    sent = fake_openai.last
    assert sent.header("authorization") == "Bearer not-needed"
    assert sent.json["max_tokens"] == 4096  # the name every compatible server knows
    assert "max_completion_tokens" not in sent.json


def test_a_configured_key_is_sent(fake_openai):
    call(LocalProvider(base_url=fake_openai.base_url, api_key="local-secret-key"))

    assert fake_openai.last.header("authorization") == "Bearer local-secret-key"


def test_a_bare_server_url_means_its_v1_api(fake_openai):
    completion = call(LocalProvider(base_url=fake_openai.url))  # e.g. http://localhost:11434

    assert completion.content
    assert fake_openai.last.path == "/v1/chat/completions"


def test_usage_is_estimated_when_the_server_reports_none(fake_openai):
    fake_openai.script(ok(TEXT, usage=False))

    completion = call(LocalProvider(base_url=fake_openai.base_url))

    assert completion.usage.reported is False
    assert completion.usage.output_tokens == tokens_estimate(TEXT)


def test_json_evidence_through_response_format(fake_openai):
    example = EVIDENCE_EXAMPLES[State.IMPLEMENTATION]
    fake_openai.script(ok(json=example))
    schema = evidence_json_schema(State.IMPLEMENTATION)

    completion = call(
        LocalProvider(base_url=fake_openai.base_url),
        make_request(json_schema=schema, metadata={"phase": State.IMPLEMENTATION}),
    )

    assert json.loads(completion.content) == example
    assert fake_openai.last.json["response_format"]["json_schema"]["schema"] == schema


def test_a_cut_stream_is_retried(fake_openai):
    fake_openai.script(cut_after(1), ok(TEXT))

    completion = call(LocalProvider(base_url=fake_openai.base_url))

    assert (completion.content, completion.attempts) == (TEXT, 2)


def test_without_a_base_url_it_says_to_set_one():
    with pytest.raises(ProviderError) as caught:
        call(LocalProvider(base_url=""))

    assert caught.value.retryable is False
    assert caught.value.attempts == 1
    assert "LOCAL_LLM_BASE_URL" in str(caught.value)


def test_an_unknown_model_names_the_setting(fake_openai):
    fake_openai.script(status(404))

    with pytest.raises(ProviderError) as caught:
        call(LocalProvider(base_url=fake_openai.base_url))

    assert caught.value.retryable is False
    assert "TOPDOG_LOCAL_MODEL" in str(caught.value)
    assert "LOCAL_LLM_BASE_URL" in str(caught.value)


def test_provider_for_local(settings, fake_openai):
    settings.TOPDOG_PROVIDERS = {
        **settings.TOPDOG_PROVIDERS,
        "local": {
            "class": "ai_orchestration.providers.local.LocalProvider",
            "api_key": "",
            "base_url": fake_openai.base_url,
            "timeout": 5,
        },
    }

    provider = provider_for("local")

    assert isinstance(provider, LocalProvider) and provider.name == "local"
    assert call(provider).content
