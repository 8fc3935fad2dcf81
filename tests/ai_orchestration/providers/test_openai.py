"""The OpenAI adapter, driven through the real SDK against a loopback fake server."""

import email.utils
import json
import socket
import time
import traceback

import pytest

from ai_orchestration.providers.base import (
    ChatMessage,
    ChatRequest,
    ProviderCancelled,
    ProviderError,
    Usage,
    complete_with_retries,
    provider_for,
)
from ai_orchestration.providers.openai import OpenAIProvider
from ai_orchestration.schemas import evidence_json_schema
from ai_orchestration.tokens import tokens_estimate
from tests.ai_orchestration.fakes import (
    DeltaRecorder,
    SleepRecorder,
    cut_after,
    hang,
    ok,
    status,
    stream_error,
)
from workflows.evidence import EVIDENCE_EXAMPLES, evidence_validate
from workflows.states import State

KEY = "sk-test-0123456789abcdef-SECRET"
TEXT = "The plan has three steps, each with its own test."


def make_provider(fake, **kwargs) -> OpenAIProvider:
    kwargs = {"api_key": KEY, "base_url": fake.base_url, "timeout": 10, **kwargs}
    return OpenAIProvider(**kwargs)


def make_request(**kwargs) -> ChatRequest:
    return ChatRequest(
        model="gpt-4o",
        messages=(
            ChatMessage("system", "You are the planner."),
            ChatMessage("user", "Plan the change."),
        ),
        **kwargs,
    )


def call(fake, request=None, *, provider=None, **kwargs):
    kwargs.setdefault("deadline_seconds", 10)
    kwargs.setdefault("sleep", SleepRecorder())
    return complete_with_retries(
        provider or make_provider(fake), request or make_request(), **kwargs
    )


def test_streams_text_through_on_delta_and_reports_usage(fake_openai):
    fake_openai.script(ok(TEXT, usage=(42, 7)))
    deltas = DeltaRecorder()

    completion = call(fake_openai, on_delta=deltas)

    assert completion.content == TEXT
    assert deltas.text() == TEXT and len(deltas.items) > 1
    assert deltas.attempts == [1]
    assert completion.usage == Usage(input_tokens=42, output_tokens=7, reported=True)
    assert (completion.provider, completion.model) == ("openai", "gpt-4o")
    assert (completion.finish_reason, completion.attempts) == ("stop", 1)
    sent = fake_openai.last
    assert sent.header("authorization") == f"Bearer {KEY}"
    assert sent.json["model"] == "gpt-4o"
    assert sent.json["stream"] is True
    assert sent.json["stream_options"] == {"include_usage": True}
    assert [m["role"] for m in sent.json["messages"]] == ["system", "user"]
    assert sent.json["messages"][1]["content"] == "Plan the change."
    assert sent.json["temperature"] == 0.2
    assert sent.json["max_completion_tokens"] == 4096
    assert "response_format" not in sent.json


def test_json_evidence_is_asked_for_with_the_phase_schema(fake_openai):
    example = EVIDENCE_EXAMPLES[State.TESTING]
    schema = evidence_json_schema(State.TESTING)
    fake_openai.script(ok(json=example))
    deltas = DeltaRecorder()

    completion = call(
        fake_openai,
        make_request(json_schema=schema, metadata={"phase": State.TESTING}),
        on_delta=deltas,
    )

    assert json.loads(completion.content) == example
    assert evidence_validate(phase=State.TESTING, data=json.loads(completion.content))
    assert deltas.text() == completion.content
    response_format = fake_openai.last.json["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "testing_evidence"
    assert response_format["json_schema"]["schema"] == schema
    assert response_format["json_schema"]["strict"] is False


def test_usage_is_estimated_when_the_server_reports_none(fake_openai):
    fake_openai.script(ok(TEXT, usage=False))

    completion = call(fake_openai)

    assert completion.usage.reported is False
    assert completion.usage.output_tokens == tokens_estimate(TEXT)
    assert completion.usage.input_tokens >= tokens_estimate("Plan the change.")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "1"}, 1.0),
        ({"retry-after": "2.5"}, 2.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
    ],
)
def test_429_is_retried_after_the_retry_after_header(fake_openai, headers, expected):
    fake_openai.script(status(429, headers=headers), ok(TEXT))
    sleep = SleepRecorder()

    completion = call(fake_openai, sleep=sleep)

    assert completion.content == TEXT
    assert completion.attempts == 2
    assert sleep.delays == [pytest.approx(expected)]
    assert len(fake_openai.requests) == 2


def test_429_retry_after_as_an_http_date(fake_openai):
    when = email.utils.formatdate(time.time() + 3, usegmt=True)
    fake_openai.script(status(429, headers={"retry-after": when}), ok(TEXT))
    sleep = SleepRecorder()

    completion = call(fake_openai, sleep=sleep, deadline_seconds=30)

    assert completion.attempts == 2
    assert 1.0 < sleep.delays[0] <= 3.0


def test_500_then_ok_is_retried_with_backoff(fake_openai):
    fake_openai.script(status(500), ok(TEXT))
    sleep = SleepRecorder()

    completion = call(fake_openai, sleep=sleep, base_delay=0.5)

    assert (completion.content, completion.attempts) == (TEXT, 2)
    assert len(sleep.delays) == 1 and 0.25 <= sleep.delays[0] <= 0.5


@pytest.mark.parametrize("code", [408, 409, 502, 503, 504, 529])
def test_transient_statuses_are_retried(fake_openai, code):
    fake_openai.script(status(code), ok(TEXT))

    assert call(fake_openai).attempts == 2


def test_persistent_500_gives_up_after_max_attempts(fake_openai):
    fake_openai.script(*[status(500)] * 3)

    with pytest.raises(ProviderError) as caught:
        call(fake_openai, max_attempts=3)

    assert caught.value.attempts == 3
    assert caught.value.retryable is False
    assert caught.value.status == 500
    assert "3 attempts" in str(caught.value)
    assert len(fake_openai.requests) == 3


def test_401_is_not_retried_and_never_shows_the_key(fake_openai):
    fake_openai.script(status(401))  # the fake echoes the key back, like the real API

    with pytest.raises(ProviderError) as caught:
        call(fake_openai)

    error = caught.value
    assert error.attempts == 1 and error.retryable is False and error.status == 401
    assert "OPENAI_API_KEY" in str(error)
    shown = "".join(traceback.format_exception(error)) + repr(error)
    assert KEY not in shown and KEY[:12] not in shown
    assert error.__context__ is None  # the SDK's error, which quotes the key, is not kept
    assert len(fake_openai.requests) == 1


def test_an_exhausted_quota_is_not_retried(fake_openai):
    error = {
        "message": "You exceeded your current quota.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
    fake_openai.script(status(429, body={"error": error}, headers={"retry-after": "1"}))

    with pytest.raises(ProviderError) as caught:
        call(fake_openai)

    assert (caught.value.retryable, caught.value.status, caught.value.attempts) == (False, 429, 1)
    assert "quota" in str(caught.value)


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        (400, "rejected the request"),
        (403, "OPENAI_API_KEY"),
        (404, "TOPDOG_OPENAI_MODEL"),
        (422, "rejected the request"),
    ],
)
def test_client_errors_are_not_retried_and_say_what_to_fix(fake_openai, code, hint):
    fake_openai.script(status(code))

    with pytest.raises(ProviderError) as caught:
        call(fake_openai)

    assert caught.value.retryable is False
    assert caught.value.status == code
    assert hint in str(caught.value)
    assert len(fake_openai.requests) == 1


def test_a_hang_ends_at_the_deadline(fake_openai):
    fake_openai.script(hang(10), hang(10), hang(10))
    provider = make_provider(fake_openai, timeout=120)  # the deadline is what bounds it

    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        call(fake_openai, provider=provider, deadline_seconds=1.5, sleep=time.sleep)
    elapsed = time.monotonic() - started

    assert 1.4 < elapsed < 4
    assert caught.value.retryable is False
    assert "1.5s deadline" in str(caught.value)


def test_a_slow_drip_cannot_outlive_the_attempt_timeout(fake_openai):
    # Every chunk arrives well within the read timeout; the whole answer would not.
    # Every retry drips too: an exhausted script would answer the retry at once.
    fake_openai.script(*[ok("x" * 400, chunk_delay=0.05)] * 5)
    provider = make_provider(fake_openai, timeout=0.5)

    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        call(fake_openai, provider=provider, deadline_seconds=0.8, sleep=time.sleep)

    assert time.monotonic() - started < 2
    assert "did not answer within" in str(caught.value)


def test_a_stall_mid_stream_times_out(fake_openai):
    fake_openai.script(ok(TEXT, chunk_delay=2))
    provider = make_provider(fake_openai, timeout=0.3)

    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        call(fake_openai, provider=provider, deadline_seconds=0.5, sleep=time.sleep)

    assert time.monotonic() - started < 1.5
    assert "did not answer within" in str(caught.value)


@pytest.mark.parametrize("clean", [False, True], ids=["connection-dropped", "body-ended"])
def test_a_cut_stream_is_retried_and_the_partial_answer_dropped(fake_openai, clean):
    fake_openai.script(cut_after(2, "This partial answer must not be kept", clean=clean), ok(TEXT))
    deltas = DeltaRecorder()

    completion = call(fake_openai, on_delta=deltas)

    assert completion.content == TEXT
    assert completion.attempts == 2
    assert deltas.attempts == [1, 2]  # a listener resets its view when the attempt changes
    assert deltas.text(1) == "This partial answer must not be kept"[:16]
    assert deltas.text(2) == TEXT


def test_a_stream_cut_every_time_is_an_error_not_a_partial_completion(fake_openai):
    fake_openai.script(*[cut_after(2)] * 3)

    with pytest.raises(ProviderError) as caught:
        call(fake_openai, max_attempts=3)

    assert caught.value.attempts == 3
    assert "stream" in str(caught.value)


def test_an_error_inside_the_stream_is_retried(fake_openai):
    fake_openai.script(stream_error(2), ok(TEXT))

    completion = call(fake_openai)

    assert (completion.content, completion.attempts) == (TEXT, 2)


def test_cancellation_between_chunks(fake_openai):
    fake_openai.script(ok(TEXT * 4))
    deltas = DeltaRecorder()

    with pytest.raises(ProviderCancelled) as caught:
        call(fake_openai, on_delta=deltas, should_cancel=lambda: len(deltas.items) >= 2)

    assert caught.value.attempts == 1
    assert len(deltas.items) == 2
    assert len(fake_openai.requests) == 1


def test_cancelled_before_the_call_sends_nothing(fake_openai):
    with pytest.raises(ProviderCancelled):
        call(fake_openai, should_cancel=lambda: True)

    assert fake_openai.requests == []


def test_a_missing_key_is_a_configuration_error(fake_openai):
    with pytest.raises(ProviderError) as caught:
        call(fake_openai, provider=make_provider(fake_openai, api_key=""))

    assert caught.value.retryable is False
    assert "OPENAI_API_KEY" in str(caught.value)
    assert fake_openai.requests == []


def test_an_unreachable_server_is_retried_then_reported(fake_openai):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    provider = make_provider(fake_openai, base_url=f"http://127.0.0.1:{port}/v1")

    with pytest.raises(ProviderError) as caught:
        call(fake_openai, provider=provider, max_attempts=2)

    assert caught.value.attempts == 2
    assert "could not reach openai" in str(caught.value)
    assert "OPENAI_BASE_URL" in str(caught.value)


def test_provider_for_builds_the_adapter_from_settings(fake_openai, settings):
    settings.TOPDOG_PROVIDERS = {
        **settings.TOPDOG_PROVIDERS,
        "openai": {
            "class": "ai_orchestration.providers.openai.OpenAIProvider",
            "api_key": KEY,
            "base_url": fake_openai.base_url,
            "timeout": 5,
        },
    }
    fake_openai.script(ok(TEXT))

    provider = provider_for("openai")
    completion = call(fake_openai, provider=provider)

    assert isinstance(provider, OpenAIProvider)
    assert completion.content == TEXT
