"""What model calls cost (from the price table in settings), and the budget cap."""

import logging
from decimal import Decimal
from functools import cache

from django.conf import settings

from ai_orchestration.providers.base import ChatRequest, Completion
from ai_orchestration.tokens import tokens_estimate
from workflows.models import Workflow
from workflows.models_catalog import family_lookup
from workflows.services import CallUsage

logger = logging.getLogger(__name__)

FREE_PROVIDERS = frozenset({"local", "offline"})
MILLION = Decimal(1_000_000)


def call_cost(*, provider: str, model: str, input_tokens: int, output_tokens: int) -> Decimal:
    """USD for one call from the price table, by the longest family the model id belongs
    to (`gpt-4o-2024-08-06` costs what `gpt-4o` does); 0 for local/offline models, and 0
    with a warning in the log for a model of no listed family."""
    if provider in FREE_PROVIDERS:
        return Decimal(0)
    prices = family_lookup(settings.TOPDOG_PRICES, model)
    if prices is None:
        _unpriced_warn(provider, model)
        return Decimal(0)
    input_price, output_price = (Decimal(str(p)) for p in prices)
    cost = (input_price * input_tokens + output_price * output_tokens) / MILLION
    return cost.quantize(Decimal("0.000001"))


@cache
def _unpriced_warn(provider: str, model: str) -> None:
    """Once per process and model: its calls are booked at $0."""
    logger.warning(
        "no price for model %r (provider %s): its calls are booked at $0 and the budget "
        "cap does not count them; add it to TOPDOG_PRICES (or TOPDOG_PRICES_JSON)",
        model,
        provider,
    )


def calls_usage(calls: list[Completion], prompt_version: str) -> CallUsage:
    """What `calls` (one phase's model calls, the last one answering) used and cost."""
    last = calls[-1]
    return CallUsage(
        provider=last.provider,
        model=last.model,
        prompt_version=prompt_version,
        input_tokens=sum(c.usage.input_tokens for c in calls),
        output_tokens=sum(c.usage.output_tokens for c in calls),
        cost_usd=sum(
            (
                call_cost(
                    provider=c.provider,
                    model=c.model,
                    input_tokens=c.usage.input_tokens,
                    output_tokens=c.usage.output_tokens,
                )
                for c in calls
            ),
            Decimal(0),
        ),
    )


def budget_stop_reason(
    *, workflow: Workflow, provider_name: str, request: ChatRequest, input_estimate: int
) -> str:
    """Why the next call must not be made (it could exceed the project's budget); ""."""
    budget = workflow.project.budget_usd
    if budget is None:
        return ""
    worst = call_cost(
        provider=provider_name,
        model=request.model,
        input_tokens=input_estimate
        or tokens_estimate("".join(m.content for m in request.messages)),
        output_tokens=request.max_tokens,
    )
    if workflow.cost_usd + worst > budget:
        return (
            f"budget: spent ${workflow.cost_usd:.4f} of ${budget:.4f}; the next "
            f"{workflow.state} call could cost up to ${worst:.4f}"
        )
    return ""
