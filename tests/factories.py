"""factory_boy factories shared by the whole suite."""

import copy

import factory
from django.contrib.auth import get_user_model

from workflows.evidence import EVIDENCE_EXAMPLES
from workflows.models import ApiToken, Membership, Project
from workflows.services import Actor, workflow_initialize
from workflows.states import MemberRole


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.test")
    password = factory.django.Password("pw-for-tests-1")


class ProjectFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Project

    slug = factory.Sequence(lambda n: f"project-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.replace("-", " ").title())
    repository = "acme/widgets"


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    project = factory.SubFactory(ProjectFactory)
    user = factory.SubFactory(UserFactory)
    role = MemberRole.OWNER


def api_token_for(user) -> str:
    """A fresh raw API token for `user`."""
    raw, digest = ApiToken.generate()
    ApiToken.objects.create(user=user, digest=digest, hint=raw[:8])
    return raw


def workflow_for(project, user, description: str = "Add dark mode to settings", **kwargs):
    """A workflow opened through the real service."""
    return workflow_initialize(
        project=project,
        requirements={"description": description},
        actor=Actor.of(user),
        **kwargs,
    )


def evidence(phase: str, **overrides) -> dict:
    """Valid evidence for `phase`, with top-level fields overridden."""
    data = copy.deepcopy(EVIDENCE_EXAMPLES[phase])
    data.update(overrides)
    return data
