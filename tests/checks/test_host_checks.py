"""Checks on the hosts over SSH and HTTP: 1 inventory, 2 ssh and sudo, 3 services, 11 haproxy, 12 secret files,
13 patroni rest auth."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kbpg_tui.core import credentials as creds
from kbpg_tui.core.checks import c01_inventory, c02_ssh, c03_services, c11_haproxy, c12_secret_files, c13_rest_auth
from kbpg_tui.core.checks.base import CheckFailed, CheckWarning
from kbpg_tui.core.checks.report import Verdict
from kbpg_tui.core.checks.runner import run_probes
from kbpg_tui.core.inventory import load_selection
from kbpg_tui.core.ssh import SshError

from ..fakes import FakePool, ScriptedConnection, result


def pool_of(p_hosts, handler, sudo: dict[str, str] | None = None, down: dict[str, Exception] | None = None):
    connections: dict = {}
    for host in p_hosts:
        connection = ScriptedConnection(host, handler)
        connection.sudo_mode = (sudo or {}).get(host.name, "root")  # type: ignore[attr-defined]
        connections[host.name] = connection
    connections.update(down or {})
    return FakePool(connections)


def hosts(make):
    p = make()
    return p.ctx.db_hosts + p.ctx.haproxy_hosts


# --- 1 inventory ---------------------------------------------------------------------------------------------

def test_inventory_passes_while_servers_tsv_selects_the_same_nodes(make, tmp_path: Path) -> None:
    p = make()
    assert c01_inventory.inventory(p) == "3 DB + 2 HAProxy nodes, addresses unique"
    path = tmp_path / "servers.tsv"
    path.write_text(path.read_text().replace("\tpatroni-node\t", "\tpatroni-nod\t", 1))
    with pytest.raises(CheckFailed, match=r"^1 error\(s\): .*2 DB nodes match"):
        c01_inventory.inventory(p)


def test_inventory_names_a_changed_selection_and_warns_on_one_haproxy_node(make, tmp_path: Path) -> None:
    p = make()
    path = tmp_path / "servers.tsv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line for line in lines if "\thaproxy-02\t" not in line))
    with pytest.raises(CheckFailed, match="selection changed since this run started: db-master-01, .*haproxy-01, backup-01$"):
        c01_inventory.inventory(p)
    p.ctx.selection = load_selection(path)
    with pytest.raises(CheckWarning, match="HAProxy"):
        c01_inventory.inventory(p)


# --- 2 ssh and sudo ------------------------------------------------------------------------------------------

def test_ssh_passes_as_root_and_says_how_sudo_is_used(make) -> None:
    every = hosts(make)
    p = make(pool=pool_of(every, lambda script, stdin: result("root\n"), sudo={"haproxy-02": "password"}))
    db, proxy = p.ctx.db_hosts[0], p.ctx.haproxy_hosts[1]
    assert c02_ssh.ssh_and_sudo(p, db) == "db-master-01: ssh as root"
    assert c02_ssh.ssh_and_sudo(p, proxy) == "haproxy-02: ssh as kbops, sudo (password)"


def test_ssh_fails_when_commands_do_not_run_as_root_and_a_host_down_fails_alone(make) -> None:
    every = hosts(make)
    down = SshError("haproxy-02 (198.18.0.12): no SSH answer within 10 s\n(details)")
    p = make(pool=pool_of(every, lambda script, stdin: result("kbops\n"), down={"haproxy-02": down}))
    with pytest.raises(CheckFailed, match="db-slave-01: commands run as 'kbops', not root"):
        c02_ssh.ssh_and_sudo(p, p.ctx.db_hosts[1])
    report = run_probes(c02_ssh.CHECK.probes(p), budget=5)
    reasons = {r.target: (r.verdict, r.reason) for r in report.results}
    assert len(reasons) == 5 and all(verdict == Verdict.FAIL for verdict, _ in reasons.values())
    assert reasons["haproxy-02"][1] == "haproxy-02 (198.18.0.12): no SSH answer within 10 s"  # first line only


# --- 3 services ----------------------------------------------------------------------------------------------

def _services(make, lines: dict[str, str]):
    every = hosts(make)
    p = make(pool=FakePool({h.name: ScriptedConnection(h, lambda script, stdin, n=h.name: result(lines[n]))
                            for h in every}))
    return p


def test_services_pass_when_active_and_name_the_units(make) -> None:
    p = _services(make, {"db-master-01": "patroni active 0 3600\n",
                         "haproxy-01": "haproxy active 0 3600\npgbouncer active 1 900\n"})
    assert c03_services.db_services(p, p.ctx.db_hosts[0]) == "db-master-01: patroni active"
    assert c03_services.haproxy_services(p, p.ctx.haproxy_hosts[0]) == "haproxy-01: haproxy, pgbouncer active"
    script = p.ctx.pool.connections["haproxy-01"].calls[0][0]
    assert "ActiveState --value haproxy" in script and "NRestarts --value pgbouncer" in script


def test_services_fail_when_inactive_and_warn_when_restarting(make) -> None:
    p = _services(make, {"haproxy-01": "haproxy active 0 3600\npgbouncer failed 0 -3\n",
                         "db-slave-01": "patroni active 3 12\n"})
    with pytest.raises(CheckFailed, match=r"^haproxy-01: pgbouncer is failed$"):
        c03_services.haproxy_services(p, p.ctx.haproxy_hosts[0])
    with pytest.raises(CheckWarning, match=r"^db-slave-01: patroni restarted 3 time\(s\), up for 12 s$"):
        c03_services.db_services(p, p.ctx.db_hosts[1])


def _db_services(make, raft_lines: str, unit_line: str = "patroni active 0 3600\n"):
    def handler(script: str, stdin) -> object:
        return result(raft_lines if "TcpUtility" in script else unit_line)
    return make(pool=FakePool({h.name: ScriptedConnection(h, handler) for h in hosts(make)}))


def test_services_fail_a_db_node_whose_raft_is_silent_even_just_restarted(make) -> None:
    silent = "r:unit active 300\nr:silent 198.18.0.121:7000 connection lost\n"
    p = _db_services(make, silent)
    with pytest.raises(CheckFailed, match=r"^db-slave-01: Patroni's Raft stopped answering on db-slave-01 .*"
                                          r"restart it \(systemctl restart patroni on db-slave-01\)$"):
        c03_services.db_services(p, p.ctx.db_hosts[1])
    # Patroni restarted lately (a warning alone) with a Raft silent for 300 s: still a failure, not a warning.
    p = _db_services(make, silent, unit_line="patroni active 2 45\n")
    with pytest.raises(CheckFailed, match="Raft stopped answering"):
        c03_services.db_services(p, p.ctx.db_hosts[1])
    # A Raft that answers passes, and says whom it follows.
    p = _db_services(make, 'r:unit active 300\nr:status {"leader": "198.18.0.122:7000", "raft_term": 3}\n')
    assert c03_services.db_services(p, p.ctx.db_hosts[1]) == (
        "db-slave-01: patroni active; its Raft answers (leader 198.18.0.122:7000, term 3)")
    # Patroni started seconds ago: its Raft is not judged yet.
    p = _db_services(make, "r:unit active 5\nr:silent 198.18.0.121:7000 connection lost\n", "patroni active 1 5\n")
    with pytest.raises(CheckWarning, match="restarted 1 time"):
        c03_services.db_services(p, p.ctx.db_hosts[1])


def test_services_probe_each_node_with_its_units(make) -> None:
    probes = c03_services.CHECK.probes(make())
    assert [(pr.number, pr.check, pr.target) for pr in probes] == [
        (3, "services", name) for name in ("db-master-01", "db-slave-01", "db-slave-02", "haproxy-01", "haproxy-02")]


# --- 11 haproxy ----------------------------------------------------------------------------------------------

def stats_csv(up: list[str], paused: tuple[str, ...] = ()) -> str:
    header = "# pxname,svname," + ",".join(f"c{i}" for i in range(2, 40))
    rows = [header]
    for name, status in [("FRONTEND", "OPEN"), ("db-master-01", "DOWN"), ("db-slave-01", "DOWN"),
                         ("db-slave-02", "DOWN"), ("BACKEND", "UP")]:
        status = "UP" if name in up else status
        status = "no check" if name in paused else status
        rows.append(",".join(["postgres_write", name] + ["0"] * 15 + [status] + ["0"] * 20))
    rows.append(",".join(["postgres_read", "db-slave-01"] + ["0"] * 15 + ["UP"] + ["0"] * 20))
    return "\n".join(rows) + "\n"


def _stats(make, up: list[str], open_stats: bool = False, paused: tuple[str, ...] = ()):
    holder: dict = {}

    def answer(auth):
        values = holder["p"].values
        if auth == (values["HAPROXY_STATS_USER"], values["HAPROXY_STATS_PASSWORD"]) or open_stats:
            return 200, stats_csv(up, paused)
        return 401, ""

    p = make(rest={"https://198.18.0.11:8404/;csv": answer})
    holder["p"] = p
    return p


def test_haproxy_passes_with_one_server_up_and_stats_behind_the_password(make) -> None:
    p = _stats(make, ["db-slave-02"])
    assert c11_haproxy.haproxy(p, p.ctx.haproxy_hosts[0]) == \
        "haproxy-01: write backend → db-slave-02 only; stats need a password"
    assert [auth is None for _, _, auth in p.requests] == [True, False]


def test_haproxy_fails_with_three_servers_up_or_open_stats(make) -> None:
    p = _stats(make, ["db-master-01", "db-slave-01", "db-slave-02"])
    with pytest.raises(CheckFailed, match=r"haproxy-01: 3 servers UP in the write backend \(db-master-01, "
                                          r"db-slave-01, db-slave-02\); expected exactly 1"):
        c11_haproxy.haproxy(p, p.ctx.haproxy_hosts[0])
    p = _stats(make, ["db-master-01"], open_stats=True)
    with pytest.raises(CheckFailed, match=r"haproxy-01: stats answered 200 without a password \(expected 401\)"):
        c11_haproxy.haproxy(p, p.ctx.haproxy_hosts[0])
    p = make()
    with pytest.raises(CheckFailed, match=r"https://198.18.0.12:8404/;csv: no answer"):
        c11_haproxy.haproxy(p, p.ctx.haproxy_hosts[1])


def test_haproxy_names_paused_checks_and_says_to_rerun_the_install(make) -> None:
    p = _stats(make, ["db-slave-02"], paused=("db-master-01",))
    with pytest.raises(CheckFailed, match=r"haproxy-01: HAProxy's health checks of db-master-01 are paused .*"
                                          r"would not follow a failover; re-run `kbpg install`"):
        c11_haproxy.haproxy(p, p.ctx.haproxy_hosts[0])


# --- 12 secret files -----------------------------------------------------------------------------------------

def test_the_secret_scan_sends_every_secret_on_stdin_never_in_the_script(make) -> None:
    seen: list[tuple[str, bytes]] = []
    every = hosts(make)
    p = make(pool=FakePool({h.name: ScriptedConnection(h, lambda s, i: seen.append((s, i)) or result(""))
                            for h in every}))
    assert c12_secret_files.host_secrets(p, p.ctx.db_hosts[0]) == "db-master-01: no secret in a world-readable file"
    script, stdin = seen[0]
    patterns = stdin.decode().splitlines()
    assert "" not in patterns and p.values["POSTGRES_SUPERPASS"] in patterns
    assert all(value not in script for value in patterns)


def test_a_secret_found_fails_naming_the_files_and_no_secret_is_a_warning(make) -> None:
    every = hosts(make)
    found = "/etc/patroni/config.yml\n/root/notes\n/tmp/a\n/tmp/b\n"
    p = make(pool=FakePool({h.name: ScriptedConnection(h, lambda s, i: result(found)) for h in every}))
    with pytest.raises(CheckFailed, match=r"^db-slave-01: a secret is in world-readable /etc/patroni/config.yml, "
                                          r"/root/notes, /tmp/a$"):
        c12_secret_files.host_secrets(p, p.ctx.db_hosts[1])
    p = make(values={"POSTGRES_SUPERUSER": "kb_admin", "POSTGRES_SUPERPASS": "short"}, pool=FakePool())
    with pytest.raises(CheckWarning, match="no secret of 8 characters or more"):
        c12_secret_files.host_secrets(p, p.ctx.db_hosts[0])  # the FakePool has no host: never scanned


def test_local_secrets_need_0600_in_0700(make, tmp_path: Path) -> None:
    p = make()
    with pytest.raises(CheckFailed, match="postgres.env is missing"):
        c12_secret_files.local_secrets(p)
    creds.write_env(tmp_path / creds.ENV_FILE, p.values)
    assert c12_secret_files.local_secrets(p) == f"{creds.ENV_FILE} is 0600 in a 0700 directory"
    os.chmod(tmp_path / creds.ENV_FILE, 0o644)
    with pytest.raises(CheckFailed, match="is 0644; it must be 0600"):
        c12_secret_files.local_secrets(p)


# --- 13 patroni rest auth --------------------------------------------------------------------------------------

@pytest.mark.parametrize("status, handler_reached", [(200, True), (400, True), (403, False), (500, False)])
def test_rest_auth_fails_on_anything_but_401(make, status: int, handler_reached: bool) -> None:
    p = make(rest={("PATCH", "https://198.18.0.121:8008/config"): (status, "")})
    with pytest.raises(CheckFailed, match=f"^db-slave-01: PATCH /config without credentials answered {status}, "
                                          "expected 401") as failure:
        c13_rest_auth.rest_auth(p, p.ctx.db_hosts[1])
    assert ("it reached the handler" in str(failure.value)) is handler_reached
    assert p.requests == [("PATCH", "https://198.18.0.121:8008/config", None)]


def test_rest_auth_passes_on_401(make) -> None:
    p = make(rest={("PATCH", "https://198.18.0.121:8008/config"): (401, "")})
    assert "refuse requests without credentials (401)" in c13_rest_auth.rest_auth(p, p.ctx.db_hosts[1])
