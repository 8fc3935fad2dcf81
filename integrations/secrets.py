"""Keeping credentials out of text: a token wrapper with a blind repr, and a scrubber.

Every message, log line and exception text an integration emits passes through
`secret_scrub` with the credentials in play, so a token that leaks into an upstream
error (a URL, an echoed header) is replaced before anyone can read it.
"""

import base64
import bisect
import re
import string
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache

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


# Any run of this many consecutive characters of a secret (raw or URL-quoted), in any
# letter case and with control characters inserted anywhere, is redacted: an upstream
# that echoes a token's last 14 characters leaks most of it.
MIN_RUN_CHARS = 12
# Runs are found from q-grams: every run of MIN_RUN_CHARS characters of a secret holds
# the gram that starts at one of its offsets 0, STEP, 2*STEP, ... (STEP = run - gram + 1),
# so a text is searched (str.find, in C) for a handful of grams per secret, not for every
# window; each hit is then extended both ways character by character.
_GRAM = 6
_STEP = MIN_RUN_CHARS - _GRAM + 1
# Characters an upstream (or an attacker) may put inside a secret without changing what a
# reader sees: C0/C1 controls (NUL, CR, LF, ESC...), zero-width and line separators.
_CONTROL_CHARS = [
    *range(0x00, 0x20),
    *range(0x7F, 0xA0),
    *range(0x200B, 0x2010),
    0x2028,
    0x2029,
    0x2060,
    0xFEFF,
]
_CONTROL = re.compile("[" + "".join(re.escape(chr(c)) for c in _CONTROL_CHARS) + "]")
# ASCII-only case folding: one character in, one out, so offsets stay aligned.
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


@dataclass(frozen=True)
class _Pattern:
    text: str  # lowercased, without control characters
    grams: dict[str, list[int]]  # gram -> offsets (multiples of _STEP) where it starts


@dataclass(frozen=True)
class _BytePattern:
    text: bytes  # the same, ASCII-encoded, for ASCII texts (the fast path)
    grams: dict[bytes, list[int]]


@lru_cache(maxsize=256)
def _patterns(raws: tuple[str, ...]) -> tuple[_Pattern, ...]:
    patterns = []
    for raw in dict.fromkeys(raws):
        for form in dict.fromkeys((raw, urllib.parse.quote(raw, safe=""))):
            text = _CONTROL.sub("", form).translate(_ASCII_LOWER)
            grams: dict[str, list[int]] = {}
            if len(text) >= MIN_RUN_CHARS:
                for offset in range(0, len(text) - _GRAM + 1, _STEP):
                    grams.setdefault(text[offset : offset + _GRAM], []).append(offset)
            patterns.append(_Pattern(text, grams))
    return tuple(patterns)


@lru_cache(maxsize=256)
def _byte_patterns(raws: tuple[str, ...]) -> tuple[_BytePattern, ...]:
    """The patterns that can occur in ASCII text, as bytes."""
    return tuple(
        _BytePattern(
            pattern.text.encode("ascii"),
            {gram.encode("ascii"): offsets for gram, offsets in pattern.grams.items()},
        )
        for pattern in _patterns(raws)
        if pattern.text.isascii()
    )


def _runs(haystack: "str | bytes", pattern: "_Pattern | _BytePattern") -> Iterable[tuple[int, int]]:
    """(start, end) of every run of >= MIN_RUN_CHARS characters of `pattern` in
    `haystack` (both lowercased); a short secret matches only whole."""
    needle = pattern.text
    if not pattern.grams:
        at = haystack.find(needle)
        while at != -1:
            yield at, at + len(needle)
            at = haystack.find(needle, at + 1)
        return
    end_of_text = len(haystack)
    for gram, offsets in pattern.grams.items():
        at = haystack.find(gram)
        while at != -1:
            for offset in offsets:
                start, j = at, offset
                while start > 0 and j > 0 and haystack[start - 1] == needle[j - 1]:
                    start, j = start - 1, j - 1
                end, j = at + _GRAM, offset + _GRAM
                while end < end_of_text and j < len(needle) and haystack[end] == needle[j]:
                    end, j = end + 1, j + 1
                if end - start >= MIN_RUN_CHARS:
                    yield start, end
            at = haystack.find(gram, at + 1)


# ASCII fast path: one bytes.translate lowercases and drops the C0 controls and DEL.
_LOWER_BYTES = bytes.maketrans(string.ascii_uppercase.encode(), string.ascii_lowercase.encode())
_CONTROL_BYTES = bytes([*range(0x20), 0x7F])
_BLOCK = 4096


def _ascii_offsets(data: bytes) -> Callable[[int], int]:
    """Offset in `data` without its control bytes -> offset in `data`, by blocks: the
    kept bytes before each block, then a walk inside one block."""
    kept_before, kept = [], 0
    for block_start in range(0, len(data), _BLOCK):
        kept_before.append(kept)
        kept += len(data[block_start : block_start + _BLOCK].translate(None, _CONTROL_BYTES))

    def original(offset: int) -> int:
        block = bisect.bisect_right(kept_before, offset) - 1
        position, remaining = block * _BLOCK, offset - kept_before[block]
        while True:
            if data[position] not in _CONTROL_BYTES:
                if remaining == 0:
                    return position
                remaining -= 1
            position += 1

    return original


def _redact_runs(text: str, raws: tuple[str, ...]) -> str:
    if text.isascii():
        data = text.encode("ascii")
        haystack: str | bytes = data.translate(_LOWER_BYTES, _CONTROL_BYTES)
        patterns: tuple = _byte_patterns(raws)
    else:
        haystack = _CONTROL.sub("", text).translate(_ASCII_LOWER)
        patterns = _patterns(raws)
    spans = sorted(span for pattern in patterns for span in _runs(haystack, pattern))
    if not spans:
        return text
    # Offsets in the haystack back to the text: add the removed characters before them.
    if len(haystack) == len(text):
        original: Callable[[int], int] = int
    elif isinstance(haystack, bytes):
        original = _ascii_offsets(data)
    else:
        shifted = [match.start() - index for index, match in enumerate(_CONTROL.finditer(text))]

        def original(offset: int) -> int:
            return offset + bisect.bisect_right(shifted, offset)

    pieces, cursor, merged_end = [], 0, -1
    for start, end in spans:
        begin, finish = original(start), original(end - 1) + 1
        if begin <= merged_end:  # overlaps the previous run: widen that one
            merged_end = max(merged_end, finish)
            continue
        if merged_end >= 0:
            pieces.append(REDACTED)
            cursor = merged_end
        pieces.append(text[cursor:begin])
        merged_end = finish
    pieces.append(REDACTED)
    pieces.append(text[merged_end:])
    return "".join(pieces)


def secret_scrub(text: object, secrets: "Iterable[str | SecretToken | None]") -> str:
    """`text` (anything, str()-ed) with every form of every secret replaced by a marker.

    Exact forms (raw, URL-quoted, Basic-auth base64) are replaced; then any run of
    MIN_RUN_CHARS or more consecutive characters of a raw or URL-quoted secret, in any
    letter case and with control characters inserted anywhere (they are redacted with
    it). A secret shorter than MIN_RUN_CHARS is matched whole, the same way. Linear in
    the text: a 1 MB text with a handful of secrets takes milliseconds."""
    result = text if isinstance(text, str) else str(text)
    raws = []
    for secret in secrets:
        if secret is None:
            continue
        raw = secret.value if isinstance(secret, SecretToken) else secret
        if len(raw) < MIN_SECRET_CHARS:
            continue
        raws.append(raw)
        for form in sorted(set(_forms(raw)), key=len, reverse=True):
            result = result.replace(form, REDACTED)
    if not raws:
        return result
    return _redact_runs(result, tuple(raws))
