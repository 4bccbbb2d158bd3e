"""One run at a time per cluster: a lock held on the cluster's own DB nodes, naming its holder.

Every run that changes hosts (install today; rolling restarts, rotation, drills and node
changes later) takes it; diagnostics only read and take none. Two runs from two work
directories or two machines cannot both hold it:

- The lock is a file, ``/var/lib/kbpg/run.lock`` (0600 root, in a 0700 directory created on
  bare hosts), on every DB node. Its content names the holder (machine, user, command, pid,
  start time, work directory) and carries a random token, so two holders never write the same
  bytes. Every operation on a node (take, refresh, release, break, read) is one shell script
  run under ``flock`` on a guard file beside it, so each check-then-act is atomic on that node.
- A run holds the lock when it has taken it on a majority of the DB nodes (2 of 3, 3 of 5):
  two majorities always share a node, so two runs can never both hold one. Nodes are taken in
  address order, one after another, and the first node found held stops the attempt: of two
  runs started together, the one that takes the first node wins and the other is refused. On
  fewer than a majority, what was taken is released and the run is refused.
- While the run lasts a thread refreshes the file's mtime every 15 s (the heartbeat, by the
  host's clock, so clock skew between machines does not matter). If it finds the file gone or
  replaced (the lock was broken), the run is told to stop.
- Released at the end, also on failure, cancel and Ctrl-C (by the run's own SSH connections,
  which cancelling the run does not close).
- A holder is *gone* for certain when it ran on this machine (same boot and PID namespace)
  and its process no longer exists (pid gone, or reused by a process started later): a run
  killed with SIGKILL leaves such a lock, and the next run taken from this machine takes it over
  with a warning, so "run the same command again" still finishes a killed install.
  A holder on another machine whose heartbeat is older than 120 s is *stale*: reported with its
  name and the age of its heartbeat, and broken only explicitly (``kbpg unlock``), because a
  machine that cannot be reached is not proof that its run has stopped.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import getpass
import hashlib
import ipaddress
import json
import logging
import os
import secrets
import shlex
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Protocol, Sequence

from .events import EventSink, Level, Message, discard
from .ssh import ConnectionPool, Host, Result, SshError

if TYPE_CHECKING:
    from .engine import Step
    from .install import Run

log = logging.getLogger("kbpg.runlock")

LOCK_DIR = "/var/lib/kbpg"
LOCK_NAME = "run.lock"
HEARTBEAT_SECONDS = 15.0
STALE_SECONDS = 120.0
GUARD_WAIT_SECONDS = 10  # flock -w: another kbpg's script on the same node is a few ms long
COMMAND_TIMEOUT = 30.0


class LockError(Exception):
    """The run lock could not be taken; the message says why and what to do."""


class LockBusy(LockError):
    """Another run holds the lock (alive, or stale: its heartbeat stopped)."""

    def __init__(self, holding: "Holding"):
        self.holding = holding
        super().__init__(holding.refusal())


class LockUnavailable(LockError):
    """Fewer than a majority of the DB nodes could be reached to take the lock."""


# --- who holds it --------------------------------------------------------------------------

def _instance() -> str:
    """This machine's boot and PID namespace: a pid means the same process only where both are equal."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{boot}/{namespace}"


def _start_ticks(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


@dataclass(frozen=True)
class Holder:
    """The run that holds (or held) the lock, as written on the hosts."""

    machine: str
    user: str
    command: str
    pid: int
    started: str  # local time with its offset, e.g. 2025-06-01 14:03:22+02:00
    workdir: str = ""
    token: str = ""
    instance: str = ""  # boot id / PID namespace of the holder's machine (see gone())
    pid_start: str = ""  # the holder process's start time, to tell its pid from a reused one

    @classmethod
    def current(cls, command: str, workdir: str | Path = "") -> "Holder":
        pid = os.getpid()
        return cls(
            machine=socket.gethostname(),
            user=_user(),
            command=command,
            pid=pid,
            started=datetime.datetime.now().astimezone().isoformat(sep=" ", timespec="seconds"),
            workdir=str(workdir),
            token=secrets.token_hex(16),
            instance=_instance(),
            pid_start=_start_ticks(pid) or "",
        )

    def content(self) -> bytes:
        return (json.dumps(asdict(self), indent=1, ensure_ascii=False) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes) -> "Holder":
        """The holder a lock file names; a file kbpg did not write reads as an unknown holder."""
        try:
            raw = json.loads(data.decode("utf-8"))
            if not isinstance(raw, dict):
                raise ValueError("not an object")
            known = {name: str(raw[name]) for name in cls.__dataclass_fields__ if name in raw}
            pid = int(known.pop("pid", "0"))
            text = {"machine": "?", "user": "?", "command": "?", "started": "?", **known}
            return cls(pid=pid, **text)
        except (ValueError, TypeError, UnicodeDecodeError):
            return cls("?", "?", "an unreadable lock file (not written by kbpg?)", 0, "?")

    def describe(self) -> str:
        where = f", in {self.workdir}" if self.workdir else ""
        return f"{self.user}@{self.machine} (pid {self.pid}{where}) running `{self.command}` since {self.started}"

    def gone(self) -> bool:
        """True only when certain: the holder ran on this machine (same boot, same PID namespace) and its
        process is no longer there (or its pid now belongs to a process started later)."""
        if not self.instance or self.instance != _instance() or self.pid <= 0:
            return False
        ticks = _start_ticks(self.pid)
        return ticks is None or bool(self.pid_start and ticks and ticks != self.pid_start)


def age_text(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


# --- what one node says ------------------------------------------------------------------

FREE, HELD, TAKEN, REFRESHED, REMOVED, ERROR = "free", "held", "taken", "refreshed", "removed", "error"


@dataclass
class NodeState:
    host: str
    status: str  # one of the constants above
    holder: Holder | None = None
    digest: str = ""  # sha256 of the lock file's content: what a release or a break compares
    age: float = 0.0  # seconds since the heartbeat, by the node's clock
    error: str = ""


def _script(directory: str, action: str) -> str:
    """One root script per action, under flock; prints the node's state (status line, then the content in base64)."""
    d = shlex.quote(directory)
    report = ('if [ -e "$f" ]; then now=$(date +%s); m=$(stat -c %Y "$f"); echo "held $((now - m))"; '
              'base64 -w0 < "$f"; echo; else echo free; fi')
    same = '[ -e "$f" ] && [ "$(sha256sum < "$f" | cut -d" " -f1)" = "$want" ]'
    if action == "read":
        prelude = f'd={d}; f="$d/{LOCK_NAME}"; [ -d "$d" ] || {{ echo free; exit 0; }}; '
    else:
        # On bare hosts (before step 01) the directory does not exist yet: root's, 0700.
        prelude = f'd={d}; f="$d/{LOCK_NAME}"; [ -d "$d" ] || install -d -m 700 "$d"; '
    prelude = ("set -e; umask 077; " + prelude
               + f'exec 9>>"$d/{LOCK_NAME}.guard"; flock -w {GUARD_WAIT_SECONDS} 9 || '
               '{ echo "another kbpg held the guard too long" >&2; exit 75; }; ')
    body = {
        "read": report,
        # stdin: the holder's content
        "take": f'if [ -e "$f" ]; then {report}; exit 0; fi; '
                'tmp=$(mktemp "$f.XXXXXX"); cat > "$tmp"; mv -f "$tmp" "$f"; echo taken',
        # stdin: the sha256 of the content this run wrote
        "refresh": f'read -r want; if {same}; then touch "$f"; echo refreshed; else {report}; fi',
        # stdin: the sha256 of the content to remove (ours on release; the one shown to the operator on a break)
        "remove": f'read -r want; if {same}; then rm -f "$f"; echo removed; else {report}; fi',
    }[action]
    return prelude + body


def _parse(host: str, result: Result) -> NodeState:
    lines = result.stdout.strip().splitlines()
    if not result.ok or not lines:
        return NodeState(host, ERROR, error=f"{host}: lock script failed (exit {result.exit_status}): "
                                              f"{result.tail(3) or 'no output'}")
    head = lines[0].split()
    if head[0] in (FREE, TAKEN, REFRESHED, REMOVED):
        return NodeState(host, head[0])
    if head[0] == HELD and len(head) == 2:
        try:
            content = base64.b64decode(lines[1] if len(lines) > 1 else "", validate=True)
            age = float(head[1])
        except (binascii.Error, ValueError):
            return NodeState(host, ERROR, error=f"{host}: unexpected answer from the lock script: {lines[0]!r}")
        return NodeState(host, HELD, Holder.parse(content), hashlib.sha256(content).hexdigest(), max(0.0, age))
    return NodeState(host, ERROR, error=f"{host}: unexpected answer from the lock script: {lines[0]!r}")


class Pool(Protocol):
    """What the lock needs of a connection pool (kbpg's ConnectionPool, or a test's fake)."""

    def get(self, host: Host): ...  # -> something with .run(script, stdin=, timeout=, check=, what=) -> Result
    def close(self) -> None: ...


def _on_node(pool: Pool, host: Host, directory: str, action: str, stdin: bytes | None = None) -> NodeState:
    try:
        result = pool.get(host).run(_script(directory, action), stdin=stdin, timeout=COMMAND_TIMEOUT, check=False,
                                    what=f"run lock: {action}")
    except SshError as exc:
        return NodeState(host.name, ERROR, error=str(exc))
    return _parse(host.name, result)


def _ordered(hosts: Iterable[Host]) -> list[Host]:
    """Address order: two runs whose servers.tsv lists the nodes differently still take them in the same order."""
    def key(host: Host) -> tuple:
        try:
            return (0, int(ipaddress.ip_address(host.address)), host.port)
        except ValueError:
            return (1, host.address, host.port)
    return sorted(hosts, key=key)


def majority(count: int) -> int:
    return count // 2 + 1


def _connect_all(pool: Pool, hosts: Sequence[Host]) -> dict[str, str]:
    """Connect to every node at once (a dead node costs one connect timeout, not one per node); errors by host."""
    def connect(host: Host) -> str:
        try:
            pool.get(host)
            return ""
        except SshError as exc:
            return str(exc)
    if not hosts:
        return {}
    with ThreadPoolExecutor(max_workers=len(hosts), thread_name_prefix="kbpg-lock-connect") as executor:
        return {host.name: error for host, error in zip(hosts, executor.map(connect, hosts), strict=True) if error}


# --- a lock found on the nodes ----------------------------------------------------------------

@dataclass
class Holding:
    """One holder's lock as found on some nodes (the same content on each)."""

    holder: Holder
    digest: str
    ages: dict[str, float] = field(default_factory=dict)  # host -> seconds since its heartbeat there

    @property
    def age(self) -> float:
        """The freshest heartbeat: a live holder refreshes every node it holds."""
        return min(self.ages.values()) if self.ages else 0.0

    @property
    def gone(self) -> bool:
        return self.holder.gone()

    def stale(self, after: float = STALE_SECONDS) -> bool:
        return self.age > after

    def hosts_text(self) -> str:
        return ", ".join(self.ages)

    def refusal(self, after: float = STALE_SECONDS) -> str:
        if self.gone:
            return (f"the cluster's run lock was left by {self.holder.describe()}, a process no longer running on "
                    f"this machine (on {self.hosts_text()}); break it with `kbpg unlock`")
        if self.stale(after):
            return (f"the cluster's run lock is held by {self.holder.describe()}, but its heartbeat stopped "
                    f"{age_text(self.age)} ago (on {self.hosts_text()}; a live run refreshes it every "
                    f"{HEARTBEAT_SECONDS:.0f} s): that run looks gone. Nothing done. If it is gone, break the lock "
                    "with `kbpg unlock`, then run again.")
        return (f"the cluster is busy: its run lock is held by {self.holder.describe()} (heartbeat "
                f"{age_text(self.age)} ago on {self.hosts_text()}). Nothing done; run again when it has finished.")


def holdings(states: Iterable[NodeState]) -> list[Holding]:
    found: dict[str, Holding] = {}
    for state in states:
        if state.status == HELD and state.holder is not None:
            holding = found.setdefault(state.digest, Holding(state.holder, state.digest))
            holding.ages[state.host] = state.age
    return list(found.values())


def inspect(pool: Pool, hosts: Sequence[Host], directory: str = LOCK_DIR) -> list[NodeState]:
    """What every node holds (read only: creates nothing, takes no lock)."""
    hosts = _ordered(hosts)
    errors = _connect_all(pool, hosts)
    states = []
    for host in hosts:
        if host.name in errors:
            states.append(NodeState(host.name, ERROR, error=errors[host.name]))
        else:
            states.append(_on_node(pool, host, directory, "read"))
    return states


def break_lock(pool: Pool, hosts: Sequence[Host], holding: Holding, directory: str = LOCK_DIR) -> list[NodeState]:
    """Remove ``holding``'s lock where it still is exactly what was found (a lock taken since is left alone)."""
    by_name = {host.name: host for host in hosts}
    stdin = (holding.digest + "\n").encode()
    return [_on_node(pool, by_name[name], directory, "remove", stdin) for name in holding.ages if name in by_name]


# --- holding the lock for a run -----------------------------------------------------------------

class RunLock:
    """The lock held by this run: refreshed by a thread until :meth:`release`."""

    def __init__(self, pool: Pool, hosts: Sequence[Host], holder: Holder, held: list[Host], *,
                 directory: str = LOCK_DIR, sink: EventSink = discard, heartbeat: float = HEARTBEAT_SECONDS,
                 on_lost: Callable[[str], None] | None = None, own_pool: bool = False):
        self.pool = pool
        self.hosts = list(hosts)
        self.holder = holder
        self.held = held
        self.directory = directory
        self.sink = sink
        self.heartbeat = heartbeat
        self.on_lost = on_lost
        self.own_pool = own_pool
        self.digest = hashlib.sha256(holder.content()).hexdigest()
        self.lost = threading.Event()
        self.released = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="kbpg-run-lock-heartbeat", daemon=True)

    def start(self) -> "RunLock":
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            self.refresh()

    def refresh(self) -> None:
        """One heartbeat on every held node; a node that no longer holds our content means the lock was broken."""
        for host in self.held:
            if self._stop.is_set():
                return
            state = self._on_held(host, "refresh")
            if state.status == ERROR:
                log.warning("run lock heartbeat on %s: %s", host.name, state.error)
            elif state.status != REFRESHED and not self.lost.is_set():
                now = f"now held by {state.holder.describe()}" if state.holder else "now free"
                message = (f"the cluster's run lock was broken on {host.name} ({now}) while this run held it: "
                           "stopping this run")
                log.error(message)
                self.lost.set()
                self.sink(Message(Level.ERROR, message))
                if self.on_lost is not None:
                    self.on_lost(message)

    def _on_held(self, host: Host, action: str) -> NodeState:
        """``action`` on a node whose lock holds this run's content (checked by its digest, under flock)."""
        return _on_node(self.pool, host, self.directory, action, (self.digest + "\n").encode())

    def release_partial(self) -> None:
        """Give back what an unfinished acquisition took (our own content only: nothing of another run)."""
        for host in self.held:
            state = self._on_held(host, "remove")
            if state.status == ERROR:
                log.warning("run lock: could not give back %s: %s", host.name, state.error)
        self.held = []

    def release(self) -> list[str]:
        """Stop the heartbeat and remove the lock where it is still ours; returns what could not be released."""
        if self.released:
            return []
        self.released = True
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=COMMAND_TIMEOUT + 5)
        problems = []
        for host in self.held:
            state = self._on_held(host, "remove")
            if state.status == ERROR:
                problems.append(f"the run lock could not be released on {host.name} ({state.error}); the next run "
                                "from this machine takes it over, from another one `kbpg unlock` breaks it")
            log.info("run lock on %s: %s", host.name, state.status)
        for problem in problems:
            self.sink(Message(Level.WARNING, problem))
        if self.own_pool:
            self.pool.close()
        return problems

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def acquire(pool: Pool, hosts: Sequence[Host], holder: Holder, *, directory: str = LOCK_DIR,
            sink: EventSink = discard, heartbeat: float = HEARTBEAT_SECONDS,
            on_lost: Callable[[str], None] | None = None, cancel: threading.Event | None = None,
            own_pool: bool = False, start: bool = True) -> RunLock:
    """Take the lock on a majority of ``hosts`` (the DB nodes) for ``holder``, or raise :class:`LockError`.

    A lock left by a process of this machine that is no longer running is taken over (with a
    warning); any other lock refuses the run with its holder's name (:class:`LockBusy`).
    """
    ordered = _ordered(hosts)
    needed = majority(len(ordered))
    lock = RunLock(pool, ordered, holder, [], directory=directory, sink=sink, heartbeat=heartbeat, on_lost=on_lost,
                   own_pool=own_pool)
    try:
        errors = _connect_all(pool, ordered)
        for _attempt in range(3):
            conflict: NodeState | None = None
            for host in ordered:
                if cancel is not None and cancel.is_set():
                    raise LockUnavailable("cancelled while taking the cluster's run lock")
                if host.name in errors:
                    continue
                state = _on_node(pool, host, directory, "take", holder.content())
                if state.status == TAKEN:
                    lock.held.append(host)
                elif state.status == HELD:
                    conflict = state
                    break
                else:
                    errors[host.name] = state.error
            if conflict is None:
                break
            lock.release_partial()
            found = Holding(conflict.holder or Holder.parse(b""), conflict.digest, {conflict.host: conflict.age})
            if not found.gone:
                raise LockBusy(found)
            # Certainly dead (killed on this machine): take it over, on every node where it is still exactly that.
            reachable = [host for host in ordered if host.name not in errors]
            taken_over = break_lock(pool, reachable, _everywhere(found, reachable), directory)
            removed = [s.host for s in taken_over if s.status == REMOVED]
            sink(Message(Level.WARNING, f"took over the run lock left by {found.holder.describe()}: that process "
                                        "is no longer running on this machine "
                                        f"(removed on {', '.join(removed) or 'no node'})"))
        else:
            raise LockUnavailable("the cluster's run lock changed hands three times while being taken; run again")
        if len(lock.held) < needed:
            took = len(lock.held)
            lock.release_partial()
            reasons = "\n".join(f"  {error}" for error in errors.values())
            raise LockUnavailable(
                f"cannot take the cluster's run lock: {took} of {len(ordered)} DB nodes took it, "
                f"{needed} needed (a majority); nothing done:\n{reasons}")
    except BaseException:
        lock.release_partial()
        if own_pool:
            pool.close()
        raise
    sink(Message(Level.INFO, f"run lock taken on {len(lock.held)} of {len(ordered)} DB nodes "
                             f"({', '.join(h.name for h in lock.held)}) for {holder.describe()}"))
    return lock.start() if start else lock


def _everywhere(found: Holding, hosts: Sequence[Host]) -> Holding:
    """The same holding, to be removed from every node (its content is compared on each)."""
    return Holding(found.holder, found.digest, {host.name: found.ages.get(host.name, 0.0) for host in hosts})


# --- with a prepared run ---------------------------------------------------------------------------

def lock_pool(pool: ConnectionPool) -> ConnectionPool:
    """The lock's own connections: the run's host keys, prompt and sudo, but no cancel event, so that
    cancelling the run (which closes its commands) never prevents the lock's release."""
    return ConnectionPool(pool.options, pool.known_hosts, pool.sink, pool.prompt, pool.sudo_passwords)


def changes_hosts(steps: Iterable["Step"]) -> bool:
    """Whether running these engine steps touches hosts (a step of only local tasks takes no lock)."""
    return any(task.scope != "local" for step in steps for task in step.tasks)


def acquire_for_run(run: "Run", command: str) -> RunLock:
    """Take the lock for a prepared run (:func:`install.prepare`): on its DB nodes, reporting through its sink;
    if the lock is lost (broken) while the run goes on, the run is cancelled."""
    ctx = run.ctx
    pool = lock_pool(ctx.pool) if isinstance(ctx.pool, ConnectionPool) else ctx.pool
    holder = Holder.current(command, ctx.workdir)
    return acquire(pool, ctx.db_hosts, holder, sink=ctx.sink, on_lost=lambda message: ctx.cancel.set(),
                   cancel=ctx.cancel, own_pool=pool is not ctx.pool)
