"""Field failure modes on the installed lab: guards that fail these tests when they are removed.

6: every warning listed in the unattended summary, --strict exits 1 on any; 17: data_dir, scope and the Raft
password never change under a live node; "never regenerate silently": step 00 generates nothing once a cluster
exists; 14: Patroni's unsafe REST endpoints refuse a request without credentials; 12: applications reach the DB
nodes only through HAProxy (or from network.direct_clients), and a session from elsewhere is warned about.

Each run that must be refused works on a copy of the work directory, so kbpg.toml and postgres.env stay as they
were; a test that changes the hosts puts them back with a plain `kbpg install --yes` from the original.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kbpg_tui.core import cluster, tls
from kbpg_tui.core import credentials as creds
from kbpg_tui.core import settings as cfg

from .conftest import DB_HOSTS, LB, REPO, Installed, connect, kbpg, on_host, wait_healthy

pytestmark = [pytest.mark.lab, pytest.mark.e2e]

CONFIG = "/etc/patroni/config.yml"


def copy_workdir(installed: Installed, tmp_path: Path) -> Path:
    workdir = tmp_path / "work"
    shutil.copytree(installed.workdir, workdir, ignore=shutil.ignore_patterns("logs", "reports", ".kbpg-lab"))
    return workdir


def db_host_state(installed: Installed) -> dict[str, str]:
    """What a refused run must leave as it was on each DB node: patroni.yml (content, time) and Patroni's PID."""
    return {h.name: on_host(installed.workdir, h.address,
                            f"sha256sum {CONFIG}; stat -c %Y {CONFIG}; systemctl show -p MainPID --value patroni")[1]
            for h in DB_HOSTS}


def diagnose(workdir: Path) -> dict:
    result = kbpg(workdir, "diagnose", "--json", timeout=180)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return json.loads(result.stdout)


def results_of(report: dict, number: int) -> list[dict]:
    return [r for r in report["results"] if r["number"] == number]


# --- 6: warnings in the unattended summary; --strict ------------------------------------------------------------

def test_warnings_are_listed_with_a_count_and_strict_exits_1(installed: Installed) -> None:
    relaxed = kbpg(installed.workdir, "install", "--yes", "--step", "01", timeout=300)
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr
    count = re.search(r"^Warnings \((\d+)\):$", relaxed.stdout, re.MULTILINE)
    assert count, relaxed.stdout
    listed = re.findall(r"^  - (.+)$", relaxed.stdout, re.MULTILINE)
    assert len(listed) == int(count.group(1))
    for host in DB_HOSTS:  # the lab's filesystem is not XFS: one warning per DB node, naming it
        assert any(line.startswith(f"{host.name}: the data directory") and "XFS is recommended" in line for line in listed)
    strict = kbpg(installed.workdir, "install", "--yes", "--step", "01", "--strict", timeout=300)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "all hosts done." in strict.stdout and f"--strict: {count.group(1)} warning(s), exit 1." in strict.stdout


# --- 17: what a live node is must not change under it --------------------------------------------------------------

def _new_data_dir(workdir: Path) -> str:
    settings = cfg.load_settings(workdir / "kbpg.toml")
    settings.postgresql.data_dir = f"/var/lib/postgresql/{settings.postgresql.version}/moved"
    cfg.save_settings(settings, workdir / "kbpg.toml")
    return "postgresql.data_dir"


def _new_env_value(name: str, value: str):
    def change(workdir: Path) -> str:
        path = workdir / creds.ENV_FILE
        values = creds.read_env(path)
        values[name] = value
        creds.write_env(path, values)
        return {"PATRONI_CLUSTER_NAME": "scope", "PATRONI_RAFT_PASSWORD": "raft.password (PATRONI_RAFT_PASSWORD)"}[name]
    return change


@pytest.mark.parametrize("change", [
    _new_data_dir,
    _new_env_value("PATRONI_CLUSTER_NAME", "another-cluster"),
    _new_env_value("PATRONI_RAFT_PASSWORD", "Another-Raft-password-0123456789"),
], ids=["data_dir", "scope", "raft_password"])
def test_a_change_under_a_live_node_is_refused_and_nothing_is_written(installed: Installed, tmp_path: Path, change) -> None:
    wait_healthy(installed.workdir)
    workdir = copy_workdir(installed, tmp_path)
    key = change(workdir)
    before = db_host_state(installed)
    result = kbpg(workdir, "install", "--yes", timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    for host in DB_HOSTS:
        assert re.search(rf"{host.name} runs an initialised cluster in \S+; this run would change {re.escape(key)} under it",
                         result.stdout), result.stdout
    assert "upgrade or a migration" in result.stdout
    assert db_host_state(installed) == before  # patroni.yml untouched, Patroni not restarted
    moved = f"/var/lib/postgresql/{cfg.load_settings(workdir / 'kbpg.toml').postgresql.version}/moved"
    for host in DB_HOSTS:
        assert on_host(installed.workdir, host.address, f"test -e {moved}")[0] != 0  # no new data directory either


# --- never regenerate silently ----------------------------------------------------------------------------------

def _remove_file(path: Path) -> str:
    path.unlink()
    return "is missing, but a cluster already exists"


def _remove_raft_password(path: Path) -> str:
    values = creds.read_env(path)
    del values["PATRONI_RAFT_PASSWORD"]
    creds.write_env(path, values)
    return "lacks PATRONI_RAFT_PASSWORD, but a cluster already exists"


@pytest.mark.parametrize("damage", [_remove_file, _remove_raft_password], ids=["moved_away", "lacking_a_name"])
def test_step_00_generates_nothing_once_a_cluster_exists(installed: Installed, tmp_path: Path, damage) -> None:
    workdir = copy_workdir(installed, tmp_path)
    path = workdir / creds.ENV_FILE
    expected = damage(path)
    left = path.read_bytes() if path.exists() else None
    before = db_host_state(installed)
    result = kbpg(workdir, "install", "--yes", timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert expected in result.stdout and "Restore" in result.stdout and "Nothing was generated or written" in result.stdout
    for host in DB_HOSTS:
        assert f"{host.name} ({CONFIG}" in result.stdout
    assert "== 01" not in result.stdout  # stopped at step 00
    assert (path.read_bytes() if path.exists() else None) == left  # nothing regenerated
    assert db_host_state(installed) == before


# --- 14: unsafe REST endpoints need credentials -----------------------------------------------------------------

def unauthenticated_patch(workdir: Path, address: str) -> int:
    """PATCH /config without credentials, over HTTPS verified with kbpg's CA (TLS is on in the lab's kbpg.toml)."""
    request = urllib.request.Request(f"https://{address}:8008/config", method="PATCH")
    try:
        with cluster.direct_opener(tls.client_context(workdir)).open(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_for_status(workdir: Path, address: str, wanted: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = unauthenticated_patch(workdir, address)
        if status == wanted:
            return
        time.sleep(1)
    raise AssertionError(f"{address}: PATCH /config answered {status}, not {wanted}, after {timeout} s")


DROP_REST_AUTH = f"""python3 - <<'EOF'
import yaml
path = "{CONFIG}"
text = open(path).read()
config = yaml.safe_load(text)
config["restapi"].pop("authentication")
header = text.splitlines()[0] + "\\n"  # kbpg's own first line, kept
open(path, "w").write(header + yaml.safe_dump(config, sort_keys=False))
EOF
systemctl reload patroni"""


def test_unsafe_rest_endpoints_refuse_requests_without_credentials(installed: Installed) -> None:
    report = diagnose(installed.workdir)
    checks = results_of(report, 13)
    assert sorted(r["target"] for r in checks) == sorted(h.name for h in DB_HOSTS)
    assert all(r["verdict"] == "pass" for r in checks), checks
    # Without restapi.authentication the same probe fails, naming the node (and Patroni's answer).
    host = DB_HOSTS[1]
    code, out, err = on_host(installed.workdir, host.address, DROP_REST_AUTH)
    assert code == 0, out + err
    try:
        wait_for_status(installed.workdir, host.address, 400)  # reached the handler: an empty body, nothing applied
        checks = {r["target"]: r for r in results_of(diagnose(installed.workdir), 13)}
        assert checks[host.name]["verdict"] == "fail"
        assert checks[host.name]["reason"].startswith(f"{host.name}: PATCH /config without credentials answered 400")
        assert all(r["verdict"] == "pass" for name, r in checks.items() if name != host.name)
    finally:
        restored = kbpg(installed.workdir, "install", "--yes", timeout=600)
        assert restored.returncode == 0, restored.stdout
        wait_for_status(installed.workdir, host.address, 401)


# --- 12: applications only through HAProxy (or from network.direct_clients) -------------------------------------

HOLD = """
import json, sys
import psycopg
p = json.loads(sys.stdin.readline())
try:
    conn = psycopg.connect(host=p["host"], port=5432, user=p["user"], password=p["password"], dbname=p["dbname"],
                           connect_timeout=10, application_name="kbpg-e2e-direct")
    conn.execute("SELECT 1")
except psycopg.Error as exc:
    print("refused:", " ".join(str(exc).split()), flush=True)
    sys.exit(0)
print("connected", flush=True)
sys.stdin.readline()  # the session stays open until the test closes stdin
conn.close()
"""


class FromLb:
    """A PostgreSQL session opened from the LB stand-in (198.18.0.10): a client outside HAProxy and the DB nodes."""

    def __init__(self, installed: Installed, host: str, admin: bool = False):
        values = installed.credentials
        role = "SUPER" if admin else "APP_"
        user, password = values[f"POSTGRES_{role}USER"], values[f"POSTGRES_{role}PASS"]
        self.process = subprocess.Popen(["ip", "netns", "exec", LB.netns, sys.executable, "-c", HOLD], cwd=REPO,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.process.stdin is not None and self.process.stdout is not None
        # The password reaches the child on stdin, never in argv.
        self.process.stdin.write(json.dumps({"host": host, "user": user, "password": password,
                                             "dbname": values["POSTGRES_DB"]}) + "\n")
        self.process.stdin.flush()
        self.answer = self.process.stdout.readline().strip() or self.process.stderr.read()

    def close(self) -> None:
        try:
            assert self.process.stdin is not None
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        self.process.wait(timeout=30)


def try_from_lb(installed: Installed, host: str, admin: bool = False) -> str:
    session = FromLb(installed, host, admin)
    session.close()
    return session.answer


def wait_from_lb(installed: Installed, host: str, accepted: bool, timeout: float = 60) -> str:
    """Patroni applies a changed pg_hba on its next loop after the reload: wait for it."""
    deadline = time.monotonic() + timeout
    answer = ""
    while time.monotonic() < deadline:
        answer = try_from_lb(installed, host)
        if (answer == "connected") == accepted:
            return answer
        time.sleep(1)
    raise AssertionError(f"from the LB stand-in to {host}: {answer!r} after {timeout} s")


def primary(installed: Installed):
    members = wait_healthy(installed.workdir)
    leader = next(m["Member"] for m in members if m["Role"] == "Leader")
    return next(h for h in DB_HOSTS if h.name == leader)


def postmaster_started(installed: Installed) -> str:
    with connect(installed.workdir, "monitor", LB.address, 5432) as conn:  # never the superuser through the LB
        return str(conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0])


def test_applications_reach_the_nodes_only_through_haproxy_or_from_direct_clients(installed: Installed,
                                                                                  tmp_path: Path) -> None:
    node = primary(installed)
    values = installed.credentials
    # The LB stand-in is in the private subnet but is neither a HAProxy nor a DB node: the app role is refused...
    refused = try_from_lb(installed, node.address)
    assert refused.startswith("refused:") and 'no pg_hba.conf entry for host "198.18.0.10"' in refused, refused
    assert f'user "{values["POSTGRES_APP_USER"]}"' in refused
    # ... and so is the superuser: it logs in only over the local socket and from the DB nodes.
    refused = try_from_lb(installed, node.address, admin=True)
    assert refused.startswith("refused:") and 'pg_hba.conf rejects connection for host "198.18.0.10"' in refused, refused

    workdir = copy_workdir(installed, tmp_path)
    settings = cfg.load_settings(workdir / "kbpg.toml")
    settings.network.direct_clients = [f"{LB.address}/32"]
    cfg.save_settings(settings, workdir / "kbpg.toml")
    started = postmaster_started(installed)
    session = None
    try:
        result = kbpg(workdir, "install", "--yes", timeout=600)
        assert result.returncode == 0, result.stdout
        assert re.search(r"02 cluster\s+start\s+changed .*reloaded", result.stdout), result.stdout
        wait_from_lb(installed, node.address, accepted=True)
        # A reload, not a restart: same postmaster, same leader and timeline.
        assert postmaster_started(installed) == started
        assert primary(installed).name == node.name

        session = FromLb(installed, node.address)
        assert session.answer == "connected"
        allowed = results_of(diagnose(workdir), 14)  # 198.18.0.10 is in direct_clients: nothing to say
        assert [r["verdict"] for r in allowed] == ["pass"], allowed
        # The same session, judged by the original kbpg.toml (no direct_clients): warned, naming the address.
        warned = results_of(diagnose(installed.workdir), 14)
        assert [r["verdict"] for r in warned] == ["warn"], warned
        assert f"primary {node.name}:" in warned[0]["reason"]
        assert f"198.18.0.10 ({values['POSTGRES_APP_USER']}, 1 session)" in warned[0]["reason"]
    finally:
        if session is not None:
            session.close()
        restored = kbpg(installed.workdir, "install", "--yes", timeout=600)
        assert restored.returncode == 0, restored.stdout
    wait_from_lb(installed, node.address, accepted=False)
    assert postmaster_started(installed) == started
