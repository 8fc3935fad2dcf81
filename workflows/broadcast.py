"""Publishing committed workflow events to the channel layer.

Called only from `transaction.on_commit`, so nothing is published for a transaction that
rolls back. Delivery is at-most-once; clients recover gaps from the database by seq.

In a process serving ASGI, a view's thread hands its events to the server's event loop
and goes on: the response does not wait for the channel layer (a few Redis round trips).
Elsewhere (task workers, management commands) the events are sent before the call
returns.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from functools import partial
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

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


def event_frame(event: Any) -> dict:
    """The websocket frame of a persisted event (DESIGN.md: type, seq, workflow_id, data, at)."""
    return {
        "type": event.type,
        "seq": event.seq,
        "workflow_id": str(event.workflow_id),
        "data": event.data,
        "at": event.created_at.isoformat(),
    }


def workflow_summary(workflow: Any) -> dict:
    """What a dashboard card shows of a workflow."""
    return {
        "id": str(workflow.id),
        "title": workflow.title,
        "project": workflow.project.slug,
        "state": workflow.state,
        "current_role": workflow.current_role,
        "awaiting_approval": workflow.awaiting_approval,
        "regression_count": workflow.regression_count,
        "progress": workflow.progress(),
        "last_seq": workflow.last_event_seq,
        "input_tokens": workflow.input_tokens,
        "output_tokens": workflow.output_tokens,
        "cost_usd": str(workflow.cost_usd),
        "updated_at": workflow.updated_at.isoformat() if workflow.updated_at else None,
    }


def workflow_event_broadcast(*, event: Any) -> None:
    """Send one committed event to its workflow's group and its project's dashboard group."""
    workflow_events_broadcast(events=[event])


def workflow_events_broadcast(*, events: list[Any]) -> None:
    """Send committed events, in seq order, to their workflow and project groups."""
    layer = get_channel_layer()
    if layer is None or not events:
        return
    _deliver(partial(_send_all, layer, events), "broadcast of workflow events")


def group_send(group: str, message: dict) -> None:
    """Send `message` to `group` (best-effort: a failure is logged), the same way as
    workflow events: through the server's event loop from a thread of a process serving
    ASGI, so that an in-memory channel layer is only used from its own loop."""
    layer = get_channel_layer()
    if layer is not None:
        _deliver(partial(layer.group_send, group, message), f"send to {group}")


def _deliver(send: Callable[[], Awaitable[None]], what: str) -> None:
    loop = _server_loop
    if loop is not None and loop.is_running() and not _in_event_loop():
        sending = asyncio.run_coroutine_threadsafe(send(), loop)
        sending.add_done_callback(partial(_log_failure, what))
        return
    try:
        async_to_sync(send)()
    except Exception:  # a broken layer must not turn a committed change into an error
        logger.exception("%s failed", what)


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
        {"type": "dashboard.events", "frames": frames, "summary": workflow_summary(workflow)},
    )


def workflow_live_frame_send(*, workflow_id: Any, frame: dict) -> None:
    """Send a frame that is not persisted (`ai.delta`, `ai.run`, `check.output`) to the
    workflow's websocket clients. Best-effort: the database is the record."""
    group_send(workflow_group(workflow_id), {"type": "live.frame", "frame": frame})
