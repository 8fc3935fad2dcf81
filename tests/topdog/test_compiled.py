"""Compiled querysets: the ORM's SQL, compiled once, run with new values."""

import re
import uuid
from decimal import Decimal

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, connection, transaction
from django.db.models import F

from tests.conftest import on_postgres
from tests.factories import workflow_for
from topdog.compiled import (
    CompiledQuery,
    NextPk,
    Param,
    Update,
    UpdateMissed,
    Upsert,
    model_insert,
    models_write,
)
from workflows.models import (
    Handoff,
    Membership,
    Message,
    PhaseResult,
    RoleContext,
    Workflow,
    WorkflowEvent,
)

pytestmark = pytest.mark.django_db

PK = Workflow._meta.pk
USER_PK = Membership._meta.get_field("user").target_field


def visible_states() -> CompiledQuery:
    return CompiledQuery(
        lambda user_id, workflow_id: Workflow.objects.filter(
            project__memberships__user_id=user_id, pk=workflow_id, awaiting_approval=False
        ).values_list("state", "title"),
        user_id=Param(USER_PK, -1),
        workflow_id=Param(PK, uuid.UUID(int=1)),
    )


def test_rows_and_instances_match_the_orm_for_each_set_of_values(project, user, stranger):
    # given
    first = workflow_for(project, user, description="first")
    second = workflow_for(project, user, description="second")
    query = visible_states()

    # when / then: the same compiled SQL answers for each set of values
    assert query.fetchone(user_id=user.pk, workflow_id=first.pk) == ("DISCOVERY", "first")
    assert query.fetchone(user_id=user.pk, workflow_id=second.pk) == ("DISCOVERY", "second")
    # membership is part of the query, and the constant (awaiting_approval=False) kept
    assert query.fetchone(user_id=stranger.pk, workflow_id=first.pk) is None
    Workflow.objects.filter(pk=first.pk).update(awaiting_approval=True)
    assert query.fetchone(user_id=user.pk, workflow_id=first.pk) is None

    # instances are converted like the ORM's own
    instances = CompiledQuery(
        lambda workflow_id: Workflow.objects.filter(pk=workflow_id),
        workflow_id=Param(PK, uuid.UUID(int=1)),
    ).instances(workflow_id=second.pk)
    assert [(w.pk, w.requirements, w.awaiting_approval) for w in instances] == [
        (second.pk, second.requirements, False)
    ]


def test_instances_carry_select_related_objects_and_annotations_as_the_orm_does(
    project, user, django_assert_num_queries
):
    # given
    workflow = workflow_for(project, user, description="joined")
    build = lambda workflow_id: (  # noqa: E731
        Workflow.objects.select_related("project", "created_by")
        .filter(pk=workflow_id)
        .annotate(member_role=F("project__memberships__role"), stored_state=F("state"))
    )
    query = CompiledQuery(build, workflow_id=Param(PK, uuid.UUID(int=1)))

    # when
    (compiled,) = query.instances(workflow_id=workflow.pk)

    # then: the same objects and attributes as the ORM's, with no query to reach them
    (by_orm,) = build(workflow.pk)
    with django_assert_num_queries(0):
        assert compiled.project == by_orm.project
        assert compiled.project.approval_gates == by_orm.project.approval_gates
        assert compiled.created_by.username == by_orm.created_by.username == user.username
        assert (compiled.member_role, compiled.stored_state) == (
            by_orm.member_role,
            by_orm.stored_state,
        )
        assert compiled.created_at == by_orm.created_at
        assert compiled.requirements == {"description": "joined"}

    # and a query of values has no instances
    values = CompiledQuery(
        lambda workflow_id: Workflow.objects.filter(pk=workflow_id).values_list("state"),
        workflow_id=Param(PK, uuid.UUID(int=1)),
    )
    with pytest.raises(ImproperlyConfigured, match="needs a queryset of models"):
        values.instances(workflow_id=workflow.pk)


def test_it_compiles_once(project, user, django_assert_num_queries, monkeypatch):
    query = visible_states()
    workflow = workflow_for(project, user)
    query.fetchone(user_id=user.pk, workflow_id=workflow.pk)

    built = []
    build = query.build
    monkeypatch.setattr(query, "build", lambda **kw: built.append(kw) or build(**kw))
    with django_assert_num_queries(1):
        query.fetchone(user_id=user.pk, workflow_id=workflow.pk)
    assert built == []


def test_placeholders_must_differ_and_each_appear_once(project, user):
    same = CompiledQuery(
        lambda a, b: Workflow.objects.filter(regression_count=a, regression_limit=b),
        a=Param(Workflow._meta.get_field("regression_count"), 7),
        b=Param(Workflow._meta.get_field("regression_limit"), 7),
    )
    with pytest.raises(ImproperlyConfigured, match="must differ"):
        same.fetchone(a=1, b=2)

    unused = CompiledQuery(
        lambda a, b: Workflow.objects.filter(regression_count=a),
        a=Param(Workflow._meta.get_field("regression_count"), 7001),
        b=Param(Workflow._meta.get_field("regression_limit"), 7002),
    )
    with pytest.raises(ImproperlyConfigured, match="must appear once"):
        unused.fetchone(a=1, b=2)

    out_of_range = CompiledQuery(
        lambda a: Workflow.objects.filter(regression_count=a),
        a=Param(Workflow._meta.get_field("regression_count"), -7),
    )
    with pytest.raises(ImproperlyConfigured, match="fields accept"):
        out_of_range.fetchone(a=1)


def test_model_insert_writes_the_row_the_orm_would(project, user):
    # given: two messages, one saved by the ORM and one by model_insert

    workflow = workflow_for(project, user)
    fields = dict(
        workflow=workflow,
        role="Q_ASSISTANT",
        sender="assistant",
        phase="DISCOVERY",
        content="ünïcode and {json}",
        input_tokens=12,
        output_tokens=34,
        provider="openai",
        model="gpt-4o",
        cost_usd=Decimal("0.001234"),
    )
    by_orm = Message.objects.create(seq=100, **fields)
    lean = Message(seq=101, **fields)

    # when
    model_insert(lean)

    # then: a real row, its pk set, and every column equal to the ORM's but the keys
    assert lean.pk is not None and not lean._state.adding
    stored = Message.objects.get(pk=lean.pk)
    skip = {"id", "seq", "created_at"}
    names = [f.attname for f in Message._meta.concrete_fields if f.attname not in skip]
    assert [getattr(stored, n) for n in names] == [getattr(by_orm, n) for n in names]
    assert abs(stored.created_at - by_orm.created_at).total_seconds() < 5


def test_models_write_upserts_on_the_unique_fields(project, user):

    # given: the role context initialize wrote
    workflow = workflow_for(project, user)
    before = RoleContext.objects.get(workflow=workflow, role="Q_ASSISTANT")

    # when: the same (workflow, role) is written again
    again = RoleContext(
        workflow=workflow,
        role="Q_ASSISTANT",
        system_prompt="rendered anew",
        prompt_template=before.prompt_template,
        prompt_version="v-new",
        model_settings={"model_name": "GPT4"},
        context_data={"ignored": True},
    )
    models_write(
        [
            Upsert(
                again,
                unique_fields=("workflow", "role"),
                update_fields=("system_prompt", "prompt_version", "model_settings", "updated_at"),
            )
        ]
    )

    # then: one row, updated in the listed fields only, keeping its id and created_at
    after = RoleContext.objects.get(workflow=workflow, role="Q_ASSISTANT")
    assert RoleContext.objects.filter(workflow=workflow).count() == 1
    assert again.pk == after.pk == before.pk
    assert (after.system_prompt, after.prompt_version) == ("rendered anew", "v-new")
    assert after.model_settings == {"model_name": "GPT4"}
    assert after.context_data == before.context_data
    assert after.created_at == before.created_at and after.updated_at >= before.updated_at


def test_models_write_writes_a_batch_in_order_and_fails_it_whole(project, user):

    workflow = workflow_for(project, user)  # its event seq 1 exists
    events = [
        WorkflowEvent(workflow=workflow, seq=seq, type="test.batch", data={"n": seq})
        for seq in (2, 3, 4)
    ]

    # when: a batch is written
    models_write(events)

    # then: every row, with its pk
    assert all(e.pk for e in events)
    stored = WorkflowEvent.objects.filter(type="test.batch").order_by("seq")
    assert [(e.pk, e.data) for e in stored] == [(e.pk, {"n": e.seq}) for e in events]

    # when: a batch holds a row that breaks a constraint (seq 3 again)
    bad = [WorkflowEvent(workflow=workflow, seq=seq, type="test.bad", data={}) for seq in (5, 3)]
    with pytest.raises(IntegrityError), transaction.atomic():
        models_write(bad)

    # then: Django's IntegrityError, and nothing of that batch was kept
    assert not WorkflowEvent.objects.filter(type="test.bad").exists()


def test_a_guarded_update_writes_the_columns_the_orm_would(project, user):

    # given: two copies of one workflow, one saved by the ORM and one by Update
    by_orm = workflow_for(project, user, description="by the orm")
    lean = workflow_for(project, user, description="by update")
    for workflow in (by_orm, lean):
        workflow.regression_count = 2
        workflow.phase_attempts = {"DISCOVERY": 3}
        workflow.cost_usd = Decimal("1.250000")
        workflow.terminal_reason = "ünïcode"
    fields = ("regression_count", "phase_attempts", "cost_usd", "terminal_reason", "updated_at")
    by_orm.save(update_fields=fields)
    before = lean.updated_at

    # when
    with transaction.atomic():
        models_write([Update(lean, fields, where={"state": "DISCOVERY"})])

    # then: the same stored values; updated_at moved as auto_now does
    stored = Workflow.objects.get(pk=lean.pk)
    orm_stored = Workflow.objects.get(pk=by_orm.pk)
    written = fields[:-1]
    assert [getattr(stored, n) for n in written] == [getattr(orm_stored, n) for n in written]
    assert stored.updated_at > before and stored.updated_at == lean.updated_at
    assert stored.requirements == {"description": "by update"}  # columns not listed: untouched


def test_a_guarded_update_that_misses_fails_its_batch_whole(project, user):

    workflow = workflow_for(project, user)  # in DISCOVERY, its event seq 1 exists
    workflow.regression_count = 1
    event = WorkflowEvent(workflow=workflow, seq=2, type="test.guard", data={})

    # when: the row no longer holds the guarded value
    guarded = Update(workflow, ("regression_count",), where={"state": "PLANNING"})
    missed = re.escape("no row matched {'state': 'PLANNING'}")
    with pytest.raises(UpdateMissed, match=missed) as caught, transaction.atomic():
        models_write([guarded, event])

    # then: nothing of the batch was kept, and the error names the update
    assert caught.value.update.obj is workflow
    assert Workflow.objects.get(pk=workflow.pk).regression_count == 0
    assert not WorkflowEvent.objects.filter(type="test.guard").exists()

    # and an update that would write an expression is refused before anything runs

    workflow.regression_count = F("regression_count") + 1
    with pytest.raises(ValueError, match="values, not expressions"):
        models_write([Update(workflow, ("regression_count",), where={})])


def test_a_reserved_pk_is_written_with_the_batch_that_refers_to_it(project, user):
    workflow = workflow_for(project, user)
    reserve = CompiledQuery(
        lambda workflow_id: Workflow.objects.filter(pk=workflow_id).annotate(
            next_result_id=NextPk(PhaseResult)
        ),
        workflow_id=Param(PK, uuid.UUID(int=1)),
    )

    # when: an id is reserved with a read, twice
    first = reserve.instances(workflow_id=workflow.pk)[0].next_result_id
    second = reserve.instances(workflow_id=workflow.pk)[0].next_result_id

    if connection.vendor != "postgresql":
        # then: no sequences, no reservation: the caller inserts first, as usual
        assert first is None and second is None
        return

    # then: each read takes a new id from the table's sequence
    assert second > first

    # when: a batch inserts the result with its reserved id, and a row that refers to it
    result = PhaseResult(
        pk=second, workflow=workflow, phase="DISCOVERY", attempt=1, result={}, content_hash="x"
    )
    handoff = Handoff(
        workflow=workflow,
        kind="forward",
        from_state="DISCOVERY",
        to_state="PLANNING",
        actor_name="test",
        phase_result=result,
        event_seq=1,
    )
    with transaction.atomic():
        models_write([result, handoff])

    # then: both stored, the reference intact; the sequence carries on past the id
    assert Handoff.objects.get(pk=handoff.pk).phase_result_id == second
    later = PhaseResult.objects.create(
        workflow=workflow, phase="DISCOVERY", attempt=2, result={}, content_hash="y"
    )
    assert later.pk > second


def test_fetchone_converts_values_as_values_list_does(project, user):
    workflow = workflow_for(project, user)
    columns = ("awaiting_approval", "created_at", "requirements")
    query = CompiledQuery(
        lambda workflow_id: Workflow.objects.filter(pk=workflow_id).values_list(*columns),
        workflow_id=Param(PK, uuid.UUID(int=1)),
    )

    row = query.fetchone(workflow_id=workflow.pk)

    # SQLite stores booleans as 0/1 and datetimes as text: the row holds Python values
    assert row == Workflow.objects.filter(pk=workflow.pk).values_list(*columns).get()
    assert row[0] is False
    assert row[1] == workflow.created_at


@on_postgres
@pytest.mark.parametrize("server_binding", [True, False])
def test_a_batch_is_sent_in_the_form_the_connection_binds(
    project, user, monkeypatch, server_binding
):
    # given: server-side binding on (the default), or off as behind PgBouncer
    monkeypatch.setattr(connection.features, "uses_server_side_binding", server_binding)
    workflow = workflow_for(project, user)  # its event seq 1 exists
    sent = []

    def record(execute, sql, params, many, context):
        sent.append(sql)
        return execute(sql, params, many, context)

    # when
    events = [WorkflowEvent(workflow=workflow, seq=s, type="t.bind", data={}) for s in (2, 3)]
    with connection.execute_wrapper(record), transaction.atomic():
        models_write(events)

    # then: $n placeholders only where the server binds them; the rows are written alike
    [batch] = [sql for sql in sent if sql.startswith("WITH")]
    assert ("$1" in batch) is server_binding and ("%s" in batch) is not server_binding
    assert WorkflowEvent.objects.filter(type="t.bind").count() == 2
