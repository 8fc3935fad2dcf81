"""What the OpenAPI document (/api/schema/) says beyond what the views declare.

- `tokenAuth`: TopDog's own authentication class.
- `ErrorSerializer` and `errors(...)`: the one error body, `{detail, errors?, ...}`, and
  the responses a view declares for its domain errors (400/403/404/409/502).
- `api_responses_complete` (a postprocessing hook): the answers any operation can give
  whatever its view: 401 (unless it needs no credentials), 414 (query string too long),
  429 (throttled), 503 (database down); with query parameters 400 (a NUL in them); for a
  request body also 400, 413 and 415; for a POST the optional `Idempotency-Key` header
  with its 400/409/422.
- `ide_slash_aliases_drop` (a preprocessing hook): the IDE paths also answer with a
  trailing slash (workflows/api/urls.py); the document shows each once, as the seed
  spells it.
"""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema_field,
)
from rest_framework import serializers

from workflows.api.idempotency import HEADER, MAX_KEY_LENGTH
from workflows.evidence import EVIDENCE_SCHEMAS, DiscoverySeedEvidence, evidence_example


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "workflows.authentication.ApiTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: object) -> dict:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Token <your token>`; create one with `manage.py topdog token create`.",
        }


class ErrorSerializer(serializers.Serializer):
    """Every error answer: `detail` says what happened and what to do next."""

    detail = serializers.CharField()
    errors = serializers.JSONField(
        required=False, help_text="400: the invalid fields, each with its messages."
    )
    expected = serializers.JSONField(
        required=False,
        help_text="400 on a phase result: the phase's required fields, accepted aliases, a "
        "valid example and where its schema is.",
    )
    current_state = serializers.CharField(required=False, help_text="409: the workflow's state.")
    allowed_transitions = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="409: what may be asked now."
    )
    projects = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="404 of a project: the slugs of projects you can use (at most 20).",
    )
    create = serializers.JSONField(required=False, help_text="404 of a project: how to create one.")


DESCRIPTIONS = {
    400: "Invalid input: `errors` maps each field to its messages (choices list the valid "
    "values; a phase result's 400 has `expected`).",
    401: "No credentials, or a bad token.",
    403: "Your project role does not allow this.",
    404: "Not found, or not yours (the two are not told apart).",
    409: "Not allowed in the workflow's current state, or another request changed it "
    "first (`current_state`, `allowed_transitions`); or the Idempotency-Key is in use.",
    413: "Request body too large.",
    414: "Query string too long.",
    415: "Unsupported media type: send application/json.",
    422: "This Idempotency-Key was used with another request body.",
    429: "Too many requests; retry after Retry-After seconds.",
    502: "The repository or the model provider failed; retry, or fix the project's settings.",
    503: "The database is unavailable; retry after Retry-After seconds.",
}


def errors(*codes: int) -> dict[int, OpenApiResponse]:
    """The error responses of `codes`, each with the error body."""
    return {
        code: OpenApiResponse(ErrorSerializer, description=DESCRIPTIONS[code]) for code in codes
    }


IDE_PREFIX = "/api/ai-workflows/"


def ide_slash_aliases_drop(endpoints: list, **kwargs: Any) -> list:
    """Leave the trailing-slash aliases of the IDE paths out of the document."""
    return [e for e in endpoints if not (e[0].startswith(IDE_PREFIX) and e[0].endswith("/"))]


def api_responses_complete(result: dict, generator: Any, **kwargs: Any) -> dict:
    """Add the answers every operation can give (see the module docstring)."""
    error_ref = {"$ref": "#/components/schemas/Error"}
    for path, item in result.get("paths", {}).items():
        if not path.startswith("/api/"):
            continue
        for method, operation in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            codes = {414, 429, 503}
            if any(requirement for requirement in operation.get("security", [{}])):
                codes.add(401)
            if any(p.get("in") == "query" for p in operation.get("parameters", [])):
                codes.add(400)  # a NUL in the query string (topdog/limits.py)
            if "requestBody" in operation or method in {"post", "patch", "put"}:
                codes |= {400, 413, 415}
            if method == "post":
                codes |= {400, 409, 422}
                _idempotency_header(operation)
            responses = operation.setdefault("responses", {})
            for code in sorted(codes):
                responses.setdefault(
                    str(code),
                    {
                        "description": DESCRIPTIONS[code],
                        "content": {"application/json": {"schema": error_ref}},
                    },
                )
            operation["responses"] = dict(sorted(responses.items()))
    return result


def _idempotency_header(operation: dict) -> None:
    parameters = operation.setdefault("parameters", [])
    if any(p.get("name") == HEADER for p in parameters):
        return
    parameters.append(
        {
            "in": "header",
            "name": HEADER,
            "required": False,
            "description": "Repeat a POST safely: the same key and body answer the first "
            "response again; another body with the key is 422.",
            "schema": {
                "type": "string",
                "maxLength": MAX_KEY_LENGTH,
                "pattern": "^[!-~]([ -~]*[!-~])?$",
            },
        }
    )


@extend_schema_field(
    PolymorphicProxySerializer(
        component_name="PhaseResult",
        serializers=[*EVIDENCE_SCHEMAS.values(), DiscoverySeedEvidence],
        resource_type_field_name=None,
    )
)
class PhaseResultField(serializers.JSONField):
    """The current phase's evidence: one of the shapes in `PhaseResult`."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault(
            "help_text",
            "The evidence of the workflow's current phase, shaped as that phase's schema "
            "(DISCOVERY also in the seed IDE's words); unknown keys are kept under `extra`.",
        )
        super().__init__(**kwargs)


EXAMPLE_WORKFLOW_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


def phase_result_examples() -> list[OpenApiExample]:
    """A complete-phase body for each phase, and the seed IDE's DISCOVERY."""
    examples = [
        OpenApiExample(
            phase,
            value={
                "workflow_id": EXAMPLE_WORKFLOW_ID,
                "ai_response": f"The {phase} result.",
                "phase_result": evidence_example(phase),
                "phase": phase,
            },
            request_only=True,
        )
        for phase in EVIDENCE_SCHEMAS
    ]
    examples.append(
        OpenApiExample(
            "DISCOVERY (seed IDE)",
            value={
                "workflow_id": EXAMPLE_WORKFLOW_ID,
                "ai_response": "# Requirements\n- Users can switch to dark mode",
                "phase_result": SEED_DISCOVERY_EXAMPLE,
            },
            request_only=True,
        )
    )
    return examples


SEED_DISCOVERY_EXAMPLE = {
    "discovered_requirements": [
        "Users can switch to dark mode in settings",
        {"description": "The choice is remembered across sessions", "priority": "high"},
    ],
    "user_feedback": "Looks right",
    "status": "complete",
}
