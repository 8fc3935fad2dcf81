"""Websocket handshake authentication by API token.

Browsers send the session cookie (AuthMiddlewareStack handles that). Other clients
send `Authorization: Token <token>`, or, where headers cannot be set, offer the
subprotocols `topdog.v1` and `token.<token>`; the server answers with `topdog.v1`.
Tokens are never taken from the query string, which ends up in access logs.
"""

from typing import Any

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser

from workflows.models import ApiToken

SUBPROTOCOL = "topdog.v1"
TOKEN_SUBPROTOCOL_PREFIX = "token."


@database_sync_to_async
def _user_for_token(raw: str) -> Any:
    token = ApiToken.objects.select_related("user").filter(digest=ApiToken.digest_of(raw)).first()
    if token is None or not token.user.is_active:
        return None
    return token.user


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
            user = await _user_for_token(raw)
            if user is not None:
                scope["user"] = user
            else:
                scope["user"] = AnonymousUser()
        return await super().__call__(scope, receive, send)


class BrowserOriginValidator(OriginValidator):
    """Refuse browser handshakes from origins outside ALLOWED_HOSTS.

    Cross-site websocket hijacking needs a victim's browser, and browsers always send
    Origin; a handshake without one comes from a program holding its own credentials,
    so it is let through to authentication.
    """

    def valid_origin(self, parsed_origin: Any) -> bool:
        if parsed_origin is None:
            return True
        return self.validate_origin(parsed_origin)


def origin_checked(application: Any) -> BrowserOriginValidator:
    allowed = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed:
        allowed = ["localhost", "127.0.0.1", "[::1]"]
    return BrowserOriginValidator(application, allowed)
