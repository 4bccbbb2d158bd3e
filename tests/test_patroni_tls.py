"""Step 02 with TLS and least privilege (issue 13): pg_hba.conf as PostgreSQL would apply it, patroni.yml's TLS
settings, the node's TLS files, the reload of members whose certificates or configuration changed (and what they
serve after it), and the roles.

The roles' SQL runs against a real PostgreSQL in tests/test_patroni_roles_pg.py; the lab checks the rest for real.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import socket
import ssl
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest
import yaml

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import inventory as inv
from kbpg_tui.core import tls
from kbpg_tui.core.engine import Context, Status, TaskError, TaskRun
from kbpg_tui.core.settings import Settings, from_dict
from kbpg_tui.core.ssh import Host
from kbpg_tui.core.steps import rest_tls
from kbpg_tui.core.steps import s02_patroni as patroni

from .fakes import FakePool, LocalShellConnection, ScriptedConnection, result

DB = ("db-master-01", "db-slave-01", "db-slave-02")


def make_run(real_inventory: Path, settings: Settings | None = None, workdir: Path = Path("/nonexistent"),
             host_index: int | None = None) -> TaskRun:
    values, _ = creds.generate()
    ctx = Context(settings or Settings(), values, inv.load_selection(real_inventory), workdir,
                  pool=FakePool(), sink=lambda e: None, cancel=threading.Event())  # type: ignore[arg-type]
    return TaskRun(ctx, "02", None if host_index is None else ctx.db_hosts[host_index])


def rendered(run: TaskRun, index: int = 0) -> dict:
    return yaml.safe_load(patroni.render_yaml(patroni.render_config(run, run.ctx.db_hosts[index])))


# --- pg_hba.conf, applied as PostgreSQL applies it: the first line whose type, database, role and address match ---

def hba_method(hba: list[str], role: str, address: str | None, ssl_on: bool, replication: bool = False,
               database: str = "keybuzz") -> str | None:
    """The method of the first matching line (None: no line matches, PostgreSQL refuses the login).
    ``address`` None is the local socket."""
    for rule in hba:
        fields = rule.split()
        kind, db, user = fields[:3]
        if (kind == "local") != (address is None):
            continue
        if kind == "hostssl" and not ssl_on or kind == "hostnossl" and ssl_on:
            continue
        if (db == "replication") != replication or db not in ("all", "replication", database):
            continue
        if user != "all" and user.strip('"') != role:  # unquoted "all" is the keyword; a quoted name is a role
            continue
        if address is not None and ipaddress.ip_address(address) not in ipaddress.ip_network(fields[3]):
            continue
        return fields[3] if address is None else fields[4]
    return None


@pytest.fixture
def hba_tls(real_inventory: Path) -> list[str]:
    return rendered(make_run(real_inventory))["postgresql"]["pg_hba"]


# The company's inventory: DB nodes 10.0.0.120-122, HAProxy nodes 10.0.0.11-12, the LB 10.0.0.10 (HAProxy passes
# TCP through: PostgreSQL sees an HAProxy node's address), private subnet 10.0.0.0/16.
@pytest.mark.parametrize("role, address, ssl_on, replication, wanted", [
    ("kb_admin", None, False, False, "peer"),                  # the postgres OS user on the node (Patroni, kbpg)
    ("kb_admin", "10.0.0.121", True, False, "scram-sha-256"),  # pg_rewind, a DBA on another DB node
    ("kb_admin", "10.0.0.11", True, False, "reject"),          # through HAProxy, the LB, PgBouncer
    ("kb_admin", "10.0.0.50", True, False, "reject"),          # the private subnet: no longer
    ("kb_admin", "127.0.0.1", False, False, "reject"),
    ("kb_admin", "192.0.2.7", True, False, "reject"),
    ("kb_admin", "2001:db8::1", True, False, "reject"),
    ("kb_monitor", "10.0.0.50", True, False, "scram-sha-256"),  # diagnostics, the drill's watchers
    ("kb_monitor", "10.0.0.50", False, False, None),           # ... over TLS only
    ("kb_monitor", "10.0.0.11", True, False, "scram-sha-256"),  # through the LB
    ("kb_monitor", "192.0.2.7", True, False, None),
    ("kb_app", "10.0.0.11", True, False, "scram-sha-256"),
    ("kb_app", "10.0.0.11", False, False, None),               # plaintext through HAProxy: refused
    ("kb_app", "10.0.0.50", True, False, None),                # an app pointed at a node (field failure 12)
    ("kb_app", "127.0.0.1", False, False, "scram-sha-256"),
    ("kb_repl", "10.0.0.122", True, True, "scram-sha-256"),
    ("kb_repl", "10.0.0.122", False, True, None),              # replication in plaintext: refused
    ("kb_repl", "10.0.0.11", True, True, None),
    ("kb_monitor", "10.0.0.50", True, True, None),             # no replication connection for the monitor
])
def test_hba_least_privilege_with_tls(hba_tls: list[str], role: str, address: str | None, ssl_on: bool,
                                      replication: bool, wanted: str | None) -> None:
    assert hba_method(hba_tls, role, address, ssl_on, replication) == wanted


def test_hba_without_tls_keeps_least_privilege_and_takes_plaintext(real_inventory: Path) -> None:
    hba = rendered(make_run(real_inventory, from_dict({"tls": {"enabled": False}})))["postgresql"]["pg_hba"]
    assert not [rule for rule in hba if rule.startswith("hostssl")]
    assert hba_method(hba, "kb_app", "10.0.0.11", False) == "scram-sha-256"
    assert hba_method(hba, "kb_repl", "10.0.0.120", False, replication=True) == "scram-sha-256"
    assert hba_method(hba, "kb_monitor", "10.0.0.50", False) == "scram-sha-256"
    assert hba_method(hba, "kb_admin", "10.0.0.11", False) == "reject"
    assert hba_method(hba, "kb_admin", "10.0.0.50", False) == "reject"
    assert hba_method(hba, "kb_admin", "10.0.0.120", False) == "scram-sha-256"


def test_hba_needs_the_monitor_role_name(real_inventory: Path) -> None:
    run = make_run(real_inventory)
    del run.ctx.credentials["POSTGRES_MONITOR_USER"]
    with pytest.raises(TaskError, match="POSTGRES_MONITOR_USER missing from credentials/postgres.env: run kbpg "
                                        "install without --step"):
        patroni.hba_rules(run)


# --- patroni.yml ---------------------------------------------------------------------------------------------------

def test_tls_settings_in_patroni_yml(real_inventory: Path) -> None:
    config = rendered(make_run(real_inventory))
    parameters = config["postgresql"]["parameters"]
    assert {k: v for k, v in parameters.items() if k.startswith("ssl")} == {
        "ssl": "on", "ssl_cert_file": "/etc/patroni/tls/node.crt", "ssl_key_file": "/etc/patroni/tls/node.key",
        "ssl_ca_file": "/etc/patroni/tls/ca.crt", "ssl_min_protocol_version": "TLSv1.2"}
    # Local parameters: each node's own files, never the DCS (the bootstrap's copy of it included).
    assert not [k for k in config["bootstrap"]["dcs"]["postgresql"]["parameters"] if k.startswith("ssl")]
    auth = config["postgresql"]["authentication"]
    for name in ("replication", "rewind"):
        assert auth[name]["sslmode"] == "verify-full" and auth[name]["sslrootcert"] == "/etc/patroni/tls/ca.crt"
    assert "sslmode" not in auth["superuser"]  # the local socket
    assert {k: config["restapi"][k] for k in ("certfile", "keyfile", "cafile", "verify_client")} == {
        "certfile": "/etc/patroni/tls/node.crt", "keyfile": "/etc/patroni/tls/node.key",
        "cafile": "/etc/patroni/tls/ca.crt", "verify_client": "none"}
    assert config["restapi"]["authentication"]["username"] == "patroni"
    assert config["ctl"]["cacert"] == "/etc/patroni/tls/ca.crt"  # patronictl on the node verifies the members
    assert "insecure" not in config["ctl"]


def test_no_tls_settings_when_tls_is_off(real_inventory: Path) -> None:
    config = rendered(make_run(real_inventory, from_dict({"tls": {"enabled": False}})))
    text = yaml.safe_dump(config)
    assert "ssl" not in text and "/etc/patroni/tls" not in text
    assert "certfile" not in config["restapi"] and "cacert" not in config["ctl"]


# --- the "tls files" task --------------------------------------------------------------------------------------------

class NodeFiles:
    """A DB node's files as Connection.upload sees them (its stat+sha256 read and its mktemp/mv write)."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[str, bytes]] = {}  # path -> ("mode owner group", data)
        self.written: list[str] = []
        self.directory_ok = False

    def answer(self, script: str, stdin: bytes):
        if "install -d" in script and "stat -c" in script:
            fixed = not self.directory_ok
            self.directory_ok = True
            return result("fixed\n" if fixed else "")
        read = re.match(r"if \[ -f (\S+) \]; then printf", script)
        if read:
            found = self.files.get(read.group(1))
            return result(f"{found[0]} {hashlib.sha256(found[1]).hexdigest()}\n" if found else "")
        write = re.search(r'chown (\S+):(\S+) "\$tmp"; chmod (\d+) "\$tmp"; mv -f "\$tmp" (\S+); trap', script)
        if write:
            owner, group, mode, path = write.groups()
            self.files[path] = (f"{mode} {owner} {group}", stdin)
            self.written.append(path)
            return result()
        raise AssertionError(f"unexpected command: {script}")


@pytest.fixture
def workdir(tmp_path: Path, real_inventory: Path) -> Path:
    run = make_run(real_inventory, workdir=tmp_path)
    tls.ensure_ca(tmp_path)
    for name in DB:
        dns, ips = tls.wanted_sans(run.ctx, name)
        tls.ensure_node_cert(tmp_path, name, dns, ips, run.settings)
    return tmp_path


def _files_run(real_inventory: Path, workdir: Path, node: NodeFiles, settings: Settings | None = None) -> TaskRun:
    run = make_run(real_inventory, settings, workdir=workdir, host_index=0)
    connection = ScriptedConnection(run.ctx.db_hosts[0], node.answer)
    run.ctx.pool = FakePool({"db-master-01": connection})
    return run


def test_tls_files_go_to_the_node_with_their_modes_and_mark_it_for_a_reload(real_inventory: Path,
                                                                            workdir: Path) -> None:
    node = NodeFiles()
    run = _files_run(real_inventory, workdir, node)
    outcome = patroni.upload_tls_files(run)
    assert outcome.status is Status.CHANGED
    cert, key = tls.node_files(workdir, "db-master-01")
    assert node.files == {
        "/etc/patroni/tls/ca.crt": ("644 root root", tls.ca_pem(workdir)),
        "/etc/patroni/tls/node.key": ("600 postgres postgres", key),  # PostgreSQL refuses a key others can read
        "/etc/patroni/tls/node.crt": ("644 root root", cert),
    }
    # The key before its certificate: Patroni re-reads both when it sees the certificate's new serial.
    assert node.written.index("/etc/patroni/tls/node.key") < node.written.index("/etc/patroni/tls/node.crt")
    assert run.ctx.state["tls_files_changed"] == {"db-master-01"}

    again = _files_run(real_inventory, workdir, node)
    assert patroni.upload_tls_files(again).status is Status.UNCHANGED
    assert "tls_files_changed" not in again.ctx.state  # nothing changed: no reload

    dns, ips = tls.wanted_sans(run.ctx, "db-master-01")
    tls.ensure_node_cert(workdir, "db-master-01", dns, ips, run.settings, force=True)  # a renewal
    renewed = _files_run(real_inventory, workdir, node)
    outcome = patroni.upload_tls_files(renewed)
    assert outcome.status is Status.CHANGED and "node.crt" in outcome.detail and "ca.crt" not in outcome.detail
    assert renewed.ctx.state["tls_files_changed"] == {"db-master-01"}


def test_tls_files_task_does_nothing_when_tls_is_off(real_inventory: Path, workdir: Path) -> None:
    node = NodeFiles()
    run = _files_run(real_inventory, workdir, node, from_dict({"tls": {"enabled": False}}))
    outcome = patroni.upload_tls_files(run)
    assert outcome.status is Status.UNCHANGED and outcome.detail == "TLS disabled in kbpg.toml"
    assert not node.files and not run.connection().calls  # type: ignore[attr-defined]


def test_tls_files_missing_locally_is_a_clear_error(real_inventory: Path, tmp_path: Path) -> None:
    node = NodeFiles()
    run = _files_run(real_inventory, tmp_path, node)
    with pytest.raises(TaskError, match=r"db-master-01: .*db-master-01.crt is missing; run kbpg install \(step 00\)"):
        patroni.upload_tls_files(run)
    assert not node.files


def test_tls_files_come_before_the_config_in_step_02() -> None:
    names = [task.name for task in patroni.STEP.tasks]
    assert names.index("tls files") < names.index("config") < names.index("start")


# --- what a node serves: rest_tls.SERVED_SCRIPT against real local servers ------------------------------------------------

@contextmanager
def local_server(handle) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that runs ``handle(connection)`` for each client; yields its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            with connection:
                connection.settimeout(5)
                try:
                    handle(connection)
                except (OSError, ssl.SSLError):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _server_context(workdir: Path, name: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert, key = tls.node_paths(workdir, name)
    context.load_cert_chain(cert, key)
    return context


def _https(context: ssl.SSLContext):
    def handle(connection: socket.socket) -> None:
        with context.wrap_socket(connection, server_side=True) as wrapped:
            wrapped.recv(1)
    return handle


def _http(connection: socket.socket) -> None:
    connection.recv(1024)
    connection.sendall(b"HTTP/1.0 400 Bad request\r\n\r\n")


def _postgres(context: ssl.SSLContext | None):
    def handle(connection: socket.socket) -> None:
        assert connection.recv(8) == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"  # SSLRequest
        if context is None:
            connection.sendall(b"N")
            connection.recv(1)
            return
        connection.sendall(b"S")
        with context.wrap_socket(connection, server_side=True) as wrapped:
            wrapped.recv(1)
    return handle


def _served_locally(real_inventory: Path, workdir: Path, node_cert: Path, pg_port: int, rest_port: int) -> dict:
    run = make_run(real_inventory, from_dict({"ports": {"postgresql": pg_port, "patroni_rest": rest_port}}))
    host = Host("db-master-01", "127.0.0.1", "root")
    etc = workdir / "etc-patroni-tls"
    etc.mkdir(exist_ok=True)
    (etc / "node.crt").write_bytes(node_cert.read_bytes())
    run.ctx.pool = FakePool({"db-master-01": LocalShellConnection(host, {"/etc/patroni/tls": etc})})
    return patroni.served(run, host)


def _fingerprint(path: Path) -> str:
    return "tls:" + hashlib.sha256(ssl.PEM_cert_to_DER_cert(path.read_text())).hexdigest()


def test_served_tells_which_certificate_rest_and_postgresql_present(real_inventory: Path, workdir: Path) -> None:
    current = _server_context(workdir, "db-master-01")
    on_disk = tls.node_paths(workdir, "db-master-01")[0]
    with local_server(_https(current)) as rest, local_server(_postgres(current)) as pg:
        state = _served_locally(real_inventory, workdir, on_disk, pg, rest)
    assert state == {"rest": _fingerprint(on_disk), "pg": _fingerprint(on_disk), "disk": _fingerprint(on_disk)}
    run = make_run(real_inventory)
    assert patroni._serves_wanted(run, state)

    older = _server_context(workdir, "db-slave-01")  # another certificate: what a node serves before its reload
    with local_server(_https(older)) as rest, local_server(_postgres(current)) as pg:
        state = _served_locally(real_inventory, workdir, on_disk, pg, rest)
    assert state["rest"] == _fingerprint(tls.node_paths(workdir, "db-slave-01")[0]) and state["pg"] == state["disk"]
    assert not patroni._serves_wanted(run, state)
    assert "REST API TLS with another certificate" in patroni._shown_state(state)


def test_served_tells_plaintext_and_down(real_inventory: Path, workdir: Path) -> None:
    on_disk = tls.node_paths(workdir, "db-master-01")[0]
    with local_server(_http) as rest, local_server(_postgres(None)) as pg:
        state = _served_locally(real_inventory, workdir, on_disk, pg, rest)
    assert state == {"rest": "plain", "pg": "plain", "disk": _fingerprint(on_disk)}
    assert patroni._serves_wanted(make_run(real_inventory, from_dict({"tls": {"enabled": False}})), state)
    assert not patroni._serves_wanted(make_run(real_inventory), state)
    with local_server(_http) as rest, local_server(_http) as pg:
        pass  # closed: nothing listens there any more
    state = _served_locally(real_inventory, workdir, on_disk, pg, rest)
    assert state["rest"] == "down" and state["pg"] == "down"


# --- reloading members: order, waiting until they serve the files, rest_scheme_change around it --------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Member:
    """A DB node's Patroni as the reload sees it: a SIGHUP applies the config (PostgreSQL's ssl and the REST API's
    scheme) and, unless ``lazy_rest`` (patroni.yml and the certificate changed together), the REST certificate."""

    def __init__(self, name: str, leader: bool, serves: str, disk: str, tls_wanted: bool, lazy_rest: bool = False,
                 stuck: bool = False):
        self.name, self.leader = name, leader
        self.rest = self.pg = serves
        self.disk, self.tls_wanted, self.lazy_rest, self.stuck = disk, tls_wanted, lazy_rest, stuck
        self.reloads = 0
        self.pg_reloads = 0

    def sighup(self) -> None:
        self.reloads += 1
        if self.stuck:
            return
        self.pg = self.disk if self.tls_wanted else "plain"
        if self.lazy_rest and self.reloads == 1 and self.rest.startswith("tls:"):
            return  # Patroni 4.0.7: a local config change re-inits the REST API only if its ssl options changed
        self.rest = self.disk if self.tls_wanted else "plain"


class Cluster:
    def __init__(self, members: list[Member]):
        self.members = {m.name: m for m in members}
        self.events: list[tuple[str, str, str]] = []  # (node, what, what the leader's PostgreSQL serves then)

    def leader(self) -> Member:
        return next(m for m in self.members.values() if m.leader)

    def handler(self, name: str):
        member = self.members[name]

        def answer(script: str, stdin: bytes):
            if "list -f json" in script:
                return result(json.dumps([{"Member": m.name, "Role": "Leader" if m.leader else "Replica",
                                           "State": "running" if m.leader else "streaming", "TL": 1}
                                          for m in self.members.values()]))
            if script == "systemctl reload patroni":
                self.events.append((name, "reload", self.leader().pg))
                member.sighup()
                return result()
            if script.startswith("python3 - "):
                return result(f"rest {member.rest}\npg {member.pg}\ndisk {member.disk}\n")
            if "psql" in script and b"pg_reload_conf" in stdin:
                member.pg_reloads += 1
                return result("t\n")
            raise AssertionError(f"unexpected command: {script}")
        return answer


def _reload_run(real_inventory: Path, members: list[Member], monkeypatch: pytest.MonkeyPatch,
                settings: Settings | None = None, tls_changed: set[str] = frozenset()) -> tuple[TaskRun, Cluster, list]:
    run = make_run(real_inventory, settings)
    cluster = Cluster(members)
    run.ctx.pool = FakePool({h.name: ScriptedConnection(h, cluster.handler(h.name)) for h in run.ctx.db_hosts})
    run.ctx.state["tls_files_changed"] = set(tls_changed)
    monkeypatch.setattr(patroni, "time", FakeClock())
    scheme_changes: list = []

    @contextmanager
    def scheme_change(run_: TaskRun, names: list[str]) -> Iterator[rest_tls.SchemeChange]:
        scheme_changes.append(("enter", list(names), sum(m.reloads for m in cluster.members.values())))
        yield rest_tls.SchemeChange()
        scheme_changes.append(("exit", list(names), sum(m.reloads for m in cluster.members.values())))

    monkeypatch.setattr(patroni, "_rest_scheme_change", scheme_change)
    return run, cluster, scheme_changes


def test_turning_tls_on_reloads_the_leader_first_and_waits_for_it(real_inventory: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    members = [Member(name, name == "db-slave-01", "plain", f"tls:{name}", True) for name in DB]
    run, cluster, schemes = _reload_run(real_inventory, members, monkeypatch, tls_changed=set(DB))
    detail = patroni.reload_members(run, list(DB))
    assert detail == "reloaded db-slave-01, db-master-01, db-slave-02 (the leader first: TLS turned on)"
    assert cluster.events[0][:2] == ("db-slave-01", "reload")
    # No replica reconnects with sslmode=verify-full before its primary speaks TLS.
    assert all(leader_pg == "tls:db-slave-01" for node, _what, leader_pg in cluster.events[1:])
    assert all(m.rest == m.pg == m.disk for m in cluster.members.values())
    assert all(m.pg_reloads == 1 for m in cluster.members.values())  # new files: PostgreSQL reloaded at once
    # HAProxy's checks are kept right around every reload (steps.rest_tls).
    assert schemes == [("enter", ["db-slave-01", "db-master-01", "db-slave-02"], 0),
                       ("exit", ["db-slave-01", "db-master-01", "db-slave-02"], 3)]


def test_a_renewal_reloads_replicas_first_and_resends_the_sighup_patroni_ignored(real_inventory: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Certificates renewed while patroni.yml changed too: Patroni 4.0.7 keeps its REST certificate on that SIGHUP.
    members = [Member(name, name == "db-master-01", f"tls:old-{name}", f"tls:{name}", True, lazy_rest=True)
               for name in DB]
    run, cluster, _ = _reload_run(real_inventory, members, monkeypatch, tls_changed=set(DB))
    detail = patroni.reload_members(run, list(DB))
    assert detail == "reloaded db-slave-01, db-slave-02, db-master-01"
    assert [node for node, _what, _pg in cluster.events][:3] == ["db-slave-01", "db-slave-02", "db-master-01"]
    assert all(m.reloads == 2 and m.rest == m.disk for m in cluster.members.values())


def test_a_config_change_without_new_files_reloads_without_waiting_or_pg_reload(real_inventory: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    members = [Member(name, name == "db-master-01", f"tls:{name}", f"tls:{name}", True) for name in DB]
    run, cluster, _ = _reload_run(real_inventory, members, monkeypatch)
    patroni.reload_members(run, ["db-master-01", "db-slave-02"])
    assert [node for node, _what, _pg in cluster.events] == ["db-slave-02", "db-master-01"]
    assert all(m.pg_reloads == 0 for m in cluster.members.values())
    assert patroni.time.now == 1000.0  # type: ignore[attr-defined]  # served at once: no wait


def test_turning_tls_off_goes_back_to_plaintext(real_inventory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    members = [Member(name, name == "db-master-01", f"tls:{name}", f"tls:{name}", False) for name in DB]
    run, cluster, schemes = _reload_run(real_inventory, members, monkeypatch, from_dict({"tls": {"enabled": False}}))
    assert patroni.reload_members(run, list(DB)) == "reloaded db-slave-01, db-slave-02, db-master-01"
    assert all(m.rest == m.pg == "plain" for m in cluster.members.values())
    assert schemes[0][0] == "enter" and schemes[-1] == ("exit", ["db-slave-01", "db-slave-02", "db-master-01"], 3)


def test_a_node_that_never_serves_its_certificate_fails_the_task_naming_it(real_inventory: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    members = [Member(name, name == "db-master-01", f"tls:old-{name}", f"tls:{name}", True,
                      stuck=name == "db-slave-02") for name in DB]
    run, cluster, _ = _reload_run(real_inventory, members, monkeypatch, tls_changed=set(DB))
    with pytest.raises(TaskError, match=r"after reloading Patroni, db-slave-02 serves REST API TLS with another "
                                        r"certificate .*PostgreSQL TLS with another certificate .*Look at "
                                        r"`journalctl -u patroni` on db-slave-02$"):
        patroni.reload_members(run, list(DB))
    assert cluster.members["db-slave-02"].reloads >= 3  # re-sent each loop before giving up


def _reloaded_by_start(run: TaskRun, monkeypatch: pytest.MonkeyPatch, services: dict[str, str]) -> list[list[str]]:
    """The node lists start_cluster hands to reload_members, with patroni's service states ``services``."""
    monkeypatch.setattr(patroni, "_service_states", lambda run_: services)
    reloaded: list[list[str]] = []
    monkeypatch.setattr(patroni, "reload_members",
                        lambda run_, names, warnings=None: reloaded.append(names) or "reloaded")
    run.ctx.pool = FakePool({h.name: ScriptedConnection(h, lambda script, stdin: result("enabled\n"))
                             for h in run.ctx.db_hosts})
    patroni.start_cluster(run)
    return reloaded


def test_start_reloads_nodes_whose_files_or_config_changed_but_not_those_it_started(real_inventory: Path,
                                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(real_inventory)
    run.ctx.state.update(patroni_config_changed={"db-master-01"}, tls_files_changed={"db-slave-01", "db-slave-02"})
    services = {"db-master-01": "active", "db-slave-01": "active", "db-slave-02": "inactive"}
    assert _reloaded_by_start(run, monkeypatch, services) == [["db-master-01", "db-slave-01"]]


def test_reloads_go_through_rest_tls_scheme_change(real_inventory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kbpg_tui.core.steps import rest_tls

    calls: list[list[str]] = []
    monkeypatch.setattr(rest_tls, "rest_scheme_change", lambda run_, names: calls.append(names) or nullcontext())
    with patroni._rest_scheme_change(make_run(real_inventory), ["db-master-01"]):
        pass
    assert calls == [["db-master-01"]]


# --- roles (the SQL itself runs against a real PostgreSQL in test_patroni_roles_pg.py) -----------------------------

def test_roles_refuse_a_monitor_role_that_is_another_role(real_inventory: Path) -> None:
    run = make_run(real_inventory)
    run.ctx.credentials["POSTGRES_MONITOR_USER"] = run.ctx.credentials["POSTGRES_SUPERUSER"]
    leader = SimpleNamespace(name="db-master-01")
    run.ctx.pool = FakePool({h.name: ScriptedConnection(h, lambda script, stdin: result(json.dumps(
        [{"Member": leader.name, "Role": "Leader", "State": "running", "TL": 1}]))) for h in run.ctx.db_hosts})
    with pytest.raises(TaskError, match="must be four different roles"):
        patroni.ensure_roles(run)


@pytest.mark.parametrize("enabled, serves, stale", [
    (True, {"rest": "plain", "pg": "plain", "disk": "tls:new"}, True),        # killed before its reload
    (True, {"rest": "tls:old", "pg": "tls:new", "disk": "tls:new"}, True),    # REST kept the old certificate
    (True, {"rest": "tls:new", "pg": "down", "disk": "tls:new"}, False),      # PostgreSQL starting: not judged here
    (True, {"rest": "tls:new", "pg": "tls:new", "disk": "tls:new"}, False),
    (False, {"rest": "tls:new", "pg": "plain", "disk": "tls:new"}, True),
    (False, {"rest": "plain", "pg": "plain", "disk": "none"}, False),
])
def test_start_reloads_a_running_node_that_serves_what_kbpg_toml_no_longer_wants(
        real_inventory: Path, monkeypatch: pytest.MonkeyPatch, enabled: bool, serves: dict, stale: bool) -> None:
    run = make_run(real_inventory, from_dict({"tls": {"enabled": enabled}}))
    monkeypatch.setattr(patroni, "served", lambda run_, host: serves if host.name == "db-slave-02" else
                        {"rest": "tls:new" if enabled else "plain", "pg": "tls:new" if enabled else "plain",
                         "disk": "tls:new"})
    services = {h.name: "active" for h in run.ctx.db_hosts}
    assert _reloaded_by_start(run, monkeypatch, services) == ([["db-slave-02"]] if stale else [])


def test_a_postgresql_that_is_down_does_not_hold_a_renewal(real_inventory: Path) -> None:
    run = make_run(real_inventory)
    assert patroni._serves_wanted(run, {"rest": "tls:new", "pg": "down", "disk": "tls:new"})  # a replica rebuilding
    assert not patroni._serves_wanted(run, {"rest": "tls:new", "pg": "tls:old", "disk": "tls:new"})
    assert not patroni._serves_wanted(run, {"rest": "tls:old", "pg": "down", "disk": "tls:new"})
