"""Throttles with their windows in Redis: DRF's sliding window, atomic, one round trip."""

import logging
import threading

import pytest
import redis
from django.conf import settings as django_settings
from django.contrib.auth.models import AnonymousUser
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from workflows.api import throttling
from workflows.api.throttling import RedisUserRateThrottle

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(not django_settings.REDIS_URL, reason="needs REDIS_URL (CI sets it)"),
]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def throttle(rate: str, clock: Clock | None = None) -> RedisUserRateThrottle:
    class Limited(RedisUserRateThrottle):
        def get_rate(self) -> str:
            return rate

    limited = Limited()
    if clock is not None:
        limited.timer = clock
    return limited


def request_of(user) -> Request:
    request = Request(APIRequestFactory().get("/api/health/", REMOTE_ADDR="10.0.0.7"))
    request.user = user
    return request


def test_the_window_slides_as_drf_s_does(user):
    clock = Clock()
    request = request_of(user)

    # when: three requests a minute are allowed, and four come within 30 s
    answers = []
    for _ in range(4):
        answers.append(throttle("3/min", clock).allow_request(request, None))
        clock.now += 10
    refused = throttle("3/min", clock)
    clock.now -= 10

    # then: the fourth is refused, told to wait until the first leaves the window
    assert answers == [True, True, True, False]
    assert not refused.allow_request(request, None)
    assert refused.wait() == pytest.approx(30.0)

    # when: the first request's minute is over
    clock.now += 30.5

    # then: one more fits (the refused ones were not counted), and then none again
    assert throttle("3/min", clock).allow_request(request, None)
    assert not throttle("3/min", clock).allow_request(request, None)


def test_each_user_and_each_anonymous_client_has_its_own_window(user, stranger):
    assert throttle("1/min").allow_request(request_of(user), None)
    assert not throttle("1/min").allow_request(request_of(user), None)
    assert throttle("1/min").allow_request(request_of(stranger), None)
    assert throttle("1/min").allow_request(request_of(AnonymousUser()), None)


def test_concurrent_requests_never_share_a_slot(user):
    # given: 20 requests at once against 10 a minute (DRF's read-then-write lets
    # concurrent requests overwrite each other's history and all pass)
    request = request_of(user)
    allowed = []
    start = threading.Barrier(20)

    def one() -> None:
        start.wait()
        allowed.append(throttle("10/min").allow_request(request, None))

    threads = [threading.Thread(target=one) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # then: exactly ten got through
    assert sorted(allowed) == [False] * 10 + [True] * 10


def test_an_unreachable_redis_lets_requests_through_and_says_so(user, monkeypatch, caplog):
    # given: the throttle's Redis is a port nobody listens on
    unreachable = redis.Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=1)
    script = unreachable.register_script(throttling._SLIDING_WINDOW)
    monkeypatch.setattr(throttling, "_window_script", lambda: script)

    # when
    with caplog.at_level(logging.WARNING, logger="workflows.api.throttling"):
        allowed = [throttle("1/min").allow_request(request_of(user), None) for _ in range(3)]

    # then: the API stays up, and the log says why nothing is limited
    assert allowed == [True, True, True]
    assert "Redis unavailable" in caplog.text
