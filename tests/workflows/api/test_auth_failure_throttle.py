"""Failed authentications are throttled per client address (issue 12 C).

Before: DRF authenticates before it throttles, so a bad token was 401 however often it
was sent: token guessing ran at whatever speed the server could answer.
"""

import pytest
from rest_framework.test import APIClient

from tests.factories import api_token_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def three_a_minute(settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {
            **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
            "auth_failure": "3/minute",
        },
    }


def from_address(address: str, token: str | None = None) -> APIClient:
    client = APIClient(REMOTE_ADDR=address)
    if token:
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def test_bad_tokens_are_429_with_retry_after_once_over_the_rate(three_a_minute, user, project):
    attacker = from_address("203.0.113.9", "td_guess")

    statuses = [attacker.get("/api/projects/").status_code for _ in range(5)]

    assert statuses == [401, 401, 401, 429, 429]
    refused = attacker.get("/api/projects/")
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert "too many failed authentications" in refused.json()["detail"]
    # over the limit, even a good token from that address waits: guessing gets no faster
    assert from_address("203.0.113.9", api_token_for(user)).get("/api/projects/").status_code == 429


def test_other_addresses_and_good_tokens_are_unaffected(three_a_minute, user, project):
    for _ in range(4):
        from_address("203.0.113.9", "td_guess").get("/api/projects/")
    assert from_address("198.51.100.1", "td_guess").get("/api/projects/").status_code == 401
    good = from_address("198.51.100.2", api_token_for(user))
    assert [good.get("/api/projects/").status_code for _ in range(10)] == [200] * 10


def test_requests_without_credentials_count_as_failures_too(three_a_minute, project):
    anonymous = from_address("203.0.113.10")
    statuses = [anonymous.get("/api/workflows/").status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    assert anonymous.get("/api/health/").status_code == 200  # public: not a failure


def test_the_default_rate_is_the_anonymous_rate(user, project, settings):
    assert settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["auth_failure"] == "60/minute"
    attacker = from_address("203.0.113.11", "td_guess")
    statuses = [attacker.get("/api/projects/").status_code for _ in range(61)]
    assert statuses == [401] * 60 + [429]
