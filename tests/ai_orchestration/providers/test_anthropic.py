"""The Anthropic adapter, driven through the real SDK against a loopback fake server."""

import itertools
import json
import time
import traceback

import pytest

from ai_orchestration.providers.anthropic import EVIDENCE_TOOL, AnthropicProvider
from ai_orchestration.providers.base import (
    ChatMessage,
    ChatRequest,
    ProviderCancelled,
    ProviderError,
    Usage,
    complete_with_retries,
)
from ai_orchestration.schemas import evidence_json_schema
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

KEY = "sk-ant-test_0123456789abcdef_SECRET"
TEXT = "Three requirements, each with acceptance criteria."


def make_provider(fake, **kwargs) -> AnthropicProvider:
    kwargs = {"api_key": KEY, "base_url": fake.base_url, "timeout": 10, **kwargs}
    return AnthropicProvider(**kwargs)


def make_request(*messages: ChatMessage, **kwargs) -> ChatRequest:
    messages = messages or (
        ChatMessage("system", "You are the analyst."),
        ChatMessage("user", "Write the requirements."),
    )
    return ChatRequest(model="claude-sonnet-4-6", messages=tuple(messages), **kwargs)


def call(fake, request=None, *, provider=None, **kwargs):
    kwargs.setdefault("deadline_seconds", 10)
    kwargs.setdefault("sleep", SleepRecorder())
    return complete_with_retries(
        provider or make_provider(fake), request or make_request(), **kwargs
    )


def test_streams_text_and_reports_usage(fake_anthropic):
    fake_anthropic.script(ok(TEXT, usage=(42, 7)))
    deltas = DeltaRecorder()

    completion = call(fake_anthropic, on_delta=deltas)

    assert completion.content == TEXT
    assert deltas.text() == TEXT and len(deltas.items) > 1
    assert completion.usage == Usage(input_tokens=42, output_tokens=7, reported=True)
    assert (completion.provider, completion.model) == ("anthropic", "claude-sonnet-4-6")
    assert (completion.finish_reason, completion.attempts) == ("stop", 1)
    sent = fake_anthropic.last
    assert sent.path == "/v1/messages"
    assert KEY in (sent.header("x-api-key") or "") + (sent.header("authorization") or "")
    assert sent.header("anthropic-version")
    assert sent.json["stream"] is True
    assert sent.json["model"] == "claude-sonnet-4-6"
    assert sent.json["max_tokens"] == 4096
    assert "tools" not in sent.json


def test_system_prompts_go_in_system_and_turns_alternate(fake_anthropic):
    request = make_request(
        ChatMessage("system", "You are the analyst."),
        ChatMessage("assistant", "Earlier answer."),
        ChatMessage("user", "Handoff summary."),
        ChatMessage("user", "Feedback."),
        ChatMessage("system", "State: DISCOVERY."),
        ChatMessage("assistant", "Draft one."),
        ChatMessage("assistant", "Draft two."),
        ChatMessage("user", ""),
        ChatMessage("user", "Now the requirements."),
    )

    call(fake_anthropic, request)

    body = fake_anthropic.last.json
    assert body["system"] == "You are the analyst.\n\nState: DISCOVERY."
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    assert all(a != b for a, b in itertools.pairwise(roles))
    assert body["messages"][2]["content"] == "Handoff summary.\n\nFeedback."
    assert body["messages"][3]["content"] == "Draft one.\n\nDraft two."
    assert body["messages"][4]["content"] == "Now the requirements."


def test_json_evidence_is_a_forced_tool_call(fake_anthropic):
    example = EVIDENCE_EXAMPLES[State.DISCOVERY]
    schema = evidence_json_schema(State.DISCOVERY)
    fake_anthropic.script(ok(json=example, usage=(100, 30)))
    deltas = DeltaRecorder()

    completion = call(
        fake_anthropic,
        make_request(json_schema=schema, metadata={"phase": State.DISCOVERY}),
        on_delta=deltas,
    )

    assert json.loads(completion.content) == example
    assert evidence_validate(phase=State.DISCOVERY, data=json.loads(completion.content))
    assert deltas.text() == completion.content  # streamed as input_json_delta
    assert completion.usage == Usage(100, 30, reported=True)
    body = fake_anthropic.last.json
    assert body["tools"] == [
        {
            "name": EVIDENCE_TOOL,
            "description": body["tools"][0]["description"],
            "input_schema": schema,
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": EVIDENCE_TOOL}


def test_json_mode_never_ends_on_an_assistant_turn(fake_anthropic):
    fake_anthropic.script(ok(json={"verdict": "approve", "findings": [], "score": 1.0}))
    request = make_request(
        ChatMessage("system", "You verify."),
        ChatMessage("user", "Verify."),
        ChatMessage("assistant", '{"verdict": '),
        json_schema=evidence_json_schema(State.VERIFICATION),
    )

    completion = call(fake_anthropic, request)

    assert json.loads(completion.content)["verdict"] == "approve"
    assert fake_anthropic.last.json["messages"][-1]["role"] == "user"


def test_a_request_with_only_a_system_prompt_is_refused_locally(fake_anthropic):
    with pytest.raises(ProviderError) as caught:
        call(fake_anthropic, make_request(ChatMessage("system", "Only a system prompt.")))

    assert caught.value.retryable is False
    assert fake_anthropic.requests == []


def test_429_is_retried_after_the_retry_after_header(fake_anthropic):
    fake_anthropic.script(status(429, headers={"retry-after": "1"}), ok(TEXT))
    sleep = SleepRecorder()

    completion = call(fake_anthropic, sleep=sleep)

    assert (completion.content, completion.attempts) == (TEXT, 2)
    assert sleep.delays == [pytest.approx(1.0)]


@pytest.mark.parametrize("code", [500, 503, 529])
def test_server_errors_and_overload_are_retried(fake_anthropic, code):
    fake_anthropic.script(status(code), ok(TEXT))

    assert call(fake_anthropic).attempts == 2


def test_persistent_overload_gives_up_after_max_attempts(fake_anthropic):
    fake_anthropic.script(*[status(529)] * 4)

    with pytest.raises(ProviderError) as caught:
        call(fake_anthropic, max_attempts=4)

    assert (caught.value.attempts, caught.value.retryable, caught.value.status) == (4, False, 529)
    assert "overloaded" in str(caught.value)


def test_an_overloaded_error_inside_the_stream_is_retried(fake_anthropic):
    fake_anthropic.script(stream_error(2, "overloaded_error"), ok(TEXT))
    deltas = DeltaRecorder()

    completion = call(fake_anthropic, on_delta=deltas)

    assert (completion.content, completion.attempts) == (TEXT, 2)
    assert deltas.text(2) == TEXT


def test_401_is_not_retried_and_never_shows_the_key(fake_anthropic):
    fake_anthropic.script(status(401))

    with pytest.raises(ProviderError) as caught:
        call(fake_anthropic)

    error = caught.value
    assert (error.attempts, error.retryable, error.status) == (1, False, 401)
    assert "ANTHROPIC_API_KEY" in str(error)
    assert KEY not in "".join(traceback.format_exception(error)) + repr(error)
    assert error.__context__ is None


@pytest.mark.parametrize(("code", "hint"), [(400, "rejected"), (404, "TOPDOG_ANTHROPIC_MODEL")])
def test_client_errors_are_not_retried(fake_anthropic, code, hint):
    fake_anthropic.script(status(code))

    with pytest.raises(ProviderError) as caught:
        call(fake_anthropic)

    assert (caught.value.retryable, caught.value.status) == (False, code)
    assert hint in str(caught.value)
    assert len(fake_anthropic.requests) == 1


def test_a_hang_ends_at_the_deadline(fake_anthropic):
    fake_anthropic.script(hang(10), hang(10))
    provider = make_provider(fake_anthropic, timeout=120)

    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        call(fake_anthropic, provider=provider, deadline_seconds=1.5, sleep=time.sleep)

    assert 1.4 < time.monotonic() - started < 4
    assert caught.value.retryable is False


def test_a_stall_mid_stream_times_out(fake_anthropic):
    fake_anthropic.script(ok(TEXT, chunk_delay=2))
    provider = make_provider(fake_anthropic, timeout=0.3)

    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        call(fake_anthropic, provider=provider, deadline_seconds=0.5, sleep=time.sleep)

    assert time.monotonic() - started < 1.5
    assert "did not answer within" in str(caught.value)


@pytest.mark.parametrize("clean", [False, True], ids=["connection-dropped", "body-ended"])
def test_a_stream_without_message_stop_is_retried(fake_anthropic, clean):
    fake_anthropic.script(cut_after(2, "Partial text that is not kept", clean=clean), ok(TEXT))
    deltas = DeltaRecorder()

    completion = call(fake_anthropic, on_delta=deltas)

    assert (completion.content, completion.attempts) == (TEXT, 2)
    assert deltas.attempts == [1, 2]


def test_a_tool_call_cut_every_time_is_an_error(fake_anthropic):
    example = EVIDENCE_EXAMPLES[State.PLANNING]
    fake_anthropic.script(*[cut_after(3, json=example)] * 2)
    request = make_request(json_schema=evidence_json_schema(State.PLANNING))

    with pytest.raises(ProviderError) as caught:
        call(fake_anthropic, request, max_attempts=2)

    assert caught.value.attempts == 2
    assert "message_stop" in str(caught.value) or "dropped" in str(caught.value)


def test_cancellation_between_chunks(fake_anthropic):
    fake_anthropic.script(ok(TEXT * 4))
    deltas = DeltaRecorder()

    with pytest.raises(ProviderCancelled) as caught:
        call(fake_anthropic, on_delta=deltas, should_cancel=lambda: len(deltas.items) >= 1)

    assert caught.value.attempts == 1
    assert len(deltas.items) == 1
    assert len(fake_anthropic.requests) == 1


def test_a_missing_key_is_a_configuration_error(fake_anthropic):
    with pytest.raises(ProviderError) as caught:
        call(fake_anthropic, provider=make_provider(fake_anthropic, api_key=""))

    assert caught.value.retryable is False
    assert "ANTHROPIC_API_KEY" in str(caught.value)
    assert fake_anthropic.requests == []
