"""How a run is shown: the API's runs, the MCP tools and the `ai.run` websocket frame."""

from rest_framework import serializers

from ai_orchestration.models import AIRun
from workflows.serializer_fields import ChoiceField


class RunOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    workflow_id = serializers.UUIDField()
    status = ChoiceField(
        choices=AIRun.Status.choices,
        help_text="queued, running, waiting (at an approval gate, or for work items other "
        "workers hold), or how it ended: completed; failed (see error); cancelled; stopped "
        "before its work was done (see stop_reason): at the budget cap, or a scope-phase "
        "run whose phase the workflow left without it (completed elsewhere).",
    )
    scope = ChoiceField(choices=AIRun.Scope.choices)
    phase = serializers.CharField(
        help_text="The phase being worked; for a scope-phase run, the phase it is for."
    )
    provider = serializers.CharField()
    model = serializers.CharField()
    phases_completed = serializers.IntegerField()
    attempts = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(max_digits=12, decimal_places=6)
    error = serializers.CharField()
    stop_reason = serializers.CharField()
    request_id = serializers.CharField(help_text="X-Request-ID of the request that started it.")
