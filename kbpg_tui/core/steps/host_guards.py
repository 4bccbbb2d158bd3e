"""What a DB node already holds, read before kbpg changes anything there: its data and Raft directories and
any other PostgreSQL on it. Step 01 (preflight, read-only) and step 02 (again, before anything is written)
use the same probe and the same verdicts.

Directories (field failure modes 2 and 4):

- a data directory that is not empty and holds no ``PG_VERSION`` is refused at once with what is in it:
  initdb and pg_basebackup refuse it too, only minutes later ("no healthy cluster"). An initdb or
  pg_basebackup working in it right now (Patroni's own, on a re-run) is left alone;
- kbpg changes the owner or mode only of a directory it created (recorded in :data:`CREATED_FILE`; for the
  Raft directory, whose path is kbpg's own, also when patroni.yml names it: clusters installed before the
  record existed), or of a PostgreSQL data directory (``PG_VERSION``): a wrong mode or owner there is
  repaired on every run. An existing directory kbpg did not create, empty or not, is never given
  to postgres behind the operator's back: a setting such as ``/srv`` would otherwise hand a system
  directory over. It is used as it is when already ``postgres:postgres 700``, and refused otherwise with
  the commands that would make it usable;
- the Raft directory may hold only Raft's own files (``<address>:<port>.journal``, ``.dump`` and their
  ``.meta``/``.tmp`` companions), and those only when it is kbpg's.

Another PostgreSQL on the node: a server that Patroni (``patroni.service``, which kbpg configures) did not
start, or a
postgresql-common cluster that is running or would start at boot, is refused with its version, name, data
directory and port. kbpg never stops, disables or drops it: that is the operator's call.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from ..runlock import LOCK_DIR as STATE_DIR

RAFT_DIR = "/var/lib/patroni/raft"
# Directories kbpg created, one path a line, kept beside the run lock in kbpg's own 0700 root directory.
CREATED_FILE = f"{STATE_DIR}/created-dirs"
PATRONI_CONFIG = "/etc/patroni/config.yml"
WANTED = "postgres:postgres 700"
SHOWN_ENTRIES = 5

_RAFT_FILE = re.compile(r"^[^/]+\.(journal|dump)(\.[A-Za-z0-9]+)*$")

PROBE = r"""
kbpg_dir() {
  k=$1; d=$2
  if [ ! -e "$d" ]; then echo "g:dir $k missing"; return; fi
  if [ ! -d "$d" ]; then echo "g:dir $k notdir $(stat -c %F "$d" 2>/dev/null)"; return; fi
  echo "g:dir $k stat $(stat -L -c '%U:%G %a' "$d") $(ls -A -b "$d" 2>/dev/null | wc -l)"
  if [ -f "$d/PG_VERSION" ]; then echo "g:pgversion $k $(head -c 20 "$d/PG_VERSION" | tr -dc '0-9.')"; return; fi
  ls -A -b "$d" 2>/dev/null | head -n 50 | sed "s/^/g:entry $k /"
}
kbpg_dir data {data_dir}
kbpg_dir raft {raft_dir}
if [ -f {created} ]; then sed 's/^/g:created /' {created}; fi
if [ -f {config} ]; then sed -n 's/^ *data_dir: *//p' {config} | sed 's/^/g:configured /'; fi
for p in /proc/[0-9]*; do
  { read -r c < "$p/comm"; } 2>/dev/null || continue
  case "$c" in
    initdb|pg_basebackup) echo "g:busy $(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)";;
    postgres)
      { read -r _ _ _ pp _ < "$p/stat"; } 2>/dev/null || continue
      { read -r pc < "/proc/$pp/comm"; } 2>/dev/null || pc=''
      [ "$pc" = postgres ] && continue
      d=$(readlink "$p/cwd" 2>/dev/null) || continue
      # Its service: the unit in the unified hierarchy (0::) or, on cgroup v1 hosts, in name=systemd's.
      cg=$(cut -d: -f3- "$p/cgroup" 2>/dev/null | grep -m 1 -E '[.](service|scope)$' || sed -n 's/^0:://p' "$p/cgroup" 2>/dev/null)
      [ -n "$cg" ] || continue
      # A server (postmaster, or single-user) owns the postmaster.pid of its data directory, its working
      # directory; `postgres -C/-V`, initdb's bootstrap backend and the like do not: they are not servers.
      first=$(head -n 1 "$d/postmaster.pid" 2>/dev/null)
      [ "$first" = "${p#/proc/}" ] || [ "$first" = "-${p#/proc/}" ] || continue
      port=$(sed -n 4p "$d/postmaster.pid" 2>/dev/null)
      ver=$(cat "$d/PG_VERSION" 2>/dev/null)
      echo "g:postmaster ${p#/proc/} ${port:--} ${ver:--} $cg $d";;
  esac
done
if command -v pg_lsclusters >/dev/null 2>&1; then
  pg_lsclusters -h 2>/dev/null | while read -r v n port status owner dir rest; do
    sc=$(grep -v '^[[:space:]]*#' "/etc/postgresql/$v/$n/start.conf" 2>/dev/null | tr -d ' \t\n')
    echo "g:cluster $v $n $port $status ${sc:-auto} $dir"
  done
fi
"""


def probe_script(data_dir: str, raft_dir: str = RAFT_DIR) -> str:
    """The read-only shell script whose output :func:`parse` reads (every line starts with ``g:``)."""
    return (PROBE.replace("{data_dir}", shlex.quote(data_dir)).replace("{raft_dir}", shlex.quote(raft_dir))
            .replace("{created}", shlex.quote(CREATED_FILE)).replace("{config}", shlex.quote(PATRONI_CONFIG)))


@dataclass
class DirState:
    kind: str  # "data" | "raft"
    seen: bool = False  # the probe said something about it
    exists: bool = False
    file_type: str = ""  # what it is when it exists but is not a directory
    owner_mode: str = ""  # "user:group mode", e.g. "postgres:postgres 700"
    count: int = 0
    pg_version: str = ""
    entries: list[str] = field(default_factory=list)


@dataclass
class Cluster:
    """A line of pg_lsclusters."""

    version: str
    name: str
    port: str
    status: str
    start: str  # start.conf: auto | manual | disabled
    data_dir: str

    @property
    def label(self) -> str:
        return f"PostgreSQL {self.version} cluster {self.name}"


@dataclass
class Postmaster:
    pid: str
    port: str
    version: str
    cgroup: str
    data_dir: str


@dataclass
class HostState:
    dirs: dict[str, DirState] = field(default_factory=lambda: {"data": DirState("data"), "raft": DirState("raft")})
    created: set[str] = field(default_factory=set)
    configured: set[str] = field(default_factory=set)
    busy: list[str] = field(default_factory=list)
    clusters: list[Cluster] = field(default_factory=list)
    postmasters: list[Postmaster] = field(default_factory=list)


def _norm(path: str) -> str:
    path = path.strip().strip("'\"")
    return path.rstrip("/") or "/"


def parse(text: str) -> HostState:
    state = HostState()
    for line in text.splitlines():
        if not line.startswith("g:"):
            continue
        kind, _, rest = line[2:].partition(" ")
        if kind == "dir":
            which, _, rest = rest.partition(" ")
            d = state.dirs.get(which)
            if d is None:
                continue
            d.seen = True
            word, _, rest = rest.partition(" ")
            if word == "notdir":
                d.exists, d.file_type = True, rest.strip() or "file"
            elif word == "stat":
                d.exists = True
                fields = rest.split()
                d.owner_mode = " ".join(fields[:2])
                d.count = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else 0
        elif kind == "pgversion":
            which, _, version = rest.partition(" ")
            if which in state.dirs:
                state.dirs[which].pg_version = version.strip() or "?"
        elif kind == "entry":
            which, _, name = rest.partition(" ")
            if which in state.dirs:
                state.dirs[which].entries.append(name)
        elif kind == "created":
            state.created.add(_norm(rest))
        elif kind == "configured":
            state.configured.add(_norm(rest))
        elif kind == "busy":
            state.busy.append(rest.strip())
        elif kind == "postmaster":
            fields = rest.split(" ", 4)
            if len(fields) == 5:
                pid, port, version, cgroup, data_dir = fields
                state.postmasters.append(Postmaster(pid, port, version, cgroup, _norm(data_dir) if data_dir else "?"))
        elif kind == "cluster":
            fields = rest.split(" ", 5)
            if len(fields) == 6 and fields[0].replace(".", "").isdigit():
                version, name, port, status, start, data_dir = fields
                state.clusters.append(Cluster(version, name, port, status, start, _norm(data_dir)))
    return state


@dataclass
class Verdict:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    create: list[str] = field(default_factory=list)  # directories to create for postgres, 0700 (and record)
    repair: list[str] = field(default_factory=list)  # directories to give back to postgres:postgres 0700
    clusters: set[tuple[str, str]] = field(default_factory=set)  # (version, name) of every pg_lsclusters cluster


def _listing(d: DirState) -> str:
    shown = d.entries[:SHOWN_ENTRIES]
    more = ", ..." if d.count > len(shown) else ""
    return f"{d.count} entr{'y' if d.count == 1 else 'ies'}: {', '.join(shown)}{more}"


def _busy_in(state: HostState, path: str) -> bool:
    """An initdb or pg_basebackup works in ``path`` right now (Patroni bootstrapping or cloning)."""
    for args in state.busy:
        tokens = args.split()
        for i, token in enumerate(tokens):
            if token in ("-D", "--pgdata"):
                value = tokens[i + 1] if i + 1 < len(tokens) else ""
            elif token.startswith("--pgdata="):
                value = token.split("=", 1)[1]
            elif token.startswith("-D"):
                value = token[2:]
            else:
                continue
            if value and _norm(value) == path:
                return True
    return False


def _not_ours_hint(path: str, d: DirState, what: str) -> str:
    return (f"{what} {path} exists but kbpg did not create it ({d.owner_mode or 'owner unknown'}"
            f"{', empty' if not d.count else ''}): kbpg gives only its own directories and PostgreSQL data "
            f"directories to postgres. Remove it so kbpg creates it, or run `chown postgres:postgres {path} && "
            f"chmod 700 {path}` on the host (once the postgresql package is installed) if it is meant for this"
            + (", or point postgresql.data_dir at a subdirectory of it" if what == "the data directory" else ""))


def judge(state: HostState, data_dir: str, version: int, raft_dir: str = RAFT_DIR) -> Verdict:
    verdict = Verdict(clusters={(c.version, c.name) for c in state.clusters})
    data_dir, raft_dir = _norm(data_dir), _norm(raft_dir)
    for d, path in ((state.dirs["data"], data_dir), (state.dirs["raft"], raft_dir)):
        what = "the data directory" if d.kind == "data" else "the Raft directory"
        # A data directory named in patroni.yml is not proof: an older kbpg wrote whatever data_dir it was given.
        ours = state.created | (state.configured if d.kind == "raft" else set())
        if not d.seen:
            verdict.errors.append(f"could not read the state of {what} {path}")
            continue
        if not d.exists:
            verdict.create.append(path)
            continue
        if d.file_type:
            verdict.errors.append(f"{what} {path} exists but is a {d.file_type}, not a directory")
            continue
        good = d.owner_mode == WANTED
        if d.kind == "data":
            if d.pg_version:
                if d.pg_version != str(version):
                    verdict.errors.append(
                        f"{what} {path} holds PostgreSQL {d.pg_version} data but postgresql.version is {version}: "
                        "that is an upgrade, which kbpg does not do; set the version it holds or choose another "
                        "postgresql.data_dir")
                    continue
                if path not in ours | state.configured:  # Patroni already runs it: nothing new to say
                    verdict.warnings.append(f"{what} {path} already holds PostgreSQL {d.pg_version} data kbpg did not "
                                            "create: Patroni takes it over as this node's data")
                if not good:
                    verdict.repair.append(path)  # a PostgreSQL data directory: field failure mode 4
                continue
            if d.count:
                if _busy_in(state, path):
                    continue  # Patroni's initdb or pg_basebackup is filling it: leave it alone
                mount = " (lost+found: a mount point; use a subdirectory of it)" if "lost+found" in d.entries else ""
                verdict.errors.append(
                    f"{what} {path} is not empty and holds no PG_VERSION ({_listing(d)}){mount}: initdb and "
                    "pg_basebackup refuse such a directory, so no cluster could start. Move those files away or "
                    "point postgresql.data_dir at a missing or empty directory")
                continue
        else:
            strangers = [name for name in d.entries if not _RAFT_FILE.match(name)]
            if strangers or d.count > len(d.entries):
                verdict.errors.append(f"{what} {path} holds files that are not Raft's ({_listing(d)}): move them away")
                continue
            if d.count and path not in ours:
                verdict.errors.append(f"{what} {path} holds Raft state kbpg's Patroni did not write ({_listing(d)}): "
                                      "another Patroni's? Move it away if it is not needed")
                continue
        if good:
            continue
        if path in ours:
            verdict.repair.append(path)
        else:
            verdict.errors.append(_not_ours_hint(path, d, what))
    _judge_postgres(state, data_dir, verdict)
    return verdict


def _unit(cgroup: str) -> str:
    last = cgroup.rstrip("/").rsplit("/", 1)[-1]
    return last if last.endswith((".service", ".scope")) else ""


def _judge_postgres(state: HostState, data_dir: str, verdict: Verdict) -> None:
    """Another PostgreSQL on the node: refused, never stopped."""
    clusters = {c.data_dir: c for c in state.clusters}
    found = []
    running = set()
    for pm in state.postmasters:
        running.add(pm.data_dir)
        # Patroni starts PostgreSQL in its own service's cgroup (its postmaster is re-parented to init).
        if pm.cgroup.endswith("/patroni.service"):
            continue
        cluster = clusters.get(pm.data_dir)
        label = cluster.label if cluster else (f"PostgreSQL {pm.version}" if pm.version != "-" else "a postgres process")
        unit = _unit(pm.cgroup)
        extra = f", unit {unit}" if unit else ""
        found.append(f"{label} runs (data {pm.data_dir}, port {pm.port}, pid {pm.pid}{extra})")
    for cluster in state.clusters:
        if cluster.data_dir in running:
            continue
        where = f"data {cluster.data_dir}, port {cluster.port}"
        if cluster.status.startswith("online"):
            found.append(f"{cluster.label} runs ({where})")
        elif cluster.start == "auto":
            found.append(f"{cluster.label} is stopped but starts at boot ({where}, start.conf auto)")
        elif cluster.data_dir == data_dir:
            found.append(f"{cluster.label} uses postgresql.data_dir ({where}, {cluster.status})")
    if found:
        drop = next((f" (`pg_dropcluster --stop {c.version} {c.name}`)" for c in state.clusters
                     if any(c.label in text for text in found)), "")
        verdict.errors.append(
            "another PostgreSQL is on this node: " + ", ".join(found) + ". kbpg never stops, disables or removes a "
            "PostgreSQL it did not create: move it to another host, or remove it yourself if it holds nothing you "
            f"need{drop}, then re-run")


def directory_commands(verdict: Verdict) -> str:
    """Shell that creates (and records) and repairs the directories the verdict allows, printing what it did."""
    parts = []
    for path in verdict.create:
        quoted = shlex.quote(path)
        parent = shlex.quote(path.rsplit("/", 1)[0] or "/")
        # mkdir, not install -d: a directory that appeared since the probe is not chowned.
        parts.append(
            f"(umask 022; mkdir -p {parent}) && install -d -m 0700 {STATE_DIR} && mkdir -m 0700 {quoted} && "
            f"chown postgres:postgres {quoted} && "
            f"{{ grep -qxF {quoted} {CREATED_FILE} 2>/dev/null || (umask 022; echo {quoted} >> {CREATED_FILE}); }} && "
            f"echo {shlex.quote(path + '(created)')}")
    for path in verdict.repair:
        quoted = shlex.quote(path)
        parts.append(f"chown postgres:postgres {quoted} && chmod 0700 {quoted} && echo {shlex.quote(path + '(mode)')}")
    return "set -e; " + "; ".join(parts) if parts else ""
