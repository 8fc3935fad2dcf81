"""API token authentication against ApiToken digests (the raw token is never stored)."""

from datetime import timedelta

from django.utils import timezone
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed, Throttled
from rest_framework.request import Request

from workflows.api.throttling import auth_failure_throttle
from workflows.models import ApiToken
from workflows.selectors import api_token_find


class TooManyFailures(Throttled):
    """429 for an address over its failed-authentication rate."""

    default_detail = "too many failed authentications from this address"


# last_used_at is bumped at most this often, so authentication stays one read.
_LAST_USED_RESOLUTION = timedelta(minutes=5)


class ApiTokenAuthentication(BaseAuthentication):
    """`Authorization: Token <token>` (or `Bearer <token>`)."""

    keywords = (b"token", b"bearer")

    def authenticate(self, request: Request) -> tuple | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() not in self.keywords:
            return None
        # Failures count per client address; an address over the limit is 429 before
        # its token is even looked at (workflows.api.throttling.AuthFailureThrottle).
        throttle = auth_failure_throttle()
        wait = throttle.blocked(request)
        if wait is not None:
            raise TooManyFailures(wait=wait)
        try:
            return self._token_user(request, parts)
        except AuthenticationFailed:
            throttle.record(request)
            raise

    def _token_user(self, request: Request, parts: list[bytes]) -> tuple:
        if len(parts) != 2:
            raise AuthenticationFailed("send the header as 'Authorization: Token <your token>'")
        try:
            raw = parts[1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise AuthenticationFailed("the token is not valid ASCII") from exc
        token = api_token_find(raw=raw)
        if token is None:
            raise AuthenticationFailed(
                "invalid or revoked token; create one with `manage.py topdog token create`"
            )
        if not token.user.is_active:
            raise AuthenticationFailed("this user is deactivated")
        now = timezone.now()
        if token.last_used_at is None or token.last_used_at < now - _LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return 'Token realm="api"'
