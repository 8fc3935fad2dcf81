import uuid

import django_filters
from django.db.models import QuerySet

from workflows.models import Workflow
from workflows.states import Role, State


class WorkflowFilter(django_filters.FilterSet):
    project = django_filters.CharFilter(method="filter_project", help_text="Project id or slug.")
    state = django_filters.MultipleChoiceFilter(choices=State.choices)
    current_role = django_filters.ChoiceFilter(choices=Role.choices)
    awaiting_approval = django_filters.BooleanFilter()
    build_id = django_filters.CharFilter()
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    q = django_filters.CharFilter(field_name="title", lookup_expr="icontains")

    class Meta:
        model = Workflow
        fields = ["project", "state", "current_role", "awaiting_approval", "build_id"]

    def filter_project(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        try:
            return queryset.filter(project_id=uuid.UUID(value))
        except ValueError:
            return queryset.filter(project__slug=value)
