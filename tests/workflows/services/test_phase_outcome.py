"""phase_outcome_decide: what a phase result leads to, without a database."""

import pytest

from workflows.services import OutcomeKind, PhaseOutcome, phase_outcome_decide
from workflows.states import State as S

FINDING = {"severity": "major", "path": "app.py", "message": "crashes on empty input"}
FEEDBACK = "- [major] app.py: crashes on empty input"


def report(verdict: str = "pass", score: float = 0.9, findings: tuple = ()) -> dict:
    return {"verdict": verdict, "quality_score": score, "findings": list(findings)}


def review(
    verdict: str = "approve", score: float = 0.9, regress_to: str | None = None, findings=()
) -> dict:
    return {"verdict": verdict, "score": score, "regress_to": regress_to, "findings": [*findings]}


def below(what: str, score: float, threshold: float, rest: str = "") -> str:
    head = f"- [major] {what} {score:.2f} is below the project's threshold {threshold:.2f}"
    return f"{head}\n{rest}" if rest else head


ADVANCE, HOLD, REGRESS, FAIL = (
    OutcomeKind.ADVANCE,
    OutcomeKind.HOLD,
    OutcomeKind.REGRESS,
    OutcomeKind.FAIL,
)

# (phase, evidence, gates, threshold, regressions used, limit) -> outcome
CASES = {
    "discovery moves on": (
        S.DISCOVERY, {}, [], 0.0, 0, 3, PhaseOutcome(ADVANCE, S.PLANNING)),
    "a gate holds the phase": (
        S.PLANNING, {}, [S.PLANNING], 0.0, 0, 3, PhaseOutcome(HOLD, S.PLANNING)),
    "another phase's gate does not": (
        S.IMPLEMENTATION, {}, [S.PLANNING], 0.0, 0, 3, PhaseOutcome(ADVANCE, S.TESTING)),
    "passing tests move on": (
        S.TESTING, report(), [], 0.5, 0, 3, PhaseOutcome(ADVANCE, S.VERIFICATION)),
    "passing tests at a gate are held": (
        S.TESTING, report(), [S.TESTING], 0.5, 0, 3, PhaseOutcome(HOLD, S.TESTING)),
    "failing tests regress": (
        S.TESTING, report("fail", findings=[FINDING]), [], 0.0, 0, 3,
        PhaseOutcome(REGRESS, S.IMPLEMENTATION, FEEDBACK)),
    "failing tests regress even at a gate": (
        S.TESTING, report("fail", findings=[FINDING]), [S.TESTING], 0.0, 0, 3,
        PhaseOutcome(REGRESS, S.IMPLEMENTATION, FEEDBACK)),
    "a quality score below the threshold regresses": (
        S.TESTING, report(score=0.4), [], 0.5, 0, 3,
        PhaseOutcome(REGRESS, S.IMPLEMENTATION, below("quality score", 0.4, 0.5))),
    "a quality score at the threshold passes": (
        S.TESTING, report(score=0.5), [], 0.5, 0, 3, PhaseOutcome(ADVANCE, S.VERIFICATION)),
    "the last regression allowed still regresses": (
        S.TESTING, report("fail"), [], 0.0, 2, 3, PhaseOutcome(REGRESS, S.IMPLEMENTATION)),
    "a regression past the limit fails": (
        S.TESTING, report("fail", findings=[FINDING]), [], 0.0, 3, 3,
        PhaseOutcome(FAIL, S.FAILED, FEEDBACK)),
    "a limit of zero fails the first regression": (
        S.TESTING, report("fail"), [], 0.0, 0, 0, PhaseOutcome(FAIL, S.FAILED)),
    "an approved verification moves on": (
        S.VERIFICATION, review(), [], 0.5, 0, 3, PhaseOutcome(ADVANCE, S.DEPLOYMENT)),
    "a rejection goes back to planning": (
        S.VERIFICATION, review("reject", regress_to=S.PLANNING, findings=[FINDING]),
        [], 0.0, 1, 3, PhaseOutcome(REGRESS, S.PLANNING, FEEDBACK)),
    "a rejection goes back to implementation": (
        S.VERIFICATION, review("reject", regress_to=S.IMPLEMENTATION), [], 0.0, 0, 3,
        PhaseOutcome(REGRESS, S.IMPLEMENTATION)),
    "a verification score below the threshold regresses": (
        S.VERIFICATION, review(score=0.2, findings=[FINDING]), [], 0.3, 0, 3,
        PhaseOutcome(REGRESS, S.IMPLEMENTATION, below("verification score", 0.2, 0.3, FEEDBACK))),
    "a rejection past the limit fails": (
        S.VERIFICATION, review("reject", regress_to=S.PLANNING), [S.VERIFICATION], 0.0,
        3, 3, PhaseOutcome(FAIL, S.FAILED)),
    "deployment completes the workflow": (
        S.DEPLOYMENT, {}, [], 0.9, 3, 3, PhaseOutcome(ADVANCE, S.COMPLETE)),
}  # fmt: skip


@pytest.mark.parametrize(
    ("phase", "evidence", "gates", "threshold", "count", "limit", "expected"),
    CASES.values(),
    ids=CASES.keys(),
)
def test_phase_outcome(phase, evidence, gates, threshold, count, limit, expected):
    outcome = phase_outcome_decide(
        phase=phase,
        evidence=evidence,
        gates=gates,
        threshold=threshold,
        regression_count=count,
        regression_limit=limit,
    )
    assert outcome == expected
