"""Websocket consumers: one workflow's event stream, and the live dashboard.

Protocol (README "Websockets"): persisted events arrive as frames
`{"type", "seq", "workflow_id", "data", "at"}` in seq order with no gap and no
duplicate. Channel-layer delivery is at-most-once, so the consumer never trusts it
alone: it joins the group *before* replaying from the database, drops live frames it
has already sent, and fills any gap it sees from the database. A client that is too far
behind to catch up over the socket is told to resync (close code 4409).

Access is not only checked on the handshake. Every socket re-checks it (its credential
still valid, the user still a member) on each heartbeat and at once when its user's
group (`user.<id>`) hears `access.changed`, sent after the commit of a revoked token, a
removed membership or a deactivated user (workflows/signals.py): 4401 when the user is
no longer authenticated, 4404 when the workflow is no longer theirs; a dashboard leaves
the groups of projects it lost and sends a fresh snapshot.

Limits: open sockets per user (`socket_limits`, across nodes) and messages per second
per connection close with 4429; a frame that is binary, over-size, too deeply nested or
not JSON is answered with an error frame (the socket stays open), never a 1011.

On close a consumer leaves its groups, retrying a failed discard a few times (within
daphne's 10 s close timeout): a member left behind stays in Redis until the group
expires, and every group_send queues a message for it.
"""

import asyncio
import json
import logging
import random
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from redis.exceptions import RedisError

from workflows import selectors, socket_limits
from workflows.api.parsers import json_depth_exceeds
from workflows.broadcast import project_group, user_group, workflow_group
from workflows.errors import WorkflowNotFound
from workflows.selectors import SocketAccess, SocketCredential

logger = logging.getLogger(__name__)

CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORISED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_RESYNC = 4409
CLOSE_TOO_MANY = 4429

GROUP_DISCARD_ATTEMPTS = 4  # waits about 0.05, 0.2, 0.8 s between them (jittered)
# A slot lives this many heartbeats unless refreshed: a dead node's slots expire.
SLOT_HEARTBEATS = 3


class FrameRefused(ValueError):
    """A client frame the server will not read; `detail` says why."""


class _Consumer(AsyncJsonWebsocketConsumer):
    """What both routes share: admission (authentication, the per-user socket limit, the
    user's group), the checks on client frames and their rate, the heartbeat that
    re-checks access, and leaving groups on close with retries.

    Subclasses implement `access_check` (a close code, or None to stay open) and `beat`
    (the route's heartbeat; False if it closed the socket)."""

    closing = False
    credential: SocketCredential | None = None
    heartbeat: asyncio.Task | None = None

    # --- admission ----------------------------------------------------------------------

    async def admit(self) -> bool:
        """Accept, then close (4401, 4429) unless an authenticated user may open one more
        socket; join the user's group. True if the socket stays open."""
        await self.accept(subprotocol=self.scope.get("topdog_subprotocol"))
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHORISED)
            return False
        self.credential = SocketCredential(
            user_id=user.pk,
            token_id=self.scope.get("topdog_token_id"),
            session_key=_session_key(self.scope),
        )
        self.messages = socket_limits.MessageWindow(settings.TOPDOG_WS_MAX_MESSAGES_PER_SECOND)
        self.recheck = asyncio.Event()
        limit = settings.TOPDOG_WS_MAX_SOCKETS_PER_USER
        if not await socket_limits.socket_slot_claim(
            user_id=user.pk, connection=self.channel_name, limit=limit, ttl=_slot_ttl()
        ):
            await self.close(
                code=CLOSE_TOO_MANY,
                reason=f"more than {limit} open websockets (TOPDOG_WS_MAX_SOCKETS_PER_USER)",
            )
            self.credential = None  # holds no slot
            return False
        # Before any access check: a change committed after it is heard here.
        await self.group_join(user_group(user.pk))
        return True

    async def group_join(self, group: str) -> None:
        await self.channel_layer.group_add(group, self.channel_name)
        self.groups.append(group)

    async def group_part(self, group: str) -> None:
        if group in self.groups:
            self.groups.remove(group)
            await group_leave(self.channel_layer, group, self.channel_name)

    # --- access -------------------------------------------------------------------------

    async def access_check(self) -> int | None:
        raise NotImplementedError

    async def beat(self) -> bool:
        raise NotImplementedError

    async def access_changed(self, message: dict) -> None:
        """The user's access changed somewhere: re-check now (the heartbeat task does)."""
        if self.credential is not None:
            self.recheck.set()

    def heartbeat_start(self) -> None:
        self.heartbeat = asyncio.create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        """Every TOPDOG_WS_HEARTBEAT_SECONDS: refresh the socket's slot, re-check access,
        then the route's beat. When told that access changed: re-check at once.

        An error (the database is down, say) is logged and the next round goes on: a
        socket is never left without its re-checks."""
        interval = settings.TOPDOG_WS_HEARTBEAT_SECONDS
        loop = asyncio.get_running_loop()
        due = loop.time() + interval
        task = asyncio.current_task()
        while not self.closing and not task.cancelling():
            # asyncio.timeout, not wait_for: on 3.11 wait_for can lose a cancel that
            # lands as its timeout fires, and this loop would then never end.
            try:
                async with asyncio.timeout(max(0.0, due - loop.time())):
                    await self.recheck.wait()
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                return
            self.recheck.clear()
            beat = loop.time() >= due
            if beat:
                due = loop.time() + interval
            try:
                if beat:  # first: it needs no database
                    await socket_limits.socket_slot_refresh(
                        user_id=self.credential.user_id,
                        connection=self.channel_name,
                        ttl=_slot_ttl(),
                    )
                code = await self.access_check()
                if code is not None:
                    await self.close(code=code)
                    return
                if beat and not await self.beat():
                    return
            except asyncio.CancelledError:
                return
            except Exception:
                logger.exception("websocket heartbeat failed; trying again next beat")

    # --- client frames ------------------------------------------------------------------

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        """Count the frame against the connection's rate, then refuse what cannot be read
        (with an error frame) before `receive_json` sees it."""
        if self.closing or self.credential is None:
            return
        if not self.messages.allow(asyncio.get_running_loop().time()):
            limit = settings.TOPDOG_WS_MAX_MESSAGES_PER_SECOND
            await self.close(
                code=CLOSE_TOO_MANY,
                reason=f"more than {limit} messages/s (TOPDOG_WS_MAX_MESSAGES_PER_SECOND)",
            )
            return
        try:
            if text_data is None:
                raise FrameRefused("binary frames are not accepted; send JSON text")
            limit = settings.TOPDOG_WS_MAX_MESSAGE_BYTES
            if len(text_data) > limit or len(text_data.encode()) > limit:
                raise FrameRefused(f"frame over {limit} bytes (TOPDOG_WS_MAX_MESSAGE_BYTES)")
            content = await self.decode_json(text_data)
        except FrameRefused as refused:
            await self.send_json({"type": "error", "detail": str(refused)})
            return
        await self.receive_json(content, **kwargs)

    @classmethod
    async def decode_json(cls, text_data: str) -> Any:
        """The frame's JSON; FrameRefused if it nests too deep or is not JSON."""
        limit = settings.TOPDOG_MAX_JSON_DEPTH
        if json_depth_exceeds(text_data, limit):
            raise FrameRefused(f"JSON nested deeper than {limit} levels (TOPDOG_MAX_JSON_DEPTH)")
        try:
            return json.loads(text_data)
        except (ValueError, RecursionError) as exc:
            raise FrameRefused(f"not valid JSON: {exc}"[:200]) from None

    # --- sending and closing ------------------------------------------------------------

    async def send(
        self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
    ) -> None:
        """Nothing more goes out once the server has closed the socket."""
        if not self.closing:
            await super().send(text_data=text_data, bytes_data=bytes_data, close=close)

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        if not self.closing:
            self.closing = True
            await super().close(code=code, reason=reason)

    async def websocket_disconnect(self, message: dict) -> None:
        self.closing = True
        if self.heartbeat is not None:
            self.heartbeat.cancel()
        groups, self.groups = self.groups, []
        for group in groups:
            await group_leave(self.channel_layer, group, self.channel_name)
        if self.credential is not None:
            await socket_limits.socket_slot_release(
                user_id=self.credential.user_id, connection=self.channel_name
            )
        await super().websocket_disconnect(message)  # disconnect(), then stop


def _slot_ttl() -> float:
    return SLOT_HEARTBEATS * settings.TOPDOG_WS_HEARTBEAT_SECONDS + 5


def _session_key(scope: dict) -> str | None:
    """The session a socket authenticated with, unless it came with an API token."""
    if scope.get("topdog_token_id") is not None:
        return None
    session = scope.get("session")
    return session.session_key if session is not None else None


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

    stored_seq: int | None = None  # the workflow's last event seq at the last access check

    async def connect(self) -> None:
        if not await self.admit():
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
                user=self.scope["user"], workflow_id=workflow_id
            )
        except WorkflowNotFound:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.workflow_id = workflow.id
        self.last_seq = after
        self.lock = asyncio.Lock()
        # Join first, then replay: anything committed from now on is either in the replay
        # or queued on our channel, and the queued copy is dropped by seq.
        await self.group_join(workflow_group(workflow.id))
        async with self.lock:
            if not await self._catch_up(up_to=None):
                return
        await self.send_json({"type": "replay.done", "last_seq": self.last_seq})
        self.heartbeat_start()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "ping":
            await self.send_json({"type": "pong", "last_seq": self.last_seq})
        elif kind == "resume":
            # The client saw a gap (or was told of one): replay after what it has.
            try:
                after = int(content.get("after", self.last_seq))
            except (TypeError, ValueError, OverflowError):
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

    async def access_check(self) -> int | None:
        """4401 if the credential no longer authenticates, 4404 if the workflow is no
        longer the user's."""
        access, self.stored_seq = await database_sync_to_async(selectors.workflow_socket_access)(
            credential=self.credential, workflow_id=self.workflow_id
        )
        return {
            SocketAccess.UNAUTHENTICATED: CLOSE_UNAUTHORISED,
            SocketAccess.NOT_FOUND: CLOSE_NOT_FOUND,
        }.get(access)

    async def beat(self) -> bool:
        """Recover a dropped *last* event, then tell the client we are alive.

        The access check just before it read the workflow's last stored seq: a socket that
        has sent that one has nothing to recover and costs no second query (at 500 sockets
        a beat's thread hops delay the live frames queued behind them)."""
        async with self.lock:
            behind = self.stored_seq is None or self.stored_seq > self.last_seq
            if behind and not await self._catch_up(up_to=None):
                return False
        await self.send_json({"type": "heartbeat", "last_seq": self.last_seq})
        return True

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


class DashboardConsumer(_Consumer):
    """`/ws/dashboard/`: a snapshot of the user's workflows, then every change to them.

    When the user's projects change (a membership removed or added), the socket leaves
    or joins those projects' groups, stops forwarding a removed project's frames at once,
    and sends a fresh snapshot that replaces the old one."""

    async def connect(self) -> None:
        if not await self.admit():
            return
        self.project_ids: set[str] = set()
        await self._follow()
        self.heartbeat_start()

    async def _follow(self) -> None:
        """Join the groups of the user's projects (leave the others), then the snapshot."""
        project_ids, snapshot = await database_sync_to_async(selectors.dashboard_snapshot)(
            user=self.scope["user"]
        )
        wanted = {str(project_id) for project_id in project_ids}
        gone, self.project_ids = self.project_ids - wanted, wanted
        for project_id in gone:
            await self.group_part(project_group(project_id))
        for project_id in sorted(wanted):
            group = project_group(project_id)
            if group not in self.groups:
                await self.group_join(group)
        await self.send_json({"type": "snapshot", "workflows": snapshot})

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})
        else:
            await self.send_json({"type": "error", "detail": "send {'type': 'ping'}"})

    async def dashboard_events(self, message: dict) -> None:
        if "project_id" in message and message["project_id"] not in self.project_ids:
            return  # a project the user has just lost: its frames stop here
        for frame in message["frames"]:
            await self.send_json(
                {"type": "workflow.changed", "event": frame, "workflow": message["summary"]}
            )

    async def access_check(self) -> int | None:
        """4401 if the credential no longer authenticates; a changed set of projects is
        followed (with a new snapshot)."""
        project_ids = await database_sync_to_async(selectors.dashboard_socket_projects)(
            credential=self.credential
        )
        if project_ids is None:
            return CLOSE_UNAUTHORISED
        if {str(project_id) for project_id in project_ids} != self.project_ids:
            self.project_ids &= {str(project_id) for project_id in project_ids}
            await self._follow()
        return None

    async def beat(self) -> bool:
        await self.send_json({"type": "heartbeat"})
        return True


def _query_param(scope: dict, name: str) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin1")).get(name)
    return values[0] if values else None
