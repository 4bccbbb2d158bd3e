"""Is Patroni's Raft (its DCS) alive on a DB node, and bringing it back when it is not.

Patroni's Raft is pysyncobj running in one thread of the patroni process (Patroni 4.0.7, python3-pysyncobj 0.3.14
on Debian 13). Two upstream faults meet after a crash and a quick restart (``kbpg drill kill``, systemd's
Restart=always, every member restarted at once):

- pysyncobj keeps neither the Raft term nor its vote across a restart (currentTerm starts at 0 again; see
  bakwc/PySyncObj#201 and the open #202): a restarted member can lead a term it already voted in, two leaders
  share one term and the members' logs diverge;
- a member whose applied index is then ahead of the leader's log fails ``assert idx > self.__raftLastApplied``
  (pysyncobj syncobj.py, on the reply to one of its own writes). The exception ends the thread
  (``Exception in thread Thread-2 (_autoTickThread): ... AssertionError`` in Patroni's journal); nothing restarts
  it and Patroni does not notice. The member keeps serving REST from a frozen copy of the DCS (a leader key that
  never expires), its writes time out ("DCS is not accessible"), patronictl hangs there; with two such members
  the cluster has no quorum and no primary until Patroni is restarted on them.

Restarting Patroni on the member heals it: pysyncobj reloads its journal and the member rejoins (seen on the lab
and in a local reproduction with Patroni's own KVStoreTTL). :func:`ask` tells a live Raft from a silent one with
pysyncobj's own status request, sent on the node to the node's own Raft port; the Raft password is read there from
Patroni's configuration (root only) and never leaves the node.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

PATRONI_CONFIG = "/etc/patroni/config.yml"
ASK_TIMEOUT = 3.0  # seconds pysyncobj's utility waits for the member's answer
MIN_UP = 20  # seconds: a Patroni started more recently may still be binding its Raft port; it is not judged

# Prints "r:unit STATE SECONDS_UP" (the patroni unit), then, when it is active, one line: "r:status {json}",
# "r:silent ADDRESS ERROR" (the Raft port took the connection or refused it, no answer came) or "r:unknown WHAT"
# (nothing to ask: no configuration, no pysyncobj).
PROBE = f"""state=$(systemctl show -p ActiveState --value patroni)
since=$(systemctl show -p ActiveEnterTimestampMonotonic --value patroni)
echo "r:unit ${{state:-unknown}} $(( $(cut -d' ' -f1 /proc/uptime | cut -d. -f1) - ${{since:-0}} / 1000000 ))"
[ "$state" = active ] || exit 0
python3 - <<'PY'
import json, sys
try:
    import yaml
    from pysyncobj.utility import TcpUtility
    with open({PATRONI_CONFIG!r}) as f:
        raft = (yaml.safe_load(f) or {{}}).get("raft") or {{}}
except Exception as exc:
    print("r:unknown", type(exc).__name__); sys.exit(0)
address = raft.get("self_addr")
if not address:
    print("r:unknown no raft.self_addr"); sys.exit(0)
try:
    status = TcpUtility(raft.get("password"), {ASK_TIMEOUT}).executeCommand(address, ["status"])
except Exception as exc:
    print("r:silent", address, (str(exc) or type(exc).__name__)[:80]); sys.exit(0)
if not isinstance(status, dict):  # a refused connection returns None, it does not raise
    print("r:silent", address, "connection refused"); sys.exit(0)
keys = ("leader", "raft_term", "commit_idx", "last_applied", "state", "has_quorum")
print("r:status", json.dumps({{k: status.get(k) for k in keys}}, default=str))
PY"""


@dataclass
class RaftStatus:
    """One member's Raft. ``answers``: True (it answered), False (silent: its thread is gone or stuck), None
    (could not be asked: ``detail`` says why)."""

    answers: bool | None
    detail: str = ""
    status: dict = field(default_factory=dict)
    up: int | None = None  # seconds the patroni unit has been active

    @property
    def leader(self) -> str | None:
        value = self.status.get("leader")
        return None if value in (None, "None") else str(value)


def parse(output: str) -> RaftStatus:
    """The probe's output read; a member whose Patroni is not active, or active for less than MIN_UP seconds, is
    not judged (answers None): a stopped Patroni is a drill's fault or the operator's, a young one still starts."""
    unit, up = "unknown", None
    for line in output.splitlines():
        kind, _, rest = line.strip().partition(" ")
        if kind == "r:unit":
            unit, _, seconds = rest.partition(" ")
            up = int(seconds) if seconds.lstrip("-").isdigit() else None
            if unit != "active":
                return RaftStatus(None, f"patroni is {unit}", up=up)
        elif kind == "r:status":
            try:
                status = json.loads(rest)
            except ValueError:
                return RaftStatus(None, f"unreadable status: {rest[:80]}", up=up)
            return RaftStatus(True, f"leader {status.get('leader')}, term {status.get('raft_term')}", status, up)
        elif kind == "r:silent":
            detail = (f"patroni active for {up} s, its Raft port {rest.split(' ', 1)[0]} does not answer: "
                      f"{rest.partition(' ')[2] or 'no answer'}")
            if up is None or up < MIN_UP:
                return RaftStatus(None, f"patroni started {up} s ago, its Raft may still be starting", up=up)
            return RaftStatus(False, detail, up=up)
        elif kind == "r:unknown":
            return RaftStatus(None, f"cannot ask: {rest}", up=up)
    return RaftStatus(None, f"no answer from the probe: {output.strip()[:80]!r}", up=up)


def ask(connection, timeout: float = 20.0) -> RaftStatus:
    """The member's Raft, asked on its node (``connection``: an ssh Connection or its fakes)."""
    result = connection.run(PROBE, timeout=timeout, check=False, what="asking Patroni's Raft")
    if not result.ok and "r:" not in result.stdout:
        return RaftStatus(None, f"cannot ask: {result.tail(1)}")
    return parse(result.stdout)


STOPPED = ("Patroni's Raft stopped answering on {name} ({detail}): most likely its pysyncobj thread died, a known "
           "upstream fault after a crash and quick restart (see README: A known upstream fault, under Failover)")


def silent_text(name: str, status: RaftStatus) -> str:
    return STOPPED.format(name=name, detail=status.detail)


__all__ = ["MIN_UP", "PROBE", "RaftStatus", "parse", "ask", "silent_text", "STOPPED"]
