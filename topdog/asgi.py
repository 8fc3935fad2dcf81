"""ASGI entry point: `daphne topdog.asgi:application`.

One router for every protocol. HTTP goes to Django (with the admin's static files
when TOPDOG_SERVE_STATIC is on, because daphne serves none itself); websocket routes
join the router here.
"""

import asyncio
import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "topdog.settings")

# Set Django up before importing anything that touches models (consumers, routing).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from topdog.observability.metrics import websockets_counted  # noqa: E402
from topdog.ws_auth import TokenAuthMiddleware, origin_checked  # noqa: E402
from workflows.broadcast import broadcast_loop_set  # noqa: E402
from workflows.routing import websocket_urlpatterns  # noqa: E402

http_app = (
    ASGIStaticFilesHandler(django_asgi_app) if settings.TOPDOG_SERVE_STATIC else django_asgi_app
)

router = ProtocolTypeRouter(
    {
        "http": http_app,
        # Origin must be this server's own (scheme, host and port; a missing Origin, as
        # from non-browser clients, is let through); then session cookie or API token
        # decides who is connecting. Counted (topdog_websockets_open) from accept until
        # the consumer ends.
        "websocket": websockets_counted(
            origin_checked(
                AuthMiddlewareStack(TokenAuthMiddleware(URLRouter(websocket_urlpatterns)))
            )
        ),
    }
)


async def application(scope: dict, receive: Any, send: Any) -> None:
    """The router, once it has noted the server's event loop for workflow broadcasts."""
    broadcast_loop_set(asyncio.get_running_loop())
    await router(scope, receive, send)
