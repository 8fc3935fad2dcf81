"""Running git with a clean, credential-free command line: the one runner every module
that shells out to git uses.

Every command runs with an explicit environment: no user or system config
(`GIT_CONFIG_GLOBAL=/dev/null`, `GIT_CONFIG_NOSYSTEM=1`), no prompts
(`GIT_TERMINAL_PROMPT=0`), only the transports the remote needs (`GIT_ALLOW_PROTOCOL`),
no hooks, and a timeout. A token never appears in argv or in the remote URL: it travels
as an `http.<remote>.extraHeader` set through `GIT_CONFIG_*` variables, and is
scrubbed from every message.
"""

import base64
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from integrations.secrets import SecretToken, secret_scrub

STDERR_TAIL_CHARS = 600


class GitWorkspaceError(RuntimeError):
    """A git operation that failed. `kind`: not_found, rejected, timeout, failed."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, message={self.message!r})"

    def __reduce__(self):  # picklable, for task queues that store the failure
        return (self.__class__, (self.kind, self.message))


def git_auth_env(remote_url: str, token: SecretToken | None) -> dict[str, str]:
    """The `GIT_CONFIG_*` variables that send `token` to `remote_url` as a Basic
    Authorization header; empty without a token."""
    if token is None:
        return {}
    basic = base64.b64encode(f"x-access-token:{token.value}".encode()).decode()
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": f"http.{remote_url}.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
    }


class GitRunner:
    """Runs git in one directory with a fixed, credential-free argv. Failures raise
    `error` (GitWorkspaceError or a subclass) with stderr's tail, scrubbed of the token."""

    def __init__(
        self,
        *,
        cwd: Path,
        remote_url: str,
        token: SecretToken | None,
        local: bool,
        timeout: float,
        author: tuple[str, str] | None = None,
        error: type[GitWorkspaceError] = GitWorkspaceError,
    ):
        self.cwd = cwd
        self.token = token
        self.timeout = timeout
        self.error = error
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(cwd),
            "LANG": "C",
            "LC_ALL": "C",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "/bin/false",
            "SSH_ASKPASS": "/bin/false",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_ALLOW_PROTOCOL": "https:file" if local else "https",
            "GIT_LITERAL_PATHSPECS": "1",
            **git_auth_env(remote_url, token),
        }
        if author is not None:
            name, email = author
            self.env.update(
                {
                    "GIT_AUTHOR_NAME": name,
                    "GIT_AUTHOR_EMAIL": email,
                    "GIT_COMMITTER_NAME": name,
                    "GIT_COMMITTER_EMAIL": email,
                }
            )

    def __repr__(self) -> str:
        return f"GitRunner(cwd={str(self.cwd)!r})"

    def run(
        self,
        *args: str,
        what: str,
        cwd: Path | None = None,
        stdin: str | None = None,
        ok_codes: tuple[int, ...] = (0,),
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        argv = [
            "git",
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.autocrlf=false",
            "-c",
            "commit.gpgSign=false",
            "-c",
            "transfer.fsckObjects=true",
            *args,
        ]
        try:
            done = subprocess.run(
                argv,
                cwd=cwd or self.cwd,
                env={**self.env, **env} if env else self.env,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise self.error(
                "timeout", f"git {what} took longer than {self.timeout:.0f} s: check the remote"
            ) from None
        if done.returncode not in ok_codes:
            tail = secret_scrub(done.stderr.strip()[-STDERR_TAIL_CHARS:], [self.token])
            raise self.error("failed", f"git {what} failed: {tail or 'no message'}")
        return done
