"""What model calls cost, from the price table in settings."""

from decimal import Decimal

from django.conf import settings

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
