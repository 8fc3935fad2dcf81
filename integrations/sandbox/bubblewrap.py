"""The bubblewrap backend: each run in fresh namespaces with a read-only system and no network.

What the command sees: /usr (and the /bin, /lib, /lib64, /sbin symlinks or read-only
binds the host has), a minimal /etc (the dynamic linker's cache and config, alternatives,
localtime, and a generated passwd, group and hosts), a new /proc and /dev, a private /tmp
(tmpfs, at most `write_bytes`), the worktree read-write at /workspace (the working
directory), /deps and /artifacts when asked. Nothing else of the host: no /root, /home,
/var, TopDog's checkout or var dir. The network namespace is new and empty (loopback
only) unless the request asks for the network (the setup step); then resolv.conf and the
CA certificates are bound too.

Python: the interpreter running TopDog is mounted read-only at its own paths (`sys.prefix`,
`sys.base_prefix` and the real directory of `sys.executable`, when outside /usr) and
`sys.prefix/bin` leads PATH, so `python -m pytest` works inside with TopDog's pytest. Only
those directories are mounted, never the checkout they may sit in.

bwrap itself is started with the sandbox environment (its own environment is what
/proc/1/environ shows inside the pid namespace), and dies with its parent.

Processes and root: the kernel never applies RLIMIT_NPROC to host uid 0, and a user
namespace created by root maps the sandbox to host uid 0. So when TopDog runs as root,
bwrap runs privileged without a user namespace and `setpriv` switches the command to a
fresh random unprivileged uid (no capabilities, empty bounding set, no new privileges)
before `prlimit`: the process cap then holds, a fork bomb gets EAGAIN. That uid must own
what the command writes, so the worktree, the artifacts dir and a writable deps dir are
handed to it for the run (files with several hard links excepted, so a link to a file
outside cannot be made writable) and handed back to their previous owners afterwards.
Run as any other user, bwrap makes a user namespace as usual and no ownership changes.
"""

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from integrations.sandbox.base import (
    ERROR,
    ProcessSpec,
    SandboxBackend,
    SandboxRequest,
    SandboxResult,
    SandboxUnavailable,
    interpreter_dirs,
    process_run,
    rlimit_argv,
    sandbox_environment,
)

__all__ = ["BubblewrapBackend"]

SANDBOX_UID_BASE = 1_900_000_000
SANDBOX_UID_SPAN = 100_000_000
PROBE_TIMEOUT_SECONDS = 15
_SYSTEM_DIRS = ("bin", "lib", "lib32", "lib64", "libx32", "sbin")
_ETC = (
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
)
_ETC_NETWORK = (
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
)
_LAUNCHERS = ("bwrap: ", "setpriv: ", "prlimit: ")


def _ownership_give(roots: list[Path], uid: int) -> dict[str, tuple[int, int]]:
    """Make `uid` own everything under `roots`; the previous owner of each entry changed.
    Regular files with several hard links keep their owner."""
    before: dict[str, tuple[int, int]] = {}
    stack = [str(root) for root in roots]
    for root in stack[:]:
        st = os.lstat(root)
        before[root] = (st.st_uid, st.st_gid)
        os.chown(root, uid, uid, follow_symlinks=False)
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if entry.is_file(follow_symlinks=False) and st.st_nlink > 1:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                if (st.st_uid, st.st_gid) != (uid, uid):
                    before[entry.path] = (st.st_uid, st.st_gid)
                    os.chown(entry.path, uid, uid, follow_symlinks=False)
    return before


def _ownership_return(roots: list[Path], uid: int, before: dict[str, tuple[int, int]]) -> None:
    """Give back what `uid` owns under `roots`: to the previous owner, or new entries to
    the owner of the root they are under. Runs once no sandboxed process is left."""
    for root in roots:
        default = before.get(str(root), (os.getuid(), os.getgid()))
        stack = [str(root)]
        with contextlib.suppress(OSError):
            os.chown(str(root), *default, follow_symlinks=False)
        while stack:
            try:
                entries = os.scandir(stack.pop())
            except OSError:
                continue
            with entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        if st.st_uid == uid or st.st_gid == uid:
                            owner = before.get(entry.path, default)
                            os.chown(entry.path, *owner, follow_symlinks=False)
                    except OSError:
                        continue


class BubblewrapBackend(SandboxBackend):
    """Isolated runs through bubblewrap (`bwrap`), which must be installed on the host."""

    name = "bubblewrap"
    isolated = True

    def __init__(self, *, bwrap: str = "bwrap"):
        self.bwrap = bwrap
        self._available: tuple[bool, str] | None = None

    def __repr__(self) -> str:
        return f"BubblewrapBackend(bwrap={self.bwrap!r})"

    def available(self) -> tuple[bool, str]:
        """Runs `/bin/true` in a sandbox once per instance; the answer is kept."""
        if self._available is None:
            self._available = self._probe()
        return self._available

    def _probe(self) -> tuple[bool, str]:
        if shutil.which(self.bwrap) is None:
            return False, f"{self.bwrap} is not installed (apt-get install bubblewrap)"
        for tool in ("/usr/bin/prlimit", "/usr/bin/setpriv"):
            if not os.access(tool, os.X_OK):
                return False, f"{tool} is missing (util-linux)"
        with tempfile.TemporaryDirectory(prefix="topdog-sandbox-probe-") as tmp:
            os.chmod(tmp, 0o755)  # the sandbox uid only needs to enter it
            request = SandboxRequest(command="true", worktree=Path(tmp))
            with self._prepared(request) as (argv, env, _uid):
                try:
                    done = subprocess.run(
                        argv,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        capture_output=True,
                        timeout=PROBE_TIMEOUT_SECONDS,
                        check=False,
                    )
                except (OSError, subprocess.TimeoutExpired) as exc:
                    return False, f"bwrap could not run: {exc}"
        if done.returncode != 0:
            message = done.stderr.decode("utf-8", errors="replace").strip()[-300:]
            return False, f"bwrap cannot create namespaces here: {message or done.returncode}"
        return True, ""

    def run(
        self,
        request: SandboxRequest,
        *,
        on_output: Callable[[str], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> SandboxResult:
        """Run the command in a fresh sandbox; SandboxUnavailable if bwrap cannot run here."""
        ok, why = self.available()
        if not ok:
            raise SandboxUnavailable(why)
        for label, path in (
            ("worktree", request.worktree),
            ("deps_dir", request.deps_dir),
            ("artifacts_dir", request.artifacts_dir),
        ):
            if path is not None and not Path(path).is_dir():
                return SandboxResult(
                    ERROR,
                    None,
                    0,
                    "",
                    False,
                    "",
                    self.name,
                    True,
                    f"{label} {path} is not a directory",
                )
        with self._prepared(request) as (argv, env, uid):
            writable = [Path(request.worktree)]
            if request.artifacts_dir is not None:
                writable.append(Path(request.artifacts_dir))
            if request.deps_dir is not None and request.deps_writable:
                writable.append(Path(request.deps_dir))
            before = _ownership_give(writable, uid) if uid is not None else None
            try:
                result = process_run(
                    ProcessSpec(argv=tuple(argv), env=env, cwd=None, watch=tuple(writable)),
                    request,
                    backend=self.name,
                    isolated=True,
                    on_output=on_output,
                    should_cancel=should_cancel,
                )
            finally:
                if before is not None:
                    _ownership_return(writable, uid, before)
        first = result.output.lstrip().partition("\n")[0]
        if result.exit_code == 1 and first.startswith(_LAUNCHERS) and result.duration_ms < 5000:
            return replace(result, status=ERROR, reason=f"the sandbox did not start: {first}")
        return result

    @contextlib.contextmanager
    def _prepared(self, request: SandboxRequest):
        """(argv, env, uid) for `request`; uid is the unprivileged uid the command runs as
        when TopDog is root, else None. The generated /etc files live until exit."""
        env = sandbox_environment(extra=request.env)
        privileged = os.geteuid() == 0
        uid = SANDBOX_UID_BASE + secrets.randbelow(SANDBOX_UID_SPAN) if privileged else None
        shown_uid = uid if uid is not None else os.getuid()
        shown_gid = uid if uid is not None else os.getgid()
        with tempfile.TemporaryDirectory(prefix="topdog-sandbox-etc-") as etc:
            files = {
                "passwd": f"sandbox:x:{shown_uid}:{shown_gid}:sandbox:/workspace:/bin/sh\n",
                "group": f"sandbox:x:{shown_gid}:\n",
                "hosts": "127.0.0.1 localhost\n::1 localhost\n",
            }
            for name, text in files.items():
                Path(etc, name).write_text(text)
                os.chmod(Path(etc, name), 0o644)
            argv = self._argv(request, Path(etc), uid)
            yield argv, env, uid

    def _argv(self, request: SandboxRequest, etc: Path, uid: int | None) -> list[str]:
        limits = request.limits
        argv = [self.bwrap]
        if uid is None:
            argv += ["--unshare-user"]
        argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        if not request.network:
            argv += ["--unshare-net"]
        argv += ["--hostname", "sandbox", "--die-with-parent", "--new-session"]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        argv += ["--perms", "1777", "--size", str(limits.write_bytes), "--tmpfs", "/tmp"]
        argv += ["--ro-bind", "/usr", "/usr"]
        for name in _SYSTEM_DIRS:
            host = Path("/", name)
            if host.is_symlink():
                argv += ["--symlink", os.readlink(host), str(host)]
            elif host.is_dir():
                argv += ["--ro-bind", str(host), str(host)]
        argv += ["--perms", "0755", "--dir", "/etc"]
        for path in _ETC + (_ETC_NETWORK if request.network else ()):
            argv += ["--ro-bind-try", path, path]
        for name in ("passwd", "group", "hosts"):
            argv += ["--ro-bind", str(etc / name), f"/etc/{name}"]
        made: set[Path] = set()
        for path in interpreter_dirs():
            for parent in reversed(path.parents[:-1]):
                if parent not in made:
                    made.add(parent)
                    argv += ["--perms", "0755", "--dir", str(parent)]
            argv += ["--ro-bind", str(path), str(path)]
        argv += ["--bind", str(Path(request.worktree).resolve()), "/workspace"]
        if request.deps_dir is not None:
            bind = "--bind" if request.deps_writable else "--ro-bind"
            argv += [bind, str(Path(request.deps_dir).resolve()), "/deps"]
        if request.artifacts_dir is not None:
            argv += ["--bind", str(Path(request.artifacts_dir).resolve()), "/artifacts"]
        argv += ["--cap-drop", "ALL"]
        if uid is None:
            argv += ["--chdir", "/workspace"]
        else:
            # bwrap, root without CAP_DAC_OVERRIDE by now, may not enter a worktree the
            # sandbox uid owns with mode 0700: the directory is changed after setpriv.
            argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
            argv += ["--cap-add", "CAP_SETPCAP", "--", "/usr/bin/setpriv"]
            argv += [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
            argv += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
            argv += ["--", "/usr/bin/env", "--chdir=/workspace"]
        argv += ["--", *rlimit_argv(limits), "/bin/sh", "-c", request.command]
        return argv
