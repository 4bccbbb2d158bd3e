"""Step 00–05 from bare lab hosts: a killed install resumed, then the cluster and its secrets checked."""

from __future__ import annotations

import re
import stat

import pytest

from kbpg_tui.core import credentials as creds

from .conftest import DB_HOSTS, HAPROXY_HOSTS, LB, Installed, connect, on_host, wait_healthy

pytestmark = [pytest.mark.lab, pytest.mark.e2e]


def test_killed_install_resumes_to_a_healthy_cluster(installed: Installed) -> None:
    assert "== 02 Patroni cluster" in installed.killed_output
    assert "all hosts done." in installed.output
    members = wait_healthy(installed.workdir, timeout=30)
    names = {m["Member"] for m in members}
    assert names == {h.name for h in DB_HOSTS}
    # Every DB node passed Patroni's own validator.
    for host in DB_HOSTS:
        assert re.search(rf"02 {host.name}\s+validate\s+unchanged .*patroni --validate-config passed", installed.output)


def test_roles_and_database_exist_through_the_lb(installed: Installed) -> None:
    # As the app role (the superuser is refused through the LB), over TLS verified with kbpg's CA.
    with connect(installed.workdir, "app", LB.address, 5432) as conn:
        roles = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles")}
        databases = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'keybuzz'").fetchone()[0]
    assert {"kb_admin", "kb_repl", "kb_app"} <= roles
    assert "postgres" not in roles  # nothing relies on a role that was never created
    assert "keybuzz" in databases and owner == "kb_app"


@pytest.mark.parametrize("hosts, path, mode, owner", [
    (DB_HOSTS, "/etc/patroni/config.yml", 0o600, "postgres:postgres"),
    (DB_HOSTS, "/var/lib/postgresql/17/patroni", 0o700, "postgres:postgres"),
    (HAPROXY_HOSTS, "/etc/pgbouncer/userlist.txt", 0o600, "postgres:postgres"),
    (HAPROXY_HOSTS, "/etc/haproxy/haproxy.cfg", 0o640, "root:haproxy"),
], ids=["patroni.yml", "data dir", "pgbouncer userlist", "haproxy.cfg"])
def test_secret_files_are_private(installed: Installed, hosts, path: str, mode: int, owner: str) -> None:
    for host in hosts:
        code, out, _ = on_host(installed.workdir, host.address, f"stat -c '%a %U:%G' {path}")
        assert code == 0
        found_mode, found_owner = out.split()
        assert (int(found_mode, 8), found_owner) == (mode, owner), f"{host.name}:{path}"


def test_no_password_in_any_process_list_during_the_install(installed: Installed) -> None:
    values = installed.credentials
    secrets = [v for k, v in values.items() if creds.is_secret_name(k)]
    assert installed.ps_rounds >= 5 and len(installed.ps_samples) >= 25, "the sampler barely ran"
    # The sampler did see the install at work (apt, patroni, psql ...), so the check is not vacuous.
    assert any("patroni" in sample for sample in installed.ps_samples)
    for sample in installed.ps_samples:
        for secret in secrets:
            assert secret not in sample


def test_no_password_in_kbpgs_logs_or_output(installed: Installed) -> None:
    values = installed.credentials
    secrets = [v for k, v in values.items() if creds.is_secret_name(k)]
    sudo = creds.read_env(installed.workdir / "credentials" / "sudo.env")["KBPG_SUDO_PASSWORD"]
    logs = "".join(p.read_text(errors="replace") for p in (installed.workdir / "logs").glob("*.log"))
    assert "02 " in logs or "patroni" in logs, "the logs hold the install"
    for secret in secrets + [sudo]:
        assert secret not in logs
        assert secret not in installed.output and secret not in installed.killed_output
    for path in (installed.workdir / "logs").glob("*.log"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_sudo_path_was_used(installed: Installed) -> None:
    assert re.search(r"01 haproxy-02\s+host\s+unchanged .*ssh as kbops \(sudo: password\)", installed.output)
