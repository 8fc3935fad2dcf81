"""A loopback fake GitHub REST API that speaks the real wire format, for PyGithub.

It serves exactly the endpoints `integrations.github.client` calls, over an in-memory
git object store that hashes blobs, trees and commits the way git does (so a change set
that is already applied produces the same tree sha, as on GitHub):

    GET   /repos/{o}/{n}                      GET  /repos/{o}/{n}/languages
    GET   /repos/{o}/{n}/git/trees/{sha}      GET  /repos/{o}/{n}/contents/{path}
    GET   /repos/{o}/{n}/readme               GET  /repos/{o}/{n}/git/ref(s)/heads/{b}
    POST  /repos/{o}/{n}/git/refs             PATCH /repos/{o}/{n}/git/refs/heads/{b}
    POST  /repos/{o}/{n}/git/blobs            POST /repos/{o}/{n}/git/trees
    POST  /repos/{o}/{n}/git/commits          GET  /repos/{o}/{n}/git/commits/{sha}
    GET   /repos/{o}/{n}/commits?sha=         GET/POST /repos/{o}/{n}/pulls

Requests need `Authorization: token <fake.token>` (else 401 "Bad credentials"); with
`read_only=True` writes answer 403 like a token without contents:write. Faults are
scripted per method/path for the next N matching requests:

    fake.fault(500, path="/git/refs", times=2)
    fake.secondary_rate_limit(times=1, retry_after=1)
    fake.disconnect(times=1)

Every request is recorded (`fake.requests`: method, path, query, headers, body).
"""

import base64
import hashlib
import json
import re
import threading
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DOCS = "https://docs.github.com/rest"
WEB = "https://github.com"
SECONDARY_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try "
    "again. If you reach out to GitHub Support for help, please include the request ID."
)
DEFAULT_BODIES = {
    401: {"message": "Bad credentials", "documentation_url": DOCS, "status": "401"},
    403: {
        "message": "Resource not accessible by personal access token",
        "documentation_url": DOCS,
        "status": "403",
    },
    404: {"message": "Not Found", "documentation_url": DOCS, "status": "404"},
    409: {"message": "Git Repository is empty.", "documentation_url": DOCS, "status": "409"},
    422: {"message": "Validation Failed", "documentation_url": DOCS, "status": "422"},
}


class HttpError(Exception):
    def __init__(self, status: int, message: str | None = None, *, errors=None, headers=None):
        super().__init__(status)
        body = dict(DEFAULT_BODIES.get(status, {"message": "Server Error"}))
        if message is not None:
            body["message"] = message
        if errors is not None:
            body["errors"] = errors
        self.status = status
        self.body = body
        self.headers = headers or {}


@dataclass
class Fault:
    status: int | None  # None: drop the connection without answering
    method: str | None
    path: str | None
    times: int
    headers: dict
    body: Any


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict
    headers: dict
    body: Any


# --- git objects ---------------------------------------------------------------------------


def _sha(kind: str, payload: bytes) -> str:
    header = f"{kind} {len(payload)}\x00".encode()
    return hashlib.sha1(header + payload, usedforsecurity=False).hexdigest()


@dataclass
class FakeRepo:
    owner: str
    name: str
    default_branch: str = "main"
    languages: dict = field(default_factory=dict)
    blobs: dict = field(default_factory=dict)  # sha -> bytes
    trees: dict = field(default_factory=dict)  # sha -> [(mode, type, sha, name)]
    commits: dict = field(default_factory=dict)  # sha -> dict
    refs: dict = field(default_factory=dict)  # "heads/main" -> sha
    pulls: list = field(default_factory=list)
    clock: int = 0

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    # objects

    def blob_write(self, data: bytes) -> str:
        sha = _sha("blob", data)
        self.blobs[sha] = data
        return sha

    def tree_write(self, entries: list[tuple[str, str, str, str]]) -> str:
        def order(entry):
            _, kind, _, name = entry
            return name + "/" if kind == "tree" else name

        entries = sorted(entries, key=order)
        payload = b"".join(
            f"{'40000' if kind == 'tree' else mode} {name}".encode() + b"\x00" + bytes.fromhex(sha)
            for mode, kind, sha, name in entries
        )
        sha = _sha("tree", payload)
        self.trees[sha] = entries
        return sha

    def tree_from_flat(self, flat: dict[str, tuple[str, str]]) -> str:
        """A tree from {path: (mode, blob sha)}."""
        nested: dict = {}
        for path, (mode, sha) in flat.items():
            node = nested
            *dirs, leaf = path.split("/")
            for part in dirs:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise HttpError(422, "GitRPC::BadObjectState")
            node[leaf] = (mode, sha)

        def write(node: dict) -> str:
            entries = []
            for name, value in node.items():
                if isinstance(value, dict):
                    if value:
                        entries.append(("040000", "tree", write(value), name))
                else:
                    entries.append((value[0], "blob", value[1], name))
            return self.tree_write(entries)

        return write(nested)

    def flatten(self, tree_sha: str, prefix: str = "", *, trees: bool = False) -> dict:
        """{path: (mode, type, sha)} of every entry under the tree (blobs only unless trees)."""
        out = {}
        for mode, kind, sha, name in self.trees[tree_sha]:
            path = f"{prefix}{name}"
            if kind == "tree":
                if trees:
                    out[path] = (mode, kind, sha)
                out.update(self.flatten(sha, f"{path}/", trees=trees))
            else:
                out[path] = (mode, kind, sha)
        return out

    def commit_write(self, tree: str, parents: list[str], message: str, author=None) -> str:
        self.clock += 1
        when = 1_704_067_200 + self.clock
        person = author or {"name": "Fake Bot", "email": "bot@example.com"}
        ident = f"{person['name']} <{person['email']}> {when} +0000"
        text = f"tree {tree}\n" + "".join(f"parent {p}\n" for p in parents)
        text += f"author {ident}\ncommitter {ident}\n\n{message}"
        sha = _sha("commit", text.encode())
        hours, minutes, seconds = self.clock // 3600 % 24, self.clock // 60 % 60, self.clock % 60
        date = f"2024-01-01T{hours:02d}:{minutes:02d}:{seconds:02d}Z"
        self.commits[sha] = {
            "tree": tree,
            "parents": list(parents),
            "message": message,
            "author": {**person, "date": date},
        }
        return sha

    # refs and history

    def resolve(self, ref: str | None) -> str | None:
        """Commit sha of a branch name, `heads/x`, `refs/heads/x` or a commit sha."""
        ref = ref or self.default_branch
        if ref in self.commits:
            return ref
        ref = ref.removeprefix("refs/").removeprefix("heads/")
        return self.refs.get(f"heads/{ref}")

    def history(self, sha: str) -> list[str]:
        """Ancestors of `sha` (itself first), newest first."""
        seen, order, queue = set(), [], [sha]
        while queue:
            current = queue.pop(0)
            if current in seen:
                continue
            seen.add(current)
            order.append(current)
            queue.extend(self.commits[current]["parents"])
        return order

    # test helpers

    def commit_files(
        self, files: dict[str, "str | bytes | None"], *, branch: str | None = None, message="seed"
    ) -> str:
        """Commit {path: content (None deletes)} on top of `branch`; returns the sha."""
        branch = branch or self.default_branch
        head = self.refs.get(f"heads/{branch}")
        flat = {}
        if head:
            flat = {p: (m, s) for p, (m, _, s) in self.flatten(self.commits[head]["tree"]).items()}
        for path, content in files.items():
            if content is None:
                flat.pop(path, None)
            else:
                data = content.encode() if isinstance(content, str) else content
                flat[path] = ("100644", self.blob_write(data))
        sha = self.commit_write(self.tree_from_flat(flat), [head] if head else [], message)
        self.refs[f"heads/{branch}"] = sha
        return sha

    def files(self, ref: str | None = None) -> dict[str, str]:
        """{path: text} of every file at a branch or commit."""
        sha = self.resolve(ref)
        if sha is None:
            raise KeyError(ref)
        flat = self.flatten(self.commits[sha]["tree"])
        return {p: self.blobs[s].decode("utf-8", "replace") for p, (_, _, s) in flat.items()}

    def branch_commits(self, branch: str) -> list[str]:
        sha = self.resolve(branch)
        return self.history(sha) if sha else []


# --- the server ----------------------------------------------------------------------------


class FakeGitHub:
    """The server. Use as a context manager or call start()/stop()."""

    def __init__(self, *, token: str, prefix: str = "", large_file_bytes: int = 1_000_000):
        self.token = token
        self.prefix = prefix.rstrip("/")
        self.large_file_bytes = large_file_bytes
        self.read_only = False
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[Recorded] = []
        self.faults: deque[Fault] = deque()
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> "FakeGitHub":
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> "FakeGitHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def root(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}{self.prefix}"

    # scripting

    def repo_create(self, full_name: str, *, files=None, default_branch="main", languages=None):
        owner, name = full_name.split("/")
        repo = FakeRepo(owner=owner, name=name, default_branch=default_branch)
        repo.languages = dict(languages or {})
        if files:
            repo.commit_files(files, message="initial commit")
        self.repos[full_name.lower()] = repo
        return repo

    def fault(
        self,
        status: int | None,
        *,
        method: str | None = None,
        path: str | None = None,
        times: int = 1,
        headers: dict | None = None,
        message: str | None = None,
        body: Any = None,
    ) -> None:
        """The next `times` requests matching method and path (a regex searched in the
        path) answer `status` (None: the connection is dropped)."""
        if body is None and status is not None:
            body = dict(DEFAULT_BODIES.get(status, {"message": "Server Error"}))
            if message is not None:
                body["message"] = message
        self.faults.append(Fault(status, method, path, times, dict(headers or {}), body))

    def secondary_rate_limit(self, *, times=1, retry_after: int | None = 1, path=None, method=None):
        headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
        self.fault(403, times=times, path=path, method=method, headers=headers)
        self.faults[-1].body = {"message": SECONDARY_MESSAGE, "documentation_url": DOCS}

    def disconnect(self, *, times=1, path=None, method=None) -> None:
        self.fault(None, times=times, path=path, method=method)

    def count(self, method: str, path_regex: str) -> int:
        return sum(1 for r in self.requests if r.method == method and re.search(path_regex, r.path))

    # request handling (called on server threads)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.method and fault.method != method:
                    continue
                if fault.path and not re.search(fault.path, path):
                    continue
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def handle(self, method: str, path: str, query: dict, headers: dict, body: Any):
        """(status, extra headers, JSON body) for one request."""
        self.requests.append(Recorded(method, path, query, headers, body))
        fault = self._take_fault(method, path)
        if fault is not None:
            return fault.status, fault.headers, fault.body
        if headers.get("authorization") != f"token {self.token}":
            raise HttpError(401)
        match = re.fullmatch(r"/repos/([^/]+)/([^/]+)(/.*)?", path)
        if not match:
            raise HttpError(404)
        repo = self.repos.get(f"{match[1]}/{match[2]}".lower())
        if repo is None:
            raise HttpError(404)
        if self.read_only and method != "GET":
            raise HttpError(
                403,
                "Resource not accessible by personal access token",
                headers={"x-accepted-github-permissions": "contents=write"},
            )
        with self.lock:
            return _Api(self, repo).dispatch(method, match[3] or "", query, body)


class _Api:
    """The REST endpoints over one FakeRepo."""

    def __init__(self, fake: FakeGitHub, repo: FakeRepo):
        self.fake = fake
        self.repo = repo
        self.api = f"{fake.base_url}/repos/{repo.full_name}"
        self.web = f"{WEB}/{repo.full_name}"

    def dispatch(self, method: str, rest: str, query: dict, body: Any):
        routes = [
            ("GET", r"", self.repo_get),
            ("GET", r"/languages", self.languages),
            ("GET", r"/git/trees/(?P<sha>[^/]+)", self.tree_get),
            ("POST", r"/git/trees", self.tree_post),
            ("GET", r"/contents/(?P<path>.*)", self.contents),
            ("GET", r"/readme", self.readme),
            ("GET", r"/git/refs?/heads/(?P<branch>.+)", self.ref_get),
            ("POST", r"/git/refs", self.ref_post),
            ("PATCH", r"/git/refs/heads/(?P<branch>.+)", self.ref_patch),
            ("POST", r"/git/blobs", self.blob_post),
            ("POST", r"/git/commits", self.commit_post),
            ("GET", r"/git/commits/(?P<sha>[0-9a-f]{40})", self.commit_get),
            ("GET", r"/commits", self.commits_list),
            ("GET", r"/pulls", self.pulls_list),
            ("POST", r"/pulls", self.pull_post),
        ]
        for verb, pattern, handler in routes:
            match = re.fullmatch(pattern, rest)
            if verb == method and match:
                return handler(query=query, body=body or {}, **match.groupdict())
        raise HttpError(404)

    # JSON shapes

    def repo_json(self) -> dict:
        r = self.repo
        return {
            "id": 1000,
            "node_id": "R_kgDOfake",
            "name": r.name,
            "full_name": r.full_name,
            "private": False,
            "owner": {"login": r.owner, "id": 1, "type": "Organization", "url": ""},
            "html_url": self.web,
            "url": self.api,
            "default_branch": r.default_branch,
            "visibility": "public",
            "fork": False,
            "size": 1,
            "permissions": {"admin": False, "push": not self.fake.read_only, "pull": True},
        }

    def ref_json(self, branch: str) -> dict:
        sha = self.repo.refs[f"heads/{branch}"]
        return {
            "ref": f"refs/heads/{branch}",
            "node_id": "REF_fake",
            "url": f"{self.api}/git/refs/heads/{branch}",
            "object": {"sha": sha, "type": "commit", "url": f"{self.api}/git/commits/{sha}"},
        }

    def git_commit_json(self, sha: str) -> dict:
        c = self.repo.commits[sha]
        return {
            "sha": sha,
            "node_id": "C_fake",
            "url": f"{self.api}/git/commits/{sha}",
            "html_url": f"{self.web}/commit/{sha}",
            "author": c["author"],
            "committer": c["author"],
            "tree": {"sha": c["tree"], "url": f"{self.api}/git/trees/{c['tree']}"},
            "message": c["message"],
            "parents": [
                {
                    "sha": p,
                    "url": f"{self.api}/git/commits/{p}",
                    "html_url": f"{self.web}/commit/{p}",
                }
                for p in c["parents"]
            ],
            "verification": {"verified": False, "reason": "unsigned", "signature": None},
        }

    def commit_json(self, sha: str) -> dict:
        git = self.git_commit_json(sha)
        return {
            "sha": sha,
            "node_id": "C_fake",
            "url": f"{self.api}/commits/{sha}",
            "html_url": f"{self.web}/commit/{sha}",
            "comments_url": f"{self.api}/commits/{sha}/comments",
            "commit": {
                "url": git["url"],
                "author": git["author"],
                "committer": git["committer"],
                "message": git["message"],
                "tree": git["tree"],
                "comment_count": 0,
                "verification": git["verification"],
            },
            "author": None,
            "committer": None,
            "parents": git["parents"],
        }

    def tree_json(self, sha: str, *, recursive: bool) -> dict:
        if recursive:
            flat = self.repo.flatten(sha, trees=True)
            items = sorted(flat.items())
        else:
            items = [(name, (mode, kind, s)) for mode, kind, s, name in self.repo.trees[sha]]
        entries = []
        for path, (mode, kind, s) in items:
            entry = {"path": path, "mode": mode, "type": kind, "sha": s}
            if kind == "blob":
                entry["size"] = len(self.repo.blobs[s])
                entry["url"] = f"{self.api}/git/blobs/{s}"
            else:
                entry["url"] = f"{self.api}/git/trees/{s}"
            entries.append(entry)
        return {
            "sha": sha,
            "url": f"{self.api}/git/trees/{sha}",
            "tree": entries,
            "truncated": False,
        }

    def content_json(self, path: str, sha: str, ref: str, mode: str) -> dict:
        data = self.repo.blobs[sha]
        large = len(data) > self.fake.large_file_bytes
        encoded = base64.b64encode(data).decode()
        wrapped = "".join(encoded[i : i + 60] + "\n" for i in range(0, len(encoded), 60))
        url = f"{self.api}/contents/{urllib.parse.quote(path)}?ref={ref}"
        kind = "symlink" if mode == "120000" else "file"
        return {
            "type": kind,
            "encoding": "none" if large else "base64",
            "size": len(data),
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "content": "" if large else wrapped,
            "sha": sha,
            "url": url,
            "git_url": f"{self.api}/git/blobs/{sha}",
            "html_url": f"{self.web}/blob/{ref}/{path}",
            "download_url": None,
            "_links": {"self": url, "git": f"{self.api}/git/blobs/{sha}", "html": self.web},
        }

    def pull_json(self, pr: dict) -> dict:
        def part(branch: str) -> dict:
            sha = self.repo.refs.get(f"heads/{branch}")
            return {
                "label": f"{self.repo.owner}:{branch}",
                "ref": branch,
                "sha": sha,
                "user": {"login": self.repo.owner, "id": 1, "type": "Organization"},
                "repo": self.repo_json(),
            }

        number = pr["number"]
        return {
            "url": f"{self.api}/pulls/{number}",
            "id": 5000 + number,
            "node_id": "PR_fake",
            "html_url": f"{self.web}/pull/{number}",
            "number": number,
            "state": pr["state"],
            "locked": False,
            "title": pr["title"],
            "body": pr["body"],
            "user": {"login": "topdog-bot", "id": 2, "type": "User"},
            "created_at": "2024-01-01T00:00:00Z",
            "updated_at": "2024-01-01T00:00:00Z",
            "closed_at": None,
            "merged_at": None,
            "merge_commit_sha": None,
            "draft": pr.get("draft", False),
            "head": part(pr["head"]),
            "base": part(pr["base"]),
            "author_association": "OWNER",
        }

    def paginate(self, items: list, query: dict, path: str):
        per_page = min(int(query.get("per_page", 30)), 100)
        page = max(int(query.get("page", 1)), 1)
        chunk = items[(page - 1) * per_page : page * per_page]
        headers = {}
        if page * per_page < len(items):
            nxt = urllib.parse.urlencode({**query, "page": page + 1, "per_page": per_page})
            headers["link"] = f'<{self.api}{path}?{nxt}>; rel="next"'
        return 200, headers, chunk

    # endpoints

    def repo_get(self, **_):
        return 200, {}, self.repo_json()

    def languages(self, **_):
        return 200, {}, self.repo.languages

    def tree_get(self, sha: str, query: dict, **_):
        tree = sha if sha in self.repo.trees else None
        if tree is None:
            commit = self.repo.resolve(sha)
            if commit is None:
                raise HttpError(404)
            tree = self.repo.commits[commit]["tree"]
        return 200, {}, self.tree_json(tree, recursive=query.get("recursive") in ("1", "true"))

    def contents(self, path: str, query: dict, **_):
        ref = query.get("ref") or self.repo.default_branch
        commit = self.repo.resolve(ref)
        if commit is None:
            raise HttpError(404, f"No commit found for the ref {ref}")
        path = urllib.parse.unquote(path).strip("/")
        flat = self.repo.flatten(self.repo.commits[commit]["tree"], trees=True)
        entry = flat.get(path)
        if entry is None:
            raise HttpError(404)
        mode, kind, sha = entry
        if kind == "tree":
            listing = []
            for child_mode, child_kind, child_sha, name in self.repo.trees[sha]:
                child = f"{path}/{name}"
                if child_kind == "tree":
                    listing.append({"type": "dir", "name": name, "path": child, "sha": child_sha})
                else:
                    item = self.content_json(child, child_sha, ref, child_mode)
                    item.pop("content")
                    item.pop("encoding")
                    listing.append(item)
            return 200, {}, listing
        return 200, {}, self.content_json(path, sha, ref, mode)

    def readme(self, query: dict, **_):
        ref = query.get("ref") or self.repo.default_branch
        commit = self.repo.resolve(ref)
        if commit is None:
            raise HttpError(404)
        for mode, kind, sha, name in self.repo.trees[self.repo.commits[commit]["tree"]]:
            if kind == "blob" and name.lower().startswith("readme"):
                return 200, {}, self.content_json(name, sha, ref, mode)
        raise HttpError(404)

    def ref_get(self, branch: str, **_):
        if not self.repo.refs:
            raise HttpError(409)
        if f"heads/{branch}" not in self.repo.refs:
            raise HttpError(404)
        return 200, {}, self.ref_json(branch)

    def ref_post(self, body: dict, **_):
        ref, sha = body.get("ref", ""), body.get("sha", "")
        if not ref.startswith("refs/") or ref.count("/") < 2:
            raise HttpError(422, "Reference name must start with 'refs/' and have two slashes.")
        if sha not in self.repo.commits:
            raise HttpError(422, "Object does not exist")
        key = ref.removeprefix("refs/")
        if key in self.repo.refs:
            raise HttpError(422, "Reference already exists")
        self.repo.refs[key] = sha
        return 201, {}, self.ref_json(key.removeprefix("heads/"))

    def ref_patch(self, branch: str, body: dict, **_):
        key = f"heads/{branch}"
        if key not in self.repo.refs:
            raise HttpError(422, "Reference does not exist")
        sha = body.get("sha", "")
        if sha not in self.repo.commits:
            raise HttpError(422, "Object does not exist")
        if not body.get("force") and self.repo.refs[key] not in self.repo.history(sha):
            raise HttpError(422, "Update is not a fast forward")
        self.repo.refs[key] = sha
        return 200, {}, self.ref_json(branch)

    def blob_post(self, body: dict, **_):
        content, encoding = body.get("content"), body.get("encoding", "utf-8")
        if not isinstance(content, str):
            raise HttpError(
                422, errors=[{"resource": "Blob", "field": "content", "code": "missing_field"}]
            )
        data = base64.b64decode(content) if encoding == "base64" else content.encode()
        sha = self.repo.blob_write(data)
        return 201, {}, {"sha": sha, "url": f"{self.api}/git/blobs/{sha}"}

    def tree_post(self, body: dict, **_):
        base = body.get("base_tree")
        flat: dict[str, tuple[str, str]] = {}
        if base:
            if base not in self.repo.trees:
                raise HttpError(422, "base_tree is not a valid tree oid")
            flat = {p: (m, s) for p, (m, _, s) in self.repo.flatten(base).items()}
        for entry in body.get("tree", []):
            path = entry.get("path", "")
            parts = path.split("/")
            if not path or path.startswith("/") or any(p in ("", ".", "..", ".git") for p in parts):
                raise HttpError(422, "tree.path contains a malformed path component")
            if "content" in entry:
                flat[path] = (entry["mode"], self.repo.blob_write(entry["content"].encode()))
            elif entry.get("sha") is None:
                if path not in flat:
                    raise HttpError(422, "GitRPC::BadObjectState")
                del flat[path]
            else:
                if entry["sha"] not in self.repo.blobs:
                    raise HttpError(422, f"tree.sha {entry['sha']} is not a valid blob")
                flat[path] = (entry["mode"], entry["sha"])
        sha = self.repo.tree_from_flat(flat)
        return 201, {}, self.tree_json(sha, recursive=False)

    def commit_post(self, body: dict, **_):
        tree = body.get("tree")
        if tree not in self.repo.trees:
            raise HttpError(422, "Tree SHA does not exist")
        parents = body.get("parents", [])
        if any(p not in self.repo.commits for p in parents):
            raise HttpError(422, "Parent SHA does not exist or is not a commit object")
        author = body.get("author")
        person = {"name": author["name"], "email": author["email"]} if author else None
        sha = self.repo.commit_write(tree, parents, body.get("message", ""), person)
        return 201, {}, self.git_commit_json(sha)

    def commit_get(self, sha: str, **_):
        if sha not in self.repo.commits:
            raise HttpError(404)
        return 200, {}, self.git_commit_json(sha)

    def commits_list(self, query: dict, **_):
        if not self.repo.refs:
            raise HttpError(409)
        ref = query.get("sha") or self.repo.default_branch
        head = self.repo.resolve(ref)
        if head is None:
            raise HttpError(404, f"No commit found for SHA: {ref}")
        items = [self.commit_json(s) for s in self.repo.history(head)]
        return self.paginate(items, query, "/commits")

    def pulls_list(self, query: dict, **_):
        state = query.get("state", "open")
        pulls = [p for p in self.repo.pulls if state == "all" or p["state"] == state]
        if "head" in query:
            owner, _, branch = query["head"].partition(":")
            if owner.lower() != self.repo.owner.lower():
                pulls = []
            pulls = [p for p in pulls if p["head"] == branch]
        if "base" in query:
            pulls = [p for p in pulls if p["base"] == query["base"]]
        pulls = sorted(pulls, key=lambda p: -p["number"])
        return self.paginate([self.pull_json(p) for p in pulls], query, "/pulls")

    def pull_post(self, body: dict, **_):
        head, base = body.get("head", ""), body.get("base", "")
        head = head.split(":", 1)[1] if ":" in head else head
        for field_name, branch in (("head", head), ("base", base)):
            if f"heads/{branch}" not in self.repo.refs:
                raise HttpError(
                    422,
                    errors=[{"resource": "PullRequest", "field": field_name, "code": "invalid"}],
                )
        for pr in self.repo.pulls:
            if pr["state"] == "open" and pr["head"] == head and pr["base"] == base:
                message = f"A pull request already exists for {self.repo.owner}:{head}."
                raise HttpError(
                    422, errors=[{"resource": "PullRequest", "code": "custom", "message": message}]
                )
        head_sha, base_sha = self.repo.refs[f"heads/{head}"], self.repo.refs[f"heads/{base}"]
        if head_sha in self.repo.history(base_sha):
            message = f"No commits between {base} and {head}"
            raise HttpError(
                422, errors=[{"resource": "PullRequest", "code": "custom", "message": message}]
            )
        pr = {
            "number": len(self.repo.pulls) + 1,
            "state": "open",
            "title": body.get("title", ""),
            "body": body.get("body"),
            "head": head,
            "base": base,
            "draft": bool(body.get("draft")),
        }
        self.repo.pulls.append(pr)
        return 201, {}, self.pull_json(pr)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body written apart: no Nagle stall
    server_fake: FakeGitHub

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _serve(self) -> None:
        fake = self.server_fake
        parts = urllib.parse.urlsplit(self.path)
        path = parts.path
        if fake.prefix and path.startswith(fake.prefix):
            path = path[len(fake.prefix) :]
        query = dict(urllib.parse.parse_qsl(parts.query))
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            status, extra, payload = fake.handle(self.command, path, query, headers, body)
        except HttpError as exc:
            status, extra, payload = exc.status, exc.headers, exc.body
        if status is None:
            self.close_connection = True
            return
        data = json.dumps(payload).encode() if payload is not None else b""
        response_headers = {
            "content-type": "application/json; charset=utf-8",
            "x-ratelimit-limit": "5000",
            "x-ratelimit-remaining": "4999",
            "x-ratelimit-reset": "4102444800",
            "x-github-api-version-selected": "2022-11-28",
            **{k.lower(): v for k, v in extra.items()},
            "content-length": str(len(data)),
        }
        self.send_response(status)
        for key, value in response_headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = _serve
