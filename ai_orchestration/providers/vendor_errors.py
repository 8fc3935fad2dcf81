"""Turning an HTTP vendor's failures into ProviderErrors that say what to do next.

Shared by the HTTP adapters (openai, anthropic, local); no vendor SDK is imported here.
Messages never contain a credential: every text that came from the vendor passes
through `redact` first (the OpenAI API, for one, echoes a rejected key back).
"""

import email.utils
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

from ai_orchestration.providers.base import ProviderError

# Statuses worth another attempt: request timeout, conflict (a lock on the vendor's
# side), rate limits, and every server error including Anthropic's 529 "overloaded".
RETRYABLE_STATUSES = frozenset({408, 409, 429})
DETAIL_CHARS = 300


@dataclass(frozen=True)
class VendorContext:
    """What an error message needs to name: the vendor, and the settings to change."""

    provider: str
    model: str
    base_url: str
    key_setting: str
    model_setting: str
    base_url_setting: str
    secrets: tuple[str, ...] = ()


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """`text` with every secret (and any long-enough prefix of it) replaced."""
    for secret in secrets:
        if secret and len(secret) >= 8:
            text = text.replace(secret, "[redacted]")
            # Vendors echo a truncated key ("sk-abc123...xyz"); hide a visible head too.
            text = text.replace(secret[: max(8, len(secret) // 2)], "[redacted]")
    return text


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Seconds the vendor asked us to wait: `retry-after-ms`, then `retry-after` as
    seconds or an HTTP date. None when absent or unreadable; never negative."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = lowered.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue
        if math.isfinite(seconds):
            return max(0.0, seconds)
    value = lowered.get("retry-after")
    if value:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is not None:
            return max(0.0, when.timestamp() - time.time())
    return None


def error_for_status(
    ctx: VendorContext,
    status: int,
    *,
    detail: str = "",
    headers: Mapping[str, str] | None = None,
) -> ProviderError:
    """The ProviderError for an HTTP error `status` from the vendor."""
    detail = _clean(detail, ctx)
    said = f": {detail}" if detail else ""
    name = ctx.provider
    should_retry = (headers or {}).get("x-should-retry")
    retryable = status in RETRYABLE_STATUSES or status >= 500
    if should_retry in ("true", "false"):
        retryable = should_retry == "true"
    if status == 429:
        message = f"{name} is rate limiting us (429){said}"
    elif status == 529:
        message = f"{name} is overloaded (529){said}"
    elif status >= 500:
        message = f"{name} had a server error ({status}){said}"
    elif status == 401:
        message = f"{name} rejected the API key (401): check {ctx.key_setting}"
    elif status == 402:
        message = f"{name} refused the call for billing reasons (402){said}: check the account"
    elif status == 403:
        message = (
            f"{name} refused access (403){said}: the key in {ctx.key_setting} may lack "
            f"access to model {ctx.model!r}"
        )
    elif status == 404:
        message = (
            f"{name} does not know model {ctx.model!r} or the endpoint (404){said}: check "
            f"{ctx.model_setting} and {ctx.base_url_setting} ({ctx.base_url or 'default'})"
        )
    elif status == 413:
        message = f"{name} says the request is too large (413){said}: shrink the context"
    elif status in (400, 422):
        message = (
            f"{name} rejected the request ({status}){said}: check that model {ctx.model!r} "
            "supports these parameters (max tokens, temperature, JSON output)"
        )
    else:
        message = f"{name} answered HTTP {status}{said}"
    return ProviderError(
        message,
        retryable=retryable,
        status=status,
        retry_after=retry_after_seconds(headers) if retryable else None,
    )


def error_for_timeout(ctx: VendorContext, timeout: float) -> ProviderError:
    return ProviderError(
        f"{ctx.provider} did not answer within {timeout:.3g}s", retryable=True, status=None
    )


def error_for_connection(ctx: VendorContext, detail: str = "") -> ProviderError:
    detail = _clean(detail, ctx)
    return ProviderError(
        f"could not reach {ctx.provider} at {ctx.base_url or 'its default URL'}"
        f"{': ' + detail if detail else ''} (check {ctx.base_url_setting} and the network)",
        retryable=True,
    )


def _clean(detail: str, ctx: VendorContext) -> str:
    detail = redact(" ".join(str(detail or "").split()), ctx.secrets)
    return detail if len(detail) <= DETAIL_CHARS else detail[: DETAIL_CHARS - 1] + "…"
