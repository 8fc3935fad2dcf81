"""Cutting an HTTP model call that blocks on a read, from another thread.

An adapter polls `should_cancel` between streamed chunks, but a call can block for a long
time without a chunk: waiting for the response headers (the first byte), or for the next
chunk of a slow stream. Closing a socket does not wake a thread blocked in `recv` on it;
shutting it down does. So:

- `ConnectionTracker` learns the sockets an SDK client opens, through httpx's documented
  `trace` request extension (set by an httpx `request` event hook), and `abort()` shuts
  them down: the blocked read returns at once and the vendor sees the connection close.
- `abort_when(should_cancel, abort)` has one process-wide watcher thread poll
  `should_cancel` every `POLL_SECONDS` while the block runs, and call `abort` when it
  turns true; an error the block raises after that is a `ProviderCancelled`.

`should_cancel` is therefore called from the watcher thread too: it must be cheap and
thread-safe, and must not touch the database (the autopilot's is an in-memory check of
its lease, kept current by the heartbeat thread). Connecting is bounded by its own short
timeout (`CONNECT_TIMEOUT_SECONDS`), since there is no socket to shut down before it.
"""

import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from ai_orchestration.providers.base import CancelCheck, ProviderCancelled

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.1
CONNECT_TIMEOUT_SECONDS = 5.0
# The httpcore trace events whose return value is a new network stream.
_CONNECTED = frozenset(
    {
        "connection.connect_tcp.complete",
        "connection.connect_unix_socket.complete",
        "connection.start_tls.complete",
    }
)


class ConnectionTracker:
    """The sockets one SDK client opened, so that a call blocked on them can be cut."""

    def __init__(self) -> None:
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._lock = threading.Lock()

    def on_request(self, request: Any) -> None:
        """An httpx `request` event hook: trace the connections this request opens."""
        previous = request.extensions.get("trace")

        def trace(name: str, info: dict) -> None:
            if name in _CONNECTED and info.get("return_value") is not None:
                sock = info["return_value"].get_extra_info("socket")
                if sock is not None:
                    with self._lock:
                        self._sockets.add(sock)
            if previous is not None:
                previous(name, info)

        request.extensions["trace"] = trace

    def abort(self) -> None:
        """Shut down every open connection: a read blocked on one returns at once."""
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            # The plain socket's shutdown, also for a TLS socket: its reader is inside a
            # read on another thread, and must only see the connection end. A socket
            # already closed raises, and needs nothing.
            with suppress(OSError, ValueError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watch:
    def __init__(self, should_cancel: CancelCheck, abort: Callable[[], None]) -> None:
        self.should_cancel = should_cancel
        self.abort = abort
        self.fired = False


class _Watcher:
    """One daemon thread per process that polls the registered calls' cancel checks."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._watches: set[_Watch] = set()
        self._pid = 0

    def add(self, watch: _Watch) -> None:
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: start a thread
                self._pid = os.getpid()
                self._watches.clear()
                threading.Thread(target=self._loop, name="topdog-call-cancel", daemon=True).start()
            self._watches.add(watch)
            self._lock.notify()

    def remove(self, watch: _Watch) -> None:
        with self._lock:
            self._watches.discard(watch)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._watches:
                    self._lock.wait()
                watches = list(self._watches)
            for watch in watches:
                if not watch.fired and _cancelled(watch):
                    watch.fired = True
                    try:
                        watch.abort()
                    except Exception:
                        logger.exception("cutting a cancelled model call failed")
            time.sleep(POLL_SECONDS)


def _cancelled(watch: _Watch) -> bool:
    try:
        return bool(watch.should_cancel())
    except Exception:
        logger.exception("a model call's cancel check failed")
        return False


_watcher = _Watcher()


@contextmanager
def abort_when(should_cancel: CancelCheck, abort: Callable[[], None]) -> Iterator[None]:
    """Call `abort` (from the watcher thread) as soon as `should_cancel()` turns true
    while the block runs; an error the block raises after that is a ProviderCancelled."""
    watch = _Watch(should_cancel, abort)
    _watcher.add(watch)
    try:
        yield
    except ProviderCancelled:
        raise
    except Exception as exc:
        if watch.fired:
            raise ProviderCancelled(
                f"cancelled: the connection was closed ({type(exc).__name__})"
            ) from None
        raise
    finally:
        _watcher.remove(watch)
