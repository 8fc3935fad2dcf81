"""Server and driver side of the websocket bench: the floor consumer and the two senders.

- `FloorConsumer` (`/bench/ws/floor/<group>/`, through `bench.asgi`): the floor. A bare
  consumer that joins a group on connect and `send_json`s every frame of every group
  message: no auth, no lock, no seq check, no database, and not even channels' hop to
  the sync thread before each message (`close_old_connections`).
- `FloorHopConsumer` (`/bench/ws/floor-hop/<group>/`): the same with channels' default
  dispatch, hop included, which every TopDog consumer inherits.
- `transition_commit`: completes the current phase of a workflow through
  `workflow_phase_complete`, the service the API uses, and answers the wall-clock time of
  its commit and the shape of what its broadcast sent to the workflow's group (group
  messages, and the byte size of each websocket frame in them). The service runs inside
  an outer transaction whose first `on_commit` hook takes the time, so the mark is taken
  after COMMIT and before the service's own broadcast hook runs.
- `floor_send`: `group_send`s messages of that same shape to a floor group, from sync code
  on one event loop that the driver keeps (the service's broadcast, too, sends on one
  long-lived loop per process, though on a thread of its own), and answers when the first
  send began. Through the server's view (in-memory layer) it sends on the server's loop,
  through `async_to_sync`, as the service's broadcast does there.

`bench/ws_driver.py` calls the two in its own process (with Redis, the production shape:
the commit happens on an API node or worker, the websocket node only delivers). With the
in-memory layer only the server's own process reaches its groups, so the driver calls
them through the views here (POST `/bench/ws/transition`, `/bench/ws/floor/send`).
"""

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from asgiref.sync import async_to_sync
from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from workflows.broadcast import broadcast_flush, workflow_group
from workflows.evidence import EVIDENCE_EXAMPLES
from workflows.models import Workflow
from workflows.services import Actor, workflow_phase_complete
from workflows.states import State

FLOOR_MESSAGE_TYPE = "bench.frames"
PAD_AT = 1_000_000_000.123456  # an `at` as long as a real time.time() value

# IMPLEMENTATION -> TESTING forward, TESTING -> IMPLEMENTATION regression: a cycle one
# workflow can run as long as its regression limit allows (the bench raises it).
_CHANGE_SET = {
    "commit_message": "feat: dark mode toggle on the settings page",
    "files": [
        {
            "path": "src/settings/theme.py",
            "action": "modify",
            "content": "def theme_for(user):\n    return user.preferences.get('theme', 'system')\n",
        },
        {"path": "tests/test_theme.py", "action": "modify", "content": "def test_x():\n    ...\n"},
    ],
}
_FAILED_TESTS = {
    **EVIDENCE_EXAMPLES[State.TESTING],
    "verdict": "fail",
    "findings": [
        {
            "severity": "major",
            "message": "toggle does not persist after reload",
            "path": "src/settings/theme.py",
        }
    ],
    "quality_score": 0.4,
    "tests_failed": 1,
}
EVIDENCE_FOR = {State.IMPLEMENTATION: _CHANGE_SET, State.TESTING: _FAILED_TESTS}


class FloorConsumer(AsyncJsonWebsocketConsumer):
    """Joins `bench.floor.<group>`, says so, then forwards each group message's frames."""

    async def connect(self) -> None:
        self.group = floor_group(self.scope["url_route"]["kwargs"]["group"])
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.groups.append(self.group)
        await self.accept()
        await self.send_json({"type": "replay.done", "last_seq": 0})

    async def dispatch(self, message: dict) -> None:
        # channels' own dispatch first hops to the sync thread to close old database
        # connections, for every message to every consumer; the floor never touches the
        # database, so it goes straight to the handler.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    async def bench_frames(self, message: dict) -> None:
        for frame in message["frames"]:
            await self.send_json(frame)


class FloorHopConsumer(FloorConsumer):
    """The floor with channels' own dispatch, as TopDog's consumers have it: every message
    first hops to the sync thread to close old database connections."""

    dispatch = AsyncJsonWebsocketConsumer.dispatch


def floor_group(name: str) -> str:
    return f"bench.floor.{name}"


def floor_frame(*, seq: int, group: str, size: int) -> dict:
    """A frame shaped like a workflow event whose `json.dumps` is about `size` bytes long."""
    frame = {"type": "bench.frame", "seq": seq, "workflow_id": group, "data": {"pad": ""}}
    frame["at"] = PAD_AT
    frame["data"]["pad"] = "x" * max(0, size - len(json.dumps(frame)))
    return frame


def transition_commit(*, workflow_id: str, user_id: int) -> dict:
    """Complete `workflow_id`'s current phase as `user_id`: its commit time, what it sent."""
    user = get_user_model().objects.get(pk=user_id)
    state = Workflow.objects.values_list("state", flat=True).get(pk=workflow_id)
    committed: list[float] = []
    with _group_sends_recorded(workflow_group(workflow_id)) as messages:
        with transaction.atomic():
            transaction.on_commit(lambda: committed.append(time.time()))
            outcome = workflow_phase_complete(
                workflow_id=workflow_id,
                ai_response="Bench phase result.",
                result=EVIDENCE_FOR[state],
                actor=Actor.of(user),
            )
        # Outside a server the broadcast hook hands its sends to the process's sender
        # loop and returns; wait for them, to answer what was sent and when it was done.
        broadcast_flush()
    sent = time.time()  # every group_send of the broadcast is done
    return {
        "mark": committed[0],
        "send_ms": round((sent - committed[0]) * 1e3, 3),
        "messages": messages,
        "previous_state": state,
        "new_state": outcome.workflow.state,
        "last_seq": outcome.workflow.last_event_seq,
    }


def floor_send(
    *, group: str, first_seq: int, messages: list[list[int]], in_server: bool = False
) -> dict:
    """One `group_send` per message, with frames of the given sizes; when the first began."""
    seq = first_seq
    payloads = []
    for sizes in messages:
        frames = []
        for size in sizes:
            frames.append(floor_frame(seq=seq, group=group, size=size))
            seq += 1
        payloads.append({"type": FLOOR_MESSAGE_TYPE, "frames": frames})
    sent_at = time.time()
    for payload in payloads:
        for frame in payload["frames"]:
            frame["at"] = sent_at
    if in_server:  # a view's thread: async_to_sync runs it on the server's loop
        async_to_sync(_send_all)(floor_group(group), payloads)
    else:
        _loop().run_until_complete(_send_all(floor_group(group), payloads))
    sent = time.time()
    return {"mark": sent_at, "send_ms": round((sent - sent_at) * 1e3, 3), "last_seq": seq - 1}


_loops = threading.local()


def _loop() -> asyncio.AbstractEventLoop:
    """This thread's event loop for floor sends: made once, so its Redis connections stay."""
    loop = getattr(_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = _loops.loop = asyncio.new_event_loop()
    return loop


async def _send_all(group: str, payloads: list[dict[str, Any]]) -> None:
    layer = get_channel_layer()
    for payload in payloads:
        await layer.group_send(group, payload)


@contextmanager
def _group_sends_recorded(group: str) -> Iterator[list[list[int]]]:
    """Each message this process's channel layer sends to `group`: its frames' sizes.

    Wraps the layer's `group_send` on the instance for the duration, so the floor can send
    the same number of messages of the same size as the service did, whatever its
    broadcast's shape (one message per event, or one per commit).
    """
    layer = get_channel_layer()
    send = layer.group_send
    sent: list[list[int]] = []

    async def recording(name: str, message: dict) -> None:
        if name == group:
            frames = message["frames"] if "frames" in message else [message["frame"]]
            sent.append([len(json.dumps(frame)) for frame in frames])
        await send(name, message)

    layer.group_send = recording
    try:
        yield sent
    finally:
        del layer.group_send  # the class's method again


@csrf_exempt
@require_POST
def transition_view(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body)
    return JsonResponse(transition_commit(workflow_id=body["workflow_id"], user_id=body["user_id"]))


@csrf_exempt
@require_POST
def floor_send_view(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body)
    return JsonResponse(
        floor_send(
            group=body["group"],
            first_seq=body["first_seq"],
            messages=body["messages"],
            in_server=True,
        )
    )
