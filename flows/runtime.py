"""A run's identity and scratch space: nothing a run starts or writes in /tmp outlives it.

A process is named by a marker, "<pid>:<start ticks>" (field 22 of /proc/<pid>/stat, the
start time in clock ticks since boot), which a later process reusing the pid cannot share.

- The run owner: the CLI puts its marker in ENERGY_PIPELINE_RUN_OWNER at start; every process
  the run starts inherits it. `run_owner()` claims the run for this process when it is unset.
- Scratch: `scratch_dir()` makes temporary folders under one root per process,
  `<tmp>/energy-pipeline/<pid>-<start ticks>/`, removed at exit (`cleanup_scratch`).
- `sweep_dead_runs()` (at the start of each command and flow run) removes the scratch roots
  of dead processes and stops the processes of dead runs: those whose environment names a
  run owner that is gone. A live process's scratch and a live run's processes are never
  touched.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

OWNER_ENV = "ENERGY_PIPELINE_RUN_OWNER"
# The process that started a Spark job ("<pid>:<start ticks>"); the job ends when it is gone.
PARENT_ENV = "ENERGY_PIPELINE_PARENT_PID"
SCRATCH_BASE = "energy-pipeline"
PIDNS_FILE = ".pidns"
TERM_GRACE_S = 3.0
KILL_WAIT_S = 5.0
PR_SET_PDEATHSIG = 1

_PROC = Path("/proc")
_lock = threading.Lock()
_cleanup_registered = False


@dataclass(frozen=True)
class Stat:
    """What /proc/<pid>/stat says about a process."""

    state: str
    ppid: int
    start: int

    @property
    def running(self) -> bool:
        """Not a zombie (exited, waiting to be reaped) nor dead."""
        return self.state not in ("Z", "X", "x")


def read_stat(pid: int | str) -> Stat | None:
    """State, parent and start ticks of a process, None when there is no such process."""
    try:
        data = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or ")".
    fields = data[data.rindex(b")") + 2 :].split()
    try:
        return Stat(state=fields[0].decode(), ppid=int(fields[1]), start=int(fields[19]))
    except (IndexError, ValueError):
        return None


def process_marker(pid: int | None = None) -> str | None:
    """The marker "<pid>:<start ticks>" of a process (this one by default), None if gone."""
    pid = os.getpid() if pid is None else pid
    info = read_stat(pid)
    if info is None:
        if pid == os.getpid() and not _PROC.is_dir():  # no /proc (not Linux): pid only
            return f"{pid}:0"
        return None
    return f"{pid}:{info.start}"


_own: tuple[int, str] | None = None


def owner_marker() -> str:
    """This process's marker, "<pid>:<start ticks>"."""
    global _own
    pid = os.getpid()
    if _own is None or _own[0] != pid:  # computed again in a forked child
        marker = process_marker(pid)
        assert marker is not None
        _own = (pid, marker)
    return _own[1]


def run_owner() -> str:
    """The run this process belongs to: $ENERGY_PIPELINE_RUN_OWNER, set to this process's
    marker when unset (so every process started from here on carries it)."""
    owner = os.environ.get(OWNER_ENV)
    if not owner:
        owner = os.environ[OWNER_ENV] = owner_marker()
    return owner


def parse_marker(marker: str | None) -> tuple[int, int] | None:
    """(pid, start ticks) from a marker, None when it is not one."""
    if not marker:
        return None
    pid, sep, start = marker.strip().replace("-", ":").partition(":")
    if not sep or not pid.isdigit() or not start.isdigit() or int(pid) <= 0:
        return None
    return int(pid), int(start)


def is_alive(marker: str | None) -> bool:
    """Whether the process named by a marker still runs: same pid AND same start ticks."""
    parsed = parse_marker(marker)
    if parsed is None:
        return False
    pid, start = parsed
    info = read_stat(pid)
    if info is None:
        if start == 0 and not _PROC.is_dir():  # no /proc: the pid is all we know
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        return False
    return info.start == start and info.running


def _pid_namespace(pid: int | str = "self") -> str | None:
    try:
        return os.readlink(_PROC / str(pid) / "ns" / "pid")
    except OSError:
        return None


# --- scratch space -------------------------------------------------------------------------


def scratch_base() -> Path:
    """The folder holding every process's scratch root: <tmp>/energy-pipeline."""
    return Path(tempfile.gettempdir()) / SCRATCH_BASE


def _root_name(marker: str) -> str:
    return marker.replace(":", "-")


def _own_dir(path: Path) -> bool:
    """A real folder (not a symlink) owned by this user."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()


def scratch_root() -> Path:
    """This process's scratch root, created (mode 700) on first use; removed at exit."""
    global _cleanup_registered
    base = scratch_base()
    root = base / _root_name(owner_marker())
    with _lock:
        try:
            base.mkdir(mode=0o1777)
        except FileExistsError:
            pass
        else:  # shared by the users of this machine, like /tmp itself (sticky)
            with contextlib.suppress(OSError):
                base.chmod(0o1777)
        if base.is_symlink() or not base.is_dir():
            raise RuntimeError(f"{base} is not a folder: cannot make scratch folders there")
        try:
            root.mkdir(mode=0o700)
        except FileExistsError:
            if not _own_dir(root):
                raise RuntimeError(f"{root} exists and is not this user's folder") from None
        else:
            namespace = _pid_namespace()
            if namespace:
                (root / PIDNS_FILE).write_text(namespace)
        if not _cleanup_registered:
            atexit.register(cleanup_scratch)
            _cleanup_registered = True
    return root


def scratch_dir(prefix: str = "") -> str:
    """A new temporary folder under this process's scratch root; the caller removes it.

    When the shared base folder cannot be used (another user's, not writable), a plain
    temporary folder: still removed by its caller, only not swept after a kill.
    """
    try:
        root = scratch_root()
    except (OSError, RuntimeError) as exc:
        log.warning("scratch folder outside %s (%s)", scratch_base(), exc)
        return tempfile.mkdtemp(prefix=f"{SCRATCH_BASE}-{prefix}")
    return tempfile.mkdtemp(prefix=prefix, dir=root)


def cleanup_scratch() -> None:
    """Remove this process's scratch root and everything in it."""
    root = scratch_base() / _root_name(owner_marker())
    if _own_dir(root):
        shutil.rmtree(root, ignore_errors=True)


# --- sweeping dead runs --------------------------------------------------------------------


@dataclass(frozen=True)
class _Process:
    pid: int
    ppid: int
    start: int
    owner: str | None  # the run owner in its environment

    @property
    def marker(self) -> str:
        return f"{self.pid}:{self.start}"


def _owner_in_environ(pid: str) -> str | None:
    """ENERGY_PIPELINE_RUN_OWNER from a process's environment (None when unreadable)."""
    try:
        environ = (_PROC / pid / "environ").read_bytes()
    except OSError:  # another user's process, or gone
        return None
    key = OWNER_ENV.encode() + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(key):
            return entry[len(key) :].decode(errors="replace")
    return None


def _scan() -> dict[int, _Process]:
    """Every running process of this pid namespace, with its run owner (one pass on /proc)."""
    found: dict[int, _Process] = {}
    try:
        entries = os.listdir(_PROC)
    except OSError:
        return found
    for name in entries:
        if not name.isdigit():
            continue
        info = read_stat(name)
        if info is None or not info.running:
            continue
        found[int(name)] = _Process(int(name), info.ppid, info.start, _owner_in_environ(name))
    return found


def _lineage(processes: dict[int, _Process]) -> set[int]:
    """This process and its ancestors."""
    lineage = set()
    pid = os.getpid()
    while pid > 0 and pid not in lineage:
        lineage.add(pid)
        process = processes.get(pid)
        if process is None:
            info = read_stat(pid)
            pid = info.ppid if info else 0
        else:
            pid = process.ppid
    return lineage


def _signal(process: _Process, sig: signal.Signals) -> bool:
    """Send a signal to exactly that process (not a later one reusing its pid)."""
    pidfd = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(process.pid)
    try:
        info = read_stat(process.pid)  # checked after pidfd_open: the fd names this process
        if info is None or info.start != process.start or not info.running:
            return False
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(process.pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _stop(victims: list[_Process], grace_s: float) -> list[_Process]:
    """SIGTERM, then SIGKILL what is left after grace_s; the processes that were signalled."""
    signalled = [p for p in victims if _signal(p, signal.SIGTERM)]
    for sig, wait in ((signal.SIGKILL, grace_s), (None, KILL_WAIT_S)):
        deadline = time.monotonic() + wait
        left = [p for p in signalled if is_alive(p.marker)]
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [p for p in left if is_alive(p.marker)]
        if sig is None or not left:
            break
        for process in left:
            _signal(process, sig)
    return signalled


def sweep_dead_runs(grace_s: float = TERM_GRACE_S) -> dict[str, Any]:
    """Stop the processes of dead runs and remove the scratch roots of dead processes.

    A process is stopped (SIGTERM, SIGKILL after grace_s) when its environment names a run
    owner that no longer runs (or is itself being stopped), unless it is this process, one of
    its ancestors, in this process's own run, or in another pid namespace. A scratch root is
    removed when the process it is named after no longer runs. Returns what was done:
    {"killed": [{"pid", "owner", "command"}], "removed": [paths]}.
    """
    processes = _scan()
    running = {p.marker: p for p in processes.values()}
    spared = _lineage(processes)
    own_run = os.environ.get(OWNER_ENV)
    namespace = _pid_namespace()

    doomed: dict[int, _Process] = {}
    changed = True
    while changed:  # the owner of a process may itself be a process of a dead run
        changed = False
        for process in processes.values():
            if process.pid in doomed or process.pid in spared or not process.owner:
                continue
            if process.owner == own_run or process.owner == process.marker:
                continue
            owner = running.get(process.owner)
            if owner is None:
                dead = parse_marker(process.owner) is not None and not is_alive(process.owner)
            else:
                dead = owner.pid in doomed
            if dead and namespace is not None and _pid_namespace(process.pid) == namespace:
                doomed[process.pid] = process
                changed = True

    victims = list(doomed.values())
    commands = {p.pid: _command(p.pid) for p in victims}
    signalled = _stop(victims, grace_s)
    killed = [{"pid": p.pid, "owner": p.owner, "command": commands[p.pid]} for p in signalled]
    return {"killed": killed, "removed": _remove_dead_roots(namespace)}


def _command(pid: int) -> str:
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:200]


def _remove_dead_roots(namespace: str | None) -> list[str]:
    """Remove this user's scratch roots whose process is gone (in this pid namespace)."""
    removed: list[str] = []
    base = scratch_base()
    try:
        roots = list(base.iterdir())
    except OSError:
        return removed
    for root in roots:
        marker = root.name.replace("-", ":")
        if parse_marker(marker) is None or not _own_dir(root) or is_alive(marker):
            continue
        try:
            recorded = (root / PIDNS_FILE).read_text().strip()
        except OSError:
            recorded = None
        if recorded and namespace and recorded != namespace:
            continue  # a process of another pid namespace sharing this temp folder
        shutil.rmtree(root, ignore_errors=True)
        if not root.exists():
            removed.append(str(root))
    return removed


# --- child processes that die with their parent ---------------------------------------------


def die_with_parent_hook(sig: signal.Signals = signal.SIGKILL) -> Callable[[], None] | None:
    """A Popen preexec_fn making the child get `sig` when the thread that started it ends.

    Linux only (prctl PR_SET_PDEATHSIG; kept across exec): None elsewhere. The calling thread
    must wait for the child for its whole life. If the parent died before the hook ran, the
    child ends at once.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    arg_kill = ctypes.c_ulong(int(sig))
    zero = ctypes.c_ulong(0)

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, arg_kill, zero, zero, zero)
        if os.getppid() != parent:
            os._exit(1)

    return hook
