"""Websocket limits: open sockets per user (across nodes) and messages per connection.

Open sockets. Each open websocket holds a *slot*: an entry of its user's set, keyed by
the consumer's channel name, that expires `ttl` seconds after it was last refreshed.
A consumer claims one on connect (refused once the user holds `limit` live ones),
refreshes it on every heartbeat and gives it back when it closes. A node that dies
gives nothing back, and its entries expire within `ttl` (three heartbeats), so its
users' counts heal by themselves.

- With a Redis cache (`REDIS_URL`) the set is a sorted set in the cache's Redis (scores:
  expiry times by Redis' own clock), shared by every node; claiming is one Lua script,
  one round trip, atomic. If Redis cannot be reached the socket is let through (logged):
  a limit is no reason to refuse service.
- Otherwise (the embedded default: one process serves everything) the set is kept in
  this process.

Messages. `MessageWindow` is a sliding window of one connection's last `limit` message
times: one more within a second is refused.
"""

import logging
import threading
import time
from collections import deque
from functools import cache
from typing import Any

import redis
from asgiref.sync import sync_to_async
from django.conf import settings

logger = logging.getLogger(__name__)

# KEYS[1]: the user's set. ARGV: the connection, the limit (0: none), ttl (s). Drops
# expired entries; then (re)writes this connection's expiry, unless it is new and the
# user already holds `limit` live entries. 1: held, 0: refused.
_CLAIM = """
local key, member, limit, ttl = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if limit > 0 and not redis.call('ZSCORE', key, member)
        and redis.call('ZCARD', key) >= limit then
    return 0
end
redis.call('ZADD', key, now + ttl, member)
redis.call('EXPIRE', key, math.ceil(ttl))
return 1
"""


def _redis_cache() -> bool:
    return settings.CACHES["default"]["BACKEND"].endswith("RedisCache")


def _key(user_id: Any) -> str:
    return f"{settings.CACHES['default'].get('KEY_PREFIX', '')}:ws-open:{user_id}"


@cache
def _client(location: str) -> redis.Redis:
    """A client of the cache's Redis: one connection pool per process."""
    return redis.Redis.from_url(location, socket_timeout=2, socket_connect_timeout=2)


@cache
def _claim_script(location: str) -> Any:
    return _client(location).register_script(_CLAIM)


class _LocalSlots:
    """The slots of this process, for a cache that is not Redis."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: dict[Any, dict[str, float]] = {}

    def claim(self, user_id: Any, member: str, limit: int, ttl: float) -> bool:
        now = time.monotonic()
        with self.lock:
            slots = {m: exp for m, exp in self.held.get(user_id, {}).items() if exp > now}
            if limit > 0 and member not in slots and len(slots) >= limit:
                self.held[user_id] = slots
                return False
            slots[member] = now + ttl
            self.held[user_id] = slots
            return True

    def release(self, user_id: Any, member: str) -> None:
        with self.lock:
            slots = self.held.get(user_id, {})
            slots.pop(member, None)
            if not slots:
                self.held.pop(user_id, None)


_local = _LocalSlots()


def _redis_claim(user_id: Any, member: str, limit: int, ttl: float) -> bool:
    location = settings.CACHES["default"]["LOCATION"]
    try:
        return bool(_claim_script(location)(keys=[_key(user_id)], args=[member, limit, ttl]))
    except redis.RedisError as exc:
        logger.warning(
            "websocket slot of user %s: Redis unavailable (%s); let through", user_id, exc
        )
        return True


def _redis_release(user_id: Any, member: str) -> None:
    try:
        _client(settings.CACHES["default"]["LOCATION"]).zrem(_key(user_id), member)
    except redis.RedisError as exc:
        logger.warning("websocket slot of user %s not released (%s); it expires", user_id, exc)


async def socket_slot_claim(*, user_id: Any, connection: str, limit: int, ttl: float) -> bool:
    """Hold (or refresh) one of the user's `limit` open-socket slots for `ttl` seconds;
    False if the user already holds `limit` live ones (`limit` 0: no limit)."""
    if _redis_cache():
        return await sync_to_async(_redis_claim, thread_sensitive=False)(
            user_id, connection, limit, ttl
        )
    return _local.claim(user_id, connection, limit, ttl)


async def socket_slot_refresh(*, user_id: Any, connection: str, ttl: float) -> None:
    """Keep a held slot alive for `ttl` more seconds (taking it again if it had expired)."""
    await socket_slot_claim(user_id=user_id, connection=connection, limit=0, ttl=ttl)


async def socket_slot_release(*, user_id: Any, connection: str) -> None:
    """Give a slot back."""
    if _redis_cache():
        await sync_to_async(_redis_release, thread_sensitive=False)(user_id, connection)
    else:
        _local.release(user_id, connection)


class MessageWindow:
    """The times of a connection's last `limit` messages; one more within `window`
    seconds of the oldest is refused. `limit` 0: no limit."""

    def __init__(self, limit: int, window: float = 1.0) -> None:
        self.limit = limit
        self.window = window
        self.times: deque[float] = deque(maxlen=max(limit, 1))

    def allow(self, now: float) -> bool:
        """Count a message received at `now` (monotonic seconds); False if over the limit."""
        if self.limit <= 0:
            return True
        if len(self.times) == self.limit and now - self.times[0] < self.window:
            return False
        self.times.append(now)
        return True
