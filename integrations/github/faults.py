"""GitHub faults: which ones are retried, and what the others tell the operator to fix.

PyGithub's own retries are off (`retry=None`): every request goes through
`GitHubCaller`, which retries 5xx answers, dropped connections and rate limits (403/429
with `retry-after`, or `x-ratelimit-remaining: 0` with `x-ratelimit-reset`, or a
"secondary rate limit" message) with exponential backoff, for at most
`CallPolicy.max_attempts` attempts and never past `CallPolicy.deadline_seconds` from the
start of the public call. Everything else ends in a `GitHubError` whose message says
what to fix. Messages are scrubbed of the token before they exist outside this module,
and PyGithub's exception is not chained (`from None`): it carries response data that
nobody has scrubbed.
"""

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TypeVar

import requests
from github import GithubException

from integrations.secrets import SecretToken, secret_scrub

logger = logging.getLogger("integrations.github")

T = TypeVar("T")


@dataclass(frozen=True)
class CallPolicy:
    """How hard to try: attempts, overall deadline, backoff, per-request timeout.

    `sleep` and `clock` are injectable so tests run retries without waiting."""

    max_attempts: int = 5
    deadline_seconds: float = 60.0
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 16.0
    request_timeout_seconds: int = 15
    # PyGithub can space write requests (GitHub asks for ~1 s between content writes
    # from one token when many are made); off by default: we write a handful per commit
    # and honour the secondary rate limit's retry-after instead.
    write_spacing_seconds: float | None = None
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    jitter: bool = True


class GitHubError(Exception):
    """A GitHub call that failed for good. `kind` is one of: unauthorized, forbidden,
    not_found, refused (422), conflict, rate_limited, unavailable, invalid."""

    def __init__(self, kind: str, message: str, status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status

    def __reduce__(self):  # picklable, for task queues that store the failure
        return (self.__class__, (self.kind, self.message, self.status))

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"GitHubError(kind={self.kind!r}, message={self.message!r})"


def _github_message(data: object) -> str:
    """GitHub's error text: `message` plus each entry of `errors` (422 details)."""
    if not isinstance(data, dict):
        return ""
    parts = []
    message = data.get("message")
    if isinstance(message, str) and message:
        parts.append(message)
    errors = data.get("errors")
    if isinstance(errors, list):
        for error in errors:
            if isinstance(error, dict):
                detail = error.get("message") or " ".join(
                    str(error[k]) for k in ("resource", "field", "code") if error.get(k)
                )
            else:
                detail = str(error)
            if detail:
                parts.append(detail)
    return "; ".join(parts)[:500]


def _header(headers: dict | None, name: str) -> str | None:
    if not headers:
        return None
    for key, value in headers.items():
        if key.lower() == name:
            return str(value)
    return None


def _rate_limit_delay(status: int, headers: dict | None, message: str) -> float | None:
    """Seconds GitHub asks us to wait when this answer is a rate limit, else None.
    0.0 means "rate limited, no hint: use the backoff"."""
    retry_after = _header(headers, "retry-after")
    remaining = _header(headers, "x-ratelimit-remaining")
    reset = _header(headers, "x-ratelimit-reset")
    limited = (
        status == 429
        or retry_after is not None
        or remaining == "0"
        or "rate limit" in message.lower()
    )
    if status not in (403, 429) or not limited:
        return None
    if retry_after is not None:
        try:
            return max(float(retry_after), 0.0)
        except ValueError:
            try:
                return max(parsedate_to_datetime(retry_after).timestamp() - time.time(), 0.0)
            except (TypeError, ValueError):
                return 0.0
    if remaining == "0" and reset is not None:
        try:
            return max(float(reset) - time.time(), 0.0) + 1.0
        except ValueError:
            return 0.0
    return 0.0


class GitHubCaller:
    """Runs GitHub requests for one public call: retries, the deadline, error mapping."""

    def __init__(self, *, token: SecretToken, repo: str, base_url: str, policy: CallPolicy):
        self.token = token
        self.repo = repo
        self.base_url = base_url
        self.policy = policy
        self.started = policy.clock()
        self.attempts = 0

    def __repr__(self) -> str:
        return f"GitHubCaller(repo={self.repo!r}, base_url={self.base_url!r})"

    def scrub(self, text: object) -> str:
        return secret_scrub(text, [self.token])

    def error(self, kind: str, message: str, *, status: int | None = None) -> GitHubError:
        return GitHubError(kind, self.scrub(message), status=status)

    def __call__(self, fn: Callable[[], T], *, action: str, need: str = "contents:read") -> T:
        """`fn()`, retried on transient faults; `action` names it in messages, `need` is
        the token permission a 403 means is missing."""
        attempt = 0
        while True:
            attempt += 1
            self.attempts += 1
            try:
                return fn()
            except GithubException as exc:
                status = exc.status
                message = _github_message(exc.data)
                wait = _rate_limit_delay(status, exc.headers, message)
                if wait is not None:
                    reason = f"rate limited ({status})"
                elif status >= 500:
                    reason = f"HTTP {status}"
                else:
                    raise self._final_error(status, message, action=action, need=need) from None
            except requests.exceptions.SSLError:
                raise self.error(
                    "unavailable",
                    f"could not verify the TLS certificate of {self.base_url} for {action}: "
                    "fix the base URL or the server's certificate",
                ) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                wait, reason, status = None, type(exc).__name__, None
            except (requests.exceptions.ChunkedEncodingError, json.JSONDecodeError) as exc:
                wait, reason, status = None, f"garbled answer ({type(exc).__name__})", None
            except requests.exceptions.RequestException as exc:
                raise self.error(
                    "invalid",
                    f"could not send {action} to {self.base_url} ({type(exc).__name__}): "
                    "check the GitHub API base URL",
                ) from None
            self._pause(attempt, wait, reason=reason, status=status, action=action)

    def _pause(
        self, attempt: int, wait: float | None, *, reason: str, status: int | None, action: str
    ) -> None:
        """Sleep before the next attempt, or raise when attempts or the deadline run out."""
        policy = self.policy
        backoff = min(policy.backoff_seconds * 2 ** (attempt - 1), policy.backoff_max_seconds)
        if policy.jitter:
            backoff *= random.uniform(0.8, 1.2)
        delay = wait if wait else backoff
        elapsed = policy.clock() - self.started
        out_of_attempts = attempt >= policy.max_attempts
        past_deadline = elapsed + delay > policy.deadline_seconds
        if out_of_attempts or past_deadline:
            why = (
                f"after {attempt} attempts"
                if out_of_attempts
                else f"and the next try ({delay:.0f} s away) would pass the "
                f"{policy.deadline_seconds:.0f} s deadline"
            )
            if wait is not None:
                raise self.error(
                    "rate_limited",
                    f"GitHub rate-limited {action} on {self.repo} {why}: wait for the limit "
                    "to reset (or use a token with a higher limit), then run it again",
                    status=status,
                ) from None
            raise self.error(
                "unavailable",
                f"GitHub did not answer {action} on {self.repo} ({reason}) {why}: check "
                f"that {self.base_url} is reachable and GitHub is up, then run it again",
                status=status,
            ) from None
        logger.warning(
            self.scrub(
                f"GitHub {action} on {self.repo} failed ({reason}); retry {attempt} of "
                f"{policy.max_attempts - 1} in {delay:.1f} s"
            )
        )
        policy.sleep(delay)

    def _final_error(self, status: int, message: str, *, action: str, need: str) -> GitHubError:
        said = f": {message}" if message else ""
        if status == 401:
            return self.error(
                "unauthorized",
                "GitHub rejected the token (401): create a new token with contents:write "
                "and pull_requests:write",
                status=status,
            )
        if status == 403:
            return self.error(
                "forbidden",
                f"token lacks {need} on {self.repo} (403): give the token {need} on this "
                f"repository, or use one that has it (GitHub said{said or ': nothing'})",
                status=status,
            )
        if status == 404:
            return self.error(
                "not_found",
                f"repository {self.repo} not found, or the token cannot see it (404): check "
                "the owner/name and that the token has access to it",
                status=status,
            )
        if status == 409:
            return self.error(
                "conflict", f"GitHub reported a conflict (409) on {action}{said}", status=status
            )
        if status == 422:
            return self.error(
                "refused", f"GitHub refused the change (422){said or ': no details'}", status=status
            )
        return self.error(
            "invalid", f"GitHub answered {status} to {action} on {self.repo}{said}", status=status
        )
