"""Keeping credentials out of text: a token wrapper with a blind repr, and a scrubber.

Every message, log line and exception text an integration emits passes through
`secret_scrub` with the credentials in play, so a token that leaks into an upstream
error (a URL, an echoed header) is replaced before anyone can read it.
"""

import base64
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field

REDACTED = "[redacted]"
# Shorter strings are too likely to occur by chance to be worth replacing.
MIN_SECRET_CHARS = 6


@dataclass(frozen=True)
class SecretToken:
    """A credential whose repr and str never show its value."""

    value: str = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.value, str) or not self.value.strip():
            raise ValueError("a token must be a non-empty string")
        if any(ch.isspace() for ch in self.value):
            raise ValueError("a token must not contain whitespace")

    def __repr__(self) -> str:
        return "SecretToken('[redacted]')"

    __str__ = __repr__


def secret_value_problem(value: str) -> str | None:
    """What is wrong with `value` as an API key or token, or None if nothing is.

    Keys and tokens are printable ASCII without spaces; whitespace, control characters
    and anything non-ASCII are a paste gone wrong (a trailing newline, a smart quote) and
    would only fail later, at the provider. The message names the problem and where,
    never the value."""
    for position, ch in enumerate(value, start=1):
        if ch.isspace():
            kind = "whitespace (a space, tab or line break)"
        elif ord(ch) < 32 or ord(ch) == 127:
            kind = "a control character"
        elif ord(ch) > 127:
            kind = "a non-ASCII character (keys and tokens are plain ASCII)"
        else:
            continue
        return (
            f"contains {kind} at character {position} of {len(value)}; "
            "paste the key or token alone, without spaces, line breaks or quotes"
        )
    return None


def secret_token(token: "str | SecretToken") -> SecretToken:
    """`token` as a SecretToken (a plain string is wrapped)."""
    return token if isinstance(token, SecretToken) else SecretToken(token)


def _forms(secret: str) -> Iterable[str]:
    """The spellings a secret takes on its way into text: raw, URL-quoted, and the
    base64 of the `user:secret` pairs used for HTTP Basic auth."""
    yield secret
    yield urllib.parse.quote(secret, safe="")
    for user in ("x-access-token", "token", ""):
        yield base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")


def secret_scrub(text: object, secrets: "Iterable[str | SecretToken | None]") -> str:
    """`text` (anything, str()-ed) with every form of every secret replaced by a marker."""
    result = text if isinstance(text, str) else str(text)
    for secret in secrets:
        if secret is None:
            continue
        raw = secret.value if isinstance(secret, SecretToken) else secret
        if len(raw) < MIN_SECRET_CHARS:
            continue
        for form in sorted(set(_forms(raw)), key=len, reverse=True):
            result = result.replace(form, REDACTED)
    return result
