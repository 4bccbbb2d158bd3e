"""Step 01: preflight. SSH and sudo on every host, OS, free ports, data directory
filesystem and space, clock, and the network paths the cluster needs. On the DB nodes,
what is already there (host_guards): a data or Raft directory kbpg must not use or
touch, another PostgreSQL. On the backup host (if one is selected and backups are on):
SSH and sudo, OS, clock, free space for the repository, and SSH paths both ways
between it and every DB node (pgBackRest's own connections).

Nothing is changed here; a warning is reported as a warning (never a silent pass).
"""

from __future__ import annotations

import re
import shlex
import time
from concurrent.futures import ThreadPoolExecutor

from ..engine import Outcome, Step, Task, TaskError, TaskRun
from ..ssh import Host
from . import host_guards

SUPPORTED_OS = {"debian": 11, "ubuntu": 20}
MIN_FREE_BYTES = 1 << 30  # below this, refuse
WARN_FREE_BYTES = 10 << 30
MAX_CLOCK_SKEW = 30.0  # seconds: beyond this TLS, logs and timeouts go wrong
WARN_CLOCK_SKEW = 2.0
BACKUP_REPO_PATH = "/var/lib/pgbackrest"  # pgBackRest's repository on the backup host (backup.REPO_PATH)

FACTS_SCRIPT = r"""
. /etc/os-release
echo "os=$ID"
echo "version=${VERSION_ID:-}"
echo "codename=${VERSION_CODENAME:-}"
echo "now=$(date +%s.%N)"
echo "ntp=$(timedatectl show -p NTPSynchronized --value 2>/dev/null || echo unknown)"
d={data_dir}
while [ ! -e "$d" ]; do d=$(dirname "$d"); done
df -P -T -B1 "$d" | awk 'NR==2 {print "fstype="$2; print "avail="$5}'
if command -v ss >/dev/null; then ss -Hltnp | sed 's/^/listen=/'; else echo "listen=unavailable"; fi
"""


def _port_plan(run: TaskRun, role: str) -> dict[int, tuple[str, set[str]]]:
    """port → (its kbpg.toml key, process names that may hold it: ours, on a re-run)."""
    ports = run.settings.ports
    if role == "db":
        return {
            ports.postgresql: ("ports.postgresql", {"postgres"}),
            ports.patroni_rest: ("ports.patroni_rest", {"patroni"}),
            ports.raft: ("ports.raft", {"patroni"}),
        }
    return {
        ports.haproxy_write: ("ports.haproxy_write", {"haproxy"}),
        ports.haproxy_read: ("ports.haproxy_read", {"haproxy"}),
        ports.haproxy_stats: ("ports.haproxy_stats", {"haproxy"}),
        ports.pgbouncer: ("ports.pgbouncer", {"pgbouncer"}),
    }


_LISTEN_RE = re.compile(r"^\S+\s+\d+\s+\d+\s+(?P<local>\S+):(?P<port>\d+)\s+\S+(?:\s+(?P<users>.*))?$")
_USER_RE = re.compile(r'\("(?P<name>[^"]+)",pid=(?P<pid>\d+)')


def parse_facts(text: str) -> dict:
    facts: dict = {"listen": []}
    for line in text.splitlines():
        if line.startswith("g:"):
            continue  # host_guards' lines
        key, _, value = line.partition("=")
        if key == "listen":
            facts["listen"].append(value)
        elif key:
            facts[key] = value.strip()
    return facts


def listeners(facts: dict) -> list[tuple[str, int, list[tuple[str, str]]]]:
    """(local address, port, [(process, pid)]) for each listening TCP socket."""
    found = []
    for line in facts["listen"]:
        match = _LISTEN_RE.match(line.strip())
        if match:
            users = [(m.group("name"), m.group("pid")) for m in _USER_RE.finditer(match.group("users") or "")]
            found.append((match.group("local").strip("[]"), int(match.group("port")), users))
    return found


def role_of(run: TaskRun, host: Host) -> str:
    return "db" if host.name in {h.name for h in run.ctx.db_hosts} else "haproxy"


def check_host(run: TaskRun) -> Outcome:
    host = run.host
    assert host is not None
    role = role_of(run, host)
    data_dir = run.settings.postgresql.effective_data_dir
    script = FACTS_SCRIPT.replace("{data_dir}", shlex.quote(data_dir))
    if role == "db":
        script += host_guards.probe_script(data_dir)
    asked_at = time.time()
    result = run.run(script, what="reading the host's facts")
    answered_at = time.time()
    facts = parse_facts(result.stdout)
    run.ctx.state.setdefault("facts", {})[host.name] = facts
    errors: list[str] = []
    warnings: list[str] = []

    os_id, version = _check_os_and_clock(host, facts, asked_at, answered_at, errors, warnings)

    if role == "db":
        fstype = facts.get("fstype", "?")
        if fstype != "xfs":
            warnings.append(f"{host.name}: the data directory {data_dir} is on {fstype}; XFS is recommended")
        _free_space(host, facts, data_dir, errors, warnings)
        verdict = host_guards.judge(host_guards.parse(result.stdout), data_dir, run.settings.postgresql.version)
        errors += verdict.errors
        warnings += [f"{host.name}: {warning}" for warning in verdict.warnings]

    if facts["listen"] == ["unavailable"]:
        warnings.append(f"{host.name}: `ss` is missing (iproute2): free ports not checked")
    else:
        ours = {"0.0.0.0", "*", "::", host.address}
        if role == "haproxy":
            ours.add("127.0.0.1")  # the write port and PgBouncer also listen there (PgBouncer's local backend)
        bind_all = run.settings.network.bind == "all"  # 0.0.0.0 collides with a listener on any IPv4 address
        for address, port, users in listeners(facts):
            plan = _port_plan(run, role).get(port)
            if plan is None or not (address in ours or (bind_all and ":" not in address)):
                continue
            key, allowed = plan
            strangers = [(name, pid) for name, pid in users if name not in allowed]
            if strangers or not users:
                holder = ", ".join(f"{name} (pid {pid})" for name, pid in strangers) or "an unknown process"
                errors.append(f"port {port} ({key}) is already taken by {holder}; stop it or choose another port in kbpg.toml")

    if errors:
        raise TaskError(f"{host.name}: " + "; ".join(errors))
    sudo = run.connection().sudo_mode
    summary = f"{os_id} {version}, ssh as {host.user}" + (f" (sudo: {sudo})" if sudo != "root" else "")
    return Outcome.unchanged(summary, warnings)


def _check_os_and_clock(host: Host, facts: dict, asked_at: float, answered_at: float, errors: list[str],
                        warnings: list[str]) -> tuple[str, str]:
    """The OS (supported, recent enough) and the clock (close to this machine's, NTP-synchronised); returns the OS
    id and version."""
    os_id, version = facts.get("os", "?"), facts.get("version", "")
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    if os_id not in SUPPORTED_OS:
        errors.append(f"OS {os_id} {version} is not supported (Debian or Ubuntu)")
    elif major < SUPPORTED_OS[os_id]:
        errors.append(f"{os_id} {version} is too old (needs {os_id} {SUPPORTED_OS[os_id]} or newer)")

    try:
        skew = abs(float(facts["now"]) - (asked_at + answered_at) / 2)
    except (KeyError, ValueError):
        skew = 0.0
        warnings.append(f"{host.name}: could not read the clock")
    if skew > MAX_CLOCK_SKEW:
        errors.append(f"clock is {skew:.0f} s off this machine's; fix time sync (chrony/systemd-timesyncd)")
    elif skew > WARN_CLOCK_SKEW:
        warnings.append(f"{host.name}: clock is {skew:.1f} s off this machine's")
    if facts.get("ntp") not in ("yes",):
        warnings.append(f"{host.name}: the clock is not reported as NTP-synchronised (timedatectl: {facts.get('ntp', 'unknown')})")
    return os_id, version


def _free_space(host: Host, facts: dict, path: str, errors: list[str], warnings: list[str]) -> None:
    try:
        avail = int(facts.get("avail", "0"))
    except ValueError:
        avail = 0
    if avail < MIN_FREE_BYTES:
        errors.append(f"only {avail >> 20} MiB free for {path}; at least {MIN_FREE_BYTES >> 30} GiB needed")
    elif avail < WARN_FREE_BYTES:
        warnings.append(f"{host.name}: {avail >> 30} GiB free for {path}")


PROBE_SCRIPT = r"""
for target in {targets}; do
  address=${target%:*}; port=${target##*:}
  out=$(timeout {seconds} bash -c "exec 3<>/dev/tcp/$address/$port" 2>&1); rc=$?
  echo "$target $rc ${out//$'\n'/ }"
done
"""


def check_network(run: TaskRun) -> Outcome:
    """The DB nodes reach each other on PostgreSQL, Patroni REST and Raft; the HAProxy nodes reach the DB nodes.

    A refused connection proves the path is open (nothing listens yet); a timeout means a firewall drops it.
    """
    host = run.host
    assert host is not None
    ports = run.settings.ports
    db_hosts = [h for h in run.ctx.db_hosts if h.name != host.name]
    wanted = [ports.postgresql, ports.patroni_rest, ports.raft] if role_of(run, host) == "db" else [ports.postgresql, ports.patroni_rest]
    targets = [f"{h.address}:{port}" for h in db_hosts for port in wanted]
    names = {h.address: h.name for h in db_hosts}
    seconds = max(2, int(run.settings.ssh.connect_timeout // 2))
    script = PROBE_SCRIPT.replace("{targets}", " ".join(targets)).replace("{seconds}", str(seconds))
    result = run.run(script, what="probing the network")
    blocked = []
    for line in result.stdout.splitlines():
        target, _, rest = line.partition(" ")
        code, _, message = rest.partition(" ")
        if code == "0" or "refused" in message.lower():
            continue
        address = target.rsplit(":", 1)[0]
        reason = "timed out (a firewall drops it?)" if code == "124" else (message.strip() or f"exit {code}")
        blocked.append(f"{names.get(address, address)} {target}: {reason}")
    if blocked:
        raise TaskError(f"{host.name} cannot reach " + "; ".join(blocked))
    return Outcome.unchanged(f"reaches {len(targets)} ports on {len(db_hosts)} DB nodes")


def _ssh_probe(run: TaskRun, source: Host, targets: list[Host]) -> list[str]:
    """What ``source`` cannot reach of ``targets``' SSH ports, one line each naming both ends (only a completed
    TCP connection counts: a refusal means no sshd there, which pgBackRest's SSH needs)."""
    seconds = max(2, int(run.settings.ssh.connect_timeout // 2))
    wanted = [f"{h.address}:{h.port}" for h in targets]
    names = {f"{h.address}:{h.port}": h.name for h in targets}
    script = PROBE_SCRIPT.replace("{targets}", " ".join(wanted)).replace("{seconds}", str(seconds))
    result = run.run(script, host=source, what="probing the SSH paths of the backups")
    blocked, answered = [], set()
    for line in result.stdout.splitlines():
        target, _, rest = line.partition(" ")
        code, _, message = rest.partition(" ")
        if target not in names:
            continue
        answered.add(target)
        if code == "0":
            continue
        reason = "timed out (a firewall drops it?)" if code == "124" else (message.strip() or f"exit {code}")
        blocked.append(f"{source.name} cannot reach {names[target]} {target} (SSH): {reason}")
    blocked += [f"{source.name}: no answer for {names[target]} {target} (SSH)" for target in wanted
                if target not in answered]
    return blocked


def check_backup_host(run: TaskRun) -> Outcome:
    """The backup host: SSH and sudo (this connection), OS, clock, free space on the filesystem of the repository
    (/var/lib/pgbackrest, or its nearest existing parent), and pgBackRest's SSH paths: the backup host to every DB
    node's SSH port, every DB node to the backup host's."""
    host = run.host
    assert host is not None
    script = FACTS_SCRIPT.replace("{data_dir}", shlex.quote(BACKUP_REPO_PATH))
    asked_at = time.time()
    result = run.run(script, what="reading the backup host's facts")
    answered_at = time.time()
    facts = parse_facts(result.stdout)
    run.ctx.state.setdefault("facts", {})[host.name] = facts
    errors: list[str] = []
    warnings: list[str] = []
    os_id, version = _check_os_and_clock(host, facts, asked_at, answered_at, errors, warnings)
    _free_space(host, facts, BACKUP_REPO_PATH, errors, warnings)
    if errors:
        raise TaskError(f"{host.name}: " + "; ".join(errors))
    db_hosts = run.ctx.db_hosts
    blocked = _ssh_probe(run, host, db_hosts)
    run.check_cancel()
    with ThreadPoolExecutor(max_workers=max(1, len(db_hosts))) as pool:
        for lines in pool.map(lambda db: _ssh_probe(run, db, [host]), db_hosts):
            blocked += lines
    if blocked:
        raise TaskError("; ".join(blocked) + ": pgBackRest connects over SSH both ways between the backup host and "
                                             "the DB nodes; open TCP port 22 between them")
    sudo = run.connection().sudo_mode
    summary = (f"{os_id} {version}, ssh as {host.user}" + (f" (sudo: {sudo})" if sudo != "root" else "")
               + f", {int(facts.get('avail', '0')) >> 30} GiB free for {BACKUP_REPO_PATH}, SSH both ways with "
               f"{len(db_hosts)} DB nodes")
    return Outcome.unchanged(summary, warnings)


STEP = Step("01", "Preflight", [
    Task("host", "all", check_host),
    Task("network", "all", check_network),
    Task("backup host", "backup", check_backup_host),
])
