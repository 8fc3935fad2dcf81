"""JSON Schemas of each phase's evidence, derived from the DRF serializers that validate it.

The serializers in `workflows.evidence` stay the single source of truth: the schema a
model is asked to fill (OpenAI `response_format`, Anthropic tool `input_schema`) is read
off their fields, so the two cannot drift apart. Cross-field rules (a failing report
needs findings, a deleted file has no content) live only in the serializers' `validate`
methods; the schema describes shapes, types, enums and bounds.
"""

import copy
import enum
import functools
import json
from typing import Any

from rest_framework import fields as drf_fields
from rest_framework import serializers

from workflows.evidence import EVIDENCE_SCHEMAS


def evidence_json_schema(phase: str) -> dict:
    """The JSON Schema (draft 2020-12, no `$schema` key, which some vendors refuse) of
    `phase`'s evidence; a fresh copy that callers may change."""
    if phase not in EVIDENCE_SCHEMAS:
        known = ", ".join(EVIDENCE_SCHEMAS)
        raise KeyError(f"no evidence schema for phase {phase!r}; phases: {known}")
    return copy.deepcopy(_evidence_json_schema(str(phase)))


@functools.cache
def _evidence_json_schema(phase: str) -> dict:
    serializer_class = EVIDENCE_SCHEMAS[phase]
    schema = serializer_json_schema(serializer_class())
    return {"title": f"{phase} evidence", **schema}


def serializer_json_schema(serializer: serializers.Serializer) -> dict:
    """An object schema with one property per writable field of `serializer`."""
    properties: dict[str, dict] = {}
    required: list[str] = []
    for name, field in serializer.fields.items():
        if field.read_only or isinstance(field, drf_fields.HiddenField):
            continue
        properties[name] = field_json_schema(field)
        if field.required:
            required.append(name)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    schema["additionalProperties"] = False
    doc = (type(serializer).__doc__ or "").strip()
    if doc and type(serializer).__doc__ is not serializers.Serializer.__doc__:
        schema["description"] = " ".join(doc.split())
    return schema


def field_json_schema(field: drf_fields.Field) -> dict:
    """The schema of one DRF field: type, bounds, enum, nullability, default, description."""
    schema = _field_type_schema(field)
    if getattr(field, "allow_null", False):
        schema = _nullable(schema)
    default = getattr(field, "default", drf_fields.empty)
    if default is not drf_fields.empty:
        value = default() if callable(default) else default
        value = _plain(value)
        # A default the field itself would reject (DRF's `default=""` on a non-blank
        # CharField) only applies when the key is left out; don't advertise it.
        blank_but_required = value == "" and schema.get("minLength", 0) > 0
        if _is_json(value) and not blank_but_required:
            schema["default"] = value
    help_text = getattr(field, "help_text", None)
    if help_text:
        schema["description"] = str(help_text)
    return schema


def _field_type_schema(field: drf_fields.Field) -> dict:
    if isinstance(field, serializers.ListSerializer):
        return _array_bounds({"type": "array", "items": _items(field.child)}, field)
    if isinstance(field, serializers.Serializer):
        return serializer_json_schema(field)
    if isinstance(field, drf_fields.BooleanField):
        return {"type": "boolean"}
    if isinstance(field, drf_fields.MultipleChoiceField):
        return {"type": "array", "items": _enum(field), "uniqueItems": True}
    if isinstance(field, drf_fields.ChoiceField):
        return _enum(field)
    if isinstance(field, drf_fields.ListField):
        return _array_bounds({"type": "array", "items": _items(field.child)}, field)
    if isinstance(field, drf_fields.DictField):
        return {"type": "object", "additionalProperties": field_json_schema(field.child)}
    if isinstance(field, drf_fields.JSONField):
        return {}
    if isinstance(field, drf_fields.IntegerField):
        return _number_bounds({"type": "integer"}, field)
    if isinstance(field, drf_fields.FloatField | drf_fields.DecimalField):
        return _number_bounds({"type": "number"}, field)
    if isinstance(field, drf_fields.DateTimeField):
        return {"type": "string", "format": "date-time"}
    if isinstance(field, drf_fields.DateField):
        return {"type": "string", "format": "date"}
    if isinstance(field, drf_fields.TimeField):
        return {"type": "string", "format": "time"}
    if isinstance(field, drf_fields.UUIDField):
        return {"type": "string", "format": "uuid"}
    if isinstance(field, drf_fields.CharField):
        return _string(field)
    return {}


def _items(child: drf_fields.Field) -> dict:
    schema = field_json_schema(child)
    schema.pop("default", None)  # DRF hands the list's default down to its child
    return schema


def _string(field: drf_fields.CharField) -> dict:
    schema: dict[str, Any] = {"type": "string"}
    if isinstance(field, drf_fields.URLField):
        schema["format"] = "uri"
    elif isinstance(field, drf_fields.EmailField):
        schema["format"] = "email"
    min_length = getattr(field, "min_length", None)
    if min_length is None and not field.allow_blank:
        min_length = 1
    if min_length:
        schema["minLength"] = min_length
    if getattr(field, "max_length", None) is not None:
        schema["maxLength"] = field.max_length
    if isinstance(field, drf_fields.RegexField):
        for validator in field.validators:
            regex = getattr(validator, "regex", None)
            if regex is not None and not getattr(validator, "inverse_match", False):
                schema["pattern"] = regex.pattern
    return schema


def _enum(field: drf_fields.ChoiceField) -> dict:
    values = [_plain(value) for value in field.choices]
    if getattr(field, "allow_blank", False) and "" not in values:
        values.append("")
    schema: dict[str, Any] = {"enum": values}
    if values and all(isinstance(v, str) for v in values):
        schema = {"type": "string", **schema}
    elif values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        schema = {"type": "integer", **schema}
    return schema


def _number_bounds(schema: dict, field: drf_fields.Field) -> dict:
    for attribute, keyword in (("min_value", "minimum"), ("max_value", "maximum")):
        value = getattr(field, attribute, None)
        if value is not None:
            schema[keyword] = float(value) if schema["type"] == "number" else int(value)
    return schema


def _array_bounds(schema: dict, field: drf_fields.Field) -> dict:
    min_length = getattr(field, "min_length", None)
    if min_length is None and getattr(field, "allow_empty", True) is False:
        min_length = 1
    if min_length:
        schema["minItems"] = min_length
    if getattr(field, "max_length", None) is not None:
        schema["maxItems"] = field.max_length
    return schema


def _nullable(schema: dict) -> dict:
    if "enum" in schema:
        schema["enum"] = [*schema["enum"], None]
    kind = schema.get("type")
    if isinstance(kind, str):
        schema["type"] = [kind, "null"]
    elif isinstance(kind, list) and "null" not in kind:
        schema["type"] = [*kind, "null"]
    elif kind is None and "enum" not in schema and schema:
        schema = {"anyOf": [schema, {"type": "null"}]}
    return schema


def _plain(value: Any) -> Any:
    """Choice keys can be enum members (TextChoices); the schema wants their values."""
    return value.value if isinstance(value, enum.Enum) else value


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
