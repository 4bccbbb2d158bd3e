"""Which nodes servers.tsv wants against the nodes the cluster runs on: ``kbpg nodes plan`` (read only).

:func:`read_membership` asks the running cluster, :func:`plan` (pure) says what differs and in which order the
changes would be made, one node at a time, keeping Raft's quorum at every step, or refuses with the reasons.

Where each fact comes from:

- Patroni's members (name, address, role): REST ``/cluster`` of the first DB node that answers (the DB nodes of
  servers.tsv first, then the other addresses Raft names). A member whose host died for good drops out of it after
  Patroni's ttl (its member key expires).
- Raft's membership, as the members themselves say it: pysyncobj's ``status`` asked on each DB node of servers.tsv
  over SSH (:mod:`kbpg_tui.core.raft`'s probe; the Raft password never leaves the node): its own address and each
  partner's with the connection state (2 connected, 0 not). An address is reachable when its own Raft answered, or
  when a member that answered is connected to it.
- The names of addresses that left Patroni's list (a dead host): kbpg's node certificates in credentials/tls
  (``<hostname>.crt``, issued for the address the host was installed with). Without them (TLS off), a host that
  came back with a new address shows as a node to add plus a stale Raft address: the same steps.
- HAProxy nodes: pg_hba.conf on the DB nodes. kbpg admits every role from each HAProxy node by one
  ``host[ssl] all all ADDRESS/32`` line; those lines, less the DB nodes' (which also have a ``replication`` line)
  and network.direct_clients, are the HAProxy nodes the cluster takes connections from: the one place that names
  them all, removed ones included, and what a change must update. (The HAProxy nodes' own configuration names the
  DB nodes, not each other.) Names come from the certificates as above.
"""

from __future__ import annotations

import ipaddress
import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from . import cluster, raft
from .engine import Context
from .inventory import Selection
from .ssh import Cancelled, Host

CONNECTED = 2  # pysyncobj's partner state for a connected partner
DB_COUNTS = (3, 5)  # the inventory rule's DB node counts


# --- the running cluster ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DbNode:
    """One DB node of servers.tsv and/or one Patroni member, as found."""

    name: str
    tsv_address: str | None = None  # its address in servers.tsv (None: not a selected DB node)
    patroni_address: str | None = None  # the address Patroni reports (None: not a Patroni member now)
    role: str | None = None  # Patroni's role (leader, replica, sync_standby...)
    raft_self: str | None = None  # "host:port" its own Raft says it is (None: not asked or no answer)
    raft_partners: dict[str, int] = field(default_factory=dict)  # partners its Raft has, "host:port" -> 0/1/2
    reachable: bool = False  # SSH (a servers.tsv node) or Patroni's REST API answered
    detail: str = ""  # why it was not reachable, or its Raft not asked

    @property
    def is_leader(self) -> bool:
        return self.role == "leader"


@dataclass
class Membership:
    """What the cluster runs on now (see the module's docstring for where each fact comes from)."""

    raft_port: int
    db: list[DbNode] = field(default_factory=list)
    raft_members: list[str] = field(default_factory=list)  # Raft's membership, "host:port"
    raft_reachable: list[str] = field(default_factory=list)  # those of them that answer
    patroni_read: bool = True  # False: no DB node answered /cluster (the Patroni facts are missing)
    haproxy_admitted: list[str] | None = None  # HAProxy addresses pg_hba admits; None: no DB node told
    known_names: dict[str, str] = field(default_factory=dict)  # address -> hostname kbpg installed there
    notes: list[str] = field(default_factory=list)
    # Raft addresses whose own Raft answered kbpg (over SSH to that node): a subset of raft_reachable, which also
    # counts an address another member says it is connected to (a host that just died may still look connected).
    raft_answered: list[str] = field(default_factory=list)

    @property
    def leader(self) -> DbNode | None:
        return next((node for node in self.db if node.is_leader), None)

    def node(self, name: str) -> DbNode | None:
        return next((node for node in self.db if node.name == name), None)

    def to_dict(self) -> dict:
        return asdict(self)


def raft_view(status: raft.RaftStatus) -> tuple[str | None, dict[str, int]]:
    """(its own address, its partners with their state) from a member's Raft status (raft_node's answer)."""
    me = status.status.get("self")
    partners = status.status.get("partners")
    clean = {str(address): value if isinstance(value, int) else 0
             for address, value in (partners.items() if isinstance(partners, dict) else ())}
    return (str(me) if me not in (None, "None", "") else None), clean


def hba_client_addresses(lines: Sequence[str]) -> tuple[set[str], set[str]]:
    """(addresses of ``host[ssl] all all A/32`` lines, addresses of ``host[ssl] replication ...`` lines)."""
    clients, replication = set(), set()
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) < 5 or fields[0] not in ("host", "hostssl") or not fields[3].endswith("/32"):
            continue
        address = fields[3][:-3]
        if fields[1] == "replication":
            replication.add(address)
        elif fields[1] == "all" and fields[2] == "all":
            clients.add(address)
    return clients, replication


def haproxy_addresses(hba_lines: Sequence[str], direct_clients: Sequence[str]) -> list[str]:
    """The HAProxy nodes pg_hba admits: every-role /32 lines that are no DB node's (replication) and no
    direct_clients network's, loopback aside."""
    clients, db_nodes = hba_client_addresses(hba_lines)
    direct = [ipaddress.ip_network(cidr, strict=False) for cidr in direct_clients]
    found = []
    for address in clients - db_nodes - {"127.0.0.1"}:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        if not any(ip in network for network in direct if network.prefixlen == 32):
            found.append(address)
    return sorted(found, key=_address_key)


def _address_key(address: str) -> tuple:
    host = address.rsplit(":", 1)[0] if address.count(".") == 3 and ":" in address else address
    try:
        return (0, int(ipaddress.ip_address(host)), address)
    except ValueError:
        return (1, 0, address)


def certificate_names(workdir: Path) -> dict[str, str]:
    """address -> hostname, from kbpg's node certificates (credentials/tls/<hostname>.crt, their IP names)."""
    from . import tls

    names: dict[str, str] = {}
    directory = Path(workdir) / tls.TLS_DIR
    found: list[tuple[str, tuple[str, ...]]] = []
    for path in sorted(directory.glob("*.crt")) if directory.is_dir() else []:
        if path.name == tls.CA_CERT.name:
            continue
        try:
            found.append((path.stem, tuple(tls.cert_info(path.read_bytes()).sans_ip)))
        except (OSError, ValueError, tls.TlsError):
            continue
    # A DB node's certificate also carries the LB's and every HAProxy node's address (tls.wanted_sans): an address
    # is the host's whose certificate carries the fewest (an HAProxy node's: its own and the LB's).
    for name, addresses in sorted(found, key=lambda item: (len(item[1]), item[0])):
        for address in addresses:
            if address != "127.0.0.1":
                names.setdefault(address, name)
    return names


HBA_PREFIX = "h: "


def _node_script(data_dir: str) -> str:
    """pg_hba.conf's lines (prefixed), then Raft's probe (which ends the script when Patroni is not active)."""
    return f"sed 's/^/{HBA_PREFIX}/' {shlex.quote(data_dir + '/pg_hba.conf')} 2>/dev/null\n" + raft.PROBE


def read_membership(ctx: Context, timeout: float = 20.0) -> Membership:
    """The running cluster: per DB node of servers.tsv and per Patroni member, its addresses, Raft's view and
    whether it answers; the HAProxy nodes pg_hba admits. Reads only (SSH, Patroni's REST API)."""
    port = ctx.settings.ports.raft
    hosts = ctx.db_hosts
    found = Membership(port, known_names=certificate_names(ctx.workdir))
    script = _node_script(ctx.settings.postgresql.effective_data_dir)

    def ask(host: Host) -> tuple[Host, str | None, str]:
        try:
            return host, ctx.pool.get(host).run(script, timeout=timeout, check=False,
                                                what="reading Raft's membership").stdout, ""
        except Cancelled:
            raise
        except Exception as exc:  # SshError, a host key refused: the node does not answer
            return host, None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
        answers = list(pool.map(ask, hosts))
    views: dict[str, tuple[str | None, dict[str, int], str]] = {}
    hba: set[str] = set()
    hba_seen = False
    reachable_ssh: dict[str, str] = {}
    for host, output, error in answers:
        if output is None:
            reachable_ssh[host.name] = error
            continue
        lines = [line[len(HBA_PREFIX):] for line in output.splitlines() if line.startswith(HBA_PREFIX)]
        if lines:
            hba_seen = True
            hba.update(lines)
        status = raft.parse(output)
        me, partners = raft_view(status) if status.answers else (None, {})
        views[host.name] = (me, partners, "" if status.answers else status.detail)
    if hba_seen:
        found.haproxy_admitted = haproxy_addresses(sorted(hba), ctx.settings.network.direct_clients)
    else:
        found.notes.append("no DB node showed its pg_hba.conf: HAProxy nodes not compared")

    # Raft's membership: the union of what the members that answered say (they agree once a change is applied). A
    # node whose own Raft lists itself but that no other answering member lists is not a member: a Patroni that
    # started with the members as partners and whose ask to be added was refused runs a Raft of its own.
    members: list[str] = []
    answered: set[str] = set()
    connected: set[str] = set()
    listed = {address for me, partners, _ in views.values() if me is not None for address in partners}
    selves = [me for me, _partners, _ in views.values() if me is not None]
    alone = {me for me in selves if me not in listed and len(selves) > 1}
    for me, partners, _ in views.values():
        if me is None or me in alone:
            continue
        answered.add(me)
        for address in [me, *partners]:
            if address not in members:
                members.append(address)
        connected.update(address for address, state in partners.items() if state == CONNECTED)
    if alone:
        found.notes.append("not in the other members' Raft membership (a node whose ask to join was not taken): "
                           + ", ".join(sorted(alone, key=_address_key)))
    seen = {me: {me, *partners} for me, partners, _ in views.values() if me is not None}
    if len({frozenset(view) for view in seen.values()}) > 1:
        found.notes.append("the members' Raft memberships differ: " + "; ".join(
            f"{me} has {', '.join(sorted(view, key=_address_key))}" for me, view in sorted(seen.items())))
    found.raft_members = sorted(members, key=_address_key)
    found.raft_reachable = sorted((answered | connected) & set(members), key=_address_key)
    found.raft_answered = sorted(answered & set(members), key=_address_key)

    # Patroni's members: the DB nodes of servers.tsv first, then any other address Raft names.
    extra = [Host(f"raft member {address}", address.rsplit(":", 1)[0]) for address in found.raft_members
             if address.rsplit(":", 1)[0] not in {h.address for h in hosts}]
    try:
        state: cluster.ClusterState | None = cluster.read_cluster(ctx, hosts + extra)
    except cluster.ClusterUnreadable as exc:
        state = None
        found.patroni_read = False
        found.notes.append(str(exc))
    patroni = {m.name: m for m in state.members} if state is not None else {}

    names = [h.name for h in hosts] + [name for name in patroni if name not in {h.name for h in hosts}]
    tsv = {h.name: h for h in hosts}
    for name in names:
        row, member = tsv.get(name), patroni.get(name)
        me, partners, why = views.get(name, (None, {}, ""))
        where = member.host if member is not None else None
        if row is not None:
            reachable = name not in reachable_ssh
            detail = reachable_ssh.get(name, why)
        else:
            raft_address = f"{where}:{port}" if where else None
            reachable = bool(member is not None and member.state not in ("stopped", "crashed", "?")
                             and (raft_address is None or raft_address in found.raft_reachable))
            detail = "not in servers.tsv: asked through Patroni and Raft only"
        found.db.append(DbNode(name, row.address if row else None, where, member.role if member else None,
                               me, partners, reachable, detail))
    return found


# --- the plan ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Action:
    """One step of a plan, on one node. ``kind``: switchover, raft-remove (a stale Raft address), remove (a member
    leaves Raft and Patroni), add (a new DB node installed, joined to Raft, cloned from a replica), raft-add (a DB
    node Raft lacks), haproxy-add, haproxy-remove. ``members``/``reachable``: Raft's size and how many of its members
    answer once the step is done (0 for steps that do not change Raft)."""

    kind: str
    node: str
    address: str
    text: str
    members: int = 0
    reachable: int = 0

    @property
    def majority(self) -> int:
        return self.members // 2 + 1 if self.members else 0


@dataclass
class Plan:
    db_add: list[str] = field(default_factory=list)  # hostnames
    db_replace: list[str] = field(default_factory=list)  # "name: old -> new"
    db_remove: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # Raft addresses ("host:port") no DB node has
    raft_missing: list[str] = field(default_factory=list)  # DB nodes' Raft addresses Raft lacks
    haproxy_add: list[str] = field(default_factory=list)
    haproxy_replace: list[str] = field(default_factory=list)
    haproxy_remove: list[str] = field(default_factory=list)  # addresses (with the name when known)
    actions: list[Action] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return bool(self.actions)

    @property
    def needs_apply(self) -> bool:
        """Whether a step other than a new HAProxy node's is planned: one only ``kbpg nodes apply`` may carry out. A
        new HAProxy node alone is an install's ordinary work (pg_hba, HAProxy, PgBouncer): a first install stopped
        before pg_hba named the HAProxy nodes looks the same."""
        return any(action.kind != "haproxy-add" for action in self.actions)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["actions"] = [{**asdict(a), "majority": a.majority} for a in self.actions]
        data["changes"] = self.changes
        return data


def majority(members: int) -> int:
    return members // 2 + 1


def plan(selection: Selection, membership: Membership) -> Plan:
    """What differs between servers.tsv's selection and the running cluster, and the steps to make them agree.

    Order: a dead member leaves Raft before anything joins (removing a member that does not answer keeps as many
    answering members and lowers the majority; a node added first would make the quorum depend on its joining);
    then the new DB nodes join one at a time; then live members leave, the node Patroni's leader runs on last, after a
    switchover (a live node replaced under its own name leaves first and its replacement joins right after: Patroni
    knows a member by its name, two hosts cannot hold one). Each step that changes
    Raft is checked: the members that answer after it must be a majority of its new membership (a node that joins is
    counted as answering: the step waits for it). Refusals (``refused``, a sentence each) also: fewer than 3 DB nodes,
    a count other than 3 or 5, more members leaving in one plan than the cluster can lose ((N-1)//2 of N: one of 3),
    no readable Raft or Patroni, a leader that does not answer.
    """
    port = membership.raft_port
    result = Plan(notes=list(membership.notes))
    wanted = {server.hostname: server.ip_private for server in selection.db_nodes}
    count = len(wanted)
    if count < 3:
        result.refused.append(f"servers.tsv selects {count} DB node(s): a cluster needs 3 at least (3 or 5)")
    elif count not in DB_COUNTS:
        result.refused.append(f"servers.tsv selects {count} DB nodes: the inventory rule takes 3 or 5")

    def raft_address(ip: str) -> str:
        return f"{ip}:{port}"

    if not membership.raft_members or not membership.patroni_read:  # nothing to compare with: no step is planned
        if not membership.raft_members:
            result.refused.append("Raft's membership could not be read: no DB node's Raft answered")
        if not membership.patroni_read:
            result.refused.append("Patroni's cluster could not be read: no DB node answered /cluster")
        return result

    members = {node.name: node for node in membership.db if node.patroni_address}
    names = dict(membership.known_names)
    current = list(membership.raft_members)
    reachable = set(membership.raft_reachable)

    # What differs. A DB node of servers.tsv that Raft's membership already names but that is no Patroni member (yet)
    # is not one to add: its Patroni is not running, or still starting, cloning, or the install that made the
    # cluster was stopped before it came up; that is the install's business (step 02 starts it and waits for it).
    starting = [name for name in wanted if name not in members and raft_address(wanted[name]) in current]
    result.notes += [f"{node} ({wanted[node]}) is in Raft's membership but not a Patroni member: its Patroni is not "
                     "running or still starting (kbpg install starts it and waits for it)" for node in starting]
    add = [name for name in wanted if name not in members and name not in starting]
    replace = [name for name in wanted if name in members and members[name].patroni_address != wanted[name]]
    remove = [name for name in members if name not in wanted]
    owned = {raft_address(ip) for ip in wanted.values()} | {raft_address(node.patroni_address or "")
                                                            for node in members.values()}
    stale = [address for address in current if address not in owned]
    # A host that died for good has left Patroni's list; kbpg's certificate still names its old address.
    dead_replaced: dict[str, str] = {}
    for address in list(stale):
        name = names.get(address.rsplit(":", 1)[0])
        if name in add and raft_address(wanted[name]) != address:
            dead_replaced[name] = address
            stale.remove(address)
            add.remove(name)
    result.db_add = add
    result.db_replace = ([f"{name}: {members[name].patroni_address} -> {wanted[name]}" for name in replace]
                         + [f"{name}: {address.rsplit(':', 1)[0]} -> {wanted[name]} (no longer a Patroni member)"
                            for name, address in dead_replaced.items()])
    result.db_remove = remove
    result.stale = stale
    missing = [raft_address(wanted[name]) for name in wanted if name in members and name not in replace
               and raft_address(wanted[name]) not in current]
    result.raft_missing = missing

    # The steps. Who leaves: (name or "-", its Raft address, the new address when it is replaced).
    leaving_all = ([(name, raft_address(members[name].patroni_address or ""), wanted[name]) for name in replace]
                   + [(name, address, wanted[name]) for name, address in dead_replaced.items()]
                   + [(name, raft_address(members[name].patroni_address or ""), None) for name in remove]
                   + [("-", address, None) for address in stale])
    leader = membership.leader
    leader_raft = raft_address(leader.patroni_address) if leader is not None and leader.patroni_address else None
    steps: list[tuple[str, str, str, str]] = []  # (kind, node, address, text)

    def leave(name: str, address: str, new: str | None, answers: bool) -> None:
        state = "" if answers else " (not answering)"
        if name == "-":
            steps.append(("raft-remove", name, address, f"remove the stale address {address}{state} from Raft (it "
                                                         "is no DB node's)"))
        elif new is not None:
            steps.append(("remove", name, address, f"remove {name}'s old address {address}{state} from Raft and "
                                                   "Patroni's cluster"))
        else:
            steps.append(("remove", name, address, f"remove {name} ({address}){state} from Raft and Patroni's "
                                                   "cluster"))

    def join(name: str, ip: str) -> None:
        steps.append(("add", name, raft_address(ip), f"add {name} ({ip}): packages and configuration, join Raft, "
                                                     "clone (Patroni picks the member)"))

    dead = [item for item in leaving_all if item[1] not in reachable]
    alive = [item for item in leaving_all if item[1] in reachable]
    for name, address, new in dead:  # first: it lowers the majority, not the members that answer
        leave(name, address, new, answers=False)
    for address in missing:
        name = next(n for n, ip in wanted.items() if raft_address(ip) == address)
        steps.append(("raft-add", name, address, f"add {name} ({address}) to Raft's membership"))
    for name in wanted:  # then the new DB nodes, one at a time (those replacing a dead one included)
        if name in add or any(name == item[0] and item[2] for item in dead):
            join(name, wanted[name])
    alive.sort(key=lambda item: item[1] == leader_raft)  # the leader's node last
    for name, address, new in alive:
        if address == leader_raft:
            steps.append(("switchover", name, address, f"switch over: Patroni's leader {leader.name if leader else ''} "
                                                       f"runs at {address}, which leaves"))
        leave(name, address, new, answers=True)
        if new is not None:
            # Remove before add: a Patroni member is its name, and the old host still runs one under that name; the
            # old one is stopped and leaves first (the membership is then one smaller, with all of it answering).
            join(name, new)

    # Quorum, step by step.
    if len(reachable) < majority(len(current)):
        silent = [address for address in current if address not in reachable]
        result.refused.append(f"Raft has no quorum now: {len(reachable)} of its {len(current)} members answer "
                              f"(not: {', '.join(silent)}); no membership change can be made until a majority "
                              "answers")
    leaving = [address for kind, _n, address, _t in steps if kind in ("remove", "raft-remove")]
    if len(leaving) > (len(current) - 1) // 2:
        result.refused.append(
            f"{len(leaving)} of the {len(current)} Raft members would leave in one plan ({', '.join(leaving)}): "
            f"with {len(current)} members at most {(len(current) - 1) // 2} may leave at once and keep the quorum; "
            "change fewer nodes in servers.tsv, apply, then plan the next")
    changes = bool(steps)
    if changes and leader is None:
        result.refused.append("Patroni's cluster has no leader now: no membership change until it has one")
    if leader is not None and leader_raft in [item[1] for item in dead]:
        result.refused.append(f"Patroni's leader {leader.name} ({leader_raft}) does not answer and would leave: wait "
                              "for Patroni's failover (its ttl), then plan again")
    now, answering_now = list(current), set(reachable)
    for kind, name, address, text in steps:
        if kind in ("add", "raft-add"):
            if address not in now:
                now.append(address)
            answering_now.add(address)
        elif kind in ("remove", "raft-remove"):
            if address in now:
                now.remove(address)
            answering_now.discard(address)
        else:
            result.actions.append(Action(kind, name, address, text))
            continue
        answering = len(answering_now & set(now))
        result.actions.append(Action(kind, name, address, text, len(now), answering))
        if answering < majority(len(now)):
            result.refused.append(f"step {len(result.actions)} ({text}) would leave {answering} of {len(now)} Raft "
                                  f"members answering, fewer than the majority {majority(len(now))}")

    # HAProxy nodes. A node that leaves is stopped first, before anything else (a load balancer's health check then
    # sends nobody there, and pg_hba may stop admitting it); the new ones are installed last, by the install's steps
    # on the new set of nodes. One that is replaced (its name at a new address) is both.
    admitted = membership.haproxy_admitted
    if admitted is not None:
        rows = {server.hostname: server.ip_private for server in selection.haproxy_nodes}
        old_by_name = {names[address]: address for address in admitted if address in names}
        gone = [address for address in admitted if address not in rows.values()]
        first: list[Action] = []
        last: list[Action] = []
        for name, ip in rows.items():
            if ip in admitted:
                continue
            old = old_by_name.get(name)
            if old in gone:
                gone.remove(old)
                result.haproxy_replace.append(f"{name}: {old} -> {ip}")
                first.append(Action("haproxy-remove", name, old, f"stop HAProxy and PgBouncer on {name}'s old "
                                    f"address {old} (if it still answers); pg_hba stops admitting it"))
                last.append(Action("haproxy-add", name, ip, f"add HAProxy node {name} at its new address {ip} "
                                   "(HAProxy, PgBouncer, pg_hba on the DB nodes)"))
            else:
                result.haproxy_add.append(name)
                last.append(Action("haproxy-add", name, ip, f"add HAProxy node {name} ({ip}): HAProxy, PgBouncer, "
                                   "pg_hba on the DB nodes"))
        for address in gone:
            label = f"{names[address]} ({address})" if address in names else address
            result.haproxy_remove.append(label)
            first.append(Action("haproxy-remove", names.get(address, "-"), address,
                                f"stop HAProxy and PgBouncer on {label} (if it still answers); pg_hba stops "
                                "admitting it"))
        if admitted and len(first) >= len(admitted):
            result.refused.append(f"every HAProxy node the cluster takes connections from ({', '.join(admitted)}) "
                                  "would leave in one plan: the load balancer would have no HAProxy left while the "
                                  "new ones are installed; change one HAProxy node in servers.tsv, apply, then the "
                                  "next")
        result.actions = first + result.actions + last
    return result


def describe(result: Plan) -> list[str]:
    """The plan as plain lines (``kbpg nodes plan``)."""
    lines = []
    for label, items in (("DB nodes to add", result.db_add), ("DB nodes to replace", result.db_replace),
                         ("DB nodes to remove", result.db_remove), ("stale Raft addresses", result.stale),
                         ("DB nodes missing from Raft", result.raft_missing),
                         ("HAProxy nodes to add", result.haproxy_add),
                         ("HAProxy nodes to replace", result.haproxy_replace),
                         ("HAProxy nodes to remove", result.haproxy_remove)):
        if items:
            lines.append(f"{label}: {', '.join(items)}")
    if result.actions:
        lines.append("Steps, one node at a time:")
        for number, action in enumerate(result.actions, 1):
            quorum = (f"  [Raft: {action.reachable} of {action.members} answering, majority {action.majority}]"
                      if action.members else "")
            lines.append(f"  {number}. {action.text}{quorum}")
    else:
        lines.append("Nothing to do: servers.tsv and the running cluster agree.")
    lines += [f"note: {note}" for note in result.notes]
    lines += [f"refused: {reason}" for reason in result.refused]
    return lines


__all__ = ["Action", "DbNode", "Membership", "Plan", "describe", "haproxy_addresses", "plan", "raft_view",
           "read_membership"]
