"""Websocket handshake authentication by API token.

Browsers send the session cookie (AuthMiddlewareStack handles that). Other clients
send `Authorization: Token <token>`, or, where headers cannot be set, offer the
subprotocols `topdog.v1` and `token.<token>`; the server answers with `topdog.v1`.
Tokens are never taken from the query string, which ends up in access logs.

The token's id goes into the scope (`topdog_token_id`) so that the consumer can re-check,
while the socket is open, that it has not been revoked.
"""

from typing import Any
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.request import split_domain_port, validate_host

from workflows.models import ApiToken
from workflows.selectors import api_token_find

SUBPROTOCOL = "topdog.v1"
TOKEN_SUBPROTOCOL_PREFIX = "token."


@database_sync_to_async
def _token_for(raw: str) -> ApiToken | None:
    """The token `raw` is, if it is one and its user is active."""
    token = api_token_find(raw=raw)
    if token is None or not token.user.is_active:
        return None
    return token


def _token_from(scope: dict) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            parts = value.decode("latin1").split()
            if len(parts) == 2 and parts[0].lower() in ("token", "bearer"):
                return parts[1]
    for protocol in scope.get("subprotocols", []):
        if protocol.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return protocol[len(TOKEN_SUBPROTOCOL_PREFIX) :]
    return None


class TokenAuthMiddleware(BaseMiddleware):
    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        scope = dict(scope)
        if SUBPROTOCOL in scope.get("subprotocols", []):
            scope["topdog_subprotocol"] = SUBPROTOCOL
        raw = _token_from(scope)
        if raw is not None:
            token = await _token_for(raw)
            if token is not None:
                scope["user"] = token.user
                scope["topdog_token_id"] = token.pk
            else:
                scope["user"] = AnonymousUser()
        return await super().__call__(scope, receive, send)


# The port an origin has when it names none.
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_tuple(value: str) -> tuple[str, str, int] | None:
    """`scheme://host[:port]` as (scheme, host, port), port defaulted; None if malformed."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def expected_origins(scope: dict) -> set[tuple[str, str, int]]:
    """The origins a browser page of this server has, as seen by this handshake.

    The page was served from the host and port the browser connects to (the Host
    header) with the matching scheme (ws -> http, wss -> https); the host must be one
    of ALLOWED_HOSTS. CSRF_TRUSTED_ORIGINS entries (exact, no wildcards) are added for
    pages served elsewhere, e.g. behind a TLS-terminating proxy."""
    origins = {
        origin
        for origin in (_origin_tuple(entry) for entry in settings.CSRF_TRUSTED_ORIGINS)
        if origin is not None and "*" not in origin[1]
    }
    host_header = next(
        (value.decode("latin1") for name, value in scope.get("headers", []) if name == b"host"),
        None,
    )
    if not host_header:
        return origins
    domain, _ = split_domain_port(host_header)
    if not domain or not validate_host(domain, _allowed_hosts()):
        return origins
    scheme = "https" if scope.get("scheme") == "wss" else "http"
    served = _origin_tuple(f"{scheme}://{host_header}")
    if served is not None:
        origins.add(served)
    return origins


def _allowed_hosts() -> list[str]:
    allowed = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    return allowed


def origin_allowed(scope: dict) -> bool:
    """Whether a handshake's Origin is this server's own (or a trusted) origin.

    Cross-site websocket hijacking needs a victim's browser, and browsers always send
    Origin; a handshake without one comes from a program holding its own credentials,
    so it is let through to authentication. With an Origin, scheme, host and port must
    all match: http://localhost:9999 is another site than http://localhost:8000."""
    origin = next(
        (value.decode("latin1") for name, value in scope.get("headers", []) if name == b"origin"),
        None,
    )
    if origin is None:
        return True
    parsed = _origin_tuple(origin)
    return parsed is not None and parsed in expected_origins(scope)


class OriginCheckMiddleware:
    """Refuses (closes) websocket handshakes whose Origin is not `origin_allowed`."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)


def origin_checked(application: Any) -> OriginCheckMiddleware:
    return OriginCheckMiddleware(application)
