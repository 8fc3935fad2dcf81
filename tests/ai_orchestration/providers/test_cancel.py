"""A cancelled call ends even while its read blocks: before the first byte, or on a stalled
stream. Both HTTP adapters, through the real SDKs against the loopback fakes."""

import threading
import time

import pytest

from ai_orchestration.providers.anthropic import AnthropicProvider
from ai_orchestration.providers.base import (
    ChatMessage,
    ChatRequest,
    ProviderCancelled,
    complete_with_retries,
)
from ai_orchestration.providers.cancel import ConnectionTracker, abort_when
from ai_orchestration.providers.openai import OpenAIProvider
from tests.ai_orchestration.fakes import hang, ok

HANG_SECONDS = 30  # far longer than any cancellation may take
REQUEST = ChatRequest(
    model="test-model",
    messages=(ChatMessage("system", "You plan."), ChatMessage("user", "Plan the change.")),
)


class Flag:
    """A should_cancel that turns true `after` seconds from now (no database, cheap)."""

    def __init__(self, after: float) -> None:
        self.at = time.monotonic() + after

    def __call__(self) -> bool:
        return time.monotonic() >= self.at


def make(vendor: str, fake) -> OpenAIProvider | AnthropicProvider:
    cls = OpenAIProvider if vendor == "openai" else AnthropicProvider
    return cls(api_key="sk-test-cancel-0123456789", base_url=fake.base_url, timeout=120)


@pytest.fixture(params=["openai", "anthropic"])
def vendor(request, fake_openai, fake_anthropic):
    return request.param, fake_openai if request.param == "openai" else fake_anthropic


@pytest.mark.parametrize(
    "behaviour",
    [hang(HANG_SECONDS), ok("slow " * 50, chunk_delay=HANG_SECONDS)],
    ids=["before-the-first-byte", "stalled-stream"],
)
def test_a_cancelled_call_is_cut_while_its_read_blocks(vendor, behaviour):
    name, fake = vendor
    fake.script(behaviour)
    provider = make(name, fake)

    started = time.monotonic()
    with pytest.raises(ProviderCancelled) as caught:
        complete_with_retries(
            provider, REQUEST, deadline_seconds=120, should_cancel=Flag(after=0.3)
        )

    # The call ended long before the server would have answered or sent the next chunk,
    # and the server saw the connection close: the call is no longer live there.
    assert time.monotonic() - started < HANG_SECONDS / 2
    assert caught.value.attempts == 1
    _wait_for(lambda: fake.exchanges and fake.exchanges[0].ended is not None)
    assert fake.exchanges[0].hung_up
    assert fake.exchanges[0].ended - fake.exchanges[0].started < HANG_SECONDS / 2
    assert len(fake.requests) == 1  # cancelled, not retried


def test_a_call_not_cancelled_is_not_cut(vendor):
    name, fake = vendor
    fake.script(ok("steady " * 20, chunk_delay=0.02))

    completion = complete_with_retries(
        make(name, fake), REQUEST, deadline_seconds=30, should_cancel=lambda: False
    )

    assert completion.content == "steady " * 20
    assert len(fake.requests) == 1


def test_abort_when_turns_an_error_after_the_abort_into_a_cancellation():
    aborted = threading.Event()

    with pytest.raises(ProviderCancelled), abort_when(lambda: True, aborted.set):
        assert aborted.wait(5)
        raise ConnectionResetError("the socket was shut down")


def test_an_error_without_a_cancellation_stays_itself():
    with pytest.raises(ConnectionResetError), abort_when(lambda: False, lambda: None):
        raise ConnectionResetError("the vendor hung up")


def test_abort_on_a_tracker_with_no_connection_does_nothing():
    ConnectionTracker().abort()


def _wait_for(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")
