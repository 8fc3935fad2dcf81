"""Calls are priced by the model id the workflow asked for (issue 13, item 1)."""

import logging
from decimal import Decimal

import pytest

from ai_orchestration.accounting import _unpriced_warn, call_cost
from ai_orchestration.autopilot.runner import autopilot_step
from ai_orchestration.autopilot.services import autopilot_start
from tests.ai_orchestration.fakes import ok
from tests.factories import evidence, workflow_for
from workflows.models import Message
from workflows.services import Actor


def test_a_dated_model_id_is_priced_as_its_family():
    # gpt-4: $30 in, $60 out per million; gpt-4o: $2.5 / $10
    assert call_cost(
        provider="openai", model="gpt-4-0613", input_tokens=1_000_000, output_tokens=0
    ) == Decimal("30")
    assert call_cost(
        provider="openai", model="gpt-4o-2024-08-06", input_tokens=0, output_tokens=1_000_000
    ) == Decimal("10")


def test_an_unpriced_model_is_booked_at_zero_with_one_warning(caplog):
    _unpriced_warn.cache_clear()

    with caplog.at_level(logging.WARNING, logger="ai_orchestration.accounting"):
        costs = [
            call_cost(provider="openai", model="gpt-9-turbo", input_tokens=10, output_tokens=10)
            for _ in range(3)
        ]

    assert costs == [Decimal(0)] * 3
    warnings = [r.getMessage() for r in caplog.records if "gpt-9-turbo" in r.getMessage()]
    assert len(warnings) == 1
    assert "booked at $0" in warnings[0] and "TOPDOG_PRICES" in warnings[0]


def test_local_and_offline_models_are_free():
    for provider in ("local", "offline"):
        assert call_cost(
            provider=provider, model="gpt-4", input_tokens=10**6, output_tokens=10**6
        ) == Decimal(0)


@pytest.mark.django_db
def test_the_autopilot_calls_and_books_the_model_id_the_workflow_asked_for(
    settings, fake_openai, project, user
):
    providers = {name: dict(config) for name, config in settings.TOPDOG_PROVIDERS.items()}
    providers["openai"].update(base_url=fake_openai.base_url, api_key="sk-test-0123456789")
    settings.TOPDOG_PROVIDERS = providers
    workflow = workflow_for(project, user, model_name="gpt-4")
    fake_openai.script(ok(json=evidence("DISCOVERY"), usage=(1000, 500)))

    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user), scope="phase")
    while autopilot_step(run_id=run.id, worker_id="test"):
        pass

    sent = fake_openai.requests[0].json
    assert (sent["model"], sent["temperature"], sent["max_completion_tokens"]) == (
        "gpt-4",
        0.2,
        4096,
    )
    answer = Message.objects.get(workflow=workflow, phase="DISCOVERY", sender="assistant")
    assert answer.model == "gpt-4"
    # 1000 in at $30/M + 500 out at $60/M
    assert answer.cost_usd == Decimal("0.060000")
