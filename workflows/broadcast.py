"""Publishing committed events to the channel layer.

Called only from `transaction.on_commit`, so nothing is published for a transaction that
rolls back. Delivery is at-most-once; clients recover gaps from the database by seq.

Sends never start a thread or an event loop of their own:

- In a process serving ASGI, a view's thread hands its events to the server's event loop
  and goes on: the response does not wait for the channel layer (a few Redis round trips).
- Elsewhere (task workers, management commands, tests) they go to this process's *sender
  loop*: one event loop on one daemon thread, started on first use and again in a forked
  child. Sends run there one at a time, in the order they were handed over. With a layer
  that reaches other processes (channels-redis) the caller goes on at once; with any
  other layer (the in-memory one: only this process can read it, and it is not
  thread-safe) the caller waits until its send is done, as before. Either way a caller
  waits at most `SEND_WAIT_SECONDS`, and at exit the process waits up to
  `EXIT_FLUSH_SECONDS` for what is still queued (`broadcast_flush`).

`BoundedRedisChannelLayer` (the layer settings name with Redis) is channels-redis with at
most `in_flight` operations at once per event loop, so that a few hundred websockets
closing together queue for the connection pool instead of failing.
"""

import asyncio
import atexit
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from typing import Any

from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer

from workflows.summaries import workflow_summary

logger = logging.getLogger(__name__)

SEND_WAIT_SECONDS = 5.0  # longest a caller waits for its own send (when it waits at all)
EXIT_FLUSH_SECONDS = 5.0  # longest the process waits at exit for queued sends
# Layers whose messages other processes read: a send to one need not be waited for.
CROSS_PROCESS_LAYERS = ("channels_redis.",)

# The event loop of the ASGI server in this process (set by topdog.asgi), if any.
_server_loop: asyncio.AbstractEventLoop | None = None


def broadcast_loop_set(loop: asyncio.AbstractEventLoop) -> None:
    """Send broadcasts made in worker threads through `loop`, the ASGI server's."""
    global _server_loop
    _server_loop = loop


def workflow_group(workflow_id: Any) -> str:
    return f"workflow.{str(workflow_id).replace('-', '')}"


def project_group(project_id: Any) -> str:
    return f"project.{str(project_id).replace('-', '')}"


def user_group(user_id: Any) -> str:
    """The group of every open websocket of one user (on any node)."""
    return f"user.{user_id}"


def event_frame(event: Any) -> dict:
    """The websocket frame of a persisted event: type, seq, workflow_id, data, at."""
    return {
        "type": event.type,
        "seq": event.seq,
        "workflow_id": str(event.workflow_id),
        "data": event.data,
        "at": event.created_at.isoformat(),
    }


def workflow_event_broadcast(*, event: Any) -> None:
    """Send one committed event to its workflow's group and its project's dashboard group."""
    workflow_events_broadcast(events=[event])


def workflow_events_broadcast(*, events: list[Any]) -> None:
    """Send committed events, in seq order, to their workflow and project groups."""
    layer = get_channel_layer()
    if layer is None or not events:
        return
    _deliver(partial(_send_all, layer, events), "broadcast of workflow events", layer)


def group_send(group: str, message: dict) -> None:
    """Send `message` to `group` (best-effort: a failure is logged), the same way as
    workflow events: on the server's event loop from a thread of a process serving ASGI
    (so that an in-memory channel layer is only used from its own loop), else on this
    process's sender loop, in order with the events."""
    layer = get_channel_layer()
    if layer is not None:
        _deliver(partial(layer.group_send, group, message), f"send to {group}", layer)


def user_sockets_recheck(*, user_id: Any) -> None:
    """Tell the user's open websockets, on every node, to re-check their access now.

    Called after the commit that revoked a token, removed or changed a membership, or
    deactivated, changed or deleted the user; best-effort like every send (each socket's
    heartbeat re-checks anyway)."""
    group_send(user_group(user_id), {"type": "access.changed"})


def _deliver(send: Callable[[], Awaitable[None]], what: str, layer: Any) -> None:
    loop = _server_loop
    in_loop = _in_event_loop()
    if loop is not None and loop.is_running() and not in_loop:
        sending = asyncio.run_coroutine_threadsafe(send(), loop)
        sending.add_done_callback(partial(_log_failure, what))
        return
    try:
        sending = _sender_get().submit(send, what)
    except RuntimeError:  # the interpreter is shutting down: no new threads
        logger.warning("%s dropped: the process is exiting", what)
        return
    if in_loop or _cross_process(layer):
        return
    try:
        sending.result(timeout=SEND_WAIT_SECONDS)
    except FutureTimeout:
        logger.warning("%s still pending after %s s; going on", what, SEND_WAIT_SECONDS)


def _cross_process(layer: Any) -> bool:
    """Whether other processes read `layer` (it is, or extends, one of channels-redis's)."""
    return any(cls.__module__.startswith(CROSS_PROCESS_LAYERS) for cls in type(layer).__mro__)


def broadcast_flush(timeout: float = EXIT_FLUSH_SECONDS) -> bool:
    """Wait until every send handed to this process's sender loop so far is done (at most
    `timeout` seconds); True if they all are. Sends on the ASGI server's loop are not
    waited for."""
    sender = _sender
    if sender is None or sender.pid != os.getpid():
        return True
    return sender.flush(timeout)


class _Sender:
    """An event loop on a daemon thread, running this process's sends in order."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.last: Future | None = None
        self._order: asyncio.Lock | None = None
        ready = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(ready,), name="topdog-broadcast", daemon=True
        )
        self.thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self._order = asyncio.Lock()
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def submit(self, send: Callable[[], Awaitable[None]], what: str) -> Future:
        sending = asyncio.run_coroutine_threadsafe(self._in_order(send, what), self.loop)
        self.last = sending
        return sending

    async def _in_order(self, send: Callable[[], Awaitable[None]], what: str) -> None:
        # The lock is FIFO and each send takes it in the order it was handed over, so
        # one caller's sends reach the layer in its order, each after the one before.
        async with self._order:
            try:
                await send()
            except Exception:  # a broken layer must not stop later sends
                logger.exception("%s failed", what)

    def flush(self, timeout: float) -> bool:
        # Sends finish in the order they were handed over: the last one done means all.
        last = self.last
        if last is None:
            return True
        try:
            last.result(timeout=timeout)
        except FutureTimeout:
            return False
        return True


_sender: _Sender | None = None
_sender_lock = threading.Lock()


def _sender_get() -> _Sender:
    global _sender
    sender = _sender
    if sender is not None and sender.pid == os.getpid():
        return sender
    with _sender_lock:
        if _sender is None or _sender.pid != os.getpid():
            _sender = _Sender()
        return _sender


def _sender_forget() -> None:
    """In a forked child: the parent's sender thread did not come along; start afresh."""
    global _sender, _sender_lock
    _sender = None
    _sender_lock = threading.Lock()


def _flush_at_exit() -> None:
    if not broadcast_flush(EXIT_FLUSH_SECONDS):
        logger.warning("exiting with broadcasts still unsent after %s s", EXIT_FLUSH_SECONDS)


os.register_at_fork(after_in_child=_sender_forget)
atexit.register(_flush_at_exit)


def channel_layer_roundtrip(*, timeout: float) -> str:
    """Send a message to a new channel of the layer and receive it back (health), on the
    ASGI server's loop or this process's sender loop: no thread or loop of its own.
    Returns the layer's class name; raises if the layer does not answer in `timeout`."""
    layer = get_channel_layer()

    async def roundtrip() -> None:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "health.ping"})
        await asyncio.wait_for(layer.receive(channel), timeout=timeout)

    loop = _server_loop if _server_loop is not None and _server_loop.is_running() else None
    loop = loop or _sender_get().loop
    asyncio.run_coroutine_threadsafe(roundtrip(), loop).result(timeout + 1)
    return type(layer).__name__


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _log_failure(what: str, sending: Future) -> None:
    if not sending.cancelled() and sending.exception() is not None:
        logger.error("%s failed", what, exc_info=sending.exception())


async def _send_all(layer: Any, events: list[Any]) -> None:
    # All events of one call belong to one committed change of one workflow, whose
    # in-memory object is the state after commit: one message per group carries them all.
    workflow = events[-1].workflow
    frames = [event_frame(event) for event in events]
    await layer.group_send(
        workflow_group(workflow.id), {"type": "workflow.events", "frames": frames}
    )
    await layer.group_send(
        project_group(workflow.project_id),
        {
            "type": "dashboard.events",
            "frames": frames,
            "summary": workflow_summary(workflow),
            "project_id": str(workflow.project_id),
        },
    )


def workflow_live_frame_send(*, workflow_id: Any, frame: dict) -> None:
    """Send a frame that is not persisted (`ai.delta`, `ai.run`, `check.output`) to the
    workflow's websocket clients. Best-effort: the database is the record."""
    group_send(workflow_group(workflow_id), {"type": "live.frame", "frame": frame})


class BoundedRedisChannelLayer(RedisChannelLayer):
    """channels-redis with at most `in_flight` sends and group operations at once per
    event loop; the rest wait their turn, first come first served.

    channels-redis gives each event loop one redis-py connection pool per shard, and
    redis-py 8's pool holds at most 100 connections and raises MaxConnectionsError past
    that rather than wait. Every `group_add`, `group_discard`, `group_send` and `send`
    takes a connection for its round trips, so 500 websockets closing at once (each
    consumer discarding its groups) used to fail by the dozen, leaving their members in
    Redis until the group expiry, with messages queued for them on every group_send.
    Receiving is not bounded: channels-redis has one BZPOPMIN (and one clean-up) in
    flight per process, so `in_flight` plus two stays below the pool's limit.
    """

    def __init__(self, *args: Any, in_flight: int = 50, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_flight = in_flight
        # Semaphores are bound to the loop that first waits on them, and one layer serves
        # every loop of the process (the server's, the sender's, a test's).
        self._gates: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _gate(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:
            gate = self._gates[loop] = asyncio.Semaphore(self.in_flight)
        return gate

    async def send(self, channel: str, message: dict) -> None:
        async with self._gate():
            await super().send(channel, message)

    async def group_add(self, group: str, channel: str) -> None:
        async with self._gate():
            await super().group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        async with self._gate():
            await super().group_discard(group, channel)

    async def group_send(self, group: str, message: dict) -> None:
        async with self._gate():
            await super().group_send(group, message)
