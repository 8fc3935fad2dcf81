"""Model names as callers spell them, resolved to (provider, model id, context window).

A name is one of (checked in this order):

1. a seed name of `TOPDOG_MODELS` (`GPT4`, `GPT35`, `CLAUDE`, `LOCAL`, `OFFLINE`), in
   any case: its provider, model id and window come from that table;
2. `provider:model`, with a provider of `TOPDOG_PROVIDERS` (`local:llama3.1`,
   `openai:gpt-4.1`, `anthropic:claude-sonnet-4-5`, `offline:any`);
3. a model id routed by `TOPDOG_MODEL_ROUTES` (the first prefix it starts with:
   `gpt-*`, `o1*`, `o3*`, `o4*` → openai; `claude-*` → anthropic).

The provider *classes* live in the AI layer; this table is plain data, so the core can
validate input with it. A project's `role_models` may also set a role's sampling
(`role_setting_check`).
"""

import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings

MAX_NAME_LENGTH = 100
MAX_TEMPERATURE = 2.0
MAX_OUTPUT_TOKENS = 200_000
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")


class UnknownModel(ValueError):
    """The name is none of the accepted forms; the message lists them."""


@dataclass(frozen=True)
class ModelChoice:
    name: str  # as stored on the workflow: a seed name upper-cased, else as given
    provider: str
    model: str  # the vendor's model id, what the model is called with
    context_tokens: int


def accepted_forms() -> str:
    """The accepted model names, in one sentence (error messages and the API docs)."""
    seeds = ", ".join(settings.TOPDOG_MODELS)
    routes: dict[str, list[str]] = {}
    for prefix, provider in settings.TOPDOG_MODEL_ROUTES:
        routes.setdefault(provider, []).append(f"{prefix}*")
    routed = "; ".join(f"{', '.join(p)} → {provider}" for provider, p in routes.items())
    providers = ", ".join(settings.TOPDOG_PROVIDERS)
    return (
        f"a seed name ({seeds}; any case), a model id routed by prefix ({routed}), "
        f"or provider:model with a provider of {providers} (e.g. local:llama3.1)"
    )


def model_resolve(name: Any) -> ModelChoice:
    """What `name` means; UnknownModel (listing the accepted forms) if nothing."""
    text = name.strip() if isinstance(name, str) else ""
    seed = settings.TOPDOG_MODELS.get(text.upper())
    if seed is not None:
        return ModelChoice(text.upper(), seed["provider"], seed["model"], seed["context_tokens"])
    if 0 < len(text) <= MAX_NAME_LENGTH and _MODEL_ID.match(text):
        provider, _, model = text.partition(":")
        if model and provider.lower() in settings.TOPDOG_PROVIDERS:
            provider = provider.lower()
            return ModelChoice(f"{provider}:{model}", provider, model, _window(provider, model))
        for prefix, routed in settings.TOPDOG_MODEL_ROUTES:
            if text.lower().startswith(prefix):
                return ModelChoice(text, routed, text, _window(routed, text))
    shown = text[:MAX_NAME_LENGTH] if isinstance(name, str) else type(name).__name__
    raise UnknownModel(f'"{shown}" is not a model TopDog knows; use {accepted_forms()}')


def family_lookup(table: dict[str, Any], model: str) -> Any:
    """The value of the longest family in `table` that `model` belongs to, or None.

    `model` belongs to family `f` if it is `f` or starts with `f-` (so `gpt-4-0613` is a
    `gpt-4` but `gpt-4o` is not)."""
    model = model.lower()
    best = None
    for family in table:
        key = family.lower()
        if (model == key or model.startswith(key + "-")) and (best is None or len(key) > len(best)):
            best = family
    return table[best] if best is not None else None


def _window(provider: str, model: str) -> int:
    return family_lookup(settings.TOPDOG_MODEL_CONTEXT_TOKENS, model) or (
        settings.TOPDOG_PROVIDER_CONTEXT_TOKENS.get(provider, 8192)
    )


ROLE_SETTING_KEYS = ("model", "temperature", "max_tokens")


def role_setting_check(value: Any) -> dict:
    """One `role_models` value as a dict {model?, temperature?, max_tokens?}.

    A string is a model name; an object may set the model, the temperature (0..2) and
    max_tokens (1..200000). Raises ValueError saying what is wrong."""
    if isinstance(value, str):
        value = {"model": value}
    if not isinstance(value, dict):
        raise ValueError("a model name or an object with model, temperature, max_tokens")
    unknown = sorted(set(value) - set(ROLE_SETTING_KEYS))
    if unknown:
        raise ValueError(f"unknown keys {unknown}; use {', '.join(ROLE_SETTING_KEYS)}")
    checked: dict[str, Any] = {}
    if "model" in value:
        checked["model"] = model_resolve(value["model"]).name
    if "temperature" in value:
        temperature = value["temperature"]
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise ValueError("temperature must be a number")
        if not 0 <= temperature <= MAX_TEMPERATURE:
            raise ValueError(f"temperature must be between 0 and {MAX_TEMPERATURE}")
        checked["temperature"] = float(temperature)
    if "max_tokens" in value:
        tokens = value["max_tokens"]
        if isinstance(tokens, bool) or not isinstance(tokens, int):
            raise ValueError("max_tokens must be a whole number")
        if not 1 <= tokens <= MAX_OUTPUT_TOKENS:
            raise ValueError(f"max_tokens must be between 1 and {MAX_OUTPUT_TOKENS}")
        checked["max_tokens"] = tokens
    return checked


def model_settings_for(*, name: str, role_setting: dict) -> dict:
    """A role's stored model settings: the resolved model and its sampling.

    Temperature and max_tokens are the role's setting, else TOPDOG_DEFAULT_TEMPERATURE
    and TOPDOG_DEFAULT_MAX_TOKENS; max_tokens is capped at half the context window so
    that the prompt keeps the other half."""
    choice = model_resolve(role_setting.get("model") or name)
    max_tokens = role_setting.get("max_tokens", settings.TOPDOG_DEFAULT_MAX_TOKENS)
    return {
        "model_name": choice.name,
        "provider": choice.provider,
        "model": choice.model,
        "context_tokens": choice.context_tokens,
        "temperature": role_setting.get("temperature", settings.TOPDOG_DEFAULT_TEMPERATURE),
        "max_tokens": min(max_tokens, choice.context_tokens // 2),
    }
