"""What model calls cost, and usage totals per workflow, role and phase."""

from decimal import Decimal

from django.conf import settings
from django.db.models import Count, Sum

from workflows.models import Message, Workflow

FREE_PROVIDERS = frozenset({"local", "offline"})
MILLION = Decimal(1_000_000)


def call_cost(*, provider: str, model: str, input_tokens: int, output_tokens: int) -> Decimal:
    """USD for one call from the price table; 0 for local/offline or unknown models."""
    if provider in FREE_PROVIDERS:
        return Decimal(0)
    prices = settings.TOPDOG_PRICES.get(model)
    if prices is None:
        return Decimal(0)
    input_price, output_price = (Decimal(str(p)) for p in prices)
    cost = (input_price * input_tokens + output_price * output_tokens) / MILLION
    return cost.quantize(Decimal("0.000001"))


def workflow_usage(*, workflow: Workflow) -> dict:
    """Tokens and cost in total, by role and by phase (from the stored messages)."""
    rows = (
        Message.objects.filter(workflow=workflow)
        .exclude(input_tokens=0, output_tokens=0)
        .values("role", "phase")
        .annotate(
            calls=Count("id"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
            cost_usd=Sum("cost_usd"),
        )
        .order_by("role", "phase")
    )
    by_role: dict[str, dict] = {}
    by_phase: dict[str, dict] = {}
    for row in rows:
        for bucket, key in ((by_role, row["role"]), (by_phase, row["phase"])):
            totals = bucket.setdefault(
                key, {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": Decimal(0)}
            )
            totals["calls"] += row["calls"]
            totals["input_tokens"] += row["input_tokens"]
            totals["output_tokens"] += row["output_tokens"]
            totals["cost_usd"] += row["cost_usd"]
    return {
        "total": {
            "input_tokens": workflow.input_tokens,
            "output_tokens": workflow.output_tokens,
            "cost_usd": workflow.cost_usd,
        },
        "by_role": by_role,
        "by_phase": by_phase,
    }
