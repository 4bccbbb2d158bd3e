"""HAProxy and PgBouncer configurations as kbpg renders them (the lab tests run them for real)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbpg_tui.core.settings import from_dict
from kbpg_tui.core.steps import s03_haproxy as haproxy
from kbpg_tui.core.steps import s04_pgbouncer as pgbouncer

from .test_patroni_config import make_run


def sections(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line and not line.startswith((" ", "#")):
            current = line.strip()
            found[current] = []
        elif line.strip() and current:
            found[current].append(line.strip())
    return found


PLAINTEXT = {"tls": {"enabled": False}}


def test_write_port_follows_the_primary_through_patroni(real_inventory: Path) -> None:
    run = make_run(real_inventory, from_dict(PLAINTEXT))
    config = sections(haproxy.render(run, "10.0.0.11"))
    write = config["listen postgres_write"]
    assert "bind 10.0.0.11:5432" in write and "bind 127.0.0.1:5432" in write
    assert "option httpchk OPTIONS /primary" in write
    assert "http-check expect status 200" in write
    assert any("on-marked-down shutdown-sessions" in line for line in write)
    servers = [line for line in write if line.startswith("server ")]
    assert servers == [
        "server db-master-01 10.0.0.120:5432 check port 8008",
        "server db-slave-01 10.0.0.121:5432 check port 8008",
        "server db-slave-02 10.0.0.122:5432 check port 8008",
    ]
    text = haproxy.render(run, "10.0.0.11")
    assert "/master" not in text and "tcp-check" not in text


def test_read_port_balances_over_replicas(real_inventory: Path) -> None:
    config = sections(haproxy.render(make_run(real_inventory), "10.0.0.12"))
    read = config["listen postgres_read"]
    assert "bind 10.0.0.12:5433" in read
    assert "option httpchk OPTIONS /replica" in read
    assert "balance roundrobin" in read


def test_stats_need_a_password(real_inventory: Path) -> None:
    run = make_run(real_inventory, from_dict(PLAINTEXT))
    run.ctx.credentials["HAPROXY_STATS_PASSWORD"] = 'with "quote" and \\ backslash'
    stats = sections(haproxy.render(run, "10.0.0.11"))["listen stats"]
    assert "bind 10.0.0.11:8404" in stats
    assert 'stats auth "kb_stats:with \\"quote\\" and \\\\ backslash"' in stats


def test_pgbouncer_uses_scram_transaction_pooling_and_the_local_haproxy(real_inventory: Path) -> None:
    run = make_run(real_inventory, from_dict(PLAINTEXT))
    ini = pgbouncer.render_ini(run, "10.0.0.11")
    assert "* = host=127.0.0.1 port=5432" in ini
    assert "auth_type = scram-sha-256" in ini
    assert "pool_mode = transaction" in ini
    assert "listen_addr = 10.0.0.11,127.0.0.1" in ini
    assert "admin_users = kb_pgbouncer" in ini and "stats_users = kb_pgbouncer_stats" in ini


def test_pgbouncer_through_the_lb_is_an_option(real_inventory: Path) -> None:
    run = make_run(real_inventory, from_dict({"pgbouncer": {"backend": "lb"}}))
    assert "* = host=10.0.0.10 port=5432" in pgbouncer.render_ini(run, "10.0.0.11")


def test_all_pgbouncers_together_stay_under_max_connections(real_inventory: Path) -> None:
    for max_connections in (30, 50, 200, 1000):
        run = make_run(real_inventory, from_dict({"postgresql": {"max_connections": max_connections}}))
        per_node = pgbouncer.pool_size(run)
        assert per_node * len(run.ctx.haproxy_hosts) < max_connections
        assert f"max_db_connections = {per_node}" in pgbouncer.render_ini(run, "10.0.0.11")


def _haproxy_unquote(argument: str) -> str:
    """Read one double-quoted argument back the way HAProxy's parse_line does (escapes; a bare $ expands)."""
    assert argument.startswith('"') and argument.endswith('"')
    body, out, i = argument[1:-1], [], 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body) and body[i + 1] in '\\"$':
            out.append(body[i + 1])
            i += 2
            continue
        assert body[i] != "$", f"unescaped $ would be expanded as an environment variable: {argument}"
        assert body[i] != '"', f"unescaped quote ends the argument: {argument}"
        out.append(body[i])
        i += 1
    return "".join(out)


def test_stats_password_survives_haproxy_quoting_whatever_was_typed() -> None:
    for password in ("pa$HOME", "${PATH}x", "end$", "$$", 'q"uo\\te', "# not a comment", "a'b", "back\\$slash"):
        assert _haproxy_unquote(haproxy._quoted(f"kb_stats:{password}")) == f"kb_stats:{password}"


def test_a_chosen_pool_size_that_overruns_max_connections_on_all_nodes_is_refused(real_inventory: Path) -> None:
    import pytest

    from kbpg_tui.core.engine import TaskError

    ok = make_run(real_inventory, from_dict({"postgresql": {"max_connections": 200}, "pgbouncer": {"default_pool_size": 90}}))
    assert pgbouncer.pool_size(ok) == 90  # 2 × 90 = 180 = 200 - 20
    too_big = make_run(real_inventory, from_dict({"postgresql": {"max_connections": 200},
                                                  "pgbouncer": {"default_pool_size": 150}}))
    with pytest.raises(TaskError, match=r"pgbouncer.default_pool_size = 150 on 2 PgBouncer nodes .* at most 90"):
        pgbouncer.render_ini(too_big, "10.0.0.11")


def test_a_hand_edited_userlist_line_with_a_stray_quote_is_ignored() -> None:
    parsed = pgbouncer._parse_userlist('"kb_pgbouncer" "SCRAM-SHA-256$4096:c2FsdA==$a:b"\n"broken "line\n; comment\n')
    assert parsed == {"kb_pgbouncer": "SCRAM-SHA-256$4096:c2FsdA==$a:b"}


# --- failover timing: the timing plan's (kbpg_tui.core.rto) -------------------------------------------------

@pytest.mark.parametrize("plan, check, timeout, user_timeout", [
    ("fast", "inter 1s fastinter 500ms downinter 500ms rise 1 fall 2", "1s", "5s"),
    ("norm", "inter 2s fastinter 1s downinter 2s rise 2 fall 2", "2s", "10s"),
    ("safe", "inter 3s fastinter 1500ms downinter 3s rise 3 fall 3", "3s", "20s"),
    ("custom", "inter 2s fastinter 1s downinter 2s rise 2 fall 2", "2s", "10s"),  # the custom plan: norm's checks
])
def test_haproxy_checks_follow_the_timing_plan(real_inventory: Path, plan: str, check: str, timeout: str,
                                               user_timeout: str) -> None:
    config = sections(haproxy.render(make_run(real_inventory, from_dict({"patroni": {"timing_plan": plan}})),
                                     "10.0.0.11"))
    for backend in ("listen postgres_write", "listen postgres_read"):
        assert f"default-server {check} on-marked-down shutdown-sessions tcp-ut {user_timeout}" in config[backend]
        # Sessions an old process keeps after a reload (it runs no checks) end when their node is gone.
        assert "option srvtcpka" in config[backend]
    assert f"timeout check {timeout}" in config["defaults"]
    # A refused connection (a primary stopping) goes back to the client at once, not after HAProxy's turn-around.
    assert "retries 0" in config["defaults"]


def ini_values(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith((";", "#", "*")):
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


@pytest.mark.parametrize("plan, login_retry, user_timeout", [("fast", "0.5", "20000"), ("norm", "2", "30000"),
                                                             ("safe", "3", "60000")])
def test_pgbouncer_failover_timing_follows_the_timing_plan(real_inventory: Path, plan: str, login_retry: str,
                                                           user_timeout: str) -> None:
    ini = pgbouncer.render_ini(make_run(real_inventory, from_dict({"patroni": {"timing_plan": plan}})), "10.0.0.11")
    values = ini_values(ini)
    assert values["server_login_retry"] == login_retry
    assert values["tcp_user_timeout"] == user_timeout  # the plan's ttl: a stall it rides out keeps the clients
    # Not the plan's: a login through the local HAProxy is given up after 3 s (the default 15 s could leave pooled
    # writes waiting on a dead attempt after the new primary is up); silent peers are probed after 10 s idle.
    assert values["server_connect_timeout"] == "3"
    assert (values["tcp_keepalive"], values["tcp_keepidle"], values["tcp_keepintvl"], values["tcp_keepcnt"]) == \
        ("1", "10", "5", "3")
    assert values["server_check_delay"] == "10"
    for key in ("server_login_retry", "server_connect_timeout", "server_check_delay", "tcp_keepalive"):
        at = ini.index(f"\n{key} =")
        assert ini[:at].rstrip().splitlines()[-1].startswith(";"), f"{key} comes with its reason"



# --- TLS (the default) -----------------------------------------------------------------------------------------

def test_haproxy_checks_verify_each_nodes_certificate_and_name(real_inventory: Path) -> None:
    text = haproxy.render(make_run(real_inventory), "10.0.0.11")
    for backend in ("listen postgres_write", "listen postgres_read"):
        servers = [line for line in sections(text)[backend] if line.startswith("server ")]
        assert servers == [
            f"server {name} {address}:5432 check port 8008 check-ssl verify required ca-file /etc/haproxy/tls/ca.crt "
            f"check-sni {name} verifyhost {name}"
            for name, address in (("db-master-01", "10.0.0.120"), ("db-slave-01", "10.0.0.121"),
                                  ("db-slave-02", "10.0.0.122"))]
    assert "verify none" not in text


def test_haproxy_checks_each_node_in_the_scheme_it_speaks(real_inventory: Path) -> None:
    config = sections(haproxy.render(make_run(real_inventory), "10.0.0.11", {"db-slave-01": "http"}))
    servers = {line.split()[1]: line for line in config["listen postgres_write"] if line.startswith("server ")}
    assert servers["db-slave-01"] == "server db-slave-01 10.0.0.121:5432 check port 8008"
    assert "check-ssl" in servers["db-master-01"] and "check-ssl" in servers["db-slave-02"]


def test_stats_over_https_with_a_password(real_inventory: Path) -> None:
    stats = sections(haproxy.render(make_run(real_inventory), "10.0.0.11"))["listen stats"]
    assert "bind 10.0.0.11:8404 ssl crt /etc/haproxy/tls/stats.pem ssl-min-ver TLSv1.2" in stats
    assert any(line.startswith("stats auth ") for line in stats)


def test_pgbouncer_requires_tls_from_clients_and_verifies_postgresql(real_inventory: Path) -> None:
    ini = pgbouncer.render_ini(make_run(real_inventory), "10.0.0.11").splitlines()
    for line in ("client_tls_sslmode = require", "client_tls_cert_file = /etc/pgbouncer/tls/node.crt",
                 "client_tls_key_file = /etc/pgbouncer/tls/node.key", "client_tls_protocols = secure",
                 "server_tls_sslmode = verify-full", "server_tls_ca_file = /etc/pgbouncer/tls/ca.crt",
                 "server_tls_protocols = secure"):
        assert line in ini
    # verify-full checks the address PgBouncer connects to: its own, which every DB certificate names; not 127.0.0.1.
    assert "* = host=10.0.0.11 port=5432" in ini


def test_pgbouncer_through_the_lb_verifies_the_lb_address(real_inventory: Path) -> None:
    run = make_run(real_inventory, from_dict({"pgbouncer": {"backend": "lb"}}))
    ini = pgbouncer.render_ini(run, "10.0.0.11")
    assert "* = host=10.0.0.10 port=5432" in ini and "server_tls_sslmode = verify-full" in ini


def test_without_tls_pgbouncer_has_no_tls_setting(real_inventory: Path) -> None:
    ini = pgbouncer.render_ini(make_run(real_inventory, from_dict(PLAINTEXT)), "10.0.0.11")
    assert "_tls_" not in ini
