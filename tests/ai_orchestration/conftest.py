import pytest

from tests.ai_orchestration.fakes import FakeAnthropic, FakeOpenAI


@pytest.fixture
def fake_openai():
    """A loopback OpenAI-compatible server (`.base_url` ends in /v1); see fakes.py."""
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def fake_anthropic():
    """A loopback Anthropic Messages API server; see fakes.py."""
    with FakeAnthropic() as server:
        yield server
