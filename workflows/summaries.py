"""What a dashboard card shows of a workflow: the `/ws/dashboard/` snapshot's entries and
the `summary` of its `workflow.changed` frames, rendered by one serializer."""

from typing import Any

from rest_framework import serializers


class DashboardSummarySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    title = serializers.CharField()
    project = serializers.CharField(source="project.slug")
    state = serializers.CharField()
    current_role = serializers.CharField(allow_null=True)
    awaiting_approval = serializers.BooleanField()
    regression_count = serializers.IntegerField()
    progress = serializers.FloatField()
    last_seq = serializers.IntegerField(source="last_event_seq")
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(max_digits=12, decimal_places=6)
    updated_at = serializers.DateTimeField(allow_null=True)


def workflow_summary(workflow: Any) -> dict:
    """The dashboard card of `workflow` (with its project loaded)."""
    return dict(DashboardSummarySerializer(workflow).data)
