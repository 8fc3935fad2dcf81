import logging
import pickle
import time
import traceback

import pytest

from integrations.change_set import UnsafeChangeSet
from integrations.github import (
    CallPolicy,
    GitHubError,
    github_branch_commits,
    github_branch_create,
    github_change_set_commit,
    github_files_read,
    github_pull_request_find,
    github_pull_request_open,
    github_repository_context,
)
from integrations.github.faults import GitHubCaller
from integrations.secrets import SecretToken
from tests.integrations.conftest import SEED_FILES, TOKEN
from tests.integrations.fake_github import FakeGitHub

CHANGE_SET = [
    {
        "path": "shop/views.py",
        "action": "modify",
        "content": "def index(request):\n    return 'hello'\n",
    },
    {"path": "shop/api/orders.py", "action": "create", "content": "ORDERS = []\n"},
    {"path": "docs/old.md", "action": "delete"},
]


def expected_files(base: dict, change_set: list[dict]) -> dict:
    files = dict(base)
    for change in change_set:
        if change["action"] == "delete":
            files.pop(change["path"])
        else:
            files[change["path"]] = change["content"]
    return files


def ship(gh, branch="topdog/wf-1"):
    """The workflow's whole GitHub step: branch, commit, pull request."""
    github_branch_create(**gh, branch=branch)
    commit = github_change_set_commit(**gh, branch=branch, message="Add orders", files=CHANGE_SET)
    pr = github_pull_request_open(**gh, head=branch, title="Add orders", body="From TopDog")
    return commit, pr


# --- reading -------------------------------------------------------------------------------


def test_repository_context_reads_tree_readme_languages_and_frameworks(gh, fake_github):
    context = github_repository_context(**gh)

    repo = fake_github.repos["acme/shop"]
    assert context.repo == "acme/shop"
    assert context.default_branch == "main"
    assert context.head_sha == repo.refs["heads/main"]
    assert set(context.paths) == set(SEED_FILES)
    assert context.paths[:3] == ("README.md", "manage.py", "requirements.txt")  # shallow first
    assert context.readme == SEED_FILES["README.md"]
    assert context.languages == ("Python", "TypeScript")
    assert context.frameworks == ("django", "next", "react")
    assert context.paths_truncated is False


def test_repository_context_limits_paths_and_falls_back_to_extensions(gh, fake_github):
    fake_github.repos["acme/shop"].languages = {}

    context = github_repository_context(**gh, max_paths=2)

    assert context.paths == ("README.md", "manage.py")
    assert context.paths_truncated is True
    assert context.languages[0] == "Python"


def test_repository_context_of_an_empty_repository(gh, fake_github):
    fake_github.repo_create("acme/empty")

    context = github_repository_context(**{**gh, "repo": "acme/empty"})

    assert context.head_sha is None
    assert context.paths == ()
    assert context.readme is None


def test_files_read_returns_text_and_skips_missing_binary_large_and_directories(gh, fake_github):
    fake_github.large_file_bytes = 50
    fake_github.repos["acme/shop"].commit_files(
        {"logo.png": b"\x89PNG\x00\x01", "big.txt": "x" * 100}
    )

    found = github_files_read(
        **gh,
        paths=["shop/views.py", "missing.py", "logo.png", "big.txt", "shop", "../etc/passwd"],
    )

    assert found == {"shop/views.py": SEED_FILES["shop/views.py"]}


def test_files_read_at_a_ref(gh, fake_github):
    fake_github.repos["acme/shop"].commit_files({"shop/views.py": "v2\n"}, branch="feature")

    assert github_files_read(**gh, paths=["shop/views.py"], ref="feature") == {
        "shop/views.py": "v2\n"
    }


# --- branches and commits ------------------------------------------------------------------


def test_branch_create_from_default_branch_is_idempotent(gh, fake_github):
    repo = fake_github.repos["acme/shop"]

    first = github_branch_create(**gh, branch="topdog/wf-1")
    second = github_branch_create(**gh, branch="topdog/wf-1")

    assert first.created is True
    assert second.created is False
    assert first.sha == second.sha == repo.refs["heads/main"] == repo.refs["heads/topdog/wf-1"]
    assert fake_github.count("POST", r"/git/refs$") == 1


def test_branch_create_returns_a_branch_that_moved_on_from_its_start(gh, fake_github):
    github_branch_create(**gh, branch="topdog/wf-1")
    commit = github_change_set_commit(**gh, branch="topdog/wf-1", message="m", files=CHANGE_SET)

    again = github_branch_create(**gh, branch="topdog/wf-1")

    assert (again.created, again.sha) == (False, commit.sha)


def test_branch_create_refuses_an_unrelated_existing_branch(gh, fake_github):
    repo = fake_github.repos["acme/shop"]
    orphan = repo.commit_write(repo.tree_from_flat({}), [], "orphan")
    repo.refs["heads/topdog/wf-1"] = orphan

    with pytest.raises(GitHubError) as caught:
        github_branch_create(**gh, branch="topdog/wf-1")

    assert caught.value.kind == "conflict"
    assert "already exists" in str(caught.value)
    assert "choose another branch name" in str(caught.value)


def test_branch_create_from_a_missing_branch(gh):
    with pytest.raises(GitHubError) as caught:
        github_branch_create(**gh, branch="topdog/wf-1", from_ref="nope")

    assert caught.value.kind == "not_found"
    assert "branch nope not found on acme/shop" in str(caught.value)


def test_change_set_is_one_commit_whose_tree_is_base_plus_change_set(gh, fake_github):
    repo = fake_github.repos["acme/shop"]
    base = repo.refs["heads/main"]
    github_branch_create(**gh, branch="topdog/wf-1")

    commit = github_change_set_commit(
        **gh, branch="topdog/wf-1", message="Add orders", files=CHANGE_SET, base_sha=base
    )

    assert repo.refs["heads/topdog/wf-1"] == commit.sha
    assert repo.commits[commit.sha]["parents"] == [base]
    assert repo.commits[commit.sha]["message"] == commit.message == "Add orders"
    assert repo.files("topdog/wf-1") == expected_files(SEED_FILES, CHANGE_SET)
    assert repo.files("main") == SEED_FILES
    assert fake_github.count("POST", r"/git/commits$") == 1
    assert fake_github.count("POST", r"/git/blobs$") == 2  # the two written files
    assert [c.sha for c in github_branch_commits(**gh, branch="topdog/wf-1")] == [commit.sha, base]


def test_second_run_makes_no_second_commit_and_finds_the_open_pull_request(gh, fake_github):
    repo = fake_github.repos["acme/shop"]
    first_commit, first_pr = ship(gh)
    writes_after_first = fake_github.count("POST", r"/git/")

    second_commit, second_pr = ship(gh)

    assert second_commit == first_commit
    assert second_pr == first_pr
    assert (first_pr.number, first_pr.head, first_pr.base) == (1, "topdog/wf-1", "main")
    assert first_pr.url == "https://github.com/acme/shop/pull/1"
    assert len(repo.pulls) == 1
    assert len(repo.branch_commits("topdog/wf-1")) == 2
    assert fake_github.count("POST", r"/git/") == writes_after_first  # nothing written again
    assert github_pull_request_find(**gh, head_branch="topdog/wf-1") == first_pr


def test_pull_request_find_when_there_is_none(gh):
    assert github_pull_request_find(**gh, head_branch="topdog/none") is None


def test_pull_request_opened_concurrently_is_returned_not_duplicated(gh, fake_github):
    github_branch_create(**gh, branch="topdog/wf-1")
    github_change_set_commit(**gh, branch="topdog/wf-1", message="m", files=CHANGE_SET)
    other = github_pull_request_open(**gh, head="topdog/wf-1", title="by another worker")
    # Our lookup misses it (it was opened after we looked), so the create gets a 422.
    fake_github.fault(200, method="GET", path=r"/pulls$", body=[])

    pr = github_pull_request_open(**gh, head="topdog/wf-1", title="mine")

    assert pr == other
    assert len(fake_github.repos["acme/shop"].pulls) == 1


def test_change_set_on_a_branch_that_moved_is_a_conflict(gh, fake_github):
    repo = fake_github.repos["acme/shop"]
    base = repo.refs["heads/main"]
    github_branch_create(**gh, branch="topdog/wf-1")
    repo.commit_files({"other.txt": "someone else\n"}, branch="topdog/wf-1")

    with pytest.raises(GitHubError) as caught:
        github_change_set_commit(
            **gh, branch="topdog/wf-1", message="m", files=CHANGE_SET, base_sha=base
        )

    assert caught.value.kind == "conflict"
    assert "rebuild the change set" in str(caught.value)
    assert "shop/api/orders.py" not in repo.files("topdog/wf-1")


def test_branch_moving_during_the_commit_is_a_conflict(gh, fake_github):
    github_branch_create(**gh, branch="topdog/wf-1")
    fake_github.fault(422, method="PATCH", message="Update is not a fast forward")

    with pytest.raises(GitHubError) as caught:
        github_change_set_commit(**gh, branch="topdog/wf-1", message="m", files=CHANGE_SET)

    assert caught.value.kind == "conflict"
    assert "moved while the commit was being made" in str(caught.value)


def test_change_set_without_base_sha_stacks_on_the_head(gh, fake_github):
    repo = fake_github.repos["acme/shop"]
    github_branch_create(**gh, branch="topdog/wf-1")
    first = github_change_set_commit(**gh, branch="topdog/wf-1", message="one", files=CHANGE_SET)
    follow_up = [{"path": "shop/api/orders.py", "action": "modify", "content": "ORDERS = [1]\n"}]

    second = github_change_set_commit(**gh, branch="topdog/wf-1", message="two", files=follow_up)

    assert repo.commits[second.sha]["parents"] == [first.sha]
    assert repo.files("topdog/wf-1")["shop/api/orders.py"] == "ORDERS = [1]\n"


def test_change_set_on_a_missing_branch(gh):
    with pytest.raises(GitHubError) as caught:
        github_change_set_commit(**gh, branch="topdog/none", message="m", files=CHANGE_SET)

    assert caught.value.kind == "not_found"
    assert "create it first" in str(caught.value)


def test_unsafe_change_set_is_refused_before_any_request(gh, fake_github):
    before = len(fake_github.requests)

    with pytest.raises(UnsafeChangeSet):
        github_change_set_commit(
            **gh,
            branch="main",
            message="m",
            files=[{"path": "../outside", "action": "create", "content": "x"}],
        )

    assert len(fake_github.requests) == before


def test_enterprise_style_base_url_with_a_path_prefix(policy):
    with FakeGitHub(token=TOKEN, prefix="/api/v3") as fake:
        fake.repo_create("acme/shop", files=SEED_FILES)
        gh = {"token": TOKEN, "repo": "acme/shop", "base_url": fake.base_url, "policy": policy}

        _, pr = ship(gh)

        assert pr.number == 1
        assert all(r.path.startswith("/repos/") for r in fake.requests)  # prefix stripped


def test_plain_http_to_a_non_loopback_host_is_refused(gh):
    with pytest.raises(ValueError, match="must use https"):
        github_repository_context(**{**gh, "base_url": "http://ghe.example.com/api/v3"})


def test_every_request_carries_the_token(gh, fake_github):
    ship(gh)

    assert fake_github.requests
    assert {r.headers.get("authorization") for r in fake_github.requests} == {f"token {TOKEN}"}


# --- errors --------------------------------------------------------------------------------


def test_bad_token(gh):
    with pytest.raises(GitHubError) as caught:
        github_repository_context(**{**gh, "token": "ghp_test_revoked_Value000"})

    assert caught.value.kind == "unauthorized"
    assert str(caught.value) == (
        "GitHub rejected the token (401): create a new token with contents:write and "
        "pull_requests:write"
    )


def test_token_without_contents_write(gh, fake_github):
    github_branch_create(**gh, branch="topdog/wf-1")
    fake_github.read_only = True

    with pytest.raises(GitHubError) as caught:
        github_change_set_commit(**gh, branch="topdog/wf-1", message="m", files=CHANGE_SET)

    assert caught.value.kind == "forbidden"
    assert str(caught.value).startswith("token lacks contents:write on acme/shop (403)")


def test_token_without_pull_requests_write(gh, fake_github):
    github_branch_create(**gh, branch="topdog/wf-1")
    github_change_set_commit(**gh, branch="topdog/wf-1", message="m", files=CHANGE_SET)
    fake_github.fault(403, method="POST", path=r"/pulls$")

    with pytest.raises(GitHubError) as caught:
        github_pull_request_open(**gh, head="topdog/wf-1", title="t")

    assert str(caught.value).startswith("token lacks pull_requests:write on acme/shop (403)")


def test_missing_repository(gh):
    with pytest.raises(GitHubError) as caught:
        github_branch_create(**{**gh, "repo": "acme/missing"}, branch="x")

    assert caught.value.kind == "not_found"
    assert str(caught.value).startswith(
        "repository acme/missing not found, or the token cannot see it (404)"
    )


def test_refused_change_carries_githubs_message(gh):
    github_branch_create(**gh, branch="topdog/empty")  # no commits beyond main

    with pytest.raises(GitHubError) as caught:
        github_pull_request_open(**gh, head="topdog/empty", title="t")

    assert caught.value.kind == "refused"
    assert str(caught.value) == (
        "GitHub refused the change (422): Validation Failed; No commits between main and "
        "topdog/empty"
    )


# --- retries -------------------------------------------------------------------------------


def test_server_errors_are_retried_with_backoff(gh, fake_github, clock):
    fake_github.fault(500, method="GET", path=r"^/repos/acme/shop$", times=2)

    context = github_repository_context(**gh)

    assert context.head_sha is not None
    assert fake_github.count("GET", r"^/repos/acme/shop$") == 3
    assert clock.sleeps == [1.0, 2.0]


def test_secondary_rate_limit_waits_for_retry_after(gh, fake_github, clock):
    fake_github.secondary_rate_limit(times=1, retry_after=7, method="POST", path=r"/git/refs$")

    branch = github_branch_create(**gh, branch="topdog/wf-1")

    assert branch.created is True
    assert fake_github.count("POST", r"/git/refs$") == 2
    assert clock.sleeps == [7.0]


def test_secondary_rate_limit_message_without_headers_backs_off(gh, fake_github, clock):
    fake_github.secondary_rate_limit(times=2, retry_after=None, path=r"/languages$")

    github_repository_context(**gh)

    assert fake_github.count("GET", r"/languages$") == 3
    assert clock.sleeps == [1.0, 2.0]


def test_primary_rate_limit_waits_until_reset(gh, fake_github, clock):
    reset = int(time.time()) + 5
    fake_github.fault(
        403,
        path=r"/languages$",
        message="API rate limit exceeded for user ID 1.",
        headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)},
    )

    github_repository_context(**gh)

    assert len(clock.sleeps) == 1
    assert 3.0 <= clock.sleeps[0] <= 7.0


def test_429_is_retried(gh, fake_github, clock):
    fake_github.fault(429, path=r"/pulls$", headers={"retry-after": "2"}, message="slow down")

    assert github_pull_request_find(**gh, head_branch="topdog/none") is None
    assert clock.sleeps == [2.0]


def test_dropped_connections_are_retried(gh, fake_github, clock):
    fake_github.disconnect(times=1, path=r"^/repos/acme/shop$")

    github_repository_context(**gh)

    assert fake_github.count("GET", r"^/repos/acme/shop$") == 2
    assert len(clock.sleeps) == 1


def test_persistent_server_errors_end_after_the_attempt_budget(gh, fake_github, clock):
    fake_github.fault(502, times=100)

    with pytest.raises(GitHubError) as caught:
        github_repository_context(**gh)

    assert caught.value.kind == "unavailable"
    assert "after 5 attempts" in str(caught.value)
    assert len(fake_github.requests) == 5
    assert sum(clock.sleeps) == 1 + 2 + 4 + 8


def test_a_wait_past_the_deadline_is_not_taken(gh, fake_github, clock):
    fake_github.secondary_rate_limit(times=1, retry_after=600)

    with pytest.raises(GitHubError) as caught:
        github_repository_context(**gh)

    assert caught.value.kind == "rate_limited"
    assert "deadline" in str(caught.value)
    assert clock.sleeps == []
    assert len(fake_github.requests) == 1


def test_the_deadline_bounds_real_time(fake_github):
    fake_github.fault(500, times=100)
    policy = CallPolicy(deadline_seconds=0.5, backoff_seconds=0.05, max_attempts=100)
    started = time.monotonic()

    with pytest.raises(GitHubError) as caught:
        github_repository_context(
            token=TOKEN, repo="acme/shop", base_url=fake_github.base_url, policy=policy
        )

    assert caught.value.kind == "unavailable"
    assert time.monotonic() - started < 2.0
    assert 2 <= len(fake_github.requests) < 20  # it retried, and stopped at the deadline


def test_unreachable_server(policy, clock):
    with FakeGitHub(token=TOKEN) as fake:
        base_url = fake.base_url
    # The server is gone: connections are refused.

    with pytest.raises(GitHubError) as caught:
        github_repository_context(token=TOKEN, repo="acme/shop", base_url=base_url, policy=policy)

    assert caught.value.kind == "unavailable"
    assert len(clock.sleeps) == 4


# --- the token stays secret ----------------------------------------------------------------


def test_token_never_appears_in_errors_reprs_or_logs(gh, fake_github, caplog, policy):
    caplog.set_level(logging.DEBUG)  # PyGithub and urllib3 included
    # A misbehaving server that echoes the credential back in its error text.
    fake_github.fault(422, method="POST", path=r"/git/refs$", message=f"bad header: token {TOKEN}")
    fake_github.fault(500, path=r"/languages$", message=f"upstream said {TOKEN}")
    errors = []
    for call in (
        lambda: github_branch_create(**gh, branch="topdog/wf-1"),
        lambda: github_repository_context(**{**gh, "repo": "acme/missing"}),
        lambda: github_change_set_commit(**gh, branch="nope", message="m", files=CHANGE_SET),
    ):
        with pytest.raises(GitHubError) as caught:
            call()
        errors.append(caught.value)
    github_repository_context(**gh)  # retried through the echoing 500

    texts = [str(e) for e in errors] + [repr(e) for e in errors]
    texts += ["".join(traceback.format_exception(e)) for e in errors]
    texts += [caplog.text, repr(SecretToken(TOKEN)), str(SecretToken(TOKEN)), repr(policy)]
    texts.append(
        repr(GitHubCaller(token=SecretToken(TOKEN), repo="a/b", base_url="", policy=policy))
    )
    assert "[redacted]" in str(errors[0])
    assert all(TOKEN not in text for text in texts)
    assert errors[0].__cause__ is None


def test_errors_survive_pickling_for_task_queues():
    error = GitHubError("refused", "GitHub refused the change (422): nope", 422)

    again = pickle.loads(pickle.dumps(error))

    assert (again.kind, again.message, again.status) == ("refused", error.message, 422)


def test_a_secret_token_object_is_accepted(gh, fake_github):
    context = github_repository_context(**{**gh, "token": SecretToken(TOKEN)})

    assert context.repo == "acme/shop"
