"""What the Q_ASSISTANT and the CODE_WRITER see of the repository they are changing.

Languages, frameworks, the top of the tree, the README and (for the CODE_WRITER) the
content of the files the plan names. The head commit is looked up once per workflow
and role (kept in the RoleContext); the content is cached per commit SHA in the shared
cache, so workflows on the same commit share it. A failure never blocks the prompt: the
role is told the context is unavailable, and why.
"""

import logging

from django.conf import settings
from django.core.cache import cache

from ai_orchestration.tokens import tokens_estimate
from integrations.github import GitHubError, github_files_read, github_repository_context
from integrations.secrets import secret_scrub
from workflows.models import PhaseResult, RoleContext, Workflow
from workflows.states import Role, State

logger = logging.getLogger(__name__)

ROLES = (Role.Q_ASSISTANT, Role.CODE_WRITER)
CACHE_SECONDS = 24 * 3600
TREE_LINES = 200


def repository_context_text(*, workflow: Workflow, role: str, budget_tokens: int) -> str:
    """The repository context for `role`, at most `budget_tokens` long ("" if none)."""
    project = workflow.project
    if role not in ROLES or not (project.repository and project.github_token):
        return ""
    common = {
        "token": project.github_token,
        "repo": project.repository,
        "base_url": settings.TOPDOG_GITHUB_API_URL,
    }
    try:
        overview, sha = _overview(workflow, role, common)
        files = _plan_files(workflow, sha, common) if role == Role.CODE_WRITER else {}
    except GitHubError as exc:
        message = secret_scrub(str(exc), [project.github_token])
        logger.warning("repository context for %s unavailable: %s", workflow.id, message)
        return f"Repository context is unavailable: {message}"
    return _fit(_render(project.repository, sha, overview, files), budget_tokens)


def _overview(workflow: Workflow, role: str, common: dict) -> tuple[dict, str]:
    role_context = RoleContext.objects.get(workflow=workflow, role=role)
    sha = (role_context.context_data or {}).get("repository_sha")
    if sha:
        cached = cache.get(_key(workflow.project.repository, sha, "overview"))
        if cached is not None:
            return cached, sha
    context = github_repository_context(**common)
    sha = context.head_sha or "empty"
    overview = {
        "default_branch": context.default_branch,
        "languages": list(context.languages),
        "frameworks": list(context.frameworks),
        "paths": list(context.paths[:TREE_LINES]),
        "truncated": context.paths_truncated or len(context.paths) > TREE_LINES,
        "readme": context.readme or "",
    }
    cache.set(_key(workflow.project.repository, sha, "overview"), overview, CACHE_SECONDS)
    role_context.context_data = {**(role_context.context_data or {}), "repository_sha": sha}
    role_context.save(update_fields=["context_data", "updated_at"])
    return overview, sha


def _plan_files(workflow: Workflow, sha: str, common: dict) -> dict[str, str]:
    plan = (
        PhaseResult.objects.filter(
            workflow=workflow, phase=State.PLANNING, status=PhaseResult.Status.ACCEPTED
        )
        .order_by("-created_at", "-id")
        .values_list("result", flat=True)
        .first()
    )
    if not plan or sha == "empty":
        return {}
    paths = sorted({path for item in plan["work_items"] for path in item["files"]})[:50]
    found: dict[str, str] = {}
    missing = []
    for path in paths:
        cached = cache.get(_key(workflow.project.repository, sha, f"file:{path}"))
        if cached is None:
            missing.append(path)
        elif cached != "":
            found[path] = cached
    if missing:
        read = github_files_read(**common, paths=missing, ref=sha)
        for path in missing:
            content = read.get(path, "")  # "" remembers that the file does not exist yet
            cache.set(
                _key(workflow.project.repository, sha, f"file:{path}"), content, CACHE_SECONDS
            )
            if content:
                found[path] = content
    return found


def _render(repo: str, sha: str, overview: dict, files: dict[str, str]) -> str:
    lines = [
        f"Repository {repo} at {sha[:12]} (branch {overview['default_branch']}).",
        f"Languages: {', '.join(overview['languages']) or 'unknown'}.",
        f"Frameworks: {', '.join(overview['frameworks']) or 'none detected'}.",
        "",
        "Files (top of the tree):",
        *overview["paths"],
    ]
    if overview["truncated"]:
        lines.append("…")
    if overview["readme"]:
        lines += ["", "README:", overview["readme"]]
    for path, content in files.items():
        lines += ["", f"--- {path} (current content) ---", content]
    return "\n".join(lines)


def _fit(text: str, budget_tokens: int) -> str:
    if tokens_estimate(text) <= budget_tokens:
        return text
    keep = max(0, budget_tokens * 3)  # ~3 characters per token keeps well inside
    return text[:keep] + "\n… (repository context trimmed to the token budget)"


def _key(repo: str, sha: str, part: str) -> str:
    return f"topdog:repo:{repo}:{sha}:{part}"
