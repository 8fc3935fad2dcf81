"""`manage.py topdog`: users, projects, memberships and API tokens from the shell.

    manage.py topdog user add alice --email alice@example.com --password-stdin
    manage.py topdog project add shop --name "Web shop" --repository acme/shop --gate DEPLOYMENT
    manage.py topdog project member shop alice --role developer
    manage.py topdog token create alice --name laptop
    manage.py topdog token list alice
    manage.py topdog token revoke td_AbC12xYz

`user add`, `project add` and `project member` can be run again: they change what the
options name and leave everything else as it is.
"""

import re
import sys
from argparse import ArgumentParser
from typing import Any, TextIO

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from workflows.models import ApiToken, Membership, Project
from workflows.services import Actor, project_create, project_update
from workflows.states import PHASES, MemberRole

# GitHub's rules: an owner is 1-39 letters, digits or inner hyphens; a repository name
# is letters, digits, '.', '_' and '-' (but not '.' or '..').
REPOSITORY_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/(?!\.\.?$)[A-Za-z0-9._-]{1,100}$")
HINT_LENGTH = ApiToken._meta.get_field("hint").max_length
# The API accepts the same range.
MAX_REGRESSION_LIMIT = 50


def api_token_create(*, user: AbstractBaseUser, name: str = "default") -> tuple[ApiToken, str]:
    """A new API token for `user` and its raw value, which is not stored anywhere."""
    raw, digest = ApiToken.generate()
    token = ApiToken.objects.create(user=user, name=name, digest=digest, hint=raw[:HINT_LENGTH])
    return token, raw


def validation_message(exc: ValidationError) -> str:
    """A ValidationError as one line: 'field: message; field: message'."""
    if hasattr(exc, "error_dict"):
        return "; ".join(
            f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items()
        )
    return " ".join(exc.messages)


def _user_get(username: str) -> AbstractBaseUser:
    user_model = get_user_model()
    try:
        return user_model._default_manager.get_by_natural_key(username)
    except user_model.DoesNotExist:
        raise CommandError(
            f"no user {username!r}; create it with `manage.py topdog user add {username}`"
        ) from None


def _project_get(slug: str) -> Project:
    try:
        return Project.objects.get(slug=slug)
    except Project.DoesNotExist:
        raise CommandError(
            f"no project {slug!r}; create it with `manage.py topdog project add {slug} --name NAME`"
        ) from None


def _gates(raw: list[str]) -> list[str]:
    """Phase names from --gate, upper-cased, checked, in workflow order."""
    wanted = {gate.strip().upper() for gate in raw}
    unknown = sorted(wanted - set(PHASES))
    if unknown:
        raise CommandError(
            f"unknown phase {', '.join(map(repr, unknown))} for --gate; "
            f"choose from {', '.join(PHASES)}"
        )
    return [phase for phase in PHASES if phase in wanted]


def _role(raw: str) -> str:
    role = raw.strip().lower()
    if role not in MemberRole.values:
        raise CommandError(f"unknown role {raw!r}; choose from {', '.join(MemberRole.values)}")
    return role


class Command(BaseCommand):
    help = "Manage TopDog users, projects, project members and API tokens."
    # call_command(..., stdin=StringIO(...)) feeds --password-stdin in tests.
    stealth_options = ("stdin",)

    def add_arguments(self, parser: ArgumentParser) -> None:
        areas = parser.add_subparsers(dest="area", metavar="{user,project,token}", required=True)

        user = areas.add_parser("user", help="Users.").add_subparsers(
            dest="action", metavar="{add}", required=True
        )
        user_add = user.add_parser("add", help="Create a user, or update the one with this name.")
        user_add.add_argument("username")
        user_add.add_argument("--email", help="Email address.")
        password = user_add.add_mutually_exclusive_group()
        password.add_argument(
            "--password",
            help="Password (visible in the process list and shell history; "
            "prefer --password-stdin). Without one, the user can only use API tokens.",
        )
        password.add_argument(
            "--password-stdin",
            action="store_true",
            help="Read the password from the first line of standard input.",
        )
        user_add.add_argument(
            "--superuser", action="store_true", help="Make the user a superuser (admin access)."
        )

        project = areas.add_parser("project", help="Projects and their members.").add_subparsers(
            dest="action", metavar="{add,member}", required=True
        )
        project_add = project.add_parser(
            "add", help="Create a project, or update the one with this slug."
        )
        project_add.add_argument("slug")
        project_add.add_argument("--name", required=True, help="Display name.")
        project_add.add_argument("--repository", help="GitHub repository as owner/name.")
        project_add.add_argument(
            "--gate",
            action="append",
            dest="gates",
            metavar="PHASE",
            help="A phase whose result waits for a human approve; repeat for more "
            f"({', '.join(PHASES)}). Given gates replace the project's gates.",
        )
        project_add.add_argument(
            "--regression-limit",
            type=int,
            metavar="N",
            help="Regressions a workflow may take before the next one fails it "
            "(new projects: TOPDOG_DEFAULT_REGRESSION_LIMIT).",
        )
        member = project.add_parser("member", help="Add a member, or change their role.")
        member.add_argument("slug")
        member.add_argument("username")
        member.add_argument(
            "--role", required=True, metavar="{" + ",".join(MemberRole.values) + "}"
        )

        token = areas.add_parser("token", help="API tokens.").add_subparsers(
            dest="action", metavar="{create,list,revoke}", required=True
        )
        token_create = token.add_parser(
            "create", help="Create a token and print it (only its digest is stored)."
        )
        token_create.add_argument("username")
        token_create.add_argument("--name", default="default", help="What the token is for.")
        token_list = token.add_parser("list", help="A user's tokens, by hint.")
        token_list.add_argument("username")
        token_revoke = token.add_parser(
            "revoke", help="Delete a token, given its hint (see `token list`) or the token."
        )
        token_revoke.add_argument("hint", metavar="HINT")
        token_revoke.add_argument("--user", help="Only consider this user's tokens.")

    def handle(self, *args: Any, **options: Any) -> None:
        handler = getattr(self, f"_{options['area']}_{options['action']}")
        with transaction.atomic():
            handler(options)

    # --- users -------------------------------------------------------------------------

    def _user_add(self, options: dict[str, Any]) -> None:
        username = options["username"]
        password = options["password"]
        if options["password_stdin"]:
            stdin: TextIO = options.get("stdin") or sys.stdin
            password = stdin.readline().rstrip("\r\n")
            if not password:
                raise CommandError("--password-stdin read an empty line; no password set")

        user_model = get_user_model()
        user = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: username}).first()
        created = user is None
        changed: list[str] = []
        if created:
            user = user_model(**{user_model.USERNAME_FIELD: username})
            user.set_unusable_password()
        if options["email"] is not None and options["email"] != user.email:
            user.email = options["email"]
            changed.append("email")
        if options["superuser"] and not (user.is_superuser and user.is_staff):
            user.is_superuser = user.is_staff = True
            changed.append("superuser")
        if password is not None:
            try:
                validate_password(password, user)
            except ValidationError as exc:
                raise CommandError(f"password rejected: {validation_message(exc)}") from None
            user.set_password(password)
            changed.append("password")
        try:
            user.full_clean()
        except ValidationError as exc:
            raise CommandError(f"invalid user: {validation_message(exc)}") from None

        if created:
            user.save()
            extra = " (superuser)" if user.is_superuser else ""
            self.stdout.write(self.style.SUCCESS(f"Created user {username}{extra}."))
            if password is None:
                self.stdout.write(
                    "It has no password: it can use API tokens "
                    f"(`manage.py topdog token create {username}`) but not log in."
                )
        elif changed:
            user.save()
            self.stdout.write(self.style.SUCCESS(f"Updated user {username}: {', '.join(changed)}."))
        else:
            self.stdout.write(f"User {username} already exists; nothing to change.")

    # --- projects ----------------------------------------------------------------------

    def _project_add(self, options: dict[str, Any]) -> None:
        slug, name = options["slug"], options["name"]
        repository = options["repository"]
        if repository is not None:
            repository = repository.strip()
            if repository and not REPOSITORY_RE.match(repository):
                raise CommandError(
                    f"repository {repository!r} is not owner/name (for example acme/widgets); "
                    "give the GitHub owner and repository name, not a URL"
                )
        gates = _gates(options["gates"]) if options["gates"] is not None else None
        limit = options["regression_limit"]
        if limit is not None and not 0 <= limit <= MAX_REGRESSION_LIMIT:
            raise CommandError(
                f"--regression-limit must be between 0 and {MAX_REGRESSION_LIMIT}, got {limit}"
            )

        actor = Actor.system("manage.py topdog")
        project = Project.objects.filter(slug=slug).first()
        try:
            if project is None:
                project_create(
                    slug=slug,
                    name=name,
                    actor=actor,
                    repository=repository or "",
                    approval_gates=gates or [],
                    regression_limit=(
                        limit if limit is not None else settings.TOPDOG_DEFAULT_REGRESSION_LIMIT
                    ),
                )
                changed = None
            else:
                wanted = {
                    "name": name,
                    "repository": repository,
                    "approval_gates": gates,
                    "regression_limit": limit,
                }
                changed = project_update(
                    project=project,
                    actor=actor,
                    **{field: value for field, value in wanted.items() if value is not None},
                )
        except ValidationError as exc:
            raise CommandError(f"invalid project: {validation_message(exc)}") from None

        if changed is None:
            self.stdout.write(self.style.SUCCESS(f"Created project {slug} ({name})."))
            self.stdout.write(
                f"Add members with `manage.py topdog project member {slug} USERNAME --role owner`."
            )
        elif changed:
            self.stdout.write(self.style.SUCCESS(f"Updated project {slug}: {', '.join(changed)}."))
        else:
            self.stdout.write(f"Project {slug} already exists; nothing to change.")

    def _project_member(self, options: dict[str, Any]) -> None:
        role = _role(options["role"])
        project = _project_get(options["slug"])
        user = _user_get(options["username"])
        membership, created = Membership.objects.select_for_update().get_or_create(
            project=project, user=user, defaults={"role": role}
        )
        who = f"{user.get_username()} in {project.slug}"
        if created:
            self.stdout.write(self.style.SUCCESS(f"Added {who} as {role}."))
        elif membership.role != role:
            previous = membership.role
            membership.role = role
            membership.save(update_fields=["role"])
            self.stdout.write(self.style.SUCCESS(f"Changed {who} from {previous} to {role}."))
        else:
            self.stdout.write(f"{who} is already {role}; nothing to change.")

    # --- tokens ------------------------------------------------------------------------

    def _token_create(self, options: dict[str, Any]) -> None:
        user = _user_get(options["username"])
        if not user.is_active:
            raise CommandError(
                f"user {user.get_username()!r} is deactivated; its tokens would be refused"
            )
        token, raw = api_token_create(user=user, name=options["name"])
        # The notice goes to stderr so that `TOKEN=$(manage.py topdog token create ...)`
        # captures only the token.
        self.stderr.write(
            f"Created API token {token.hint}… ({token.name}) for {user.get_username()}. "
            "It is shown once, here; only its digest is stored. "
            "Send it as 'Authorization: Token <token>'.",
            style_func=self.style.SUCCESS,
        )
        self.stdout.write(raw)

    def _token_list(self, options: dict[str, Any]) -> None:
        user = _user_get(options["username"])
        tokens = list(ApiToken.objects.filter(user=user).order_by("created_at", "id"))
        if not tokens:
            self.stdout.write(f"{user.get_username()} has no API tokens.")
            return
        rows = [("HINT", "NAME", "CREATED", "LAST USED")]
        for token in tokens:
            rows.append(
                (
                    token.hint,
                    token.name,
                    f"{token.created_at:%Y-%m-%d %H:%M} UTC",
                    f"{token.last_used_at:%Y-%m-%d %H:%M} UTC" if token.last_used_at else "never",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            )

    def _token_revoke(self, options: dict[str, Any]) -> None:
        given = options["hint"].strip().rstrip("…")
        tokens = ApiToken.objects.select_related("user")
        if options["user"]:
            tokens = tokens.filter(user=_user_get(options["user"]))
        if len(given) > HINT_LENGTH:
            # The whole token: match its digest; never compare or log the raw value.
            matches = list(tokens.filter(digest=ApiToken.digest_of(given)))
            shown = f"{given[:HINT_LENGTH]}…"
        else:
            matches = list(tokens.filter(hint=given))
            shown = given
        if not matches:
            raise CommandError(
                f"no API token matches {shown!r}; see `manage.py topdog token list USERNAME` "
                "for hints"
            )
        if len(matches) > 1:
            owners = ", ".join(f"{t.user.get_username()}/{t.name}" for t in matches)
            raise CommandError(
                f"{len(matches)} tokens have the hint {shown!r} ({owners}); "
                "narrow it down with --user USERNAME, or pass the whole token"
            )
        token = matches[0]
        token.delete()
        self.stdout.write(
            self.style.SUCCESS(
                f"Revoked API token {token.hint}… ({token.name}) of {token.user.get_username()}."
            )
        )
