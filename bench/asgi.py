"""ASGI app of the websocket bench: TopDog's own, plus the floor consumer's route.

`daphne bench.asgi:application`. Websocket paths under `/bench/ws/` go to the floor
consumers of `bench/ws_floor.py`; everything else (HTTP, `/ws/workflows/...`, `/ws/dashboard/`) to
`topdog.asgi:application` unchanged, middleware included.
"""

import os
from collections.abc import Callable

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

# First: it sets Django up, which the consumer's imports need.
from topdog.asgi import application as topdog_application  # isort: skip

from channels.routing import URLRouter
from django.urls import path

from bench.ws_floor import FloorConsumer, FloorHopConsumer

FLOOR_PREFIX = "/bench/ws/"

floor_application = URLRouter(
    [
        path("bench/ws/floor/<str:group>/", FloorConsumer.as_asgi()),
        path("bench/ws/floor-hop/<str:group>/", FloorHopConsumer.as_asgi()),
    ]
)


async def application(scope: dict, receive: Callable, send: Callable) -> None:
    if scope["type"] == "websocket" and scope["path"].startswith(FLOOR_PREFIX):
        return await floor_application(scope, receive, send)
    return await topdog_application(scope, receive, send)
