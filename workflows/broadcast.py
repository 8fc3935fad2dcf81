"""Publishing committed workflow events to the channel layer.

Called only from `transaction.on_commit`, so nothing is published for a transaction that
rolls back. Delivery is at-most-once; clients recover gaps from the database by seq.
"""

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)


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
    try:
        async_to_sync(_send_all)(layer, events)
    except Exception:  # a broken layer must not turn a committed change into an error
        logger.exception("broadcast of %d workflow events failed", len(events))


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
