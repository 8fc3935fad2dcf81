"""Pagination and previews for every API list.

Lists are cursor-paginated: `{"next": url|null, "previous": url|null, "results": [...]}`,
PAGE_SIZE items a page unless `?page_size=` asks for another size (at most
MAX_PAGE_SIZE); follow `next` until it is null. A cursor is stable under inserts.

Big fields are whole only on detail endpoints. In lists they are a preview of at most
PREVIEW_CHARS characters (the head of a text; the tail of a check's output, where the
failures are) and the item says `truncated: true` when any preview was cut, with the
`url` of its detail.
"""

from functools import cache
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
PREVIEW_CHARS = 2000

PAGE_PARAMETERS = [
    OpenApiParameter("cursor", str, description="From the previous page's `next`."),
    OpenApiParameter(
        "page_size",
        {"type": "integer", "minimum": 1},
        description=f"Default {PAGE_SIZE}, at most {MAX_PAGE_SIZE} (more is read as "
        f"{MAX_PAGE_SIZE}).",
    ),
]


class ListPagination(CursorPagination):
    page_size = PAGE_SIZE
    max_page_size = MAX_PAGE_SIZE
    page_size_query_param = "page_size"

    def __init__(self, ordering: tuple[str, ...]) -> None:
        self.ordering = ordering


@cache
def page_of(item: type[serializers.Serializer]) -> type[serializers.Serializer]:
    """The OpenAPI shape of a page of `item`s: `{next, previous, results}`."""
    name = item.__name__.removesuffix("Serializer")
    return type(
        f"Paginated{name}ListSerializer",
        (serializers.Serializer,),
        {
            "__doc__": f"A page of {name} items; follow `next` until it is null.",
            "next": serializers.URLField(allow_null=True, help_text="The next page, or null."),
            "previous": serializers.URLField(
                allow_null=True, help_text="The previous page, or null."
            ),
            "results": item(many=True),
        },
    )


def paginated(
    request: Request,
    view: Any,
    queryset: QuerySet,
    ordering: tuple[str, ...],
    serialize: Any,
) -> Response:
    """One cursor page of `queryset` in `ordering`, each item through `serialize`."""
    paginator = ListPagination(ordering)
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serialize(page))


def head(text: str | None, chars: int = PREVIEW_CHARS) -> tuple[str, bool]:
    """The first `chars` characters of `text`, and whether anything was cut."""
    text = text or ""
    return text[:chars], len(text) > chars


def tail(text: str | None, chars: int = PREVIEW_CHARS) -> tuple[str, bool]:
    """The last `chars` characters of `text`, and whether anything was cut."""
    text = text or ""
    return (text[-chars:] if chars else ""), len(text) > chars
