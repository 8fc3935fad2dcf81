"""GET /metrics: Prometheus text exposition.

TOPDOG_METRICS: "protected" (default) serves logged-in staff and requests bearing
`Authorization: Bearer <TOPDOG_METRICS_TOKEN>` (compared in constant time); others get
401 (no or wrong credentials) or 403 (logged in, not staff). "open" serves everyone;
"off" answers 404.
"""

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST

from topdog.observability.metrics import exposition


def metrics_view(request: HttpRequest) -> HttpResponse:
    mode = settings.TOPDOG_METRICS
    if mode == "off":
        return JsonResponse({"detail": "Not found."}, status=404)
    if mode != "open":
        refused = _refused(request)
        if refused is not None:
            return refused
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)


def _refused(request: HttpRequest) -> HttpResponse | None:
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        token = settings.TOPDOG_METRICS_TOKEN
        if token and hmac.compare_digest(credential.strip().encode(), token.encode()):
            return None
        return _unauthorised("invalid metrics token")
    user = request.user
    if user.is_authenticated:
        if user.is_staff:
            return None
        return JsonResponse({"detail": "metrics are for staff"}, status=403)
    return _unauthorised(
        "authentication required: log in as staff or send Authorization: Bearer <token>"
    )


def _unauthorised(detail: str) -> HttpResponse:
    response = JsonResponse({"detail": detail}, status=401)
    response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response
