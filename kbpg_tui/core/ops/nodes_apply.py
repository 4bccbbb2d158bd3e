"""``kbpg nodes apply``: the plan of :mod:`kbpg_tui.core.nodes` carried out, one node at a time.

Each action of the plan is one step of the install's engine (its events, its cancel, its report), in the plan's
order (the plan keeps Raft's quorum at every step; see :func:`nodes.plan`):

- ``switchover``: the leader's node leaves: ``kbpg switchover`` (PgBouncer paused around it) to a streaming replica
  that stays, first.
- ``remove`` / ``raft-remove``: a node that answers is stopped first (the Raft watchdog's timer, then Patroni, which
  stops its PostgreSQL; both disabled; its patroni.yml moved aside, ``config.yml.removed-<stamp>``, so that nothing
  starts it again: a Patroni started with its old partners would ask Raft to take it back). Then its Raft address
  leaves the membership: pysyncobj's ``remove`` sent on a member that stays (:func:`raft.change_script`; the Raft
  password is read there, never sent), and kbpg waits until every member that answers has dropped it. Its Patroni
  member key expires by itself (ttl).
- ``add``: the install's steps 00 (its certificate), 01 (preflight) and 02 (packages, patroni.yml everywhere: the
  partners and pg_hba now name it; the members that stay are reloaded, never restarted) on the cluster's DB nodes
  plus this one. Its Patroni, started with the members as partners, asks Raft to add it (Patroni's own
  DynMemberSyncObj) and clones; step 02 waits until it streams; kbpg then waits until every member lists it.
- ``raft-add``: pysyncobj's ``add`` for a DB node Raft lacks.
- ``haproxy-remove``: a removed HAProxy node that still answers gets HAProxy and PgBouncer stopped and disabled
  first (a load balancer's health check then sends nobody there), before pg_hba stops admitting it.
- At the end the whole install (00-06) on servers.tsv as it is: pg_hba, HAProxy's backends, PgBouncer, pgvector
  and pgBackRest follow the new set of nodes (each step changes only what differs); then the plan is made again
  and must be empty.

Nothing is kept between runs: a run that stopped is finished by running it again, since the plan is made from what
the cluster is now (a node already stopped shows as a member that does not answer, and leaves first).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import nodes, raft
from ..engine import Context, Outcome, Step, StepReport, Task, TaskError, TaskRun
from ..events import Progress, Status
from ..inventory import Selection, Server
from ..logs import redact
from ..ssh import Host

RAFT_WAIT = 90.0  # seconds a membership change may take to show on every member that answers
# In the work dir from the first step until the install on the new set of nodes ended well: a run stopped after its
# last membership step leaves a plan that is empty while steps 03-06 have not followed; the next run sees the file and
# runs the install on the new set again (nothing secret in it).
PENDING_FILE = Path("nodes.pending")
POLL = 1.0
REMOVED_SUFFIX = ".removed-"
PATRONI_CONFIG = raft.PATRONI_CONFIG


@dataclass
class ApplyResult:
    """What ``kbpg nodes apply`` did: per step of the plan, how long it took and how it ended."""

    plan: nodes.Plan
    actions: list[dict[str, Any]] = field(default_factory=list)  # {number, kind, node, text, status, seconds, detail}
    switchovers: list[dict[str, Any]] = field(default_factory=list)  # SwitchoverResult.to_dict() of each
    reports: list[StepReport] = field(default_factory=list)
    after: nodes.Plan | None = None  # the plan made again at the end (empty when everything agrees)
    seconds: float = 0.0
    error: str = ""
    lb_targets: list[str] = field(default_factory=list)  # HAProxy addresses, when they changed
    install_at: float | None = None  # seconds from the start when the whole install on the new set began
    warnings: list[str] = field(default_factory=list)  # what the operator must know or do (said at the end)
    started: float = 0.0  # the start, Unix time (the actions' "at" are seconds from it)

    @property
    def ok(self) -> bool:
        return not self.error and self.after is not None and not self.after.changes and not self.after.refused

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "seconds": round(self.seconds, 1), "error": self.error, "actions": self.actions,
                "warnings": self.warnings,
                "install_at": self.install_at, "started": round(self.started, 3),
                "switchovers": self.switchovers, "plan": self.plan.to_dict(),
                "after": None if self.after is None else self.after.to_dict(), "lb_targets": self.lb_targets}


# --- selections: the cluster's DB nodes as they are, one step at a time --------------------------------------

def server_for(target: Selection, name: str, address: str) -> Server:
    """A DB node as a servers.tsv row: its own row with ``address`` (a replaced node's old address), or, for a node
    servers.tsv no longer names, a DB row of it renamed (same user, same columns)."""
    row = next((s for s in target.db_nodes if s.hostname == name), None)
    if row is None:
        row = dataclasses.replace(target.db_nodes[0], line=0, hostname=name, fqdn="", ip_public="", notes="")
    return dataclasses.replace(row, ip_private=address)


def selection_of(target: Selection, members: dict[str, str], haproxy: tuple[Server, ...] | None = None) -> Selection:
    """servers.tsv's selection with ``members`` (name -> address, in that order) as its DB nodes, and ``haproxy``
    (default: servers.tsv's) as its HAProxy nodes."""
    order = [s.hostname for s in target.db_nodes]
    names = sorted(members, key=lambda n: (order.index(n) if n in order else len(order), n))
    return dataclasses.replace(target, db_nodes=tuple(server_for(target, n, members[n]) for n in names),
                               haproxy_nodes=target.haproxy_nodes if haproxy is None else haproxy)


def host_of(target: Selection, name: str, address: str) -> Host:
    row = next((s for s in (*target.db_nodes, *target.haproxy_nodes) if s.hostname == name), None)
    user = row.user_ssh if row is not None else (target.db_nodes[0].user_ssh if target.db_nodes else "root")
    return Host(name if name != "-" else address, address, user)


# --- Raft ------------------------------------------------------------------------------------------------------

def parse_change(output: str) -> tuple[str, str]:
    """("changed" | "refused" | "unknown", the rest of the line) from :func:`raft.change_script`'s output."""
    for line in output.splitlines():
        kind, _, rest = line.strip().partition(" ")
        if kind in ("r:changed", "r:refused", "r:unknown"):
            return kind[2:], rest
    return "unknown", f"no answer: {output.strip()[:80]!r}"


def membership_views(run: TaskRun, hosts: list[Host]) -> dict[str, set[str] | None]:
    """Each host's Raft membership as its own member says it (None: it did not answer)."""
    views: dict[str, set[str] | None] = {}
    for host in hosts:
        try:
            status = raft.ask(run.connection(host), timeout=20.0)
        except Exception:  # noqa: BLE001 (a host that does not answer has no view)
            views[host.name] = None
            continue
        me, partners = nodes.raft_view(status) if status.answers else (None, {})
        views[host.name] = None if me is None else {me, *partners}
    return views


def wait_membership(run: TaskRun, hosts: list[Host], address: str, present: bool) -> str:
    """Until every member of ``hosts`` that answers has (``present``) or lacks ``address``, and a majority of them
    answers; TaskError after RAFT_WAIT."""
    deadline = time.monotonic() + RAFT_WAIT
    started = time.monotonic()
    while True:
        run.check_cancel()
        views = membership_views(run, hosts)
        answering = {name: view for name, view in views.items() if view is not None}
        wrong = [name for name, view in answering.items() if (address in view) != present]
        if len(answering) >= len(hosts) // 2 + 1 and not wrong:
            sizes = sorted({len(view) for view in answering.values()})
            return (f"{address} {'in' if present else 'out of'} Raft's membership on "
                    f"{', '.join(sorted(answering))} ({'/'.join(map(str, sizes))} members) after "
                    f"{time.monotonic() - started:.1f} s")
        if time.monotonic() > deadline:
            silent = sorted(set(views) - set(answering))
            raise TaskError(f"after {RAFT_WAIT:.0f} s, {address} is {'missing from' if present else 'still in'} "
                            f"Raft's membership on {', '.join(wrong) or '-'}"
                            + (f"; not answering: {', '.join(silent)}" if silent else "")
                            + ". Run `kbpg nodes plan` to see where the cluster is, then the same command again")
        run.ctx.sink(Progress(f"waiting for Raft's members to {'list' if present else 'drop'} {address}",
                              min(0.99, (time.monotonic() - started) / RAFT_WAIT)))
        time.sleep(POLL)


def change_membership(run: TaskRun, on: list[Host], command: str, address: str) -> str:
    """pysyncobj's ``add``/``remove`` of ``address``, sent on the first host of ``on`` whose Raft takes it."""
    def done() -> bool:
        views = membership_views(run, on)
        answering[:] = [host for host in on if views.get(host.name) is not None
                        and host.address != address.rsplit(":", 1)[0]]  # a node joining does not add itself here
        return bool(answering) and all((address in views[h.name]) == (command == "add")  # type: ignore[operator]
                                       for h in answering)

    answering: list[Host] = []
    if done():
        return f"{address} already {'in' if command == 'add' else 'out of'} Raft's membership (nothing sent)"
    errors: list[str] = []
    deadline = time.monotonic() + RAFT_WAIT
    # Raft refuses a change while it has no leader (the member that leaves may have been Raft's leader: the others
    # elect one within seconds) or while another change is in flight: asked again until RAFT_WAIT.
    while time.monotonic() < deadline and answering:
        for host in list(answering):
            run.check_cancel()
            result = run.run(raft.change_script(command, address), host=host, on_line=None, check=False,
                             timeout=raft.CHANGE_TIMEOUT + 30, what=f"Raft: {command} {address}")
            kind, rest = parse_change(result.stdout)
            if kind == "changed":
                return f"Raft {command} {address}: committed (sent on {host.name})" + (
                    f" after {len(errors)} refusal(s)" if errors else "")
            errors.append(f"{host.name}: {kind} {rest}")
            if done():  # an answer lost on the way (a timeout): the change went through all the same
                return f"Raft {command} {address}: in effect (sent on {host.name}, whose answer was {kind})"
        run.ctx.sink(Progress(f"Raft did not take {command} {address} yet ({errors[-1]}); asking again"))
        time.sleep(2 * POLL)
    errors = errors[-len(answering) or None:]  # the last round's answers
    raise TaskError(f"Raft's membership change ({command} {address}) was not taken: "
                    + ("; ".join(errors) or "no member that stays answered")
                    + ". Nothing else was changed by this step; run `kbpg nodes plan`, then the same command again")


# --- stopping a node that leaves ----------------------------------------------------------------------------

def stop_db_script(stamp: str) -> str:
    """Run on a DB node that leaves: the Raft watchdog's timer first (it would start Patroni again), then Patroni
    (which stops its PostgreSQL), both disabled; patroni.yml moved aside; prints "stopped" when no PostgreSQL runs."""
    config = shlex.quote(PATRONI_CONFIG)
    aside = shlex.quote(PATRONI_CONFIG + REMOVED_SUFFIX + stamp)
    return (f"systemctl disable --now {raft.WATCH_UNIT}.timer >/dev/null 2>&1 || true\n"
            f"systemctl stop {raft.WATCH_UNIT}.service >/dev/null 2>&1 || true\n"  # a look under way
            "systemctl disable patroni >/dev/null 2>&1 || true\n"
            "systemctl stop patroni\n"
            f"if [ -f {config} ]; then mv {config} {aside}; fi\n"
            "for i in $(seq 1 30); do pgrep -u postgres -x postgres >/dev/null || break; sleep 1; done\n"
            "if pgrep -u postgres -x postgres >/dev/null; then echo still-running; else echo stopped; fi\n")


def rejoin_script(data_dir: str, raft_dir: str, stamp: str, scope: str = "", address: str = "") -> str:
    """Run on a node about to join. Its Patroni running: when it is this cluster's own at this address (``scope``
    and Raft's ``self_addr`` in its configuration: a join of an earlier run that Raft did not take), it is stopped
    ("stopped-own": the install's steps start it again); any other Patroni is left alone ("active"). Then, when kbpg
    removed it from a cluster before (its patroni.yml moved aside as ``config.yml.removed-*``), its old data directory
    and Raft journal are moved aside (``*.before-join-<stamp>``, renamed, nothing deleted: a stale timeline and an old
    Raft log would not join): "moved PATH" per directory, "failed PATH" for one that could not be moved (then nothing
    else is done)."""
    config = shlex.quote(PATRONI_CONFIG)
    own = (f"grep -qx {shlex.quote('scope: ' + scope)} {config} 2>/dev/null && "
           f"grep -q {shlex.quote('self_addr: ' + address)} {config} 2>/dev/null") if scope and address else "false"
    moves = "".join(f"if [ -d {shlex.quote(d)} ] && [ -n \"$(ls -A {shlex.quote(d)})\" ]; then "
                    f"if mv {shlex.quote(d)} {shlex.quote(d + '.before-join-' + stamp)}; then "
                    f"echo moved {shlex.quote(d)}; else echo failed {shlex.quote(d)}; exit 0; fi; fi\n"
                    for d in (data_dir, raft_dir))
    # Once acted on, the marker is renamed (config.yml.joined-<stamp>-was-removed-...): a later add of this node must
    # not move aside what it holds by then.
    rename = (f"for f in {config}{REMOVED_SUFFIX}*; do [ -e \"$f\" ] && "
              f"mv \"$f\" \"{PATRONI_CONFIG}.joined-{stamp}-was-${{f##*/config.yml.}}\"; done\n")
    return ("if systemctl is-active --quiet patroni; then\n"
            f"  if {own}; then systemctl stop patroni; echo stopped-own; else echo active; exit 0; fi\n"
            "fi\n"
            f"ls {config}{REMOVED_SUFFIX}* >/dev/null 2>&1 || exit 0\n" + moves + rename)


STOP_HAPROXY_SCRIPT = ("systemctl disable --now haproxy >/dev/null 2>&1 || true\n"
                       "systemctl disable --now pgbouncer >/dev/null 2>&1 || true\n"
                       "echo \"haproxy $(systemctl is-active haproxy) pgbouncer $(systemctl is-active pgbouncer)\"\n")


SSH_TRIES = 3


def answers_ssh(run: TaskRun, host: Host, tries: int = 1) -> bool:
    for attempt in range(tries):
        try:
            run.run("true", host=host, on_line=None, timeout=15, what="is it there?")
            return True
        except Exception:  # noqa: BLE001 (any failure: it does not answer)
            if attempt + 1 < tries:
                run.check_cancel()
                time.sleep(2)
    return False


DEAD_HOST_WARNING = ("{where} did not answer over SSH and was not stopped: if that host ever boots again with its "
                     "disk as it is, its Patroni (enabled, with its configuration) starts and asks Raft to take it back "
                     "under its old name. Never boot it with that disk, or first run `systemctl disable --now patroni "
                     f"{raft.WATCH_UNIT}.timer` there and move /etc/patroni/config.yml away")


# --- the run -------------------------------------------------------------------------------------------------

class Applier:
    """Carries out a plan on a prepared run (install.prepare) whose selection is servers.tsv's."""

    def __init__(self, run: Any, membership: nodes.Membership, plan: nodes.Plan,
                 install: Callable[[list[str] | None], list[Any]] | None = None):
        self.run = run
        self.ctx: Context = run.ctx
        self.target: Selection = run.ctx.selection
        self.membership = membership
        self.plan = plan
        self.members: dict[str, str] = {n.name: n.patroni_address for n in membership.db if n.patroni_address}
        # A DB node of servers.tsv that Raft names but Patroni does not list yet (a join a stopped run left under
        # way) is one of the cluster's nodes for the steps to come: pg_hba and the partners keep naming it.
        for server in run.ctx.selection.db_nodes:
            if server.hostname not in self.members and f"{server.ip_private}:{membership.raft_port}" in \
                    membership.raft_members:
                self.members[server.hostname] = server.ip_private
        # Until the install's steps on the new set of nodes, the HAProxy nodes are those that stay: a leaving one is
        # stopped first (its plan step), a new one is installed at the end (a switchover on the way pauses the
        # PgBouncers that run, not one servers.tsv adds).
        admitted = membership.haproxy_admitted
        self.haproxy = tuple(s for s in run.ctx.selection.haproxy_nodes if admitted is None or s.ip_private in admitted)
        # A stale Raft address paired with no Patroni member has no name: it is no DB node to configure.
        self.stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        self.result = ApplyResult(plan)
        self._install = install
        self.started = time.monotonic()

    # selections
    def _use(self, members: dict[str, str] | None) -> None:
        self.ctx.selection = self.target if members is None else selection_of(self.target, members, self.haproxy)

    def _staying_hosts(self, leaving: str | None = None) -> list[Host]:
        """The DB nodes of the cluster now, less the Raft address ``leaving``."""
        port = self.membership.raft_port
        return [host_of(self.target, name, address) for name, address in self.members.items()
                if f"{address}:{port}" != leaving]

    def install_steps(self, only: list[str] | None) -> list[StepReport]:
        # Each run of the install's steps starts from what the hosts are: facts one run found ("patroni.yml
        # changed here") are no business of the next, which would reload again for nothing.
        self.ctx.state.clear()
        from ..steps.s02_patroni import NODES_APPLY

        self.ctx.state[NODES_APPLY] = True  # step 02's refusal of node changes is not for this run
        if self._install is not None:
            return self._install(only)
        from ..steps import install_steps

        return self.run.engine.run(install_steps(only))

    # actions
    def _switchover(self, action: nodes.Action) -> Callable[[TaskRun], Outcome]:
        def task(run: TaskRun) -> Outcome:
            from . import switchover as so

            self._use(self.members)
            leaving = {a.node for a in self.plan.actions if a.kind == "remove"}
            state = so.read_state(self.ctx)
            staying = [m for m in state.members if m.is_streaming and m.name not in leaving]
            synchronous = [m for m in staying if m.role in ("sync_standby", "quorum_standby")]
            choice = (synchronous or staying)
            if not choice:
                raise TaskError(f"no streaming replica that stays to switch over to (members: {state.summary()})")
            result = so.switchover(self.ctx, to=choice[0].name)
            self.result.switchovers.append(result.to_dict())
            return Outcome.changed(f"leader {result.old} -> {result.new}; PgBouncer held queries "
                                   f"{result.pause_seconds:.2f} s", result.warnings)
        return task

    def _remove(self, action: nodes.Action) -> Callable[[TaskRun], Outcome]:
        def task(run: TaskRun) -> Outcome:
            ip = action.address.rsplit(":", 1)[0]
            details, warnings = [], []
            owner = next((name for name, address in self.members.items() if address == ip), None)
            where = f"{owner} ({ip})" if owner else f"the host at {ip}"
            # Its own Raft answered kbpg over SSH when the plan was made: SSH worked seconds ago, and the node runs.
            answering_raft = action.address in self.membership.raft_answered
            # Whatever runs at that address is stopped first, a member with a name or a stale address: a Patroni
            # left running there would ask Raft to take it back at its next start.
            host = host_of(self.target, owner or action.node, ip)
            if answers_ssh(run, host, tries=SSH_TRIES if answering_raft else 1):
                answer = run.run(stop_db_script(self.stamp), host=host, on_line=None, timeout=120,
                                 what="stopping Patroni on the node that leaves").stdout.split()
                if "stopped" not in answer:
                    raise TaskError(f"{where}: Patroni was stopped but a PostgreSQL still runs there; stop it, then "
                                    "run the same command again")
                details.append(f"{where}: Patroni stopped and disabled, {PATRONI_CONFIG} moved aside "
                               f"({REMOVED_SUFFIX.strip('.')}{self.stamp})")
            elif answering_raft:
                raise TaskError(f"{where} answered in Raft a moment ago but not over SSH as {host.user} now: it cannot "
                                "be stopped, and "
                                "a Patroni left running there would ask Raft to take it back; fix SSH (or stop "
                                "Patroni there yourself), then run the same command again")
            else:
                details.append(f"{where} does not answer over SSH: not stopped (it is down)")
                warnings.append(DEAD_HOST_WARNING.format(where=where))
            staying = self._staying_hosts(leaving=action.address)
            details.append(change_membership(run, staying, "remove", action.address))
            details.append(wait_membership(run, staying, action.address, present=False))
            if owner is not None:
                del self.members[owner]
            self.result.warnings += [redact(w) for w in warnings]  # as the engine shows them (a report, --json)
            return Outcome.changed("; ".join(details), warnings)
        return task

    def _add(self, action: nodes.Action) -> Callable[[TaskRun], Outcome]:
        def task(run: TaskRun) -> Outcome:
            ip = action.address.rsplit(":", 1)[0]
            if action.kind == "raft-add":
                hosts = self._staying_hosts()
                detail = change_membership(run, hosts, "add", action.address)
                return Outcome.changed(f"{detail}; {wait_membership(run, hosts, action.address, present=True)}")
            from ..steps.host_guards import RAFT_DIR

            host = host_of(self.target, action.node, ip)
            script = rejoin_script(self.ctx.settings.postgresql.effective_data_dir, RAFT_DIR, self.stamp,
                                   self.ctx.credentials.get("PATRONI_CLUSTER_NAME", ""), action.address)
            answer = run.run(script, host=host, on_line=None, timeout=90,
                             what="looking for what a removal left").stdout.split()
            if "active" in answer:
                raise TaskError(f"{action.node} ({ip}) runs a Patroni already: it is not a new node; stop it (or fix "
                                "servers.tsv), then run the same command again")
            failed = [answer[i + 1] for i, word in enumerate(answer[:-1]) if word == "failed"]
            if failed:
                raise TaskError(f"{action.node} ({ip}): {', '.join(failed)} (left by kbpg's removal of this node) "
                                "could not be moved aside; move or empty it, then run the same command again")
            moved = [answer[i + 1] for i, word in enumerate(answer[:-1]) if word == "moved"]
            self.members[action.node] = ip
            return Outcome.changed(f"{action.node} ({ip}) is one of the cluster's DB nodes from now on"
                                   + ("; its own Patroni of an earlier join stopped (started again by step 02)"
                                      if "stopped-own" in answer else "")
                                   + (f"; what kbpg's removal left there moved aside: {', '.join(moved)} "
                                      f"(.before-join-{self.stamp})" if moved else ""))
        return task

    def _joined(self, action: nodes.Action) -> Callable[[TaskRun], Outcome]:
        def task(run: TaskRun) -> Outcome:
            hosts = self._staying_hosts()
            others = [h for h in hosts if h.address != action.address.rsplit(":", 1)[0]]
            views = membership_views(run, others)
            if any(view is not None and action.address not in view for view in views.values()):
                # Patroni asks Raft to add a node once, at its start; an ask refused then (no Raft leader at that
                # moment) is not repeated: sent again from a member that stays.
                detail = change_membership(run, others, "add", action.address)
                return Outcome.changed(f"{detail}; {wait_membership(run, hosts, action.address, present=True)}")
            return Outcome.changed(wait_membership(run, hosts, action.address, present=True))
        return task

    def _stop_haproxy(self, action: nodes.Action) -> Callable[[TaskRun], Outcome]:
        def task(run: TaskRun) -> Outcome:
            host = host_of(self.target, action.node, action.address)
            if not answers_ssh(run, host, tries=SSH_TRIES):
                warning = (f"{action.address} did not answer over SSH: HAProxy and PgBouncer were not stopped there; "
                           "if it still runs, take it out of the load balancer's targets now (pg_hba no longer "
                           "admits it after this run)")
                self.result.warnings.append(redact(warning))
                return Outcome.unchanged(f"{action.address} does not answer over SSH: nothing stopped there",
                                         [warning])
            answer = run.run(STOP_HAPROXY_SCRIPT, host=host, on_line=None, timeout=60,
                             what="stopping HAProxy and PgBouncer on the node that leaves").stdout.strip()
            return Outcome.changed(f"{action.address}: HAProxy and PgBouncer stopped and disabled ({answer})")
        return task

    def apply(self) -> ApplyResult:
        started = self.started = time.monotonic()
        self.result.started = time.time()
        if self.plan.actions:
            _mark_pending(self.ctx.workdir, self.plan)
        engine = self.run.engine
        try:
            for number, action in enumerate(self.plan.actions, 1):
                begun = time.monotonic()
                if action.kind in ("haproxy-add",):
                    self._record(number, action, Status.UNCHANGED, begun, "done by the install's steps at the end")
                    continue
                self._use(self.members)
                name, make = {"switchover": ("switchover", self._switchover), "remove": ("leave", self._remove),
                              "raft-remove": ("leave", self._remove), "haproxy-remove": ("stop", self._stop_haproxy),
                              "raft-add": ("join", self._add)}.get(action.kind, ("select", self._add))
                reports = [engine.run_step(Step(f"N{number}", action.text, [Task(name, "cluster", make(action))]))]
                if action.kind == "add":  # the node is one of the DB nodes now: the install's 00-02 on them
                    if reports[-1].status not in (Status.FAILED, Status.CANCELLED):
                        self._use(self.members)
                        reports += self.install_steps(["00", "01", "02"])
                    if all(r.status not in (Status.FAILED, Status.CANCELLED) for r in reports):
                        reports.append(engine.run_step(Step(f"N{number}", f"{action.node} in Raft's membership", [
                            Task("joined", "cluster", self._joined(action))])))
                self.result.reports += reports
                bad = [r for r in reports if r.status in (Status.FAILED, Status.CANCELLED)]
                if bad:
                    detail = "; ".join(f"{t.host}: {t.detail}" for r in bad for t in r.failures) or bad[0].status.value
                    self._record(number, action, bad[0].status, begun, detail)
                    self.result.error = f"step {number} ({action.text}) did not end: {detail}"
                    return self.result
                self._record(number, action, Status.CHANGED if any(r.status == Status.CHANGED for r in reports)
                             else Status.UNCHANGED, begun, "")
            # The whole install on servers.tsv as it is now.
            self.result.install_at = round(time.monotonic() - started, 1)
            self._use(None)
            reports = self.install_steps(None)
            self.result.reports += reports
            bad = [r for r in reports if r.status in (Status.FAILED, Status.CANCELLED)]
            if bad or not reports:
                self.result.error = ("the install's steps on the new set of nodes did not end: "
                                     + "; ".join(f"{t.host}: {t.detail}" for r in bad for t in r.failures))
                return self.result
            membership = nodes.read_membership(self.ctx)
            self.result.after = nodes.plan(self.target, membership)
            if self.result.after.changes or self.result.after.refused:
                self.result.error = ("after the apply, servers.tsv and the cluster still differ: "
                                     + "; ".join(nodes.describe(self.result.after)))
            else:
                (Path(self.ctx.workdir) / PENDING_FILE).unlink(missing_ok=True)
            if any(a.kind.startswith("haproxy") for a in self.plan.actions):
                self.result.lb_targets = [s.ip_private for s in self.target.haproxy_nodes]
            return self.result
        finally:
            self._use(None)
            self.result.seconds = time.monotonic() - started

    def _record(self, number: int, action: nodes.Action, status: Status, begun: float, detail: str) -> None:
        self.result.actions.append({"number": number, "kind": action.kind, "node": action.node,
                                    "address": action.address, "text": action.text, "status": status.value,
                                    "at": round(begun - self.started, 1),
                                    "seconds": round(time.monotonic() - begun, 1), "detail": detail})


def pending(workdir: Path) -> bool:
    """Whether a `kbpg nodes apply` began and its install on the new set of nodes has not ended well yet."""
    return (Path(workdir) / PENDING_FILE).exists()


def _mark_pending(workdir: Path, plan: nodes.Plan) -> None:
    from ..files import atomic_write

    text = json.dumps({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "steps": [action.text for action in plan.actions]}, indent=2) + "\n"
    atomic_write(Path(workdir) / PENDING_FILE, text.encode(), 0o600)


def apply(run: Any, membership: nodes.Membership, plan: nodes.Plan) -> ApplyResult:
    """Carry out ``plan`` (not refused) on a prepared run; see the module's docstring."""
    if plan.refused:
        raise ValueError("a refused plan is not applied")
    return Applier(run, membership, plan).apply()


def summary_lines(result: ApplyResult) -> list[str]:
    lines = []
    for item in result.actions:
        lines.append(f"  {item['number']}. {item['text']}: {item['status']} in {item['seconds']:.1f} s"
                     + (f" ({item['detail']})" if item["detail"] and item["status"] != "changed" else ""))
    for switch in result.switchovers:
        lines.append(f"Switchover {switch['old_leader']} -> {switch['new_leader']}: PgBouncer held queries "
                     f"{switch['pgbouncer_pause_seconds']:.2f} s")
    lines += [f"warning: {warning}" for warning in result.warnings]
    if result.lb_targets:
        lines.append("The HAProxy nodes changed: the load balancer's targets must be exactly "
                     + ", ".join(result.lb_targets) + " (kbpg does not manage the cloud load balancer)")
    if result.ok:
        lines.append(f"Done in {result.seconds:.1f} s: servers.tsv and the running cluster agree.")
    else:
        lines.append(f"NOT done after {result.seconds:.1f} s: {result.error}")
    return lines


__all__ = ["PENDING_FILE", "ApplyResult", "Applier", "apply", "pending", "change_membership", "parse_change", "selection_of", "stop_db_script",
           "summary_lines", "wait_membership"]
