"""Every choice in the API says what the valid values are (issue 13, item 2).

Before: DRF's own ChoiceField answered `"high" is not a valid choice.` and left the caller
to guess. Each serializer of the API and the evidence is walked, so a new plain
ChoiceField fails here by name.
"""

import pytest
from rest_framework import serializers

import topdog.urls  # noqa: F401  (imports every API module)
from workflows.serializer_fields import ChoiceField


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _ours(cls) -> bool:
    return cls.__module__.split(".")[0] in {"workflows", "ai_orchestration", "topdog"}


def _fields(field, path):
    if isinstance(field, serializers.ListSerializer):
        yield from _fields(field.child, f"{path}[]")
    elif isinstance(field, serializers.Serializer):
        for name, child in field.fields.items():
            yield from _fields(child, f"{path}.{name}")
    elif isinstance(field, serializers.ListField | serializers.DictField):
        yield path, field
        yield from _fields(field.child, f"{path}[]")
    else:
        yield path, field


def test_no_serializer_of_the_api_uses_drfs_plain_choice_field():
    classes = sorted(
        (cls for cls in _subclasses(serializers.Serializer) if _ours(cls)),
        key=lambda cls: f"{cls.__module__}.{cls.__qualname__}",
    )
    assert len(classes) > 40  # the walk found the API's serializers

    choices = [
        (f"{cls.__module__}.{cls.__qualname__}{path}", field)
        for cls in classes
        for path, field in _fields(cls(), "")
        if isinstance(field, serializers.ChoiceField)
    ]

    assert len(choices) > 15  # severity, verdicts, transitions, targets, scopes, ...
    assert [name for name, field in choices if not isinstance(field, ChoiceField)] == []


def test_a_choice_error_lists_the_valid_values():
    field = ChoiceField(choices=["info", "minor", "major", "critical"])

    with pytest.raises(serializers.ValidationError) as refused:
        field.run_validation("high")

    assert refused.value.detail == [
        '"high" is not a valid choice; choose from info, minor, major, critical'
    ]
    assert field.run_validation("minor") == "minor"
