"""3. The services are active on each node, and not restarting in a loop; on a DB node, Patroni's Raft (its DCS,
a thread of the patroni process) answers (:mod:`kbpg_tui.core.raft`: after a crash it can die, unnoticed)."""

from __future__ import annotations

from .. import raft
from ..ssh import Host
from .base import Check, CheckFailed, CheckWarning, on_hosts
from .probe import ProbeContext

RECENT_SECONDS = 60  # a unit restarted and up for less than this is warned about


def services(p: ProbeContext, host: Host, units: list[str]) -> str:
    out = p.ssh(host, " ; ".join(
        f"echo {u} $(systemctl show -p ActiveState --value {u}) $(systemctl show -p NRestarts --value {u}) "
        f"$(( $(cut -d' ' -f1 /proc/uptime | cut -d. -f1) - "
        f"$(systemctl show -p ActiveEnterTimestampMonotonic --value {u}) / 1000000 ))"
        for u in units))
    problems, warnings, fine = [], [], []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        unit, state, restarts, up_for = parts[0], parts[1], parts[2], parts[3]
        if state != "active":
            problems.append(f"{unit} is {state}")
        elif (restarts.isdigit() and int(restarts) > 0 and up_for.lstrip("-").isdigit()
              and int(up_for) < RECENT_SECONDS):
            warnings.append(f"{unit} restarted {restarts} time(s), up for {up_for} s")
        else:
            fine.append(unit)
    if problems:
        raise CheckFailed(f"{host.name}: " + "; ".join(problems))
    if warnings:
        raise CheckWarning(f"{host.name}: " + "; ".join(warnings))
    return f"{host.name}: {', '.join(fine)} active"


def db_services(p: ProbeContext, host: Host) -> str:
    warning: CheckWarning | None = None
    try:
        verdict = services(p, host, ["patroni"])  # raises CheckFailed when patroni is not active
    except CheckWarning as exc:  # it restarted lately: a silent Raft still fails
        warning, verdict = exc, ""
    watchdog = p.settings.patroni.raft_watchdog
    out = p.ssh(host, (f"echo w:timer $(systemctl is-active {raft.WATCH_UNIT}.timer 2>/dev/null); " if watchdog
                       else "") + raft.PROBE)
    status = raft.parse(out)
    if status.answers is False:
        raise CheckFailed(f"{host.name}: {raft.silent_text(host.name, status)}; until Patroni is restarted there "
                          f"its DCS is frozen: restart it (systemctl restart patroni on {host.name})")
    if warning is not None:
        raise warning
    timer = next((line.split()[1:2] or ["unknown"] for line in out.splitlines() if line.startswith("w:timer")), None)
    if timer is not None and timer[0] != "active":
        # patroni.raft_watchdog is on and its timer does not run here: a member whose Raft thread dies stays frozen.
        raise CheckWarning(f"{host.name}: the Raft watchdog ({raft.WATCH_UNIT}.timer) is {timer[0]}: a member whose "
                           "Raft stops answering is not restarted by itself; re-run kbpg install --step 02")
    return verdict + (f"; its Raft answers ({status.detail})" if status.answers else "") + (
        "; Raft watchdog active" if timer is not None else "")


def haproxy_services(p: ProbeContext, host: Host) -> str:
    return services(p, host, ["haproxy", "pgbouncer"])


CHECK = Check(3, "services", on_hosts("db", db_services), on_hosts("haproxy", haproxy_services))
