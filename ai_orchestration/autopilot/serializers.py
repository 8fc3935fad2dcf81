"""How a run is shown: the API's runs, the MCP tools and the `ai.run` websocket frame."""

from rest_framework import serializers

from ai_orchestration.models import AIRun
from workflows.serializer_fields import ChoiceField


class RunOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    workflow_id = serializers.UUIDField()
    status = ChoiceField(choices=AIRun.Status.choices)
    scope = ChoiceField(choices=AIRun.Scope.choices)
    phase = serializers.CharField()
    provider = serializers.CharField()
    model = serializers.CharField()
    phases_completed = serializers.IntegerField()
    attempts = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(max_digits=12, decimal_places=6)
    error = serializers.CharField()
    stop_reason = serializers.CharField()
