"""GitHub through PyGithub: repository context, branches, one-commit change sets, PRs.

Plain functions with explicit `token`, `repo` ("owner/name") and `base_url` (GitHub
Enterprise: `https://ghe.example.com/api/v3`; tests: a loopback fake). They return
frozen dataclasses and raise `GitHubError` (see `faults`) or a `ValueError` for input
refused before any request is made. No Django models here: workflow services call these.

Idempotency, so a workflow step can be retried after a crash at any point:
- `github_branch_create` returns the existing branch when it already points at the
  start commit, or has moved on from it;
- `github_change_set_commit` makes no commit when the branch head already holds every
  file of the change set, and otherwise exactly one (blobs, a tree on `base_tree`, a
  commit, a fast-forward of the ref);
- `github_pull_request_open` returns the open pull request for the head branch instead
  of opening a second one.
"""

import base64
import contextlib
import ipaddress
import logging
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice

from github import Auth, Github, GithubException, InputGitAuthor, InputGitTreeElement

from integrations.change_set import (
    FileChange,
    UnsafeChangeSet,
    change_set_normalize,
    git_blob_sha,
    repo_path_check,
)
from integrations.detection import (
    frameworks_detect,
    languages_from_byte_counts,
    languages_from_paths,
    manifest_paths,
)
from integrations.github.faults import CallPolicy, GitHubCaller, GitHubError
from integrations.repository import RepoRef, git_branch_name_check, repository_full_name_parse
from integrations.secrets import SecretToken, secret_token

logger = logging.getLogger("integrations.github")

DEFAULT_API_URL = "https://api.github.com"
USER_AGENT = "TopDog"
SHA_RE = re.compile(r"[0-9a-f]{40}")
FILE_MODES = ("100644", "100755")
MAX_MANIFESTS = 12
MAX_PR_SCAN = 100
MAX_HISTORY_SCAN = 100


@dataclass(frozen=True)
class RepositoryContext:
    """What a prompt needs to know about a repository at one commit."""

    repo: str
    default_branch: str
    ref: str
    head_sha: str | None  # None: the repository has no commits yet
    paths: tuple[str, ...]  # files, shallowest first, at most `max_paths`
    paths_truncated: bool
    readme: str | None
    languages: tuple[str, ...]
    frameworks: tuple[str, ...]


@dataclass(frozen=True)
class Branch:
    name: str
    sha: str
    created: bool


@dataclass(frozen=True)
class Commit:
    sha: str
    message: str


@dataclass(frozen=True)
class PullRequest:
    number: int
    url: str
    head: str
    base: str


# --- plumbing ------------------------------------------------------------------------------


def api_base_url_check(base_url: str) -> str:
    """`base_url` without a trailing slash, if a token may be sent there: https, or http
    to a loopback address (test fakes); no credentials, query or fragment."""
    parts = urllib.parse.urlsplit(base_url)
    host = (parts.hostname or "").lower()
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError("the GitHub API base URL must be an https:// URL")
    if parts.scheme == "http" and not loopback:
        raise ValueError(
            "the GitHub API base URL must use https (plain http is only for loopback test "
            "servers): the token would cross the network in clear text"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("the GitHub API base URL must not carry credentials, a query or fragment")
    return base_url.rstrip("/")


def _full_name(repo: "str | RepoRef") -> str:
    if isinstance(repo, RepoRef):
        return repo.full_name
    owner, name = repository_full_name_parse(repo)
    return f"{owner}/{name}"


@contextlib.contextmanager
def _connection(
    *, token: "str | SecretToken", repo: "str | RepoRef", base_url: str, policy: CallPolicy | None
) -> Iterator[tuple[GitHubCaller, object]]:
    """(caller, PyGithub Repository) for one public call; the client is closed after."""
    secret = secret_token(token)
    full_name = _full_name(repo)
    base_url = api_base_url_check(base_url)
    policy = policy or CallPolicy()
    caller = GitHubCaller(token=secret, repo=full_name, base_url=base_url, policy=policy)
    client = Github(
        auth=Auth.Token(secret.value),
        base_url=base_url,
        timeout=max(1, int(policy.request_timeout_seconds)),
        user_agent=USER_AGENT,
        per_page=100,
        retry=None,
        seconds_between_requests=None,
        seconds_between_writes=policy.write_spacing_seconds,
    )
    try:
        gh_repo = caller(lambda: client.get_repo(full_name), action="read the repository")
        yield caller, gh_repo
    except GithubException as exc:  # a lazy attribute fetched outside `caller`: a bug
        raise caller.error("invalid", f"unexpected GitHub answer {exc.status}") from None
    finally:
        client.close()


def _branch_ref(gh_repo, caller: GitHubCaller, branch: str):
    """(GitRef, head sha) of `branch`, or (None, None) when it does not exist (or the
    repository is empty: GitHub answers 409 then)."""

    def read():
        try:
            ref = gh_repo.get_git_ref(f"heads/{branch}")
            return ref, ref.object.sha
        except GithubException as exc:
            if exc.status in (404, 409):
                return None, None
            raise

    return caller(read, action=f"read branch {branch}")


def _branch_missing(caller: GitHubCaller, branch: str, *, hint: str) -> GitHubError:
    return caller.error(
        "not_found", f"branch {branch} not found on {caller.repo} (404): {hint}", status=404
    )


def _text_of(content_file, *, max_bytes: int) -> str | None:
    """A ContentFile's text, or None when it is not a regular UTF-8 file under max_bytes."""
    if isinstance(content_file, list) or content_file.type != "file":
        return None
    if content_file.encoding != "base64" or (content_file.size or 0) > max_bytes:
        return None  # GitHub sends encoding "none" for files over 1 MB
    data = content_file.decoded_content
    if len(data) > max_bytes or b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _file_read(gh_repo, caller: GitHubCaller, path: str, ref: str | None, max_bytes: int):
    def read():
        try:
            found = gh_repo.get_contents(path, ref=ref) if ref else gh_repo.get_contents(path)
        except GithubException as exc:
            if exc.status == 404:
                return None
            raise
        return _text_of(found, max_bytes=max_bytes)

    return caller(read, action=f"read {path}")


# --- reading -------------------------------------------------------------------------------


def github_repository_context(
    *,
    token: "str | SecretToken",
    repo: "str | RepoRef",
    base_url: str = DEFAULT_API_URL,
    ref: str | None = None,
    max_paths: int = 500,
    readme_max_chars: int = 20_000,
    policy: CallPolicy | None = None,
) -> RepositoryContext:
    """Tree paths, README, languages and frameworks of `repo` at `ref` (default branch)."""
    with _connection(token=token, repo=repo, base_url=base_url, policy=policy) as (caller, gh):
        default_branch = caller(lambda: gh.default_branch, action="read the repository")
        ref = git_branch_name_check(ref or default_branch)
        _, head = _branch_ref(gh, caller, ref)
        byte_counts = caller(lambda: dict(gh.get_languages()), action="read languages")
        if head is None:
            return RepositoryContext(
                repo=caller.repo,
                default_branch=default_branch,
                ref=ref,
                head_sha=None,
                paths=(),
                paths_truncated=False,
                readme=None,
                languages=languages_from_byte_counts(byte_counts),
                frameworks=(),
            )

        def tree_read():
            tree = gh.get_git_tree(head, recursive=True)
            blobs = [e.path for e in tree.tree if e.type == "blob"]
            return blobs, bool(tree.raw_data.get("truncated"))

        all_paths, truncated = caller(tree_read, action="read the file tree")
        ordered = sorted(all_paths, key=lambda p: (p.count("/"), p))

        def readme_read():
            try:
                return _text_of(gh.get_readme(ref=head), max_bytes=1_000_000)
            except GithubException as exc:
                if exc.status == 404:
                    return None
                raise

        readme = caller(readme_read, action="read the README")
        manifests = {}
        for path in manifest_paths(all_paths)[:MAX_MANIFESTS]:
            text = _file_read(gh, caller, path, head, 500_000)
            if text is not None:
                manifests[path] = text
        languages = languages_from_byte_counts(byte_counts) or languages_from_paths(all_paths)
        return RepositoryContext(
            repo=caller.repo,
            default_branch=default_branch,
            ref=ref,
            head_sha=head,
            paths=tuple(ordered[:max_paths]),
            paths_truncated=truncated or len(ordered) > max_paths,
            readme=readme[:readme_max_chars] if readme is not None else None,
            languages=languages,
            frameworks=frameworks_detect(manifests, all_paths),
        )


def github_files_read(
    *,
    token: "str | SecretToken",
    repo: "str | RepoRef",
    paths: Iterable[str],
    ref: str | None = None,
    base_url: str = DEFAULT_API_URL,
    max_bytes: int = 500_000,
    policy: CallPolicy | None = None,
) -> dict[str, str]:
    """{path: text} of the files at `ref` (default branch); paths that are missing,
    directories, binary, over `max_bytes` or unsafe are left out."""
    wanted = []
    for path in paths:
        try:
            wanted.append(repo_path_check(path))
        except UnsafeChangeSet:
            logger.info("skipping unsafe path in a read request")
    with _connection(token=token, repo=repo, base_url=base_url, policy=policy) as (caller, gh):
        found = {}
        for path in dict.fromkeys(wanted):
            text = _file_read(gh, caller, path, ref, max_bytes)
            if text is not None:
                found[path] = text
        return found


def github_branch_commits(
    *,
    token: "str | SecretToken",
    repo: "str | RepoRef",
    branch: str,
    limit: int = 30,
    base_url: str = DEFAULT_API_URL,
    policy: CallPolicy | None = None,
) -> list[Commit]:
    """The newest `limit` commits on `branch`, newest first."""
    git_branch_name_check(branch)
    with _connection(token=token, repo=repo, base_url=base_url, policy=policy) as (caller, gh):

        def read():
            try:
                return [
                    Commit(sha=c.sha, message=c.commit.message)
                    for c in islice(gh.get_commits(sha=branch), limit)
                ]
            except GithubException as exc:
                if exc.status in (404, 409, 422):
                    return None
                raise

        commits = caller(read, action=f"read commits of {branch}")
        if commits is None:
            raise _branch_missing(caller, branch, hint="check the branch name")
        return commits


# --- writing -------------------------------------------------------------------------------


def github_branch_create(
    *,
    token: "str | SecretToken",
    repo: "str | RepoRef",
    branch: str,
    from_ref: str | None = None,
    base_url: str = DEFAULT_API_URL,
    policy: CallPolicy | None = None,
) -> Branch:
    """Branch `branch` from `from_ref` (a branch name or commit sha; default branch when
    None). An existing branch is returned when it points at that commit or descends
    from it; one that does not is a conflict."""
    git_branch_name_check(branch)
    with _connection(token=token, repo=repo, base_url=base_url, policy=policy) as (caller, gh):
        source = from_ref or caller(lambda: gh.default_branch, action="read the repository")
        if SHA_RE.fullmatch(source):
            start = source
        else:
            _, start = _branch_ref(gh, caller, git_branch_name_check(source))
            if start is None:
                raise _branch_missing(caller, source, hint="branch from an existing branch")
        _, existing = _branch_ref(gh, caller, branch)
        if existing is None:
            try:
                caller(
                    lambda: gh.create_git_ref(f"refs/heads/{branch}", start),
                    action=f"create branch {branch}",
                    need="contents:write",
                )
            except GitHubError as exc:
                if exc.kind != "refused":
                    raise
                # "Reference already exists": a concurrent run, or our own request whose
                # answer was lost and then retried.
                _, existing = _branch_ref(gh, caller, branch)
                if existing is None:
                    raise
            else:
                logger.info("created branch %s on %s at %s", branch, caller.repo, start[:12])
                return Branch(name=branch, sha=start, created=True)
        if existing == start:
            return Branch(name=branch, sha=existing, created=False)

        def descends():
            return any(c.sha == start for c in islice(gh.get_commits(sha=branch), MAX_HISTORY_SCAN))

        if caller(descends, action=f"read commits of {branch}"):
            return Branch(name=branch, sha=existing, created=False)
        raise caller.error(
            "conflict",
            f"branch {branch} already exists on {caller.repo} at {existing[:12]}, which does "
            f"not contain {source} ({start[:12]}): choose another branch name or delete the "
            "stale branch",
            status=422,
        )


def github_change_set_commit(
    *,
    token: "str | SecretToken",
    repo: "str | RepoRef",
    branch: str,
    message: str,
    files: Iterable[Mapping | FileChange],
    base_sha: str | None = None,
    author_name: str | None = None,
    author_email: str | None = None,
    base_url: str = DEFAULT_API_URL,
    policy: CallPolicy | None = None,
) -> Commit:
    """Apply `files` to `branch` as one commit and return it.

    Idempotent: when the branch head already holds every file of the change set (a
    retry after success) the head is returned and nothing is written. `base_sha`, when
    given, is the head the change set was prepared against: a branch that has moved
    elsewhere is a conflict rather than a silent overwrite. Deleting a file that is not
    there is a no-op."""
    changes = change_set_normalize(files)
    git_branch_name_check(branch)
    if not isinstance(message, str) or not message.strip():
        raise ValueError("a commit message is required")
    if base_sha is not None and not SHA_RE.fullmatch(base_sha):
        raise ValueError("base_sha must be a full 40-character commit sha")
    with _connection(token=token, repo=repo, base_url=base_url, policy=policy) as (caller, gh):
        ref, head = _branch_ref(gh, caller, branch)
        if head is None:
            raise _branch_missing(caller, branch, hint="create it first with github_branch_create")

        def head_read():
            commit = gh.get_git_commit(head)
            tree = gh.get_git_tree(commit.tree.sha, recursive=True)
            entries = {e.path: (e.mode, e.type, e.sha) for e in tree.tree}
            return commit, tree, entries, bool(tree.raw_data.get("truncated"))

        head_commit, head_tree, entries, truncated = caller(
            head_read, action=f"read the head of {branch}"
        )
        deletions, uploads = _tree_changes(changes, entries, truncated=truncated)
        if not deletions and not uploads:
            logger.info("change set already on %s of %s; no new commit", branch, caller.repo)
            return Commit(sha=head, message=head_commit.message)
        if base_sha is not None and head != base_sha:
            raise caller.error(
                "conflict",
                f"branch {branch} moved from {base_sha[:12]} to {head[:12]} since the change "
                "set was prepared: rebuild the change set on the new head",
                status=409,
            )
        elements = list(deletions)
        for change, mode in uploads:
            encoded = base64.b64encode(change.data).decode("ascii")
            blob = caller(
                lambda encoded=encoded: gh.create_git_blob(encoded, "base64"),
                action=f"upload {change.path}",
                need="contents:write",
            )
            elements.append(InputGitTreeElement(change.path, mode, "blob", sha=blob.sha))
        new_tree = caller(
            lambda: gh.create_git_tree(elements, base_tree=head_tree),
            action="create the tree",
            need="contents:write",
        )
        if new_tree.sha == head_tree.sha:
            return Commit(sha=head, message=head_commit.message)
        extra = {}
        if author_name and author_email:
            extra["author"] = InputGitAuthor(author_name, author_email)
        new_commit = caller(
            lambda: gh.create_git_commit(message, new_tree, [head_commit], **extra),
            action="create the commit",
            need="contents:write",
        )
        try:
            caller(
                lambda: ref.edit(new_commit.sha, force=False),
                action=f"move branch {branch}",
                need="contents:write",
            )
        except GitHubError as exc:
            if exc.kind == "refused" and "fast forward" in exc.message.lower():
                raise caller.error(
                    "conflict",
                    f"branch {branch} moved while the commit was being made: run it again "
                    "to apply the change set on the new head",
                    status=422,
                ) from None
            raise
        logger.info("committed %s to %s of %s", new_commit.sha[:12], branch, caller.repo)
        return Commit(sha=new_commit.sha, message=message)


def _tree_changes(
    changes: tuple[FileChange, ...], entries: dict[str, tuple[str, str, str]], *, truncated: bool
) -> tuple[list[InputGitTreeElement], list[tuple[FileChange, str]]]:
    """(deletion entries, (change, mode) to upload) for the files that differ from `entries`
    ({path: (mode, type, sha)} of the head tree)."""
    deletions: list[InputGitTreeElement] = []
    uploads: list[tuple[FileChange, str]] = []
    for change in changes:
        current = entries.get(change.path)
        if current is not None and current[1] == "tree":
            raise UnsafeChangeSet(f"{change.path} is a directory on the branch; list its files")
        if change.action == "delete":
            if current is not None or truncated:
                mode = current[0] if current is not None else "100644"
                deletions.append(InputGitTreeElement(change.path, mode, "blob", sha=None))
            continue
        if current is not None and current[2] == git_blob_sha(change.data):
            continue
        mode = current[0] if current is not None and current[0] in FILE_MODES else "100644"
        uploads.append((change, mode))
    return deletions, uploads


# --- pull requests -------------------------------------------------------------------------


def _pull_request(pr) -> PullRequest:
    return PullRequest(number=pr.number, url=pr.html_url, head=pr.head.ref, base=pr.base.ref)


def _open_pull_find(gh, caller: GitHubCaller, head_branch: str) -> PullRequest | None:
    owner = caller.repo.split("/")[0]

    def read():
        pulls = gh.get_pulls(state="open", head=f"{owner}:{head_branch}")
        for pr in islice(pulls, MAX_PR_SCAN):
            if pr.head.ref == head_branch:
                return _pull_request(pr)
        return None

    return caller(read, action=f"look for a pull request from {head_branch}")


def github_pull_request_find(
    *,
    token: "str | SecretToken",
    repo: "str | RepoRef",
    head_branch: str,
    base_url: str = DEFAULT_API_URL,
    policy: CallPolicy | None = None,
) -> PullRequest | None:
    """The open pull request from `head_branch`, if there is one."""
    git_branch_name_check(head_branch)
    with _connection(token=token, repo=repo, base_url=base_url, policy=policy) as (caller, gh):
        return _open_pull_find(gh, caller, head_branch)


def github_pull_request_open(
    *,
    token: "str | SecretToken",
    repo: "str | RepoRef",
    head: str,
    title: str,
    body: str = "",
    base: str | None = None,
    base_url: str = DEFAULT_API_URL,
    policy: CallPolicy | None = None,
) -> PullRequest:
    """Open a pull request from `head` into `base` (default branch), or return the one
    already open from `head`."""
    git_branch_name_check(head)
    if not isinstance(title, str) or not title.strip():
        raise ValueError("a pull request title is required")
    with _connection(token=token, repo=repo, base_url=base_url, policy=policy) as (caller, gh):
        base = git_branch_name_check(
            base or caller(lambda: gh.default_branch, action="read the repository")
        )
        existing = _open_pull_find(gh, caller, head)
        if existing is not None:
            return existing
        try:
            opened = caller(
                lambda: _pull_request(gh.create_pull(base=base, head=head, title=title, body=body)),
                action=f"open a pull request from {head}",
                need="pull_requests:write",
            )
        except GitHubError as exc:
            if exc.kind != "refused":
                raise
            # "A pull request already exists": opened concurrently, or our own retried
            # request whose answer was lost.
            existing = _open_pull_find(gh, caller, head)
            if existing is None:
                raise
            return existing
        logger.info("opened pull request #%s on %s", opened.number, caller.repo)
        return opened
