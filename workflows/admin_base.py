"""A base for every TopDog ModelAdmin."""

from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.http import HttpRequest


class NulSafeModelAdmin(admin.ModelAdmin):
    """A changelist whose filters or search carry a NUL is an invalid lookup (the
    admin's "?e=1" page), not a 500: PostgreSQL refuses NUL in text parameters, so
    `?state=%00` failed at the database."""

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        if any("\x00" in key + "".join(values) for key, values in request.GET.lists()):
            raise IncorrectLookupParameters("NUL in the query string")
        return super().get_changelist_instance(request)
