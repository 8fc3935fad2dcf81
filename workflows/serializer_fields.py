"""Serializer fields whose errors say what would have been accepted.

Every choice in the API and the evidence is a `ChoiceField` from here: DRF's own says
`"x" is not a valid choice.`, this one adds `; choose from a, b, c`.
"""

import re
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from workflows.models_catalog import (
    MAX_NAME_LENGTH,
    MAX_OUTPUT_TOKENS,
    MAX_TEMPERATURE,
    UnknownModel,
    accepted_forms,
    model_resolve,
    role_setting_check,
)
from workflows.states import Role


def _model_name_schema() -> dict:
    """The accepted model names as a schema (a seed name in upper or lower case, a routed
    model id, provider:model), from the tables in settings."""
    seeds = list(settings.TOPDOG_MODELS)
    tail = r"[A-Za-z0-9._:/@+-]*$"
    prefixes = "|".join(_escape(prefix) for prefix, _ in settings.TOPDOG_MODEL_ROUTES)
    providers = "|".join(_escape(name) for name in settings.TOPDOG_PROVIDERS)
    return {
        "type": "string",
        "maxLength": MAX_NAME_LENGTH,
        "anyOf": [
            {"enum": seeds + [seed.lower() for seed in seeds]},
            {"pattern": f"^({prefixes}){tail}"},
            {"pattern": f"^({providers}):[A-Za-z0-9]{tail}"},
        ],
    }


def _escape(text: str) -> str:
    return re.escape(text).replace("\\-", "-")


_MODEL_NAME_SCHEMA = _model_name_schema()


class ChoiceField(serializers.ChoiceField):
    default_error_messages = {
        "invalid_choice": '"{input}" is not a valid choice; choose from {choices}',
    }

    def to_internal_value(self, data: Any) -> Any:
        if data == "" and self.allow_blank:
            return ""
        try:
            return self.choice_strings_to_values[str(data)]
        except KeyError:
            self.fail(
                "invalid_choice", input=data, choices=", ".join(self.choice_strings_to_values)
            )


@extend_schema_field({**_MODEL_NAME_SCHEMA, "example": "gpt-4"})
class ModelNameField(serializers.CharField):
    """A model name: a seed name, a routed model id or provider:model (models_catalog);
    the value is the name as the workflow stores it."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", MAX_NAME_LENGTH)
        kwargs.setdefault("help_text", f"The model: {accepted_forms()}.")
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        try:
            return model_resolve(data).name
        except UnknownModel as exc:
            raise serializers.ValidationError(str(exc)) from None


_ROLE_SETTING_SCHEMA = {
    "oneOf": [
        {**_MODEL_NAME_SCHEMA, "description": "The role's model."},
        {
            "type": "object",
            "description": "The role's model and sampling; what is left out is the "
            "workflow's model and the service's defaults.",
            "properties": {
                "model": _MODEL_NAME_SCHEMA,
                "temperature": {"type": "number", "minimum": 0, "maximum": MAX_TEMPERATURE},
                "max_tokens": {"type": "integer", "minimum": 1, "maximum": MAX_OUTPUT_TOKENS},
            },
            "additionalProperties": False,
        },
    ]
}


@extend_schema_field(
    {
        "type": "object",
        "properties": {role: _ROLE_SETTING_SCHEMA for role in Role.values},
        "additionalProperties": False,
        "example": {
            "CODE_WRITER": {"model": "claude-sonnet-4-5", "temperature": 0.2, "max_tokens": 8000},
            "QA_AUDITOR": "gpt-4o",
        },
    }
)
class RoleModelsField(serializers.JSONField):
    """Per role: a model name, or {model?, temperature?, max_tokens?} (models_catalog)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault(
            "help_text",
            "Per role: a model name, or an object with model, temperature (0..2) and "
            "max_tokens; roles left out use the workflow's model, temperature "
            "TOPDOG_DEFAULT_TEMPERATURE (0.2) and max_tokens TOPDOG_DEFAULT_MAX_TOKENS (4096).",
        )
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> dict:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be an object of role → model or setting")
        unknown = sorted(set(value) - set(Role.values))
        if unknown:
            raise serializers.ValidationError(
                f"unknown roles {unknown}; choose from {', '.join(Role.values)}"
            )
        checked, errors = {}, {}
        for role, setting in value.items():
            try:
                parsed = role_setting_check(setting)
            except ValueError as exc:
                errors[role] = [str(exc)]
                continue
            checked[role] = parsed["model"] if isinstance(setting, str) else parsed
        if errors:
            raise serializers.ValidationError(errors)
        return checked
