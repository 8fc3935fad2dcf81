"""Role system prompts: which template version is active, and rendering it for a workflow."""

import json
from string import Template
from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction
from django.db.models import Max

from workflows.default_prompts import DEFAULT_PROMPTS
from workflows.evidence import evidence_example_text
from workflows.models import PromptTemplate, Workflow

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser


def prompt_template_active(*, role: str) -> PromptTemplate:
    """The active template of `role`; the shipped default is restored if none is active.

    Two workers may find none at once: a role with no version yet has no row to lock, so
    both take version 1 and the second insert violates the unique version. That one
    (rolled back to its savepoint) reads the template the first restored."""
    try:  # one active template per role (constraint prompt_one_active_per_role)
        return PromptTemplate.objects.get(role=role, active=True)
    except PromptTemplate.DoesNotExist:
        pass
    try:
        return prompt_template_publish(
            role=role, body=DEFAULT_PROMPTS[role], actor=None, note="shipped default (restored)"
        )
    except IntegrityError:
        return PromptTemplate.objects.get(role=role, active=True)


def prompt_render(*, body: str, workflow: Workflow, role: str, state: str) -> str:
    """`body` with the workflow's state, project and requirements put in."""
    project = workflow.project
    return Template(body).safe_substitute(
        role=role,
        state=state,
        project=project.name,
        repository=project.repository or "(none connected)",
        requirements=json.dumps(workflow.requirements, indent=2, ensure_ascii=False),
        evidence_schema=evidence_example_text(state),
    )


@transaction.atomic
def prompt_template_publish(
    *, role: str, body: str, actor: "AbstractBaseUser | None", note: str = ""
) -> PromptTemplate:
    """Make `body` the active prompt of `role` as a new version; earlier ones are kept."""
    # Lock the role's rows so two editors cannot both take the same next version.
    list(PromptTemplate.objects.select_for_update().filter(role=role).values_list("id"))
    current = PromptTemplate.objects.filter(role=role).aggregate(v=Max("version"))["v"] or 0
    PromptTemplate.objects.filter(role=role, active=True).update(active=False)
    return PromptTemplate.objects.create(
        role=role,
        version=current + 1,
        body=body,
        sha256=PromptTemplate.digest(body),
        active=True,
        note=note,
        created_by=actor,
    )
