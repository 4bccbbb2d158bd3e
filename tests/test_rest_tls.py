"""Patroni's REST API changing scheme under a running HAProxy (kbpg_tui.core.steps.rest_tls), and step 03's HAProxy
and step 04's PgBouncer around it: checks paused and resumed, the servers' state kept across reloads, PgBouncer's TLS
turned on and off without refusing a login. Nothing here reaches a host: an HAProxy node is a fake answering step
03's SSH commands and HAProxy's runtime API; the lab runs the real thing (tests/e2e/test_e2e_17_tls_rolling.py,
tests/e2e/test_e2e_18_haproxy_state.py)."""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import re
import shlex
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kbpg_tui.core import tls
from kbpg_tui.core.engine import TaskError, TaskRun
from kbpg_tui.core.settings import from_dict
from kbpg_tui.core.ssh import Cancelled, Result
from kbpg_tui.core.steps import rest_tls
from kbpg_tui.core.steps import s03_haproxy as haproxy
from kbpg_tui.core.steps import s04_pgbouncer as pgbouncer

from .fakes import FakePool, ScriptedConnection, result
from .test_patroni_config import make_run

DB = ("db-master-01", "db-slave-01", "db-slave-02")
SHOW_STATE_HEADER = ("# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight "
                     "srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state "
                     "srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl "
                     "srv_check_port srv_check_addr srv_agent_addr srv_agent_port")


class FakeNode:
    """An HAProxy node as step 03, step 04 and rest_tls see it over SSH: files (with mode and owner), the services'
    states, reloads, and HAProxy's runtime API (servers UP/DOWN, checks paused or not, the answering process)."""

    def __init__(self, leader: str = "db-slave-02", haproxy: str = "active", pgbouncer: str = "inactive"):
        self.files: dict[str, tuple[bytes, str]] = {}  # path -> (content, "mode owner group")
        self.services = {"haproxy": haproxy, "pgbouncer": pgbouncer}
        self.pid = 100
        self.leader = leader
        self.checks = {(b, s): True for b in rest_tls.BACKENDS for s in DB}  # enabled (not paused)
        self.events: list[str] = []  # "reload haproxy", "reload pgbouncer", "runtime: <commands>", "write <path>"
        self.served = {"rest": "down", "pg": "tls:node", "disk": "tls:node"}  # rest_tls.SERVED_SCRIPT's answer

    def state_text(self) -> str:
        lines = ["1", SHOW_STATE_HEADER]
        for i, (backend, server) in enumerate(self.checks):
            up = (server == self.leader) == (backend == "postgres_write")
            check = 6 if self.checks[(backend, server)] else 2
            lines.append(f"{2 + i // 3} {backend} {i % 3 + 1} {server} 10.0.0.{120 + i % 3} {2 if up else 0} 0 1 1 9 "
                         f"{15 if up else 17} {3 if up else 2} {2 if up else 0} {check} 0 0 0 - 5432 - 0 8008 - - 8008")
        return "\n".join(lines) + "\n\n"

    def runtime(self, commands: str) -> Result:
        self.events.append("runtime: " + commands.strip())
        out = []
        for command in (c.strip() for c in commands.replace("\n", ";").split(";") if c.strip()):
            if command == "show servers state":
                out.append(self.state_text())
            elif command == "show info":
                out.append(f"Name: HAProxy\nPid: {self.pid}\n")
            elif (match := re.fullmatch(r"(disable|enable) health (\w+)/([\w-]+)", command)):
                self.checks[(match.group(2), match.group(3))] = match.group(1) == "enable"
            else:
                out.append(f"Unknown command: {command}\n")
        return result("".join(out))

    def __call__(self, script: str, stdin: bytes) -> Result:
        if script == rest_tls.RUNTIME_API:
            return self.runtime(stdin.decode())
        if script.startswith("if [ -f ") and "sha256sum" in script:  # Connection.upload: what is there now
            path = shlex.split(script[len("if [ -f "):].split(" ]", 1)[0])[0]
            if path not in self.files:
                return result("")
            data, attributes = self.files[path]
            return result(f"{attributes} {hashlib.sha256(data).hexdigest()}\n")
        if "mktemp" in script:  # Connection.upload: the write
            path = shlex.split(re.search(r"mktemp (\S+)\.kbpg", script).group(1))[0]  # type: ignore[union-attr]
            owner = re.search(r"chown (\S+):(\S+) ", script)
            mode = re.search(r"chmod (\d+) ", script)
            assert owner and mode
            self.files[path] = (stdin, f"{mode.group(1)} {owner.group(1)} {owner.group(2)}")
            self.events.append(f"write {path}")
            return result("")
        if script.startswith("if [ -f ") and "base64" in script:  # Connection.read_file
            path = shlex.split(script[len("if [ -f "):].split(" ]", 1)[0])[0]
            if path not in self.files:
                return result("")
            return result("present\n" + base64.b64encode(self.files[path][0]).decode() + "\n")
        if (match := re.fullmatch(r"systemctl is-active (\w+) \|\| true", script)):
            return result(self.services[match.group(1)] + "\n")
        if script.startswith("systemctl is-enabled"):
            return result("enabled\n")
        if script.startswith("systemctl show -p User"):
            return result("postgres\n")
        if (match := re.fullmatch(r"systemctl reload (\w+)", script)):
            self.events.append(f"reload {match.group(1)}")
            if match.group(1) == "haproxy":
                self.pid += 1  # a new process answers the runtime socket, with the state the old one saved
            return result("")
        if script.startswith(("systemctl daemon-reload", "systemctl enable", "if [ \"$(stat")):
            return result("")
        if script.startswith("python3 - ") and stdin == rest_tls.SERVED_SCRIPT.encode():
            self.events.append("asked what is served")
            return result("".join(f"{key} {value}\n" for key, value in self.served.items()))
        if script == f"touch {haproxy.FRESH_FLAG}":
            self.events.append("fresh state")
            return result("")
        raise AssertionError(f"unexpected command: {script[:120]}")

    def with_pgbouncer(self, ini: str) -> "FakeNode":
        """A PgBouncer that runs with ``ini`` and kbpg's systemd drop-in already."""
        self.services["pgbouncer"] = "active"
        self.files[pgbouncer.DROPIN_PATH] = (pgbouncer.DROPIN.encode(), "644 root root")
        self.files[pgbouncer.CONFIG_PATH] = (ini.encode(), "640 root postgres")
        return self

    def ini(self) -> str:
        return self.files[pgbouncer.CONFIG_PATH][0].decode()

    def config(self) -> str:
        return self.files[haproxy.CONFIG_PATH][0].decode()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A work directory with kbpg's CA and a certificate for every node of the real inventory."""
    tls.ensure_ca(tmp_path)
    for name in (*DB, "haproxy-01", "haproxy-02"):
        tls.ensure_node_cert(tmp_path, name, [name], ["10.0.0.1"], from_dict({}))
    return tmp_path


def node_run(real_inventory: Path, workdir: Path, settings: dict | None = None,
             **nodes: FakeNode) -> tuple[TaskRun, dict[str, FakeNode]]:
    """A run of the real inventory whose HAProxy nodes are ``nodes`` (haproxy_01=..., default a fake each)."""
    run = make_run(real_inventory, from_dict(settings or {}))
    run.ctx.workdir = workdir
    fakes = {name: nodes.get(name.replace("-", "_"), FakeNode()) for name in ("haproxy-01", "haproxy-02")}
    run.ctx.pool = FakePool({name: ScriptedConnection(run.ctx.host(name), fake)  # type: ignore[assignment]
                             for name, fake in fakes.items()})
    return run, fakes


def on(run: TaskRun, name: str) -> TaskRun:
    return TaskRun(run.ctx, run.step, run.ctx.host(name))


@pytest.fixture
def schemes(monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    """What each DB node's REST API "speaks": a table the test changes (nothing is probed over the network)."""
    table: dict[str, str | None] = {name: "http" for name in DB}
    monkeypatch.setattr(rest_tls, "rest_scheme", lambda ctx, host: table[host.name])
    return table


# --- what a REST API speaks, probed --------------------------------------------------------------------------------

class _Quiet(http.server.BaseHTTPRequestHandler):
    def do_OPTIONS(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    yield server
    if getattr(server, "serving", False):
        server.shutdown()
    server.server_close()


def _serve(server: http.server.HTTPServer) -> None:
    server.serving = True  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()


def test_a_plain_rest_api_is_http(http_server: http.server.HTTPServer) -> None:
    _serve(http_server)
    assert rest_tls.probe_scheme("127.0.0.1", http_server.server_address[1]) == "http"


def test_a_tls_rest_api_is_https(http_server: http.server.HTTPServer, workdir: Path) -> None:
    tls.ensure_node_cert(workdir, "local", ["local"], ["127.0.0.1"], from_dict({}))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert, key = tls.node_paths(workdir, "local")
    context.load_cert_chain(cert, key)
    http_server.socket = context.wrap_socket(http_server.socket, server_side=True)
    _serve(http_server)
    assert rest_tls.probe_scheme("127.0.0.1", http_server.server_address[1]) == "https"


def on_node(port: int) -> str:
    """The probe step 03 runs on a DB node when this machine gets no answer, run here with this Python."""
    done = subprocess.run([sys.executable, "-", "127.0.0.1", str(port)], input=rest_tls.PROBE_ON_NODE,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_probe_on_the_node_tells_http_https_and_nothing(http_server: http.server.HTTPServer,
                                                             workdir: Path) -> None:
    _serve(http_server)
    assert on_node(http_server.server_address[1]) == "http"
    tls.ensure_node_cert(workdir, "local", ["local"], ["127.0.0.1"], from_dict({}))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls.node_paths(workdir, "local"))
    secure = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    secure.socket = context.wrap_socket(secure.socket, server_side=True)
    _serve(secure)
    try:
        assert on_node(secure.server_address[1]) == "https"
    finally:
        secure.shutdown()
        secure.server_close()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert on_node(port) == "none"


def test_a_rest_port_this_machine_cannot_reach_is_asked_on_the_node(real_inventory: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(real_inventory)
    asked = []

    def node(script: str, stdin: bytes) -> Result:
        asked.append(script)
        return result("https\n")

    monkeypatch.setattr(rest_tls, "probe_scheme", lambda address, port, first="https": None)  # a firewall: no answer from here
    host = run.ctx.host("db-slave-01")
    run.ctx.pool = FakePool({"db-slave-01": ScriptedConnection(host, node)})  # type: ignore[assignment]
    assert rest_tls.rest_scheme(run.ctx, host) == "https"
    assert asked == ["python3 - 10.0.0.121 8008 https"]


def test_nothing_listening_is_no_scheme() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert rest_tls.probe_scheme("127.0.0.1", port, timeout=0.5) is None


def test_a_silent_listener_is_no_scheme_within_the_timeout() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert rest_tls.probe_scheme("127.0.0.1", sock.getsockname()[1], timeout=0.3) is None


def test_haproxy_checks_follow_what_each_node_serves_else_what_kbpg_toml_wants(real_inventory: Path,
                                                                               schemes: dict) -> None:
    run = make_run(real_inventory)  # TLS on
    schemes.update({"db-master-01": "https", "db-slave-01": "http", "db-slave-02": None})
    assert rest_tls.check_schemes(run.ctx) == {"db-master-01": "https", "db-slave-01": "http", "db-slave-02": "https"}


# --- HAProxy's runtime API -------------------------------------------------------------------------------------------

def test_paused_checks_are_read_from_show_servers_state() -> None:
    node = FakeNode()
    node.checks[("postgres_write", "db-slave-01")] = False
    rows = rest_tls.parse_servers_state(node.state_text())
    assert len(rows) == 6 and rows[0]["srv_name"] == "db-master-01"
    assert rest_tls.paused(rows) == ["postgres_write/db-slave-01"]


def test_the_real_show_servers_state_of_haproxy_3_0() -> None:
    text = ("1\n" + SHOW_STATE_HEADER + "\n"
            "2 postgres_write 1 db-master-01 198.18.0.120 0 0 1 1 20 17 2 0 6 0 0 0 - 5432 - 0 8008 - - 8008\n"
            "2 postgres_write 3 db-slave-02 198.18.0.122 2 0 1 1 20 15 3 2 2 0 0 0 - 5432 - 0 8008 - - 8008\n"
            "3 postgres_read 3 db-slave-02 198.18.0.122 0 0 1 1 19 17 0 0 7 0 0 0 - 5432 - 0 8008 - - 8008\n\n")
    # 6: configured + enabled; 2: configured, paused by `disable health`; 7: enabled, a check in progress.
    assert rest_tls.paused(rest_tls.parse_servers_state(text)) == ["postgres_write/db-slave-02"]


# --- the change ------------------------------------------------------------------------------------------------------

def test_checks_of_the_changing_nodes_are_paused_during_the_change_then_follow_and_resume(
        real_inventory: Path, workdir: Path, schemes: dict) -> None:
    run, nodes = node_run(real_inventory, workdir)
    seen_inside = {}
    with rest_tls.rest_scheme_change(run, list(DB)) as change:
        assert change.changing == list(DB)
        for name, node in nodes.items():
            seen_inside[name] = rest_tls.paused(rest_tls.parse_servers_state(node.state_text()))
        schemes.update(dict.fromkeys(DB, "https"))  # Patroni reloaded: the REST API speaks HTTPS now
    for name, node in nodes.items():
        assert sorted(seen_inside[name]) == sorted(f"{b}/{s}" for b in rest_tls.BACKENDS for s in DB)
        assert all(node.checks.values()), f"{name}: checks left paused"
        config = node.config()
        for server in DB:
            assert f"check-ssl verify required ca-file {haproxy.TLS_CA} check-sni {server} verifyhost {server}" in config
        # The new configuration is loaded (a new process) before the checks resume.
        reload_at = node.events.index("reload haproxy")
        resume_at = max(i for i, e in enumerate(node.events) if e.startswith("runtime: enable health"))
        assert reload_at < resume_at
    assert any("checks over TLS" in d for d in change.details) and change.warnings == []


def test_a_node_whose_scheme_does_not_change_is_not_paused(real_inventory: Path, workdir: Path, schemes: dict) -> None:
    schemes.update({"db-master-01": "https"})
    run, nodes = node_run(real_inventory, workdir)
    with rest_tls.rest_scheme_change(run, list(DB)) as change:
        assert change.changing == ["db-slave-01", "db-slave-02"]
        paused = rest_tls.paused(rest_tls.parse_servers_state(nodes["haproxy-01"].state_text()))
        assert not any(p.endswith("/db-master-01") for p in paused) and len(paused) == 4


def test_nothing_is_done_when_no_scheme_changes(real_inventory: Path, workdir: Path, schemes: dict) -> None:
    schemes.update(dict.fromkeys(DB, "https"))
    run, nodes = node_run(real_inventory, workdir)
    with rest_tls.rest_scheme_change(run, list(DB)) as change:
        pass
    assert change.changing == [] and all(node.events == [] for node in nodes.values())


def test_nothing_is_done_without_a_running_haproxy(real_inventory: Path, workdir: Path, schemes: dict) -> None:
    run, nodes = node_run(real_inventory, workdir, haproxy_01=FakeNode(haproxy="inactive"),
                          haproxy_02=FakeNode(haproxy="inactive"))
    with rest_tls.rest_scheme_change(run, list(DB)) as change:
        pass
    assert change.changing == [] and not any(e.startswith("runtime") for n in nodes.values() for e in n.events)


def test_a_failed_reload_still_leaves_haproxy_right_and_resumed(real_inventory: Path, workdir: Path,
                                                                schemes: dict) -> None:
    run, nodes = node_run(real_inventory, workdir)
    with pytest.raises(TaskError, match="db-slave-01 still serves"):
        with rest_tls.rest_scheme_change(run, list(DB)):
            schemes.update({"db-slave-02": "https", "db-master-01": "https"})  # db-slave-01 did not turn
            raise TaskError("db-slave-01 still serves plain HTTP")
    for node in nodes.values():
        assert all(node.checks.values())
        config = node.config()
        assert "server db-slave-01 10.0.0.121:5432 check port 8008\n" in config  # checked as it speaks: HTTP
        assert "check-sni db-slave-02" in config and "check-sni db-master-01" in config


def test_a_cancelled_run_leaves_the_checks_paused_and_says_so(real_inventory: Path, workdir: Path,
                                                              schemes: dict) -> None:
    run, nodes = node_run(real_inventory, workdir)
    with pytest.raises(Cancelled):
        with rest_tls.rest_scheme_change(run, list(DB)) as change:
            run.ctx.cancel.set()
            raise Cancelled("cancelled")
    for node in nodes.values():
        assert not all(node.checks.values()) and "reload haproxy" not in node.events
    assert any("until `kbpg install` is run again" in w for w in change.warnings)


def test_a_pause_that_fails_on_one_node_is_undone_on_the_others_and_nothing_is_reloaded(
        real_inventory: Path, workdir: Path, schemes: dict) -> None:
    class Refusing(FakeNode):
        def runtime(self, commands: str) -> Result:
            if "disable health" in commands:
                return result("Permission denied\n")  # a socket without "level admin"
            return super().runtime(commands)

    run, nodes = node_run(real_inventory, workdir, haproxy_02=Refusing())
    entered = False
    with pytest.raises(TaskError, match="haproxy-02: HAProxy's checks of .* could not be paused.*nothing was reloaded"):
        with rest_tls.rest_scheme_change(run, list(DB)):
            entered = True
    assert not entered
    assert all(nodes["haproxy-01"].checks.values()), "the pause that worked was left in place"


def test_haproxy_not_following_fails_the_change(real_inventory: Path, workdir: Path, schemes: dict,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    run, _nodes = node_run(real_inventory, workdir)

    def broken(run: TaskRun, schemes: dict, expected_paused: bool = False) -> None:
        raise TaskError("haproxy -c refused the file")

    monkeypatch.setattr(haproxy, "apply", broken)
    with pytest.raises(TaskError, match="haproxy-01: haproxy -c refused the file.*run kbpg install again"):
        with rest_tls.rest_scheme_change(run, list(DB)):
            schemes.update(dict.fromkeys(DB, "https"))


def test_turning_tls_off_makes_pgbouncer_stop_requiring_server_tls_before_the_reload(
        real_inventory: Path, workdir: Path, schemes: dict) -> None:
    tls_on, _ = node_run(real_inventory, workdir)
    verifying = pgbouncer.render_ini(on(tls_on, "haproxy-01"), "10.0.0.11")
    assert "server_tls_sslmode = verify-full" in verifying
    node = FakeNode().with_pgbouncer(verifying)
    schemes.update(dict.fromkeys(DB, "https"))
    run, nodes = node_run(real_inventory, workdir, {"tls": {"enabled": False}}, haproxy_01=node)
    with rest_tls.rest_scheme_change(run, list(DB)) as change:
        inside = node.ini()  # what PgBouncer has while PostgreSQL stops offering TLS
        reloaded = "reload pgbouncer" in node.events
    assert "server_tls_sslmode" not in inside and "client_tls_sslmode" not in inside and reloaded
    assert any("stopped requiring TLS" in d for d in change.details)
    assert "reload pgbouncer" not in nodes["haproxy-02"].events  # inactive there: nothing to do


def test_pgbouncer_is_left_alone_while_tls_stays_on(real_inventory: Path, workdir: Path) -> None:
    node = FakeNode(pgbouncer="active")
    run, _ = node_run(real_inventory, workdir, haproxy_01=node)
    assert pgbouncer.stop_requiring_server_tls(on(run, "haproxy-01")) is None and node.events == []


# --- step 03's apply ---------------------------------------------------------------------------------------------------

def test_checks_found_paused_are_resumed_and_reported(real_inventory: Path, workdir: Path) -> None:
    node = FakeNode()
    node.checks[("postgres_write", "db-slave-02")] = False
    run, _ = node_run(real_inventory, workdir, haproxy_01=node)
    outcome = haproxy.apply(on(run, "haproxy-01"), dict.fromkeys(DB, "https"))
    assert all(node.checks.values())
    assert any("postgres_write/db-slave-02 were paused" in w for w in outcome.warnings)


def test_a_second_run_changes_nothing_and_reloads_nothing(real_inventory: Path, workdir: Path) -> None:
    node = FakeNode()
    run, _ = node_run(real_inventory, workdir, haproxy_01=node)
    haproxy.apply(on(run, "haproxy-01"), dict.fromkeys(DB, "https"))
    assert node.events.count("reload haproxy") == 1
    run.ctx.state.clear()
    node.events.clear()
    outcome = haproxy.apply(on(run, "haproxy-01"), dict.fromkeys(DB, "https"))
    assert outcome.status.value == "unchanged" and "reload haproxy" not in node.events


def test_a_moved_server_is_reloaded_without_the_saved_state(real_inventory: Path, workdir: Path) -> None:
    """HAProxy's saved state carries each server's port and check port over a reload: after a port change the old
    ones would win over the new haproxy.cfg (every server DOWN), so that reload saves no state."""
    node = FakeNode()
    run, _ = node_run(real_inventory, workdir, haproxy_01=node)
    haproxy.apply(on(run, "haproxy-01"), dict.fromkeys(DB, "https"))
    assert "fresh state" not in node.events  # nothing was there before: a start
    run.ctx.state.clear()
    node.events.clear()
    run.settings.ports.patroni_rest = 8009
    haproxy.apply(on(run, "haproxy-01"), dict.fromkeys(DB, "https"))
    assert node.events.index("fresh state") < node.events.index("reload haproxy")
    run.ctx.state.clear()
    node.events.clear()
    run.settings.pgbouncer.max_client_conn += 1  # not HAProxy's: nothing to write; and a reload that moves nothing
    run.settings.patroni.timing_plan = "fast"    # keeps the state
    haproxy.apply(on(run, "haproxy-01"), dict.fromkeys(DB, "https"))
    assert "reload haproxy" in node.events and "fresh state" not in node.events


def test_a_stats_page_still_serving_an_older_certificate_is_reloaded(real_inventory: Path, workdir: Path) -> None:
    node = FakeNode()
    run, _ = node_run(real_inventory, workdir, haproxy_01=node)
    haproxy.apply(on(run, "haproxy-01"), dict.fromkeys(DB, "https"))
    run.ctx.state.clear()
    node.events.clear()
    node.served = {"rest": "tls:old", "pg": "down", "disk": "tls:new"}
    haproxy.apply(on(run, "haproxy-01"), dict.fromkeys(DB, "https"))
    assert node.events.count("reload haproxy") == 1
    node.events.clear()
    node.served = {"rest": "tls:new", "pg": "down", "disk": "tls:new"}
    haproxy.apply(on(run, "haproxy-01"), dict.fromkeys(DB, "https"))
    assert "reload haproxy" not in node.events


def test_the_save_script_saves_no_state_after_a_move(tmp_path: Path) -> None:
    state, flag = tmp_path / "server-state", tmp_path / "fresh"
    script = haproxy.SAVE_STATE.replace(haproxy.STATE_FILE, str(state)).replace(haproxy.FRESH_FLAG, str(flag))
    script = script.replace(rest_tls.HAPROXY_SOCKET, str(tmp_path / "no-socket"))
    state.write_text("1\n# be_id be_name ...\n")  # what the reload before saved
    flag.touch()
    subprocess.run(["sh", "-c", script], check=True, timeout=30)
    assert not state.exists() and not flag.exists()  # the new process starts from its configuration alone


def test_new_tls_files_reload_haproxy_once(real_inventory: Path, workdir: Path) -> None:
    node = FakeNode()
    run, _ = node_run(real_inventory, workdir, haproxy_01=node)
    host = on(run, "haproxy-01")
    assert haproxy.tls_files(host).status.value == "changed"  # step 03's "tls files" task
    haproxy.apply(host, dict.fromkeys(DB, "https"))  # its "config" task: the stats certificate is new
    haproxy.apply(host, dict.fromkeys(DB, "https"))  # a second apply in the same run (rest_scheme_change, then 03)
    assert node.events.count("reload haproxy") == 1


def test_the_reload_waits_for_the_new_process(real_inventory: Path, workdir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    class Stuck(FakeNode):
        def __call__(self, script: str, stdin: bytes) -> Result:
            answer = super().__call__(script, stdin)
            if script == "systemctl reload haproxy":
                self.pid -= 1  # the old process keeps answering
            return answer

    monkeypatch.setattr(rest_tls, "NEW_PROCESS_WAIT", 0.5)
    node = Stuck()
    run, _ = node_run(real_inventory, workdir, haproxy_01=node)
    outcome = haproxy.apply(on(run, "haproxy-01"), dict.fromkeys(DB, "https"))
    assert any("new process did not answer" in w for w in outcome.warnings)


# --- the servers' state across a reload ---------------------------------------------------------------------------------

def test_haproxy_loads_the_state_saved_just_before_a_reload_and_never_an_old_one(real_inventory: Path) -> None:
    config = haproxy.render(make_run(real_inventory), "10.0.0.11")
    assert f"    server-state-file {haproxy.STATE_FILE}\n" in config
    assert "\ndefaults\n    load-server-state-from-file global\n" in config
    service = [line for line in haproxy.DROPIN.splitlines() if line.startswith("Exec")]
    assert service == [f"ExecStartPre=-/bin/rm -f {haproxy.STATE_FILE}",  # a start (a crash, a restart): fresh
                       "ExecReload=",
                       "ExecReload=/usr/sbin/haproxy -Ws -f $CONFIG -c $EXTRAOPTS",  # a bad file stops here
                       f"ExecReload=-{haproxy.SAVE_STATE_PATH}",  # then the state, with the old process up
                       "ExecReload=/bin/kill -USR2 $MAINPID"]


class RuntimeSocket(threading.Thread):
    """A UNIX socket answering one connection with ``answer`` (HAProxy's runtime API in non-interactive mode)."""

    def __init__(self, path: Path, answer: bytes):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen()
        self.answer = answer
        self.asked = b""

    def run(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            while not self.asked.endswith(b"\n"):
                chunk = conn.recv(1024)
                if not chunk:
                    break
                self.asked += chunk
            conn.sendall(self.answer)


def save_state(tmp_path: Path, answer: bytes | None) -> tuple[Path, RuntimeSocket | None]:
    """Run the drop-in's script for real (bash, with its paths moved under ``tmp_path``)."""
    state = tmp_path / "server-state"
    state.write_text("1\nan old state\n")
    sock_path = tmp_path / "admin.sock"
    server = RuntimeSocket(sock_path, answer) if answer is not None else None
    if server:
        server.start()
    script = haproxy.SAVE_STATE.replace(haproxy.STATE_FILE, str(state)).replace(rest_tls.HAPROXY_SOCKET, str(sock_path))
    env = {**os.environ, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    done = subprocess.run(["sh", "-c", script], capture_output=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    return state, server


def test_the_saved_state_is_what_haproxy_answered(tmp_path: Path) -> None:
    answer = ("1\n" + SHOW_STATE_HEADER + "\n2 postgres_write 1 db-1 10.0.0.120 2 0 1 1 9 15 3 2 6 0 0 0 - 5432 - 0 "
              "8008 - - 8008\n\n").encode()
    state, server = save_state(tmp_path, answer)
    assert server is not None and server.asked == b"show servers state\n"
    assert state.read_bytes() == answer and not (tmp_path / "server-state.tmp").exists()


@pytest.mark.parametrize("answer", [None, b"Unknown command\n", b""], ids=["no socket", "refusal", "nothing"])
def test_no_state_from_haproxy_removes_the_old_file(tmp_path: Path, answer: bytes | None) -> None:
    state, _ = save_state(tmp_path, answer)
    assert not state.exists(), "a stale state would be loaded by the new process"


# --- step 04: PgBouncer --------------------------------------------------------------------------------------------------

def test_pgbouncer_offers_tls_to_clients_before_requiring_it(real_inventory: Path, workdir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    plaintext, _ = node_run(real_inventory, workdir, {"tls": {"enabled": False}})
    node = FakeNode().with_pgbouncer(pgbouncer.render_ini(on(plaintext, "haproxy-01"), "10.0.0.11"))
    run, _ = node_run(real_inventory, workdir, haproxy_01=node)
    monkeypatch.setattr(pgbouncer, "render_userlist", lambda run, current: '"kb_app" "x"\n')
    monkeypatch.setattr(pgbouncer, "TLS_OFFERED_SECONDS", 0.0)
    seen = []
    original = node.__call__

    def watch(script: str, stdin: bytes) -> Result:
        if script == "systemctl reload pgbouncer":
            seen.append([line for line in node.ini().splitlines() if line.startswith("client_tls_sslmode")])
        return original(script, stdin)

    run.connection(run.ctx.host("haproxy-01")).handler = watch  # type: ignore[attr-defined]
    outcome = pgbouncer.configure_pgbouncer(on(run, "haproxy-01"))
    assert seen == [["client_tls_sslmode = prefer"], ["client_tls_sslmode = require"]]
    assert "TLS offered to clients" in outcome.detail


def test_pgbouncer_already_requiring_tls_is_reloaded_once(real_inventory: Path, workdir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    run, _ = node_run(real_inventory, workdir)
    ini = pgbouncer.render_ini(on(run, "haproxy-01"), "10.0.0.11")
    node = FakeNode().with_pgbouncer(ini.replace("pool_mode", "; pool_mode"))
    run, _ = node_run(real_inventory, workdir, haproxy_01=node)
    monkeypatch.setattr(pgbouncer, "render_userlist", lambda run, current: '"kb_app" "x"\n')
    pgbouncer.configure_pgbouncer(on(run, "haproxy-01"))
    assert node.events.count("reload pgbouncer") == 1


def test_pgbouncer_still_serving_an_older_certificate_is_reloaded(real_inventory: Path, workdir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped between writing PgBouncer's new certificate and its RELOAD: the next run finds every file
    unchanged, and reloads because PgBouncer serves another certificate than its node.crt."""
    node = FakeNode()
    run, _ = node_run(real_inventory, workdir, haproxy_01=node)
    monkeypatch.setattr(pgbouncer, "render_userlist", lambda run, current: '"kb_app" "x"\n')
    pgbouncer.configure_pgbouncer(on(run, "haproxy-01"))  # a first install: started
    node.services["pgbouncer"] = "active"
    run.ctx.state.clear()
    node.events.clear()
    node.served = {"rest": "down", "pg": "tls:old", "disk": "tls:new"}
    outcome = pgbouncer.configure_pgbouncer(on(run, "haproxy-01"))
    assert node.events.count("reload pgbouncer") == 1 and "older certificate" in outcome.detail
    node.events.clear()
    node.served = {"rest": "down", "pg": "tls:new", "disk": "tls:new"}
    outcome = pgbouncer.configure_pgbouncer(on(run, "haproxy-01"))
    assert "reload pgbouncer" not in node.events and outcome.status.value == "unchanged"


@pytest.mark.parametrize("before_backend, after_backend, before_tls, after_tls, haproxy_reloaded, wanted", [
    ("127.0.0.1", "10.0.0.11", False, True, False, False),  # TLS on, backend moved: the RELOAD renews them itself
    ("127.0.0.1", "10.0.0.11", False, True, True, False),
    ("10.0.0.10", "10.0.0.10", False, True, False, True),  # backend through the LB: only the TLS settings change
    ("10.0.0.11", "10.0.0.11", True, True, True, True),  # HAProxy was reloaded: off its old process
    ("10.0.0.11", "10.0.0.11", True, True, False, False),  # nothing changed for the server side
])
def test_pgbouncer_renews_server_connections_only_when_its_reload_does_not(
        before_backend: str, after_backend: str, before_tls: bool, after_tls: bool, haproxy_reloaded: bool,
        wanted: bool) -> None:
    def ini(backend: str, with_tls: bool) -> str:
        return f"* = host={backend} port=5432\n" + ("server_tls_sslmode = verify-full\n" if with_tls else "")

    assert pgbouncer.needs_reconnect(ini(before_backend, before_tls), ini(after_backend, after_tls),
                                     haproxy_reloaded) is wanted


def test_pgbouncer_tls_files_are_readable_by_its_user_alone(real_inventory: Path, workdir: Path) -> None:
    node = FakeNode()
    run, _ = node_run(real_inventory, workdir, haproxy_01=node)
    assert pgbouncer.tls_files(on(run, "haproxy-01")).status.value == "changed"
    assert node.files[pgbouncer.TLS_KEY][1] == "600 postgres postgres"
    assert node.files[pgbouncer.TLS_CERT][1] == "644 root root" and node.files[pgbouncer.TLS_CA][1] == "644 root root"
    assert node.files[pgbouncer.TLS_KEY][0] == tls.node_files(workdir, "haproxy-01")[1]
    assert "haproxy-01" in run.ctx.state["pgbouncer_tls_changed"]


def test_haproxy_stats_certificate_is_not_world_readable(real_inventory: Path, workdir: Path) -> None:
    node = FakeNode()
    run, _ = node_run(real_inventory, workdir, haproxy_01=node)
    haproxy.tls_files(on(run, "haproxy-01"))
    data, attributes = node.files[haproxy.STATS_PEM]
    cert, key = tls.node_files(workdir, "haproxy-01")
    assert attributes == "640 root haproxy" and cert.strip() in data and key.strip() in data


def test_tls_files_are_not_written_with_tls_off(real_inventory: Path, workdir: Path) -> None:
    node = FakeNode()
    run, _ = node_run(real_inventory, workdir, {"tls": {"enabled": False}}, haproxy_01=node)
    assert haproxy.tls_files(on(run, "haproxy-01")).detail == "TLS disabled in kbpg.toml"
    assert pgbouncer.tls_files(on(run, "haproxy-01")).detail == "TLS disabled in kbpg.toml"
    assert node.files == {}
