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
from pathlib import Path

from . import raft_node, raft_watch

PATRONI_CONFIG = "/etc/patroni/config.yml"
ASK_TIMEOUT = 3.0  # seconds pysyncobj's utility waits for the member's answer
MIN_UP = 20  # seconds: a Patroni started more recently may still be binding its Raft port; it is not judged

# The code that asks, run on the node by its python3 (raft_node.py's text): also the Raft watchdog's (below).
ASK_SOURCE = Path(raft_node.__file__).read_text(encoding="utf-8")

# Prints "r:unit STATE SECONDS_UP" (the patroni unit), then, when it is active, one line: "r:status {json}",
# "r:silent ADDRESS ERROR" (the Raft port took the connection or refused it, no answer came) or "r:unknown WHAT"
# (nothing to ask: no configuration, no pysyncobj).
PROBE = ("""state=$(systemctl show -p ActiveState --value patroni)
since=$(systemctl show -p ActiveEnterTimestampMonotonic --value patroni)
echo "r:unit ${state:-unknown} $(( $(cut -d' ' -f1 /proc/uptime | cut -d. -f1) - ${since:-0} / 1000000 ))"
[ "$state" = active ] || exit 0
python3 - <<'PY'
""" + ASK_SOURCE + f"""
print(ask_raft({PATRONI_CONFIG!r}, {ASK_TIMEOUT!r}))
PY""")


def change_script(command: str, address: str) -> str:
    """Run on a DB node: a Raft membership change (raft_node.change_raft) sent to its own Raft member; prints one
    "r:changed", "r:refused" or "r:unknown" line. ``command``: "add" or "remove"; ``address``: "host:port"."""
    if command not in ("add", "remove"):
        raise ValueError(command)
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(address)
    return ("python3 - <<'PY'\n" + ASK_SOURCE
            + f"\nprint(change_raft({PATRONI_CONFIG!r}, {CHANGE_TIMEOUT!r}, {command!r}, {address!r}))\nPY")


CHANGE_TIMEOUT = 15.0  # seconds a membership change may take to commit


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


# --- the Raft watchdog: the same ask, on each DB node every 10 s, restarting Patroni when its Raft stays silent -----
#
# A oneshot service started by a timer, not a resident loop: each look is a new process (a look that hangs is ended
# by TimeoutStartSec and the next tick starts afresh; nothing resident can die unnoticed the way the thread it
# watches does, nor grow), and what one look must tell the next (the silent count, the last restart) is in
# /run/kbpg-raft-watch. Step 02 installs it when patroni.raft_watchdog is true (the default), removes it when false.
WATCH_SCRIPT = "/usr/local/sbin/kbpg-raft-watch"
WATCH_UNIT = "kbpg-raft-watch"
WATCH_SERVICE = f"/etc/systemd/system/{WATCH_UNIT}.service"
WATCH_TIMER = f"/etc/systemd/system/{WATCH_UNIT}.timer"
WATCH_EVERY = 10  # seconds between looks

WATCH_SERVICE_TEXT = f"""# written by kbpg (patroni.raft_watchdog): one look at Patroni's Raft, started by {WATCH_UNIT}.timer
[Unit]
Description=kbpg Raft watchdog: restart Patroni when its Raft stops answering

[Service]
Type=oneshot
ExecStart={WATCH_SCRIPT}
TimeoutStartSec={raft_watch.RESTART_TIMEOUT + 60}
SyslogIdentifier={WATCH_UNIT}
# Its own notices and warnings only: systemd's "Starting"/"Finished" lines (info), every {WATCH_EVERY} s, would
# flood the journal.
LogLevelMax=notice
"""

WATCH_TIMER_TEXT = f"""# written by kbpg (patroni.raft_watchdog)
[Unit]
Description=kbpg Raft watchdog: a look at Patroni's Raft every {WATCH_EVERY} s

[Timer]
OnActiveSec={WATCH_EVERY}s
OnUnitActiveSec={WATCH_EVERY}s
AccuracySec=1s

[Install]
WantedBy=timers.target
"""


def watchdog_script() -> str:
    """/usr/local/sbin/kbpg-raft-watch: raft_node.py's ask_raft (the probe's own code), raft_watch.py, a call."""
    return ("#!/usr/bin/python3\n# written by kbpg (patroni.raft_watchdog) from kbpg_tui/core/raft_node.py and "
            "raft_watch.py; re-run kbpg to change it\n" + ASK_SOURCE + "\n\n"
            + Path(raft_watch.__file__).read_text(encoding="utf-8")
            + f"\n\nif __name__ == \"__main__\":\n    raise SystemExit(main(ask_raft, {PATRONI_CONFIG!r}, {ASK_TIMEOUT!r}))\n")


def watchdog_files() -> list[tuple[str, str, int]]:
    """(path, text, mode) of each file the watchdog is made of."""
    return [(WATCH_SCRIPT, watchdog_script(), 0o755), (WATCH_SERVICE, WATCH_SERVICE_TEXT, 0o644),
            (WATCH_TIMER, WATCH_TIMER_TEXT, 0o644)]


__all__ = ["CHANGE_TIMEOUT", "change_script",
           "MIN_UP", "PROBE", "RaftStatus", "parse", "ask", "silent_text", "STOPPED", "WATCH_UNIT", "watchdog_files",
           "watchdog_script"]
