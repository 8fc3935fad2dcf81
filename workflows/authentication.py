"""API token authentication against ApiToken digests (the raw token is never stored)."""

from datetime import UTC, datetime, timedelta

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import BooleanField, ExpressionWrapper, Q
from django.utils import timezone
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from topdog.compiled import CompiledQuery, Param
from workflows.models import ApiToken

# last_used_at is bumped at most this often, so authentication stays one read.
_LAST_USED_RESOLUTION = timedelta(minutes=5)

# What a request needs of the user (in the model's field order, as Model.from_db wants
# them); other fields load if touched.
_USER_FIELDS = tuple(
    field.attname
    for field in get_user_model()._meta.concrete_fields
    if field.attname in {"id", "username", "is_active", "is_superuser", "is_staff"}
)

# Every API request runs this: compiled once (topdog/compiled.py).
_TOKEN_QUERY = CompiledQuery(
    lambda digest, used_before: (
        ApiToken.objects.filter(digest=digest)
        .annotate(
            stale=ExpressionWrapper(
                Q(last_used_at__isnull=True) | Q(last_used_at__lt=used_before),
                output_field=BooleanField(),
            )
        )
        .values_list("id", "stale", *(f"user__{name}" for name in _USER_FIELDS))
    ),
    digest=Param(ApiToken._meta.get_field("digest"), "placeholder-digest-708003"),
    used_before=Param(
        ApiToken._meta.get_field("last_used_at"), datetime(1970, 1, 2, 7, 8, 4, tzinfo=UTC)
    ),
)


class ApiTokenAuthentication(BaseAuthentication):
    """`Authorization: Token <token>` (or `Bearer <token>`)."""

    keywords = (b"token", b"bearer")

    def authenticate(self, request: Request) -> tuple | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() not in self.keywords:
            return None
        if len(parts) != 2:
            raise AuthenticationFailed("send the header as 'Authorization: Token <your token>'")
        try:
            raw = parts[1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise AuthenticationFailed("the token is not valid ASCII") from exc
        now = timezone.now()
        row = _TOKEN_QUERY.fetchone(
            digest=ApiToken.digest_of(raw), used_before=now - _LAST_USED_RESOLUTION
        )
        if row is None:
            raise AuthenticationFailed(
                "invalid or revoked token; create one with `manage.py topdog token create`"
            )
        token_id, stale, *values = row
        user = get_user_model().from_db(connection.alias, _USER_FIELDS, values)
        if not user.is_active:
            raise AuthenticationFailed("this user is deactivated")
        if stale:
            ApiToken.objects.filter(pk=token_id).update(last_used_at=now)
        return user, ApiToken.from_db(connection.alias, ("id", "user_id"), (token_id, user.pk))

    def authenticate_header(self, request: Request) -> str:
        return 'Token realm="api"'
