"""serializer_validate: one serializer per class and thread, answers as is_valid() would."""

import threading

import pytest
from rest_framework import serializers
from rest_framework.exceptions import ValidationError

from topdog.serializers import serializer_validate
from workflows.evidence import EVIDENCE_EXAMPLES, EVIDENCE_SCHEMAS
from workflows.states import State

PLAN = EVIDENCE_SCHEMAS[State.PLANNING]


def is_valid_answer(serializer_class: type[serializers.Serializer], data: object) -> tuple:
    serializer = serializer_class(data=data)
    if serializer.is_valid():
        return True, serializer.validated_data
    return False, serializer.errors


def reused_answer(serializer_class: type[serializers.Serializer], data: object) -> tuple:
    try:
        return True, serializer_validate(serializer_class, data)
    except ValidationError as exc:
        return False, exc.detail


CYCLE = {
    "work_items": [
        {"id": "A", "title": "a", "files": ["a.py"], "depends_on": ["B"]},
        {"id": "B", "title": "b", "files": ["b.py"], "depends_on": ["A"]},
    ]
}
BAD_FIELDS = {"summary": 3, "work_items": [{"id": "A", "files": ["/etc/passwd"]}]}


@pytest.mark.parametrize(
    "data",
    [EVIDENCE_EXAMPLES[State.PLANNING], CYCLE, BAD_FIELDS, {}, [], "plan"],
    ids=["valid", "cycle", "field-errors", "empty", "list", "string"],
)
def test_answers_as_is_valid_does(data: object) -> None:
    # when: the same data goes through a fresh serializer and the reused one, twice
    expected = is_valid_answer(PLAN, data)

    # then: the same validated data or the same field errors, every time
    assert reused_answer(PLAN, data) == expected
    assert reused_answer(PLAN, data) == expected


def test_a_failed_validation_leaves_nothing_behind_for_the_next() -> None:
    # given: a call that fails on the reused serializer
    assert reused_answer(PLAN, CYCLE)[0] is False

    # when: a valid plan follows it
    ok, value = reused_answer(PLAN, EVIDENCE_EXAMPLES[State.PLANNING])

    # then: it validates, with nothing of the failed call in it
    assert ok
    assert [item["id"] for item in value["work_items"]] == ["W1", "W2"]


def test_each_thread_validates_with_its_own_serializer() -> None:
    seen: dict[str, object] = {}

    class Probe(serializers.Serializer):
        name = serializers.CharField()

        def validate(self, attrs: dict) -> dict:
            seen[threading.current_thread().name] = self
            return attrs

    def validate_in(name: str) -> None:
        thread = threading.Thread(target=serializer_validate, args=(Probe, {"name": name}))
        thread.name = name
        thread.start()
        thread.join()

    validate_in("one")
    validate_in("two")
    serializer_validate(Probe, {"name": "main"})
    serializer_validate(Probe, {"name": "main again"})
    main = seen[threading.current_thread().name]

    assert seen["one"] is not seen["two"]
    assert main not in (seen["one"], seen["two"])
    assert serializer_validate(Probe, {"name": "x"}) == {"name": "x"}
    assert seen[threading.current_thread().name] is main
