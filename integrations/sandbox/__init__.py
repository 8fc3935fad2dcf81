"""Sandboxes for the commands a workflow runs (setup, tests): interface and backends.

`sandbox_backend_load("bubblewrap" | "subprocess" | "off" | "dotted.path.Class")` gives a
backend; `backend.run(SandboxRequest(...))` gives a SandboxResult. See `base` for how
limits are enforced and `bubblewrap` for what a sandboxed command can see.
"""

from integrations.sandbox.base import (
    SandboxBackend,
    SandboxLimits,
    SandboxRequest,
    SandboxResult,
    SandboxUnavailable,
    sandbox_backend_load,
    sandbox_environment,
)
from integrations.sandbox.junit import FailedCase, JUnitReport, junit_parse

__all__ = [
    "FailedCase",
    "JUnitReport",
    "SandboxBackend",
    "SandboxLimits",
    "SandboxRequest",
    "SandboxResult",
    "SandboxUnavailable",
    "junit_parse",
    "sandbox_backend_load",
    "sandbox_environment",
]
