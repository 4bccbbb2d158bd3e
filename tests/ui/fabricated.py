"""Made-up results for the wizard's tests and screenshots: nothing here runs a probe or touches a host.

The diagnostics of the demo cluster with PgBouncer stopped on haproxy-02 (what an operator saw at 80×24),
and the install events of a run where step 02 fails on one host while another stops answering.
"""

from __future__ import annotations

from kbpg_tui.core import events as ev
from kbpg_tui.core.diagnostics import CheckResult, Member, Report, Verdict

PASS, WARN, FAIL = Verdict.PASS, Verdict.WARN, Verdict.FAIL
DB = ("db-master-01", "db-slave-01", "db-slave-02")
PROXIES = ("haproxy-01", "haproxy-02")
REFUSED = ('connection failed: connection to server at "198.18.0.12", port 6432 failed: Connection refused. '
           "Is the server running on that host and accepting TCP/IP connections?")
PGBOUNCER_DOWN = "haproxy-02: pgbouncer is inactive (failed since 10:41:07; last exit: status=1/FAILURE)"
PGBOUNCER_REFUSED = f"haproxy-02:6432: app login failed: {REFUSED}"
BACKUPS_OK = ("last full 21 h ago (20250105-010002F), last archived WAL 12 s ago on db-master-01, "
              "pgbackrest check ok")
SLOW_CLIENT = "LB 198.18.0.10:5432: 1 client session on the primary from 198.18.0.77, outside the allowed clients"


def _results() -> list[CheckResult]:
    """In probe order, as ``Diagnostics.run`` returns them (33 rows)."""
    rows: list[tuple[int, str, str, Verdict, str]] = [(1, "inventory", "servers.tsv", PASS, "3 DB + 2 HAProxy nodes, addresses unique")]
    for host in DB + PROXIES:
        rows.append((2, "ssh and sudo", host, PASS, f"{host}: commands run as root"))
        rows.append((12, "secret files", host, PASS, f"{host}: no secret in a world-readable file"))
    for host in DB:
        rows.append((3, "services", host, PASS, f"{host}: patroni active"))
    rows.append((3, "services", "haproxy-01", PASS, "haproxy-01: haproxy, pgbouncer active"))
    rows.append((3, "services", "haproxy-02", FAIL, PGBOUNCER_DOWN))
    rows.append((4, "patroni cluster", "cluster", PASS, "leader db-master-01, 2 streaming replicas, timeline 1, lag 0 B"))
    rows.append((5, "patroni timing", "cluster", PASS, "ttl 20, loop_wait 5, retry_timeout 5"))
    for name, where in (("LB", "LB 198.18.0.10"), ("haproxy-01", "haproxy-01"), ("haproxy-02", "haproxy-02")):
        rows.append((6, "writes through the LB", f"{where}:5432", PASS, f"{name}: write on db-master-01 seen on 2 replicas"))
        rows.append((7, "read-only port", f"{where}:5433", PASS, f"{name}: lands on db-slave-01"))
        verdict, reason = (FAIL, PGBOUNCER_REFUSED) if name == "haproxy-02" else (PASS, f"{name}: SCRAM login, wrong password refused")
        rows.append((8, "pgbouncer", f"{where}:6432", verdict, reason))
    rows.append((9, "roles and database", "LB 198.18.0.10:5432", PASS, "kb_admin, kb_repl, kb_app, keybuzz"))
    rows.append((10, "pgvector", "LB 198.18.0.10:6432", WARN, "vector 0.8.0 present; distance 1; no HNSW index on any table yet"))
    for host in PROXIES:
        rows.append((11, "haproxy", host, PASS, f"{host}: 1 server UP in the write backend; stats need the password"))
    rows.append((12, "secret files", "credentials/postgres.env", PASS, "postgres.env 0600"))
    rows.append((18, "backups", "backup-01", PASS, BACKUPS_OK))
    return [CheckResult(n, check, target, verdict, reason, 0.05 + (i % 7) * 0.08)
            for i, (n, check, target, verdict, reason) in enumerate(rows)]


def report() -> Report:
    results = _results()
    return Report(results, started=1_700_000_000.0, elapsed=0.62, slowest=0.61)


def members() -> list[Member]:
    return [Member("db-master-01", "198.18.0.120", "leader", "running", 1, None),
            Member("db-slave-01", "198.18.0.121", "replica", "streaming", 1, 0),
            Member("db-slave-02", "198.18.0.122", "replica", "streaming", 1, 0)]


def install_events() -> list:
    """Steps 00 and 01 done everywhere; in 02, db-slave-02 fails its packages, db-slave-01 stops answering."""
    events: list = []
    events.append(ev.TaskFinished("00", "local", "credentials", ev.Status.UNCHANGED, "", 0.1))
    for host in DB + PROXIES:
        events.append(ev.TaskFinished("01", host, "host", ev.Status.CHANGED, "", 1.2))
        events.append(ev.TaskFinished("01", host, "network", ev.Status.UNCHANGED, "", 0.4))
    events.append(ev.TaskFinished("02", "db-master-01", "packages", ev.Status.CHANGED, "", 31.4))
    events.append(ev.TaskStarted("02", "db-slave-01", "packages"))
    events.append(ev.TaskFinished("02", "db-slave-02", "packages", ev.Status.FAILED,
                                  "apt-get install postgresql-17: E: Unable to locate package postgresql-17-pgvector", 12.7))
    events.append(ev.HostSilent("02", "db-slave-01", 35.2))
    return events


# --- a failover drill (kill, one round): the events ops.drill.run_drill emits, and the report it returns ---------

DRILL_ENTRIES = ("LB:5432", "LB:6432")
DRILL_FAULT_SECOND = 5  # the fault, in seconds from the round's start
DRILL_STALLS = {"LB:5432": 7.1, "LB:6432": 9.4}  # as measured by hand on the lab (issue 12's table)


def drill_round_figures(number: int = 1) -> dict:
    """A round's report as plain data (RoundReport.to_dict(): what DrillRoundDone carries)."""
    from kbpg_tui.core.ops.drill_report import RoundReport
    from kbpg_tui.core.ops.writers import EntryFigures

    entries = {
        "LB:5432": EntryFigures("LB:5432", attempts=1312, acknowledged=1309, failed=3, longest_stall=7.1, stall_from=-0.02,
                                stall_to=7.08, write_gap=6.9, gap_from=0.18, gap_to=7.08,
                                errors={"server closed the connection unexpectedly": 1, "connection refused": 2},
                                lost=0, last_ack_before=-0.02, first_ack_after=7.08),
        "LB:6432": EntryFigures("LB:6432", attempts=1207, acknowledged=1206, failed=1, longest_stall=9.4, stall_from=-0.03,
                                stall_to=9.37, write_gap=9.2, gap_from=0.17, gap_to=9.37,
                                errors={"server closed the connection unexpectedly": 1}, lost=0,
                                last_ack_before=-0.03, first_ack_after=9.37),
    }
    round_report = RoundReport("kill", number, "2025-01-06T10:41:07+00:00", leader_before="db-master-01",
                               leader_after="db-slave-01", timeline_before=1, timeline_after=2,
                               time_to_new_leader=5.6, time_to_old_streaming=21.0, entries=entries, plan="fast",
                               rto_bound={"LB:5432": 24.5, "LB:6432": 25.0}, verdict="ok")
    return round_report.to_dict()


def drill_events(number: int = 1, seconds: int = 30) -> list:
    """One kill round in the order ops.drill.run_drill emits it: each second's samples per entry point as the round
    goes, the fault, the new leader and the old leader streaming as they happen; each writer's last acknowledged
    write before the fault and first one after it once the round's writes are counted; the round's figures."""
    live = [ev.DrillMark(number, "fault", 0.0, detail="kill on db-master-01"),
            ev.DrillMark(number, "new leader", 5.6, detail="db-slave-01"),
            ev.DrillMark(number, "old leader streaming", 21.0, detail="db-master-01")]
    events: list = []
    for second in range(seconds):
        after = second - DRILL_FAULT_SECOND
        if after == 0:
            events.append(ev.Progress(f"round {number}: SIGKILL Patroni and PostgreSQL on the leader; systemd starts "
                                      "them again on db-master-01"))
        for entry, stall in DRILL_STALLS.items():
            if after < 0 or after > stall:
                ok, failed = 46 + (second * 7 + len(entry)) % 5, 0
            elif after < 1:
                ok, failed = 40, 1 if entry == "LB:6432" else 2
            else:
                ok, failed = (22, 0) if after + 1 > stall else (0, 1 if (entry == "LB:5432" and after == 1) else 0)
            events.append(ev.DrillSample(number, entry, second, ok, failed))
        events += [mark for mark in live if DRILL_FAULT_SECOND + int(mark.offset) == second]
    events += [ev.DrillMark(number, "last ack", -0.02, "LB:5432"), ev.DrillMark(number, "first write after", 7.08, "LB:5432"),
               ev.DrillMark(number, "last ack", -0.03, "LB:6432"), ev.DrillMark(number, "first write after", 9.37, "LB:6432"),
               ev.DrillRoundDone(number, drill_round_figures(number))]
    return events


def drill_report(rounds: int = 1, paths: tuple = (), problems: list[str] | None = None):
    """The DrillReport run_drill returns (``paths``: where it wrote it)."""
    from kbpg_tui.core.ops.drill_report import DrillReport, RoundReport

    report = DrillReport("kill", "fast", "off", "2025-01-06T10:41:07+00:00",
                         rounds=[RoundReport.from_dict(drill_round_figures(n)) for n in range(1, rounds + 1)],
                         final_state="leader db-slave-01, 2 streaming replicas, timeline 2", problems=list(problems or []))
    report.paths = paths  # type: ignore[attr-defined]  (run_drill sets it: (markdown, json))
    return report
