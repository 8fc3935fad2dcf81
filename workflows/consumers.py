"""Websocket consumers: one workflow's event stream, and the live dashboard.

Protocol (README "Websockets"): persisted events arrive as frames
`{"type", "seq", "workflow_id", "data", "at"}` in seq order with no gap and no
duplicate. Channel-layer delivery is at-most-once, so the consumer never trusts it
alone: it joins the group *before* replaying from the database, drops live frames it
has already sent, and fills any gap it sees from the database. A client that is too far
behind to catch up over the socket is told to resync (close code 4409).

On close a consumer leaves its groups, retrying a failed discard a few times (within
daphne's 10 s close timeout): a member left behind stays in Redis until the group
expires, and every group_send queues a message for it.
"""

import asyncio
import logging
import random
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from redis.exceptions import RedisError

from workflows import selectors
from workflows.broadcast import project_group, workflow_group
from workflows.errors import WorkflowNotFound

logger = logging.getLogger(__name__)

CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORISED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_RESYNC = 4409

GROUP_DISCARD_ATTEMPTS = 4  # waits about 0.05, 0.2, 0.8 s between them (jittered)


class _Consumer(AsyncJsonWebsocketConsumer):
    """Leaves its groups on close like channels' consumer, retrying a failed discard."""

    async def websocket_disconnect(self, message: dict) -> None:
        groups, self.groups = self.groups, []
        for group in groups:
            await group_leave(self.channel_layer, group, self.channel_name)
        await super().websocket_disconnect(message)  # disconnect(), then stop


async def group_leave(layer: Any, group: str, channel: str) -> bool:
    """Discard `channel` from `group`, retrying with backoff; False (logged) if it stayed."""
    delay = 0.05
    for attempt in range(1, GROUP_DISCARD_ATTEMPTS + 1):
        try:
            await layer.group_discard(group, channel)
            return True
        except (RedisError, OSError) as exc:
            if attempt == GROUP_DISCARD_ATTEMPTS:
                logger.warning("could not leave %s after %d attempts: %r", group, attempt, exc)
                return False
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay *= 4
    return False


class WorkflowConsumer(_Consumer):
    """`/ws/workflows/<uuid>/?after=<seq>`: replay, then live events of one workflow."""

    async def connect(self) -> None:
        await self.accept(subprotocol=self.scope.get("topdog_subprotocol"))
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHORISED)
            return
        try:
            after = int(_query_param(self.scope, "after") or 0)
            if after < 0:
                raise ValueError
        except ValueError:
            await self.close(code=CLOSE_BAD_REQUEST, reason="after must be a whole number >= 0")
            return
        workflow_id = self.scope["url_route"]["kwargs"]["workflow_id"]
        try:
            workflow = await database_sync_to_async(selectors.workflow_get_for_user)(
                user=user, workflow_id=workflow_id
            )
        except WorkflowNotFound:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.workflow_id = workflow.id
        self.last_seq = after
        self.lock = asyncio.Lock()
        # Join first, then replay: anything committed from now on is either in the replay
        # or queued on our channel, and the queued copy is dropped by seq.
        group = workflow_group(workflow.id)
        await self.channel_layer.group_add(group, self.channel_name)
        self.groups.append(group)
        async with self.lock:
            if not await self._catch_up(up_to=None):
                return
        await self.send_json({"type": "replay.done", "last_seq": self.last_seq})
        self.heartbeat = asyncio.create_task(self._heartbeat())

    async def disconnect(self, code: int) -> None:
        task = getattr(self, "heartbeat", None)
        if task is not None:
            task.cancel()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "ping":
            await self.send_json({"type": "pong", "last_seq": self.last_seq})
        elif kind == "resume":
            # The client saw a gap (or was told of one): replay after what it has.
            try:
                after = int(content.get("after", self.last_seq))
            except (TypeError, ValueError):
                await self.send_json({"type": "error", "detail": "after must be a number"})
                return
            async with self.lock:
                self.last_seq = min(self.last_seq, max(after, 0))
                await self._catch_up(up_to=None)
        else:
            await self.send_json(
                {"type": "error", "detail": "send {'type': 'ping'} or {'type': 'resume'}"}
            )

    async def workflow_events(self, message: dict) -> None:
        """Live events of one commit: send those not sent yet; fill any gap first."""
        async with self.lock:
            for frame in message["frames"]:
                if frame["seq"] <= self.last_seq:
                    continue
                if frame["seq"] > self.last_seq + 1 and not await self._catch_up(
                    up_to=frame["seq"] - 1
                ):
                    return
                await self.send_json(frame)
                self.last_seq = frame["seq"]

    async def live_frame(self, message: dict) -> None:
        """A live frame (`ai.delta`, `ai.run`, `check.output`): not persisted, no seq."""
        await self.send_json(message["frame"])

    async def _catch_up(self, *, up_to: int | None) -> bool:
        """Send persisted events after last_seq (up to `up_to`); False if told to resync."""
        limit = settings.TOPDOG_WS_REPLAY_LIMIT
        frames, more = await database_sync_to_async(selectors.workflow_event_frames)(
            workflow_id=self.workflow_id, after=self.last_seq, up_to=up_to, limit=limit
        )
        if more:
            await self.send_json(
                {
                    "type": "resync",
                    "last_seq": self.last_seq,
                    "detail": f"more than {limit} events behind; fetch the workflow over the "
                    f"API and reconnect with ?after=<seq>",
                }
            )
            await self.close(code=CLOSE_RESYNC)
            return False
        for frame in frames:
            await self.send_json(frame)
            self.last_seq = frame["seq"]
        return True

    async def _heartbeat(self) -> None:
        """Tell the client we are alive, and recover a dropped *last* event."""
        interval = settings.TOPDOG_WS_HEARTBEAT_SECONDS
        try:
            while True:
                await asyncio.sleep(interval)
                async with self.lock:
                    if not await self._catch_up(up_to=None):
                        return
                await self.send_json({"type": "heartbeat", "last_seq": self.last_seq})
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("websocket heartbeat failed")


class DashboardConsumer(_Consumer):
    """`/ws/dashboard/`: a snapshot of the user's workflows, then every change to them."""

    async def connect(self) -> None:
        await self.accept(subprotocol=self.scope.get("topdog_subprotocol"))
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHORISED)
            return
        project_ids, snapshot = await database_sync_to_async(selectors.dashboard_snapshot)(
            user=user
        )
        for project_id in project_ids:
            group = project_group(project_id)
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups.append(group)
        await self.send_json({"type": "snapshot", "workflows": snapshot})

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def dashboard_events(self, message: dict) -> None:
        for frame in message["frames"]:
            await self.send_json(
                {"type": "workflow.changed", "event": frame, "workflow": message["summary"]}
            )


def _query_param(scope: dict, name: str) -> str | None:
    from urllib.parse import parse_qs

    values = parse_qs(scope.get("query_string", b"").decode("latin1")).get(name)
    return values[0] if values else None
