"""Request throttles that keep their windows in Redis, one round trip per request.

DRF's throttles keep each client's history in the cache: a read and a write of the whole
list of request times (a round trip each, the list pickled both ways, up to 6,000 floats
for a busy user), and two concurrent requests can each overwrite the other's entry. With
Redis these do the same sliding window in one Lua script: atomic across every node, one
round trip, the window a sorted set that Redis trims itself.
"""

import logging
import secrets
from functools import cache
from typing import Any

import redis
from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle

logger = logging.getLogger(__name__)

# KEYS[1]: the client's window. ARGV: now, window (s), limit, a member unique to this
# request. Drops the requests that left the window; then records this one, or answers how
# long until the oldest one leaves (the request is not recorded: it was refused).
_SLIDING_WINDOW = """
local key, now, window, limit = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) >= limit then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if #oldest == 0 then
        return tostring(window)
    end
    return tostring(tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', key, now, ARGV[4])
redis.call('PEXPIRE', key, math.ceil(window * 1000))
return false
"""


# The same window, only looked at: how long until it has room, or false if it has.
_WINDOW_PEEK = """
local key, now, window, limit = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) >= limit then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if #oldest == 0 then
        return tostring(window)
    end
    return tostring(tonumber(oldest[2]) + window - now)
end
return false
"""


@cache
def _peek_script() -> Any:
    client = redis.Redis.from_url(
        settings.CACHES["default"]["LOCATION"], socket_timeout=2, socket_connect_timeout=2
    )
    return client.register_script(_WINDOW_PEEK)


@cache
def _window_script() -> Any:
    """The script, registered on a client of the cache's Redis (one pool per process)."""
    client = redis.Redis.from_url(
        settings.CACHES["default"]["LOCATION"], socket_timeout=2, socket_connect_timeout=2
    )
    return client.register_script(_SLIDING_WINDOW)


class RedisRateThrottle(SimpleRateThrottle):
    """SimpleRateThrottle's sliding window, kept in Redis (see the module docstring).

    Keys carry the cache's KEY_PREFIX. If Redis cannot be reached the request is let
    through and a warning logged: a throttle is no reason to take the API down."""

    def allow_request(self, request: Request, view: Any) -> bool:
        self._wait: float | None = None
        if self.rate is None:
            return True
        key = self.get_cache_key(request, view)
        if key is None:
            return True
        prefix = settings.CACHES["default"].get("KEY_PREFIX", "")
        try:
            wait = _window_script()(
                keys=[f"{prefix}:{key}"],
                args=[self.timer(), self.duration, self.num_requests, secrets.token_hex(8)],
            )
        except redis.RedisError as exc:
            logger.warning("throttle %s: Redis unavailable (%s); request let through", key, exc)
            return True
        if wait is None:
            return True
        self._wait = max(0.0, float(wait))
        return False

    def wait(self) -> float | None:
        return self._wait


class RedisAnonRateThrottle(RedisRateThrottle, AnonRateThrottle):
    """AnonRateThrottle (by client IP) with its window in Redis."""


class RedisUserRateThrottle(RedisRateThrottle, UserRateThrottle):
    """UserRateThrottle (by user, or IP when anonymous) with its window in Redis."""


# --- failed authentications -------------------------------------------------------------


class AuthFailureThrottle(SimpleRateThrottle):
    """Failed authentications per client address (DRF's cache-based sliding window).

    DRF authenticates before it throttles, so a 401 never reached a throttle and a
    client could try tokens as fast as it liked. Each failure is recorded here against
    the client's address (REMOTE_ADDR, or X-Forwarded-For with NUM_PROXIES); once the
    address has as many failures in the window as the `auth_failure` rate allows (by
    default the anonymous rate), every authentication attempt from it is 429 with
    Retry-After until the oldest failure leaves the window, good tokens included, so
    guessing gets no faster by mixing in a valid one."""

    scope = "auth_failure"

    def get_rate(self) -> str | None:
        rates = settings.REST_FRAMEWORK.get("DEFAULT_THROTTLE_RATES", {})
        return rates.get(self.scope) or rates.get("anon")

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def blocked(self, request: Request) -> float | None:
        """Seconds until the address may try again, or None if it may now."""
        if self.rate is None:
            return None
        history = self.cache.get(self.get_cache_key(request, None), [])
        now = self.timer()
        live = [moment for moment in history if moment > now - self.duration]
        if len(live) < self.num_requests:
            return None
        return max(0.0, self.duration - (now - min(live)))

    def record(self, request: Request) -> None:
        """Count one failed authentication from the request's address."""
        if self.rate is not None:
            self.allow_request(request, None)


class RedisAuthFailureThrottle(RedisRateThrottle, AuthFailureThrottle):
    """AuthFailureThrottle with its window in Redis (one round trip per look)."""

    def blocked(self, request: Request) -> float | None:
        if self.rate is None:
            return None
        prefix = settings.CACHES["default"].get("KEY_PREFIX", "")
        key = self.get_cache_key(request, None)
        try:
            wait = _peek_script()(
                keys=[f"{prefix}:{key}"], args=[self.timer(), self.duration, self.num_requests]
            )
        except redis.RedisError as exc:
            logger.warning("throttle %s: Redis unavailable (%s); request let through", key, exc)
            return None
        return None if wait is None else max(0.0, float(wait))


def auth_failure_throttle() -> AuthFailureThrottle:
    """The failed-authentication throttle for the configured cache (Redis or other)."""
    if settings.CACHES["default"]["BACKEND"].endswith("RedisCache"):
        return RedisAuthFailureThrottle()
    return AuthFailureThrottle()
