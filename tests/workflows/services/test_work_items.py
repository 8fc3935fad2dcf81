"""Work items in the core: the graph's order, the plan as rows, what sends items back."""

import random
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from tests.factories import evidence, workflow_for
from workflows.errors import TransitionConflict
from workflows.evidence import (
    ancestors_of,
    dependents_closure,
    shared_file_clash,
    topological_order,
)
from workflows.models import Workflow, WorkflowEvent, WorkItem
from workflows.services import (
    Actor,
    work_item_complete,
    work_item_fail,
    work_item_start,
    workflow_cancel,
    workflow_phase_complete,
    workflow_regress,
)
from workflows.work_items import (
    work_item_release,
    work_item_renew,
    work_items_claim,
    work_items_current,
    work_items_reap,
)

# --- the graph, property style on seeded random DAGs -----------------------------------


def random_dag(rng: random.Random, size: int) -> dict[str, list[str]]:
    """A DAG on `size` nodes in shuffled insertion order (edges only to earlier ranks)."""
    names = [f"N{n}" for n in range(size)]
    graph = {
        name: rng.sample(names[:rank], k=rng.randint(0, min(rank, 3)))
        for rank, name in enumerate(names)
    }
    keys = list(graph)
    rng.shuffle(keys)
    return {key: graph[key] for key in keys}


@pytest.mark.parametrize("seed", range(40))
def test_topological_order_puts_every_node_after_its_dependencies(seed):
    rng = random.Random(seed)
    graph = random_dag(rng, rng.randint(1, 30))

    order = topological_order(graph)

    assert sorted(order) == sorted(graph)
    position = {node: n for n, node in enumerate(order)}
    assert all(position[dep] < position[node] for node, deps in graph.items() for dep in deps)
    # and the ancestors are exactly what a walk of the edges reaches
    ancestors = ancestors_of(graph)
    for node in graph:
        reached, stack = set(), list(graph[node])
        while stack:
            dep = stack.pop()
            if dep not in reached:
                reached.add(dep)
                stack.extend(graph[dep])
        assert ancestors[node] == reached


@pytest.mark.parametrize("seed", range(20))
def test_dependents_closure_is_closed_under_depending(seed):
    rng = random.Random(1000 + seed)
    graph = random_dag(rng, rng.randint(2, 25))
    named = set(rng.sample(list(graph), k=1))

    closure = dependents_closure(graph, named)

    assert named <= closure
    for node, deps in graph.items():
        if set(deps) & closure:
            assert node in closure
    outside = set(graph) - closure
    assert all(not (ancestors_of(graph)[node] & named) for node in outside)


def test_topological_order_refuses_a_cycle():
    with pytest.raises(ValueError):
        topological_order({"a": ["b"], "b": ["a"]})


def test_a_shared_file_clashes_only_without_a_dependency_path():
    def item(id_, deps, files):
        return {"id": id_, "depends_on": deps, "files": files}

    chained = [item("A", [], ["x.py"]), item("B", ["A"], ["y.py"]), item("C", ["B"], ["x.py"])]
    apart = [item("A", [], ["x.py"]), item("B", [], ["x.py"])]

    assert shared_file_clash(chained) is None
    assert shared_file_clash(apart) == ("x.py", "A", "B")


# --- the plan as rows --------------------------------------------------------------------

pytestmark = pytest.mark.django_db


def plan(*items) -> dict:
    return evidence(
        "PLANNING",
        work_items=[
            {"id": key, "title": f"do {key}", "files": files, "depends_on": deps}
            for key, files, deps in items
        ],
    )


# A: src/a.py; B after A: tests/test_a.py; C: src/c.py; D after C: tests/test_c.py
TWO_CHAINS = plan(
    ("A", ["src/a.py"], []),
    ("B", ["tests/test_a.py"], ["A"]),
    ("C", ["src/c.py"], []),
    ("D", ["tests/test_c.py"], ["C"]),
)


def complete(workflow, user, phase, result=None):
    return workflow_phase_complete(
        workflow_id=workflow.id,
        ai_response="",
        result=result if result is not None else evidence(phase),
        actor=Actor.of(user),
    )


def at_implementation(project, user, the_plan=TWO_CHAINS):
    workflow = workflow_for(project, user)
    complete(workflow, user, "DISCOVERY")
    complete(workflow, user, "PLANNING", the_plan)
    return workflow


def item_files(path: str, body: str = '"""ok."""\n') -> list[dict]:
    return [{"path": path, "action": "create", "content": body}]


def finish(workflow, user, key, path):
    return work_item_complete(
        workflow_id=workflow.id,
        key=key,
        ai_response="",
        files=item_files(path),
        actor=Actor.of(user),
    )


def statuses(workflow) -> dict[str, str]:
    return {i.key: i.status for i in work_items_current(workflow_id=workflow.id)}


def test_planning_writes_its_items_with_the_roots_ready(project, user):
    workflow = at_implementation(project, user)

    items = list(work_items_current(workflow_id=workflow.id))

    assert [(i.key, i.depth, i.status) for i in items] == [
        ("A", 0, "ready"),
        ("C", 0, "ready"),
        ("B", 1, "pending"),
        ("D", 1, "pending"),
    ]
    assert {i.plan.phase for i in items} == {"PLANNING"}


def test_a_new_plan_supersedes_the_old_items_which_stay(project, user):
    project.regression_limit = 5
    project.save()
    workflow = at_implementation(project, user)
    complete(workflow, user, "IMPLEMENTATION")
    complete(workflow, user, "TESTING")
    rejected = evidence(
        "VERIFICATION",
        verdict="reject",
        score=0.1,
        regress_to="PLANNING",
        findings=[{"severity": "major", "message": "wrong design"}],
    )
    complete(workflow, user, "VERIFICATION", rejected)

    complete(workflow, user, "PLANNING", plan(("Z", ["src/z.py"], [])))

    assert [i.key for i in work_items_current(workflow_id=workflow.id)] == ["Z"]
    old = WorkItem.objects.filter(workflow=workflow, superseded=True)
    assert sorted(i.key for i in old) == ["A", "B", "C", "D"]
    assert {i.plan_id for i in old} != {work_items_current(workflow_id=workflow.id)[0].plan_id}


def test_the_same_file_in_two_unrelated_items_is_refused_at_planning(project, user):
    workflow = workflow_for(project, user)
    complete(workflow, user, "DISCOVERY")
    clash = plan(("A", ["src/app.py"], []), ("B", ["src/app.py"], []))

    with pytest.raises(ValidationError) as caught:
        complete(workflow, user, "PLANNING", clash)

    assert "both write src/app.py" in str(caught.value.detail)
    workflow.refresh_from_db()
    assert workflow.state == "PLANNING"
    assert not WorkItem.objects.filter(workflow=workflow).exists()


def test_more_items_than_the_project_allows_are_refused(project, user):
    project.max_work_items = 3
    project.save()
    workflow = workflow_for(project, user)
    complete(workflow, user, "DISCOVERY")

    with pytest.raises(ValidationError) as caught:
        complete(workflow, user, "PLANNING", TWO_CHAINS)

    assert "at most 3 (max_work_items)" in str(caught.value.detail)


# --- items done one by one ---------------------------------------------------------------


def test_an_item_makes_its_dependents_ready_and_the_last_completes_the_phase(project, user):
    workflow = at_implementation(project, user)

    first = finish(workflow, user, "A", "src/a.py")
    assert first.promoted == ["B"] and first.phase is None
    finish(workflow, user, "C", "src/c.py")
    finish(workflow, user, "B", "tests/test_a.py")
    last = finish(workflow, user, "D", "tests/test_c.py")

    assert last.phase is not None
    workflow.refresh_from_db()
    assert workflow.state == "TESTING"
    change_set = last.phase.phase_result.result
    assert [f["path"] for f in change_set["files"]] == [
        "src/a.py",
        "tests/test_a.py",
        "src/c.py",
        "tests/test_c.py",
    ]
    types = list(WorkflowEvent.objects.filter(workflow=workflow).values_list("type", flat=True))
    assert types.count("work_item.finished") == 4


def test_an_item_refuses_files_outside_its_own_and_files_that_do_not_parse(project, user):
    workflow = at_implementation(project, user)

    with pytest.raises(ValidationError) as outside:
        finish(workflow, user, "A", "src/c.py")
    with pytest.raises(ValidationError) as broken:
        work_item_complete(
            workflow_id=workflow.id,
            key="A",
            ai_response="",
            files=item_files("src/a.py", "def broken(:\n"),
            actor=Actor.of(user),
        )

    assert "not one of the work item's files" in str(outside.value.detail)
    assert "src/a.py:1" in str(broken.value.detail)
    assert statuses(workflow)["A"] == "ready"


def test_a_pending_item_cannot_be_completed(project, user):
    workflow = at_implementation(project, user)

    with pytest.raises(TransitionConflict, match="B is pending"):
        finish(workflow, user, "B", "tests/test_a.py")


def test_complete_phase_settles_every_item(project, user):
    workflow = at_implementation(project, user)
    finish(workflow, user, "A", "src/a.py")

    change_set = evidence(
        "IMPLEMENTATION",
        files=[
            {"path": "src/a.py", "action": "create", "content": "A = 2\n"},
            {"path": "src/c.py", "action": "create", "content": "C = 1\n"},
        ],
    )
    complete(workflow, user, "IMPLEMENTATION", change_set)

    items = {i.key: i for i in work_items_current(workflow_id=workflow.id)}
    assert {key: i.status for key, i in items.items()} == dict.fromkeys("ABCD", "done")
    assert items["C"].result_files[0]["content"] == "C = 1\n"
    assert items["B"].result_files == []  # the change set did not touch its file


# --- failures send back only what they touch ---------------------------------------------


def through_testing(project, user):
    project.regression_limit = 5
    project.save()
    workflow = at_implementation(project, user)
    for key, path in (("A", "src/a.py"), ("C", "src/c.py"), ("B", "tests/test_a.py")):
        finish(workflow, user, key, path)
    finish(workflow, user, "D", "tests/test_c.py")
    return workflow


def test_a_finding_redoes_the_item_it_names_and_its_dependents_only(project, user):
    workflow = through_testing(project, user)
    kept = {i.key: i.result_sha256 for i in work_items_current(workflow_id=workflow.id)}
    failing = evidence(
        "TESTING",
        verdict="fail",
        quality_score=0.2,
        findings=[{"severity": "major", "message": "inverted", "path": "src/a.py"}],
    )

    complete(workflow, user, "TESTING", failing)

    workflow.refresh_from_db()
    assert workflow.state == "IMPLEMENTATION"
    items = {i.key: i for i in work_items_current(workflow_id=workflow.id)}
    assert {k: i.status for k, i in items.items()} == {
        "A": "ready",
        "B": "pending",
        "C": "done",
        "D": "done",
    }
    assert "inverted" in items["A"].feedback and "inverted" in items["B"].feedback
    assert items["C"].result_sha256 == kept["C"] and items["C"].feedback == ""


def test_a_regression_naming_no_file_redoes_every_item(project, user):
    workflow = through_testing(project, user)

    workflow_regress(
        workflow_id=workflow.id,
        target=None,
        reason="flaky",
        feedback="start over",
        actor=Actor.of(user),
    )

    assert statuses(workflow) == {"A": "ready", "B": "pending", "C": "ready", "D": "pending"}


def test_cancel_leaves_no_open_item(project, user):
    workflow = at_implementation(project, user)
    finish(workflow, user, "A", "src/a.py")
    WorkItem.objects.filter(workflow=workflow, key="C").update(status="running", worker_id="w")

    workflow_cancel(workflow_id=workflow.id, actor=Actor.of(user))

    assert statuses(workflow) == {
        "A": "done",
        "B": "cancelled",
        "C": "cancelled",
        "D": "cancelled",
    }
    assert Workflow.objects.get(pk=workflow.pk).state == "CANCELLED"


# --- fencing: each take issues a lease token; only its holder writes -------------------


def take(workflow, key, worker):
    """Claim the item (as a dispatcher would) and take it as `worker`: its lease token."""
    item = WorkItem.objects.get(workflow=workflow, key=key, superseded=False)
    work_items_claim(workflow_id=workflow.id, limit=10, lease_seconds=30)
    return work_item_start(
        workflow_id=workflow.id, item_id=item.pk, worker_id=worker, actor=Actor.system()
    )


def test_a_worker_whose_item_was_taken_over_is_refused(project, user):
    # given worker A took item A, lost it (its lease expired, the reaper gave it back),
    # and worker B took it again
    workflow = at_implementation(project, user)
    stale = take(workflow, "A", "worker-a")
    WorkItem.objects.filter(workflow=workflow, key="A").update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert work_items_reap(now=timezone.now(), max_recoveries=3) == {workflow.id}
    current = take(workflow, "A", "worker-b")
    assert current is not None and current != stale

    # when A (stale) completes, fails, renews or releases it, every write is refused
    with pytest.raises(TransitionConflict, match="lease taken over"):
        work_item_complete(
            workflow_id=workflow.id,
            key="A",
            ai_response="stale",
            files=item_files("src/a.py"),
            actor=Actor.system(),
            lease_token=stale,
        )
    item_id = WorkItem.objects.get(workflow=workflow, key="A", superseded=False).pk
    assert not work_item_fail(
        workflow_id=workflow.id,
        item_id=item_id,
        lease_token=stale,
        error="x",
        actor=Actor.system(),
        final=True,
    )
    assert not work_item_renew(item_id=item_id, lease_token=stale, lease_seconds=30)
    assert not work_item_release(item_id=item_id, lease_token=stale)

    # then B, the holder, completes it
    work_item_complete(
        workflow_id=workflow.id,
        key="A",
        ai_response="current",
        files=item_files("src/a.py"),
        actor=Actor.system(),
        lease_token=current,
    )
    done = WorkItem.objects.get(pk=item_id)
    assert (done.status, done.ai_response, done.lease_token) == ("done", "current", None)


def test_the_same_worker_taking_an_item_again_gets_a_new_token(project, user):
    workflow = at_implementation(project, user)
    first = take(workflow, "A", "same-worker")
    item = WorkItem.objects.get(workflow=workflow, key="A", superseded=False)
    assert work_item_release(item_id=item.pk, lease_token=first)

    second = take(workflow, "A", "same-worker")

    assert second is not None and second != first
    assert not work_item_renew(item_id=item.pk, lease_token=first, lease_seconds=30)
    assert work_item_renew(item_id=item.pk, lease_token=second, lease_seconds=30)
