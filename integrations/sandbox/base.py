"""The sandbox interface, its environment, and the process runner both process backends share.

A run gets an environment built from nothing (`sandbox_environment`): never a variable of
the host, and never a name that looks like a credential. The runner enforces the limits of
`SandboxLimits` the same way for every backend:

- CPU time, address space (memory), processes, single-file size and core dumps are kernel
  rlimits, set by `prlimit` directly in front of `/bin/sh` so they bind the command only
  (not bwrap, whose user namespace would otherwise inherit the process cap as a ceiling
  on every process of the host user). The kernel never applies RLIMIT_NPROC to host uid 0:
  the bubblewrap backend therefore runs the command as an unprivileged uid when TopDog
  runs as root; the subprocess backend, which cannot, counts the process group instead.
- Total bytes written: the watched directories (worktree, writable deps, artifacts) are
  walked every 0.5 s at least (less often when a walk is slow) and the run is killed once
  they grew by more than `write_bytes`; RLIMIT_FSIZE stops a single huge file at once.
- Wall time, cancellation and the output cap are watched by the runner, which kills the
  whole process group (the bwrap pid namespace dies with it).
- Output: stdout and stderr merged. The last `output_bytes` are kept for the result; the
  log file gets everything up to `LOG_MAX_BYTES` and `log_sha256` hashes exactly what was
  written; a run that prints more than `OUTPUT_KILL_BYTES` in total is killed ("output
  limit"). `on_output` gets lines live, at most `LIVE_LINES_PER_SECOND` (bursts up to as
  many) and `LIVE_LINES_MAX` in all; the first line dropped is announced once with
  "[output truncated]": from then on the live view is a sample, the log is complete.
"""

import contextlib
import hashlib
import importlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

__all__ = [
    "SandboxBackend",
    "SandboxLimits",
    "SandboxRequest",
    "SandboxResult",
    "SandboxUnavailable",
    "sandbox_backend_load",
    "sandbox_environment",
]

PASSED, FAILED, ERROR, TIMEOUT, CANCELLED = "passed", "failed", "error", "timeout", "cancelled"

LOG_MAX_BYTES = 16 * 1024**2
OUTPUT_KILL_BYTES = 64 * 1024**2
LIVE_LINES_PER_SECOND = 200
LIVE_LINES_MAX = 10_000
LIVE_LINE_MAX_BYTES = 4096
LIVE_TRUNCATED = "[output truncated]"
# A directory tree with more entries than this is not walked further: the run is stopped.
WALK_MAX_ENTRIES = 2_000_000
WRITE_POLL_SECONDS = 0.5
CANCEL_POLL_SECONDS = 0.2
PROCESS_POLL_SECONDS = 0.1
# After the command ends, output still in the pipe is read for at most this long.
DRAIN_SECONDS = 1.0

BACKENDS = {
    "bubblewrap": "integrations.sandbox.bubblewrap.BubblewrapBackend",
    "subprocess": "integrations.sandbox.local.SubprocessBackend",
    "off": "integrations.sandbox.off.OffBackend",
}

_SECRET_NAME = re.compile(r"(_TOKEN|_KEY)$|SECRET|PASSWORD|^DATABASE_URL$|^REDIS_URL$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Set by the sandbox itself; `extra` cannot replace them.
_RESERVED = frozenset(
    {"PATH", "HOME", "LANG", "TMPDIR", "TOPDOG_ARTIFACTS", "TOPDOG_DEPS", "PYTHONDONTWRITEBYTECODE"}
)


class SandboxUnavailable(RuntimeError):
    """The configured backend cannot run anything here (off, or missing on this host)."""


@dataclass(frozen=True)
class SandboxLimits:
    wall_seconds: float = 300
    cpu_seconds: int = 600
    memory_bytes: int = 2 * 1024**3
    processes: int = 256
    write_bytes: int = 1024**3  # total the run may add to the worktree, deps and artifacts
    output_bytes: int = 256 * 1024  # tail of the merged stdout/stderr kept in the result

    def __post_init__(self) -> None:
        for name in ("wall_seconds", "cpu_seconds", "memory_bytes", "processes", "write_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.output_bytes < 0:
            raise ValueError("output_bytes must not be negative")


@dataclass(frozen=True)
class SandboxRequest:
    command: str  # run as /bin/sh -c COMMAND inside the sandbox
    worktree: Path  # mounted read-write at /workspace, the working directory
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    network: bool = False  # only the setup step may get True
    limits: SandboxLimits = SandboxLimits()
    deps_dir: Path | None = None  # mounted at /deps, read-write only if deps_writable
    deps_writable: bool = False
    artifacts_dir: Path | None = None  # mounted read-write at /artifacts
    log_path: Path | None = None  # the full output log, on the host


@dataclass(frozen=True)
class SandboxResult:
    status: str  # passed | failed | error | timeout | cancelled
    exit_code: int | None
    duration_ms: int
    output: str  # the tail (<= output_bytes), utf-8 with errors replaced
    output_truncated: bool
    log_sha256: str  # of the log as written (everything printed, up to LOG_MAX_BYTES)
    backend: str
    isolated: bool
    reason: str = ""  # why a run errored, timed out or failed by a limit


class SandboxBackend(ABC):
    """Runs one command against a worktree under limits; subclasses decide the isolation."""

    name: str = ""
    isolated: bool = False

    @abstractmethod
    def available(self) -> tuple[bool, str]:
        """Whether this backend can run here and, if not, why; cheap after the first call."""

    @abstractmethod
    def run(
        self,
        request: SandboxRequest,
        *,
        on_output: Callable[[str], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> SandboxResult:
        """Run `request` to its end; every limit ends in a result, never in an exception."""


def sandbox_backend_load(dotted_path: str, **options: object) -> SandboxBackend:
    """An instance of the backend class at `dotted_path` (or a short name: bubblewrap,
    subprocess, off), so the setting names a class without this package importing Django."""
    path = BACKENDS.get(dotted_path, dotted_path)
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise ImportError(f"{dotted_path!r} is not a dotted path to a sandbox backend class")
    module = importlib.import_module(module_name)
    try:
        cls = getattr(module, class_name)
    except AttributeError:
        raise ImportError(f"module {module_name} has no class {class_name}") from None
    if not (isinstance(cls, type) and issubclass(cls, SandboxBackend)):
        raise TypeError(f"{path} is not a SandboxBackend")
    return cls(**options)


def interpreter_dirs() -> tuple[Path, ...]:
    """The directories the running Python lives in, outside /usr: mounted read-only in the
    sandbox at the same paths so a venv's symlinks and pyvenv.cfg still resolve."""
    candidates = [
        Path(sys.prefix),
        Path(sys.base_prefix),
        Path(os.path.realpath(sys.executable)).parent,
    ]
    dirs: list[Path] = []
    for raw in candidates:
        path = Path(os.path.abspath(raw))
        if path == Path("/") or path.is_relative_to("/usr") or not path.is_dir():
            continue
        if any(path.is_relative_to(kept) for kept in dirs):
            continue
        dirs = [kept for kept in dirs if not kept.is_relative_to(path)]
        dirs.append(path)
    return tuple(dirs)


def interpreter_bin_dirs() -> tuple[str, ...]:
    """The bin directories of the running Python's prefixes, the venv's first."""
    bins: list[str] = []
    for prefix in (sys.prefix, sys.base_prefix):
        path = os.path.join(os.path.abspath(prefix), "bin")
        if path not in bins and not path.startswith("/usr/"):
            bins.append(path)
    return tuple(bins)


def sandbox_environment(
    *,
    extra: Mapping[str, str],
    home: str = "/workspace",
    deps: str = "/deps",
    artifacts: str = "/artifacts",
) -> dict[str, str]:
    """The whole environment of a run, built from nothing so no host variable leaks in.
    Refuses (ValueError) names that look like credentials or override the fixed ones."""
    path = [f"{deps}/venv/bin", f"{deps}/bin", *interpreter_bin_dirs()]
    path += ["/usr/local/bin", "/usr/bin", "/bin"]
    env = {
        "PATH": ":".join(path),
        "HOME": home,
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "TOPDOG_ARTIFACTS": artifacts,
        "TOPDOG_DEPS": deps,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for name, value in extra.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not a valid environment variable name")
        if _SECRET_NAME.search(name.upper()):
            raise ValueError(f"{name} looks like a secret: secrets never enter the sandbox")
        if name in _RESERVED:
            raise ValueError(f"{name} is set by the sandbox and cannot be overridden")
        if not isinstance(value, str) or "\x00" in value:
            raise ValueError(f"{name} must be a string without NUL bytes")
        env[name] = value
    return env


def size_text(n: int) -> str:
    """`n` bytes the way a person reads a limit: 2 GiB, 64 MiB, 512 KiB."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} bytes"


def rlimit_argv(limits: SandboxLimits) -> list[str]:
    """`prlimit` in front of the command: soft and hard limits equal, so none can be raised."""
    cpu = max(1, int(limits.cpu_seconds))
    return [
        "/usr/bin/prlimit",
        f"--cpu={cpu}",
        f"--as={limits.memory_bytes}",
        f"--nproc={limits.processes}",
        f"--fsize={limits.write_bytes}",
        "--core=0",
        "--",
    ]


@dataclass(frozen=True)
class ProcessSpec:
    """What the runner starts and watches; built by a backend from a request."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path | None
    watch: tuple[Path, ...]  # directories whose growth counts against write_bytes
    count_processes: bool = False  # poll the group size: the kernel will not cap it
    pass_fds: tuple[int, ...] = ()


def tree_size(roots: Iterable[Path], *, max_entries: int = WALK_MAX_ENTRIES) -> tuple[int, int]:
    """(bytes of regular files, entries) under `roots`, symlinks not followed, hard links
    counted once; stops after `max_entries` so a walk stays bounded."""
    total = entries = 0
    seen: set[tuple[int, int]] = set()
    stack = [str(root) for root in roots]
    while stack and entries < max_entries:
        try:
            iterator = os.scandir(stack.pop())
        except OSError:
            continue
        with iterator:
            for entry in iterator:
                entries += 1
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                total += st.st_size
    return total, entries


def group_size(pgid: int) -> int:
    """How many processes are in process group `pgid` (a /proc scan)."""
    count = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == pgid:
            count += 1
    return count


class _LiveLines:
    """Hands complete lines to `on_output` at a bounded rate; announces the first drop."""

    def __init__(self, on_output: Callable[[str], None] | None):
        self.on_output = on_output
        self.partial = bytearray()
        self.tokens = float(LIVE_LINES_PER_SECOND)
        self.stamp = time.monotonic()
        self.sent = 0
        self.announced = False

    def feed(self, data: bytes) -> None:
        if self.on_output is None:
            return
        lines = (bytes(self.partial) + data).split(b"\n")
        rest = lines.pop()
        while len(rest) >= LIVE_LINE_MAX_BYTES:  # a process printing without newlines
            lines.append(rest[:LIVE_LINE_MAX_BYTES])
            rest = rest[LIVE_LINE_MAX_BYTES:]
        self.partial = bytearray(rest)
        self._emit(lines)

    def flush(self) -> None:
        if self.on_output is not None and self.partial:
            self._emit([bytes(self.partial)])
            self.partial.clear()

    def _emit(self, lines: list[bytes]) -> None:
        if not lines:
            return
        now = time.monotonic()
        self.tokens = min(
            LIVE_LINES_PER_SECOND, self.tokens + (now - self.stamp) * LIVE_LINES_PER_SECOND
        )
        self.stamp = now
        allowed = max(0, min(int(self.tokens), LIVE_LINES_MAX - self.sent, len(lines)))
        self.tokens -= allowed
        self.sent += allowed
        for line in lines[:allowed]:
            self.on_output(line.decode("utf-8", errors="replace").rstrip("\r"))
        if allowed < len(lines) and not self.announced:
            self.announced = True
            self.on_output(LIVE_TRUNCATED)


class _Output:
    """The merged output: a bounded tail, a capped log on disk, its hash, the live lines."""

    def __init__(
        self, limits: SandboxLimits, log_path: Path | None, on_output: Callable[[str], None] | None
    ):
        self.keep = limits.output_bytes
        self.tail = bytearray()
        self.total = 0
        self.logged = 0
        self.hash = hashlib.sha256()
        self.log = open(log_path, "wb") if log_path is not None else None  # noqa: SIM115
        self.live = _LiveLines(on_output)
        self.log_full = False

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        self.tail += data
        if len(self.tail) > self.keep:
            del self.tail[: len(self.tail) - self.keep]
        if not self.log_full:
            room = LOG_MAX_BYTES - self.logged
            piece = data[:room]
            if len(data) > room:
                piece += f"\n[log truncated at {size_text(LOG_MAX_BYTES)}]\n".encode()
                self.log_full = True
            self._write(piece)
        self.live.feed(data)

    def _write(self, piece: bytes) -> None:
        self.hash.update(piece)
        self.logged += len(piece)
        if self.log is not None:
            self.log.write(piece)

    def close(self) -> None:
        self.live.flush()
        if self.log is not None:
            self.log.close()


# Signs in the output that a failure came from a limit rather than the command's own logic.
_SIGNS = (
    (
        "processes",
        re.compile(
            rb"[Cc]annot fork|fork: (retry: )?Resource temporarily unavailable|"
            rb"BlockingIOError: \[Errno 11\]|can't fork"
        ),
    ),
    (
        "memory",
        re.compile(rb"MemoryError|Cannot allocate memory|std::bad_alloc|out of memory"),
    ),
)


class _Run:
    """One started process under watch: reads its output, enforces limits, kills it."""

    def __init__(self, spec: ProcessSpec, request: SandboxRequest, output: _Output):
        self.spec = spec
        self.limits = request.limits
        self.output = output
        self.kill_status: str | None = None
        self.kill_reason = ""
        self.signs: set[str] = set()
        self.proc: subprocess.Popen | None = None

    def kill(self, status: str | None = None, reason: str = "") -> None:
        if status is not None and self.kill_status is None:
            self.kill_status, self.kill_reason = status, reason
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def read(self, fd: int) -> bool:
        """Read what is in the pipe (up to 1 MiB); False at end of file."""
        for _ in range(16):
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            for kind, pattern in _SIGNS:
                if kind not in self.signs and pattern.search(data):
                    self.signs.add(kind)
            self.output.feed(data)
        return True


def process_run(
    spec: ProcessSpec,
    request: SandboxRequest,
    *,
    backend: str,
    isolated: bool,
    on_output: Callable[[str], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> SandboxResult:
    """Run `spec` under `request.limits` until it ends or a limit ends it; kills the process
    group and waits before returning, so nothing the command started outlives the call."""
    limits = request.limits
    started = time.monotonic()

    def result(status: str, code: int | None, reason: str, output: _Output | None) -> SandboxResult:
        tail = bytes(output.tail) if output else b""
        return SandboxResult(
            status=status,
            exit_code=code,
            duration_ms=int((time.monotonic() - started) * 1000),
            output=tail.decode("utf-8", errors="replace"),
            output_truncated=bool(output and output.total > len(output.tail)),
            log_sha256=(output.hash if output else hashlib.sha256()).hexdigest(),
            backend=backend,
            isolated=isolated,
            reason=reason,
        )

    base_bytes, base_entries = tree_size(spec.watch)
    try:
        output = _Output(limits, request.log_path, on_output)
    except OSError as exc:
        return result(ERROR, None, f"cannot write the log: {exc.strerror}", None)
    run = _Run(spec, request, output)
    try:
        try:
            run.proc = subprocess.Popen(
                spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=dict(spec.env),
                cwd=spec.cwd,
                start_new_session=True,
                close_fds=True,
                pass_fds=spec.pass_fds,
            )
        except OSError as exc:
            output.close()
            return result(ERROR, None, f"cannot start {spec.argv[0]}: {exc.strerror}", output)
        proc = run.proc
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)
        selector = selectors.DefaultSelector()
        selector.register(fd, selectors.EVENT_READ)
        open_pipe = True
        next_cancel = next_process = started
        next_write = started + WRITE_POLL_SECONDS
        ended_at: float | None = None
        while True:
            if open_pipe and selector.select(timeout=0.05):
                open_pipe = run.read(fd)
            elif not open_pipe:
                time.sleep(0.02)
            now = time.monotonic()
            if ended_at is None and proc.poll() is not None:
                ended_at = now
                run.kill()  # stragglers left in the group
            if ended_at is not None:
                if not open_pipe or now - ended_at > DRAIN_SECONDS:
                    break
                continue
            if output.total > OUTPUT_KILL_BYTES:
                run.kill(FAILED, f"output limit {size_text(OUTPUT_KILL_BYTES)}")
            elif now - started > limits.wall_seconds:
                run.kill(TIMEOUT, f"wall time limit {limits.wall_seconds:g} s")
            elif should_cancel is not None and now >= next_cancel:
                next_cancel = now + CANCEL_POLL_SECONDS
                if should_cancel():
                    run.kill(CANCELLED, "cancelled")
            if run.kill_status is None and spec.watch and now >= next_write:
                size, entries = tree_size(spec.watch)
                walked = time.monotonic()
                next_write = walked + max(WRITE_POLL_SECONDS, 4 * (walked - now))
                if size - base_bytes > limits.write_bytes:
                    run.kill(FAILED, f"write limit {size_text(limits.write_bytes)}")
                elif entries >= WALK_MAX_ENTRIES and base_entries < WALK_MAX_ENTRIES:
                    run.kill(FAILED, f"write limit: more than {WALK_MAX_ENTRIES:,} files")
            if run.kill_status is None and spec.count_processes and now >= next_process:
                next_process = now + PROCESS_POLL_SECONDS
                if group_size(proc.pid) > limits.processes:
                    run.kill(FAILED, f"process limit {limits.processes}")
        selector.close()
    finally:
        if run.proc is not None:
            run.kill()
            run.proc.wait()
            run.proc.stdout.close()
        output.close()
    code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    if run.kill_status is not None:
        reason = run.kill_reason
        if run.kill_status == TIMEOUT and "processes" in run.signs:
            reason += f"; process limit {limits.processes} reached"
        return result(run.kill_status, code, reason, output)
    if code == 0:
        return result(PASSED, 0, "", output)
    return result(FAILED, code, _failure_reason(code, run.signs, limits), output)


def _failure_reason(code: int, signs: set[str], limits: SandboxLimits) -> str:
    """Why a nonzero exit happened when a limit is the likely cause; "" otherwise."""
    if code == 128 + signal.SIGXCPU:
        return f"cpu time limit {limits.cpu_seconds} s"
    if code == 128 + signal.SIGXFSZ:
        return f"write limit {size_text(limits.write_bytes)} (single file)"
    if "memory" in signs:
        return f"memory limit {size_text(limits.memory_bytes)}"
    if "processes" in signs:
        return f"process limit {limits.processes}"
    if code == 127:
        return "command not found"
    return ""
