"""complete_with_retries with a scripted provider and a fake clock, and the shared
HTTP error mapping the vendor adapters use."""

import email.utils
import time

import pytest

from ai_orchestration.providers.base import (
    ChatMessage,
    ChatRequest,
    Completion,
    Provider,
    ProviderCancelled,
    ProviderError,
    ProviderStreamCut,
    Usage,
    complete_with_retries,
)
from ai_orchestration.providers.vendor_errors import (
    VendorContext,
    error_for_status,
    redact,
    retry_after_seconds,
)
from tests.ai_orchestration.fakes import DeltaRecorder

REQUEST = ChatRequest(model="m", messages=(ChatMessage("user", "hi"),))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class ScriptedProvider(Provider):
    """Each attempt takes `cost` seconds of fake time, then raises or answers in turn."""

    name = "scripted"

    def __init__(self, outcomes, clock: FakeClock, *, cost: float = 0.0, timeout: float = 60):
        super().__init__(timeout=timeout)
        self.outcomes = list(outcomes)
        self.clock = clock
        self.cost = cost
        self.timeouts: list[float] = []

    def stream(self, request, *, on_delta, should_cancel, timeout):
        self.timeouts.append(timeout)
        self.clock.now += self.cost
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            on_delta("partial")
            raise outcome
        on_delta(outcome)
        return Completion(outcome, Usage(1, 1), self.name, request.model)


def run(provider: ScriptedProvider, **kwargs):
    kwargs.setdefault("deadline_seconds", 60)
    return complete_with_retries(
        provider, REQUEST, sleep=provider.clock.sleep, clock=provider.clock, **kwargs
    )


def retryable(**kwargs) -> ProviderError:
    return ProviderError("boom", retryable=True, **kwargs)


def test_retry_after_is_honoured_exactly():
    clock = FakeClock()
    provider = ScriptedProvider([retryable(status=429, retry_after=7), "ok"], clock)

    completion = run(provider)

    assert (completion.content, completion.attempts) == ("ok", 2)
    assert clock.sleeps == [7]


def test_backoff_grows_with_jitter_and_is_capped():
    clock = FakeClock()
    provider = ScriptedProvider([retryable()] * 5 + ["ok"], clock)

    run(provider, max_attempts=6, base_delay=1, max_delay=3, deadline_seconds=600)

    ceilings = [1, 2, 3, 3, 3]
    assert len(clock.sleeps) == 5
    for delay, ceiling in zip(clock.sleeps, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling


def test_a_past_retry_after_means_retry_now():
    clock = FakeClock()
    provider = ScriptedProvider([retryable(retry_after=-5), "ok"], clock)

    assert run(provider).attempts == 2
    assert clock.sleeps == [0]


def test_non_retryable_errors_end_at_once():
    clock = FakeClock()
    provider = ScriptedProvider([ProviderError("bad request", status=400), "never"], clock)

    with pytest.raises(ProviderError) as caught:
        run(provider)

    assert (caught.value.attempts, caught.value.status) == (1, 400)
    assert clock.sleeps == []


def test_max_attempts_ends_in_a_non_retryable_error_that_keeps_the_cause():
    clock = FakeClock()
    last = retryable(status=503)
    provider = ScriptedProvider([retryable(status=503), retryable(status=503), last], clock)

    with pytest.raises(ProviderError) as caught:
        run(provider, max_attempts=3)

    error = caught.value
    assert (error.attempts, error.retryable, error.status) == (3, False, 503)
    assert error.__cause__ is last
    assert len(clock.sleeps) == 2


def test_every_attempt_cut_is_an_error_never_a_completion():
    clock = FakeClock()
    provider = ScriptedProvider([ProviderStreamCut()] * 3, clock)

    with pytest.raises(ProviderError) as caught:
        run(provider, max_attempts=3)

    assert caught.value.attempts == 3
    assert "cut" in str(caught.value)


def test_the_attempt_timeout_shrinks_to_what_is_left_of_the_deadline():
    clock = FakeClock()
    provider = ScriptedProvider(
        [retryable(retry_after=1), retryable(retry_after=1), "ok"], clock, cost=4, timeout=30
    )

    run(provider, deadline_seconds=20)

    assert provider.timeouts == [20, 15, 10]


def test_no_retry_that_would_pass_the_deadline():
    clock = FakeClock()
    provider = ScriptedProvider([retryable(status=429, retry_after=30), "never"], clock, cost=1)

    with pytest.raises(ProviderError) as caught:
        run(provider, deadline_seconds=10)

    assert caught.value.retryable is False
    assert caught.value.status == 429
    assert "deadline" in str(caught.value)
    assert clock.sleeps == []  # it did not wait for a retry it could not make


def test_no_retry_is_left_too_little_time_to_answer():
    # given: a backoff that would leave the retry 0.1 s of a 10 s deadline
    clock = FakeClock()
    provider = ScriptedProvider([retryable(status=503, retry_after=8.9), "never"], clock, cost=1)

    # when
    with pytest.raises(ProviderError) as caught:
        run(provider, deadline_seconds=10, min_attempt_seconds=0.25)

    # then: no attempt doomed to time out; the error that kept failing is the one told
    assert clock.sleeps == []
    assert "(last error: boom)" in str(caught.value)
    assert (caught.value.status, caught.value.attempts) == (503, 1)

    # and with more time left, the same backoff is waited out and the retry answers
    clock = FakeClock()
    provider = ScriptedProvider([retryable(status=503, retry_after=8.5), "ok"], clock, cost=1)
    assert run(provider, deadline_seconds=10, min_attempt_seconds=0.25).content == "ok"
    assert clock.sleeps == [8.5]


def test_a_sleep_that_overruns_the_deadline_ends_with_the_last_error():
    # given: a backoff sized to fit the deadline, on a machine that sleeps longer
    clock = FakeClock()
    provider = ScriptedProvider([retryable(status=503, retry_after=4), "never"], clock, cost=1)

    def slow_sleep(seconds: float) -> None:
        clock.sleep(seconds * 3)

    # when
    with pytest.raises(ProviderError) as caught:
        complete_with_retries(provider, REQUEST, sleep=slow_sleep, clock=clock, deadline_seconds=10)

    # then: the caller learns what kept failing, not only that time ran out
    assert str(caught.value) == (
        "scripted: no answer within the 10s deadline after 1 attempts (last error: boom)"
    )
    assert (caught.value.retryable, caught.value.status, caught.value.attempts) == (False, 503, 1)


def test_deltas_are_tagged_with_their_attempt():
    clock = FakeClock()
    provider = ScriptedProvider([ProviderStreamCut(), "final"], clock)
    deltas = DeltaRecorder()

    run(provider, on_delta=deltas)

    assert deltas.items == [(1, "partial"), (2, "final")]


def test_cancellation_is_checked_before_each_attempt():
    clock = FakeClock()
    provider = ScriptedProvider([retryable(), "never"], clock)
    checks = iter([False, True])

    with pytest.raises(ProviderCancelled) as caught:
        run(provider, should_cancel=lambda: next(checks))

    assert caught.value.attempts == 1


def test_cancellation_inside_an_attempt_is_not_retried():
    clock = FakeClock()
    provider = ScriptedProvider([ProviderCancelled("stop"), "never"], clock)

    with pytest.raises(ProviderCancelled) as caught:
        run(provider)

    assert caught.value.attempts == 1
    assert clock.sleeps == []


# --- the HTTP error mapping --------------------------------------------------------------

CTX = VendorContext(
    provider="openai",
    model="gpt-4o",
    base_url="https://api.openai.com/v1",
    key_setting="OPENAI_API_KEY",
    model_setting="TOPDOG_OPENAI_MODEL",
    base_url_setting="OPENAI_BASE_URL",
    secrets=("sk-live-abcdefghijklmnop",),
)


@pytest.mark.parametrize("code", [408, 409, 429, 500, 502, 503, 504, 529])
def test_transient_statuses_are_retryable(code):
    assert error_for_status(CTX, code).retryable is True


@pytest.mark.parametrize("code", [400, 401, 402, 403, 404, 413, 422])
def test_client_statuses_are_final(code):
    error = error_for_status(CTX, code, headers={"retry-after": "3"})
    assert error.retryable is False
    assert error.retry_after is None


def test_the_vendor_can_say_whether_to_retry():
    assert error_for_status(CTX, 500, headers={"x-should-retry": "false"}).retryable is False
    assert error_for_status(CTX, 400, headers={"x-should-retry": "true"}).retryable is True


def test_vendor_text_is_redacted_and_trimmed():
    error = error_for_status(CTX, 400, detail="bad key sk-live-abcdefghijklmnop " + "x" * 1000)

    assert "sk-live-abcdefgh" not in str(error)
    assert "[redacted]" in str(error)
    assert len(str(error)) < 600


def test_redact_hides_an_echoed_key_head():
    assert "sk-live-abcd" not in redact("key sk-live-abcdefgh***nop", ("sk-live-abcdefghijklmnop",))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after": "-2"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_retry_after_seconds(headers, expected):
    assert retry_after_seconds(headers) == expected


def test_retry_after_as_http_dates():
    future = email.utils.formatdate(time.time() + 10, usegmt=True)
    past = email.utils.formatdate(time.time() - 10, usegmt=True)

    assert 8 <= retry_after_seconds({"retry-after": future}) <= 10
    assert retry_after_seconds({"retry-after": past}) == 0.0
