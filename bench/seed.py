"""Bench data, written straight to the bench database. Import only after django.setup().

Workflows the endpoints are measured on are made through the real services, so they carry
the rows a real workflow has (role context, events, phase result, message, handoff). The
bulk rows that only fill the table for the scale stage are copied in SQL from one such
workflow, so they stay valid whatever columns the model grows.
"""

import uuid
from contextlib import suppress
from dataclasses import dataclass

import psycopg
from django.contrib.auth import get_user_model
from django.db import DatabaseError, connection

from bench import floors
from workflows.evidence import EVIDENCE_EXAMPLES
from workflows.models import ApiToken, Membership, Project, Workflow, WorkflowEvent
from workflows.services import Actor, workflow_initialize, workflow_phase_complete
from workflows.states import PHASES, MemberRole, State, role_for_state


@dataclass(frozen=True)
class Base:
    token: str
    user_id: int
    # Every bench project; the bench user belongs to the first `member_of` of them.
    project_ids: list[uuid.UUID]


def base_seed(*, projects: int, member_of: int) -> Base:
    """The bench user with an API token, its projects and strangers' ones, the floor tables."""
    user_model = get_user_model()
    user = user_model.objects.create_user(username="bench")
    other = user_model.objects.create_user(username="bench-other")
    project_ids = []
    for i in range(projects):
        project = Project.objects.create(
            slug=f"bench-{i}", name=f"Bench {i}", repository="acme/bench"
        )
        Membership.objects.create(project=project, user=other, role=MemberRole.DEVELOPER)
        if i < member_of:
            Membership.objects.create(project=project, user=user, role=MemberRole.OWNER)
        project_ids.append(project.id)
    raw, digest = ApiToken.generate()
    ApiToken.objects.create(user=user, digest=digest, hint=raw[:8], name="bench")
    with connection.cursor() as cursor:
        for statement in floors.TABLES_SQL:
            cursor.execute(statement)
    return Base(token=raw, user_id=user.pk, project_ids=project_ids)


def workflows_in_planning(*, base: Base, count: int, label: str) -> list[str]:
    """`count` workflows of the user's first project with DISCOVERY completed (now PLANNING)."""
    user = get_user_model().objects.get(pk=base.user_id)
    project = Project.objects.get(pk=base.project_ids[0])
    actor = Actor.of(user)
    ids = []
    for i in range(count):
        workflow = workflow_initialize(
            project=project,
            requirements={
                "description": f"{label} {i}: add dark mode to the settings page",
                "acceptance": ["toggle persists per user", "respects the OS preference"],
            },
            actor=actor,
        )
        workflow_phase_complete(
            workflow_id=workflow.id,
            ai_response="Requirements gathered.",
            result=EVIDENCE_EXAMPLES[State.DISCOVERY],
            actor=actor,
        )
        ids.append(str(workflow.id))
    return ids


def workflows_top_up(*, base: Base, total: int, template_id: str, chunk: int = 25_000) -> int:
    """Copy `template_id` until the table holds `total` workflows, each with its first event.

    Copies are spread over every bench project (the user sees a `member_of / projects`
    share), over the working phases and COMPLETE, and back in time one second apart.
    """
    have = Workflow.objects.count()
    need = total - have
    if need <= 0:
        return 0
    q = connection.ops.quote_name  # current_role is a reserved word in PostgreSQL
    states = [*PHASES, State.COMPLETE]
    roles = [role_for_state(s) for s in states]
    last_phases = [s if s in PHASES else PHASES[-1] for s in states]
    overrides = {
        "id": "gen_random_uuid()",
        "project_id": "(%(projects)s::uuid[])[1 + g %% %(n_projects)s::int]",
        "title": "'Bench workflow ' || g",
        "requirements": "jsonb_build_object('description', 'Bench workflow ' || g"
        " || ': add dark mode to the settings page')",
        "state": "(%(states)s::text[])[1 + g %% %(n_states)s::int]",
        "current_role": "(%(roles)s::text[])[1 + g %% %(n_states)s::int]",
        "last_phase": "(%(last_phases)s::text[])[1 + g %% %(n_states)s::int]",
        "completed_at": f"CASE WHEN g %% %(n_states)s::int = {len(states) - 1}"
        " THEN t.created_at - make_interval(secs => g) END",
        "created_at": "t.created_at - make_interval(secs => g)",
        "updated_at": "t.created_at - make_interval(secs => g)",
    }
    workflow_columns = [f.column for f in Workflow._meta.concrete_fields]
    unknown = set(overrides) - set(workflow_columns)
    if unknown:
        raise RuntimeError(f"workflow columns changed; the bench still sets {sorted(unknown)}")
    select_list = ", ".join(overrides.get(c, f"t.{q(c)}") for c in workflow_columns)

    event_columns = [f.column for f in WorkflowEvent._meta.concrete_fields if not f.primary_key]
    event_overrides = {"workflow_id": "new.id", "seq": "1", "created_at": "new.created_at"}
    event_select = ", ".join(event_overrides.get(c, f"e.{q(c)}") for c in event_columns)

    sql = f"""
        WITH new AS (
            INSERT INTO {Workflow._meta.db_table} ({", ".join(map(q, workflow_columns))})
            SELECT {select_list}
            FROM {Workflow._meta.db_table} t, generate_series(%(start)s::int, %(stop)s::int) g
            WHERE t.id = %(template)s::uuid
            RETURNING id, created_at
        )
        INSERT INTO {WorkflowEvent._meta.db_table} ({", ".join(map(q, event_columns))})
        SELECT {event_select}
        FROM new, {WorkflowEvent._meta.db_table} e
        WHERE e.workflow_id = %(template)s::uuid AND e.seq = 1
    """
    params = {
        "projects": list(base.project_ids),
        "n_projects": len(base.project_ids),
        "states": states,
        "roles": roles,
        "last_phases": last_phases,
        "n_states": len(states),
        "template": uuid.UUID(template_id),
    }
    # g keeps growing across calls so copies never share a created_at.
    offset = have
    with connection.cursor() as cursor:
        for start in range(offset + 1, offset + need + 1, chunk):
            stop = min(start + chunk - 1, offset + need)
            cursor.execute(sql, {**params, "start": start, "stop": stop})
    return need


def vacuum_analyze() -> None:
    """Leave the tables as autovacuum would, so it does not start in the middle of a stage."""
    with connection.cursor() as cursor:
        for model in (Workflow, WorkflowEvent):
            cursor.execute(f"VACUUM (ANALYZE) {model._meta.db_table}")
        with suppress(DatabaseError):  # needs superuser or pg_checkpoint; only lowers noise
            cursor.execute("CHECKPOINT")


def visible_sample(*, database_url: str, user_id: int, count: int) -> list[str]:
    """Up to `count` ids of workflows `user_id` may see, spread over the whole table.

    Takes a database URL rather than Django's connection: the scale stage samples the
    1,000-workflow copy of the bench database as well.
    """
    with psycopg.connect(database_url) as connection:
        connection.execute("SELECT setseed(0.5)")
        rows = connection.execute(
            f"""
            SELECT w.id FROM {Workflow._meta.db_table} w
            JOIN {Membership._meta.db_table} m ON m.project_id = w.project_id
            WHERE m.user_id = %s
            ORDER BY random()
            LIMIT %s
            """,
            [user_id, count],
        ).fetchall()
    return [str(row[0]) for row in rows]


def workflow_count() -> int:
    return Workflow.objects.count()
