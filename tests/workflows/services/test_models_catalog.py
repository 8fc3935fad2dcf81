"""Model names as the IDE spells them, resolved by one table (issue 13, item 1)."""

import pytest

from workflows.models_catalog import (
    UnknownModel,
    family_lookup,
    model_resolve,
    model_settings_for,
    role_setting_check,
)


@pytest.mark.parametrize(
    ("name", "stored", "provider", "model"),
    [
        ("GPT4", "GPT4", "openai", "gpt-4o"),
        ("gpt4", "GPT4", "openai", "gpt-4o"),
        ("Claude", "CLAUDE", "anthropic", "claude-sonnet-4-6"),
        ("offline", "OFFLINE", "offline", "topdog-offline-1"),
        ("gpt-4", "gpt-4", "openai", "gpt-4"),
        ("gpt-4o", "gpt-4o", "openai", "gpt-4o"),
        ("o3-mini", "o3-mini", "openai", "o3-mini"),
        ("o1", "o1", "openai", "o1"),
        ("claude-3-5-sonnet", "claude-3-5-sonnet", "anthropic", "claude-3-5-sonnet"),
        ("local:llama3.1", "local:llama3.1", "local", "llama3.1"),
        ("openai:gpt-4.1", "openai:gpt-4.1", "openai", "gpt-4.1"),
        ("Anthropic:claude-opus-4", "anthropic:claude-opus-4", "anthropic", "claude-opus-4"),
        ("offline:anything", "offline:anything", "offline", "anything"),
    ],
)
def test_each_accepted_form_resolves_to_its_provider_and_model_id(name, stored, provider, model):
    choice = model_resolve(name)

    assert (choice.name, choice.provider, choice.model) == (stored, provider, model)


@pytest.mark.parametrize("name", ["gpt 4", "llama3", "mistral:7b", "", "local:", None, "x" * 200])
def test_anything_else_is_refused_with_the_accepted_forms_listed(name):
    with pytest.raises(UnknownModel) as refused:
        model_resolve(name)

    message = str(refused.value)
    assert "GPT4, GPT35, CLAUDE, LOCAL, OFFLINE" in message
    assert "gpt-*" in message and "claude-* → anthropic" in message
    assert "provider:model" in message and "local:llama3.1" in message


def test_context_window_follows_the_model_family_not_the_provider_default():
    assert model_resolve("gpt-4").context_tokens == 8_192
    assert model_resolve("gpt-4-0613").context_tokens == 8_192
    assert model_resolve("gpt-4o-2024-08-06").context_tokens == 128_000
    assert model_resolve("claude-3-5-sonnet").context_tokens == 200_000


def test_family_lookup_takes_the_longest_family_at_a_dash_boundary():
    table = {"gpt-4": 1, "gpt-4o": 2, "gpt-4o-mini": 3}

    assert family_lookup(table, "gpt-4-0613") == 1
    assert family_lookup(table, "gpt-4o-2024-08-06") == 2
    assert family_lookup(table, "gpt-4o-mini-2024-07-18") == 3
    assert family_lookup(table, "gpt-4.1") is None


def test_a_role_setting_is_a_model_name_or_an_object_of_known_keys():
    assert role_setting_check("claude") == {"model": "CLAUDE"}
    assert role_setting_check({"temperature": 0.7, "max_tokens": 2000}) == {
        "temperature": 0.7,
        "max_tokens": 2000,
    }
    for bad, says in [
        ({"temperature": 3}, "between 0 and 2"),
        ({"max_tokens": 0}, "between 1 and"),
        ({"max_tokens": 1.5}, "whole number"),
        ({"top_p": 1}, "unknown keys ['top_p']"),
        ({"model": "nope"}, "not a model TopDog knows"),
        (7, "a model name or an object"),
    ]:
        with pytest.raises(ValueError, match=says.replace("[", r"\[").replace("]", r"\]")):
            role_setting_check(bad)


def test_stored_model_settings_use_the_role_setting_else_the_service_defaults(settings):
    settings.TOPDOG_DEFAULT_TEMPERATURE = 0.2
    settings.TOPDOG_DEFAULT_MAX_TOKENS = 4096

    default = model_settings_for(name="gpt-4", role_setting={})
    tuned = model_settings_for(
        name="gpt-4", role_setting={"model": "claude-3-5-sonnet", "temperature": 0.7}
    )

    assert default == {
        "model_name": "gpt-4",
        "provider": "openai",
        "model": "gpt-4",
        "context_tokens": 8192,
        "temperature": 0.2,
        "max_tokens": 4096,
    }
    assert (tuned["model"], tuned["provider"], tuned["temperature"]) == (
        "claude-3-5-sonnet",
        "anthropic",
        0.7,
    )
    # max_tokens never takes more than half the window: the prompt keeps the other half.
    capped = model_settings_for(name="gpt-4", role_setting={"max_tokens": 8000})
    assert capped["max_tokens"] == 4096
