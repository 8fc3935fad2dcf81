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
