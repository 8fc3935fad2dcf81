"""evidence_json_schema: JSON Schemas read off the evidence serializers."""

import copy

import jsonschema
import pytest
from rest_framework import serializers

from ai_orchestration.schemas import evidence_json_schema, serializer_json_schema
from workflows.evidence import EVIDENCE_EXAMPLES, EVIDENCE_SCHEMAS, evidence_validate
from workflows.states import PHASES, State

VALIDATOR = jsonschema.Draft202012Validator


def errors(schema: dict, data: object) -> list[str]:
    return [e.message for e in VALIDATOR(schema).iter_errors(data)]


@pytest.mark.parametrize("phase", PHASES)
def test_every_phase_example_is_valid_against_its_schema(phase):
    schema = evidence_json_schema(phase)

    VALIDATOR.check_schema(schema)
    assert schema["type"] == "object"
    assert errors(schema, EVIDENCE_EXAMPLES[phase]) == []
    assert evidence_validate(phase=phase, data=EVIDENCE_EXAMPLES[phase])  # and the serializer


@pytest.mark.parametrize("phase", PHASES)
def test_every_schema_names_exactly_the_serializer_fields(phase):
    schema = evidence_json_schema(phase)
    fields = EVIDENCE_SCHEMAS[phase]().fields

    assert set(schema["properties"]) == set(fields)
    assert set(schema.get("required", [])) == {n for n, f in fields.items() if f.required}
    assert schema["additionalProperties"] is False


def test_discovery_shape():
    schema = evidence_json_schema(State.DISCOVERY)
    requirements = schema["properties"]["requirements"]

    assert schema["required"] == ["document", "requirements"]
    assert requirements["type"] == "array" and requirements["minItems"] == 1
    item = requirements["items"]
    assert item["type"] == "object"
    assert set(item["required"]) == {"id", "description", "acceptance_criteria"}
    assert item["properties"]["priority"]["enum"] == ["must", "should", "could"]
    assert item["properties"]["priority"]["default"] == "must"
    criteria = item["properties"]["acceptance_criteria"]
    assert criteria["type"] == "array" and criteria["minItems"] == 1
    assert criteria["items"] == {"type": "string", "minLength": 1, "maxLength": 2000}


def test_testing_shape():
    properties = evidence_json_schema(State.TESTING)["properties"]

    assert properties["verdict"] == {"type": "string", "enum": ["pass", "fail"]}
    assert properties["quality_score"] == {"type": "number", "minimum": 0.0, "maximum": 1.0}
    assert properties["tests_run"] == {"type": "integer", "minimum": 0}
    findings = properties["findings"]
    assert findings["type"] == "array" and findings["default"] == []
    assert "default" not in findings["items"]
    assert findings["items"]["properties"]["severity"]["enum"] == [
        "info",
        "minor",
        "major",
        "critical",
    ]


def test_verification_enum_from_text_choices():
    properties = evidence_json_schema(State.VERIFICATION)["properties"]

    assert properties["regress_to"] == {"type": "string", "enum": ["IMPLEMENTATION", "PLANNING"]}


def test_deployment_url_nullable_and_pattern():
    properties = evidence_json_schema(State.DEPLOYMENT)["properties"]

    url = properties["pull_request_url"]
    assert url["type"] == ["string", "null"] and url["format"] == "uri"
    assert properties["pull_request_number"]["type"] == ["integer", "null"]
    assert properties["commits"]["items"]["pattern"] == "^[0-9a-f]{7,64}$"
    assert properties["pushed"] == {"type": "boolean", "default": True}


@pytest.mark.parametrize(
    ("phase", "change"),
    [
        (State.TESTING, {"quality_score": 1.5}),
        (State.TESTING, {"verdict": "maybe"}),
        (State.TESTING, {"tests_run": -1}),
        (State.TESTING, {"surprise": True}),
        (State.DISCOVERY, {"requirements": []}),
        (State.IMPLEMENTATION, {"files": [{"path": "a.py", "action": "rename"}]}),
        (State.DEPLOYMENT, {"commits": ["not-a-sha"]}),
        (State.DEPLOYMENT, {"pushed": "yes"}),
    ],
)
def test_invalid_evidence_fails_the_schema(phase, change):
    data = {**copy.deepcopy(EVIDENCE_EXAMPLES[phase]), **change}

    assert errors(evidence_json_schema(phase), data)


@pytest.mark.parametrize("phase", PHASES)
def test_a_missing_required_field_fails_the_schema(phase):
    schema = evidence_json_schema(phase)
    data = copy.deepcopy(EVIDENCE_EXAMPLES[phase])
    del data[schema["required"][0]]

    assert errors(schema, data)


def test_callers_get_a_fresh_copy():
    evidence_json_schema(State.TESTING)["properties"].clear()

    assert evidence_json_schema(State.TESTING)["properties"]


def test_unknown_phase():
    with pytest.raises(KeyError, match="COMPLETE"):
        evidence_json_schema(State.COMPLETE)


class _Inner(serializers.Serializer):
    name = serializers.CharField()


class _EveryField(serializers.Serializer):
    flag = serializers.BooleanField()
    count = serializers.IntegerField(min_value=1, max_value=9)
    ratio = serializers.DecimalField(max_digits=4, decimal_places=2, required=False)
    when = serializers.DateTimeField(required=False)
    tags = serializers.MultipleChoiceField(choices=["a", "b"], required=False)
    level = serializers.ChoiceField(choices=[1, 2, 3], allow_null=True)
    scores = serializers.DictField(child=serializers.FloatField(), required=False)
    anything = serializers.JSONField(required=False)
    inner = _Inner(allow_null=True)
    inners = _Inner(many=True, max_length=3)
    note = serializers.CharField(allow_blank=True, help_text="Free text.")
    computed = serializers.SerializerMethodField()
    email = serializers.EmailField(required=False)

    def get_computed(self, obj):
        return 1


def test_field_mapping_beyond_the_evidence_serializers():
    schema = serializer_json_schema(_EveryField())
    properties = schema["properties"]

    VALIDATOR.check_schema(schema)
    assert "computed" not in properties  # read-only
    assert properties["flag"] == {"type": "boolean"}
    assert properties["count"] == {"type": "integer", "minimum": 1, "maximum": 9}
    assert properties["ratio"]["type"] == "number"
    assert properties["when"] == {"type": "string", "format": "date-time"}
    assert properties["tags"]["items"]["enum"] == ["a", "b"]
    assert properties["level"] == {"type": ["integer", "null"], "enum": [1, 2, 3, None]}
    assert properties["scores"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert properties["anything"] == {}
    assert properties["inner"]["type"] == ["object", "null"]
    assert properties["inner"]["properties"]["name"]["type"] == "string"
    assert properties["inners"]["maxItems"] == 3
    assert properties["inners"]["items"]["required"] == ["name"]
    assert properties["note"] == {"type": "string", "description": "Free text."}
    assert properties["email"]["format"] == "email"
    assert (
        errors(
            schema,
            {
                "flag": True,
                "count": 2,
                "level": None,
                "inner": None,
                "inners": [{"name": "x"}],
                "note": "",
            },
        )
        == []
    )
