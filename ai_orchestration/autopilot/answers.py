"""Reading a model's answer."""

import json
import re
from typing import Any

from rest_framework.exceptions import ValidationError


def parse_json(text: str) -> Any:
    """The JSON object in a model's answer (bare, or inside a ``` fence)."""
    fenced = re.search(r"```(?:json)?\s*(\{.*\})\s*```", text, re.DOTALL)
    candidate = fenced.group(1) if fenced else text.strip()
    try:
        return json.loads(candidate)
    except json.JSONDecodeError:
        start, end = candidate.find("{"), candidate.rfind("}")
        if start != -1 and end > start:
            try:
                return json.loads(candidate[start : end + 1])
            except json.JSONDecodeError:
                pass
        raise ValidationError({"phase_result": ["the answer is not a JSON object"]}) from None
