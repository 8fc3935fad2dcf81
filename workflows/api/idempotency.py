"""`Idempotency-Key` for POST endpoints.

A key belongs to one user. The first request with a key records it as in flight (in its
own committed row, so concurrent repeats see it), runs, and stores its response; a repeat
with the same body gets that stored response back, a repeat with a different body is 422,
and a repeat while the first is still running is 409. A 5xx response is not stored: the
key is released so the client can retry. An in-flight key older than the lease belongs to
a request that died and may be taken over; keys are forgotten after the TTL.
"""

import hashlib
import json
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder

from workflows.api.errors import IdempotencyKeyInFlight, IdempotencyKeyReused
from workflows.models import IdempotencyKey

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


class _Replay(Exception):
    def __init__(self, record: IdempotencyKey) -> None:
        self.record = record


def request_fingerprint(*, method: str, path: str, body: bytes) -> str:
    """What makes two requests "the same" for a key: method, path with query, and body."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def idempotency_begin(*, user: Any, key: str, fingerprint: str) -> tuple[IdempotencyKey, bool]:
    """Claim `key` for this request; returns (record, True) if it is a completed repeat."""
    now = timezone.now()
    for _ in range(3):
        try:
            with transaction.atomic():
                return IdempotencyKey.objects.create(
                    user=user, key=key, fingerprint=fingerprint, created_at=now
                ), False
        except IntegrityError:
            pass
        existing = IdempotencyKey.objects.filter(user=user, key=key).first()
        if existing is None:
            continue  # released between our insert and our read; try again
        ttl = timedelta(seconds=settings.TOPDOG_IDEMPOTENCY_TTL_SECONDS)
        if existing.created_at < now - ttl:
            IdempotencyKey.objects.filter(pk=existing.pk, created_at=existing.created_at).delete()
            continue
        if existing.fingerprint != fingerprint:
            raise IdempotencyKeyReused()
        if existing.status == IdempotencyKey.Status.DONE:
            return existing, True
        lease = timedelta(seconds=settings.TOPDOG_IDEMPOTENCY_LEASE_SECONDS)
        if existing.created_at < now - lease:
            taken = IdempotencyKey.objects.filter(
                pk=existing.pk,
                status=IdempotencyKey.Status.IN_FLIGHT,
                created_at=existing.created_at,
            ).update(created_at=now)
            if taken:
                existing.created_at = now
                return existing, False
        raise IdempotencyKeyInFlight()
    raise IdempotencyKeyInFlight()


def idempotency_finish(*, record: IdempotencyKey, response: Response) -> None:
    """Store the response for repeats, or release the key after a server error."""
    if response.status_code >= 500:
        IdempotencyKey.objects.filter(pk=record.pk).delete()
        return
    body = json.loads(json.dumps(getattr(response, "data", None), cls=JSONEncoder))
    IdempotencyKey.objects.filter(pk=record.pk).update(
        status=IdempotencyKey.Status.DONE,
        response_status=response.status_code,
        response_body=body,
    )


class IdempotentMixin:
    """Honour `Idempotency-Key` on POST. Mix in before APIView."""

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # authentication, permissions, throttles
        self._idempotency_record = None
        key = request.headers.get(HEADER)
        if request.method != "POST" or key is None:
            return
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise exceptions.ValidationError(
                {HEADER: [f"must be 1 to {MAX_KEY_LENGTH} printable characters"]}
            )
        record, replay = idempotency_begin(
            user=request.user,
            key=key,
            fingerprint=request_fingerprint(
                method=request.method, path=request.get_full_path(), body=request.body
            ),
        )
        if replay:
            raise _Replay(record)
        self._idempotency_record = record

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, _Replay):
            return Response(
                exc.record.response_body,
                status=exc.record.response_status,
                headers={"Idempotent-Replayed": "true"},
            )
        try:
            return super().handle_exception(exc)
        except Exception:
            # Unhandled: Django will answer 500 and finalize_response never runs.
            record = getattr(self, "_idempotency_record", None)
            if record is not None:
                self._idempotency_record = None
                IdempotencyKey.objects.filter(pk=record.pk).delete()
            raise

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        record = getattr(self, "_idempotency_record", None)
        if record is not None:
            self._idempotency_record = None
            idempotency_finish(record=record, response=response)
        return response
