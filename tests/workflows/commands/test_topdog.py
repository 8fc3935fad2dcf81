"""`manage.py topdog`: users, projects, members and tokens."""

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.factories import ProjectFactory, UserFactory, api_token_for
from workflows.models import ApiToken, Membership, Project
from workflows.states import MemberRole, State

User = get_user_model()


def topdog(*args: str, stdin: str | None = None) -> tuple[str, str]:
    """Run `manage.py topdog ARGS`; its stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    extra = {"stdin": io.StringIO(stdin)} if stdin is not None else {}
    call_command("topdog", *args, stdout=out, stderr=err, no_color=True, **extra)
    return out.getvalue(), err.getvalue()


# --- user add ---------------------------------------------------------------------------


def test_user_add_creates_a_user_with_password_from_stdin(db):
    out, _ = topdog(
        "user", "add", "bob", "--email", "bob@example.test", "--password-stdin",
        stdin="correct-horse-battery\n",
    )  # fmt: skip

    bob = User.objects.get(username="bob")
    assert bob.email == "bob@example.test"
    assert bob.check_password("correct-horse-battery")
    assert not bob.is_superuser
    assert "Created user bob" in out


def test_user_add_superuser_with_password_option(db):
    topdog("user", "add", "root2", "--password", "long-enough-pw", "--superuser")

    user = User.objects.get(username="root2")
    assert user.is_superuser and user.is_staff
    assert user.check_password("long-enough-pw")


def test_user_add_without_password_leaves_it_unusable(db):
    out, _ = topdog("user", "add", "ide-bot")

    assert not User.objects.get(username="ide-bot").has_usable_password()
    assert "token create ide-bot" in out


def test_user_add_again_updates_only_what_is_given(db):
    topdog("user", "add", "bob", "--email", "old@example.test", "--password", "first-password")

    out, _ = topdog("user", "add", "bob", "--email", "new@example.test")

    bob = User.objects.get(username="bob")
    assert bob.email == "new@example.test"
    assert bob.check_password("first-password")
    assert "Updated user bob: email" in out
    assert User.objects.filter(username="bob").count() == 1


def test_user_add_again_with_nothing_new_changes_nothing(db):
    topdog("user", "add", "bob", "--email", "bob@example.test")

    out, _ = topdog("user", "add", "bob", "--email", "bob@example.test")

    assert "nothing to change" in out


def test_user_add_rejects_a_short_password(db):
    with pytest.raises(CommandError, match=r"password rejected: .*too short"):
        topdog("user", "add", "bob", "--password", "short")

    assert not User.objects.filter(username="bob").exists()


def test_user_add_rejects_an_empty_password_on_stdin(db):
    with pytest.raises(CommandError, match="empty line"):
        topdog("user", "add", "bob", "--password-stdin", stdin="\n")


def test_user_add_rejects_a_bad_email(db):
    with pytest.raises(CommandError, match="invalid user: email"):
        topdog("user", "add", "bob", "--email", "not-an-email")

    assert not User.objects.filter(username="bob").exists()


def test_user_add_refuses_both_password_options(db):
    with pytest.raises(CommandError, match="not allowed with argument"):
        topdog("user", "add", "bob", "--password", "long-enough-pw", "--password-stdin")


# --- project add ------------------------------------------------------------------------


def test_project_add_creates_a_project(db, settings):
    settings.TOPDOG_DEFAULT_REGRESSION_LIMIT = 5

    out, _ = topdog(
        "project", "add", "shop", "--name", "Web shop", "--repository", "acme/shop.web",
        "--gate", "deployment", "--gate", "PLANNING",
    )  # fmt: skip

    project = Project.objects.get(slug="shop")
    assert project.name == "Web shop"
    assert project.repository == "acme/shop.web"
    assert project.approval_gates == [State.PLANNING, State.DEPLOYMENT]
    assert project.regression_limit == 5
    assert "Created project shop" in out


def test_project_add_again_updates_given_fields_only(db):
    topdog("project", "add", "shop", "--name", "Shop", "--repository", "acme/shop")

    out, _ = topdog("project", "add", "shop", "--name", "Shop", "--regression-limit", "1")

    project = Project.objects.get(slug="shop")
    assert project.regression_limit == 1
    assert project.repository == "acme/shop"
    assert "Updated project shop: regression_limit" in out


@pytest.mark.parametrize(
    "repository",
    ["https://github.com/acme/shop", "acme", "acme/shop/extra", "-acme/shop", "acme/..", "a b/c"],
)
def test_project_add_rejects_a_repository_that_is_not_owner_name(db, repository):
    with pytest.raises(CommandError, match="is not owner/name"):
        topdog("project", "add", "shop", "--name", "Shop", f"--repository={repository}")

    assert not Project.objects.exists()


def test_project_add_rejects_an_unknown_gate(db):
    with pytest.raises(CommandError, match=r"unknown phase 'COMPLETE' for --gate; choose from"):
        topdog("project", "add", "shop", "--name", "Shop", "--gate", "COMPLETE")


@pytest.mark.parametrize("limit", ["-1", "51"])
def test_project_add_rejects_a_regression_limit_out_of_range(db, limit):
    with pytest.raises(CommandError, match="--regression-limit must be between 0 and 50"):
        topdog("project", "add", "shop", "--name", "Shop", f"--regression-limit={limit}")


def test_project_add_rejects_a_bad_slug(db):
    with pytest.raises(CommandError, match="invalid project: slug"):
        topdog("project", "add", "Web Shop!", "--name", "Shop")


def test_project_add_needs_a_name(db):
    with pytest.raises(CommandError, match="--name"):
        topdog("project", "add", "shop")


# --- project member ---------------------------------------------------------------------


def test_project_member_adds_then_changes_the_role(db):
    project = ProjectFactory(slug="shop")
    alice = UserFactory(username="alice")

    added, _ = topdog("project", "member", "shop", "alice", "--role", "viewer")
    changed, _ = topdog("project", "member", "shop", "alice", "--role", "DEVELOPER")
    same, _ = topdog("project", "member", "shop", "alice", "--role", "developer")

    membership = Membership.objects.get(project=project, user=alice)
    assert membership.role == MemberRole.DEVELOPER
    assert "Added alice in shop as viewer" in added
    assert "from viewer to developer" in changed
    assert "nothing to change" in same


def test_project_member_rejects_a_bad_role(db):
    ProjectFactory(slug="shop")
    UserFactory(username="alice")

    with pytest.raises(CommandError, match="unknown role 'admin'; choose from owner, developer"):
        topdog("project", "member", "shop", "alice", "--role", "admin")

    assert not Membership.objects.exists()


def test_project_member_names_the_unknown_project(db):
    UserFactory(username="alice")

    with pytest.raises(CommandError, match="no project 'nope'; create it with"):
        topdog("project", "member", "nope", "alice", "--role", "owner")


def test_project_member_names_the_unknown_user(db):
    ProjectFactory(slug="shop")

    with pytest.raises(CommandError, match="no user 'ghost'; create it with"):
        topdog("project", "member", "shop", "ghost", "--role", "owner")


# --- tokens -----------------------------------------------------------------------------


def test_token_create_prints_the_token_once_and_stores_only_its_digest(db):
    alice = UserFactory(username="alice")

    out, err = topdog("token", "create", "alice", "--name", "laptop")

    raw = out.strip()
    token = ApiToken.objects.get(user=alice)
    assert raw.startswith(ApiToken.PREFIX)
    assert token.digest == ApiToken.digest_of(raw)
    assert token.name == "laptop"
    assert raw.startswith(token.hint) and len(token.hint) < len(raw)
    stored = [str(v) for v in ApiToken.objects.values_list().get()]
    assert not any(raw in value for value in stored)
    assert raw not in err
    assert "shown once" in err
    # and never again
    listed, _ = topdog("token", "list", "alice")
    assert raw not in listed
    assert token.hint in listed


def test_token_create_makes_a_token_the_api_accepts(db):
    from rest_framework.test import APIRequestFactory

    from workflows.authentication import ApiTokenAuthentication

    alice = UserFactory(username="alice")
    raw = topdog("token", "create", "alice")[0].strip()

    request = APIRequestFactory().get("/", HTTP_AUTHORIZATION=f"Token {raw}")
    user, _ = ApiTokenAuthentication().authenticate(request)

    assert user == alice


def test_token_create_refuses_a_deactivated_user(db):
    UserFactory(username="alice", is_active=False)

    with pytest.raises(CommandError, match="deactivated"):
        topdog("token", "create", "alice")


def test_token_commands_name_the_unknown_user(db):
    with pytest.raises(CommandError, match="no user 'ghost'"):
        topdog("token", "create", "ghost")
    with pytest.raises(CommandError, match="no user 'ghost'"):
        topdog("token", "list", "ghost")


def test_token_list_says_when_there_are_none(db):
    UserFactory(username="alice")

    out, _ = topdog("token", "list", "alice")

    assert "alice has no API tokens" in out


def test_token_revoke_by_hint(db):
    UserFactory(username="alice")
    raw = topdog("token", "create", "alice")[0].strip()
    hint = ApiToken.objects.get().hint

    out, _ = topdog("token", "revoke", hint)

    assert not ApiToken.objects.filter(digest=ApiToken.digest_of(raw)).exists()
    assert f"Revoked API token {hint}" in out


def test_token_revoke_by_whole_token(db):
    alice = UserFactory(username="alice")
    raw = api_token_for(alice)
    keep = api_token_for(alice)

    topdog("token", "revoke", raw)

    assert list(ApiToken.objects.values_list("digest", flat=True)) == [ApiToken.digest_of(keep)]


def test_token_revoke_refuses_an_ambiguous_hint_unless_narrowed(db):
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    for user in (alice, bob):
        ApiToken.objects.create(user=user, digest=user.username * 8, hint="td_same")

    with pytest.raises(CommandError, match=r"2 tokens have the hint 'td_same'.*--user"):
        topdog("token", "revoke", "td_same")
    topdog("token", "revoke", "td_same", "--user", "bob")

    assert list(ApiToken.objects.values_list("user__username", flat=True)) == ["alice"]


def test_token_revoke_names_an_unknown_hint(db):
    with pytest.raises(CommandError, match="no API token matches 'td_nothing'"):
        topdog("token", "revoke", "td_nothing")


def test_unknown_subcommand_is_a_command_error(db):
    with pytest.raises(CommandError, match="invalid choice"):
        topdog("group", "add")
