"""The API's JSON parser: DRF's, with a nesting limit checked before `json.loads` runs.

`json.loads` recurses once per nesting level, so a body of 100,000 `[` ends in a
RecursionError (a 500) before any validation sees it. The body's brackets are counted
first, outside strings and without recursion; deeper than TOPDOG_MAX_JSON_DEPTH is a 400.
Strings with NUL characters are refused too: PostgreSQL stores none (in text or jsonb),
so they would otherwise fail at the database as a 500.
"""

import re
from typing import Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser
from rest_framework.utils import json

# A JSON string: quotes around anything but quotes and backslashes, or escapes.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


def json_depth_exceeds(text: str, limit: int) -> bool:
    """Whether `text` nests arrays/objects deeper than `limit` (strings are skipped).

    Linear and iterative; malformed input (an unclosed string) may over-count, which
    only turns a parse error into a depth error."""
    depth = 0
    for match in _BRACKETS.finditer(_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _has_nul(data: Any) -> bool:
    """Whether any string (key or value) in parsed JSON holds a NUL; iterative."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class DepthLimitedJSONParser(JSONParser):
    """JSONParser that answers 400 to bodies nested deeper than TOPDOG_MAX_JSON_DEPTH
    and to strings containing NUL, instead of failing with a 500."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding") or settings.DEFAULT_CHARSET
        try:
            text = stream.read().decode(encoding)
        except (LookupError, UnicodeError) as exc:
            raise ParseError(f"JSON parse error - the body is not valid {encoding}") from exc
        limit = settings.TOPDOG_MAX_JSON_DEPTH
        if json_depth_exceeds(text, limit):
            raise ParseError(
                f"JSON nested deeper than {limit} levels; flatten the document "
                "(limit: TOPDOG_MAX_JSON_DEPTH)"
            )
        try:
            constant = json.strict_constant if self.strict else None
            data = json.loads(text, parse_constant=constant)
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc
        if _has_nul(data):
            raise ParseError("JSON strings must not contain NUL (\\u0000) characters")
        return data
