"""Step 02: the Patroni cluster with its built-in Raft store, on the DB nodes.

packages (the same versions everywhere, the distro's default cluster kept out of
the way) → patroni.yml rendered from data with a YAML library, 0600 for postgres
→ systemd with Restart=always → the Raft watchdog's timer (raft.py: Patroni restarted
when its own Raft stays silent) → all nodes started together (Raft needs a quorum)
→ one leader and N-1 streaming replicas → dynamic settings → roles and database
→ ``patroni --validate-config`` on each node.

Nothing here wipes a data directory, and nothing assumes which node leads:
the leader is whatever Patroni says it is now.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import yaml

from .. import backup, cluster, raft, raft_watch, tls
from .. import credentials as creds
from ..cluster import CONFIG_PATH, PATRONICTL, leader_host, psql
from ..engine import CLUSTER, Outcome, Step, Task, TaskError, TaskRun
from ..events import Progress
from ..rto import plan_for
from ..ssh import Cancelled, Host, SshError
from . import host_guards, rest_tls
from .host_guards import RAFT_DIR
from .packages import ensure_installed, ensure_source, installed_versions

DROPIN_PATH = "/etc/systemd/system/patroni.service.d/kbpg.conf"
CREATECLUSTER_PATH = "/etc/postgresql-common/createcluster.d/kbpg.conf"
PGPASS_PATH = "/var/lib/postgresql/.pgpass_patroni"
REST_USER = "patroni"
CLUSTER_WAIT_SECONDS = 300
# The node's TLS files (step 00 issues them in credentials/tls/): PostgreSQL's ssl_* files, Patroni's REST API
# certificate, and the CA that replication, pg_rewind and patronictl verify their peers with.
NODE_CA, NODE_CERT, NODE_KEY = f"{tls.DB_DIR}/ca.crt", f"{tls.DB_DIR}/node.crt", f"{tls.DB_DIR}/node.key"

# PostgreSQL settings Patroni requires to be equal on every node: they live in the DCS.
DCS_PARAMETERS = ("max_connections", "max_wal_senders", "max_replication_slots", "max_worker_processes",
                  "max_prepared_transactions", "max_locks_per_transaction", "wal_level", "wal_log_hints",
                  "track_commit_timestamp", "hot_standby")

# RestartSec=1: a Patroni that was killed comes back within a second; while its leader key lives it takes its
# primary back (kbpg drill kill measures it), so every second here is a second without writes. Without a start
# limit, so that systemd never gives up on it (a Patroni that cannot start keeps being retried, once a second).
DROPIN = """# written by kbpg: Patroni must come back whatever stopped it, at once
[Unit]
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
Restart=always
RestartSec=1
"""


def package_names(run: TaskRun) -> list[str]:
    version = run.settings.postgresql.version
    names = [f"postgresql-{version}", f"postgresql-{version}-pgvector", "patroni", "python3-pysyncobj",
             "python3-cryptography"]
    if backup.backups_on(run.settings, run.ctx.selection):
        names.append("pgbackrest")  # archive-push/archive-get (step 06 configures it); same version on every node
    return names


# --- rendering -----------------------------------------------------------------------------

def postgresql_parameters(run: TaskRun) -> dict:
    pg = run.settings.postgresql
    parameters: dict = {
        "max_connections": pg.max_connections,
        "shared_buffers": pg.shared_buffers,
        "wal_level": "replica",
        "hot_standby": "on",
        "wal_log_hints": "on",
        "max_wal_senders": 10,
        "max_replication_slots": 10,
        "wal_keep_size": "256MB",
        "password_encryption": "scram-sha-256",
        # A replica whose primary went away retries every wal_retrieve_retry_interval: with synchronous replication,
        # commits on a primary that came back (a crash, a kill) wait for that retry (PostgreSQL's default: 5 s).
        "wal_retrieve_retry_interval": f"{plan_for(run.settings).wal_retry_s}s",
    }
    parameters.update(pg.parameters)
    # WAL archiving to pgBackRest when backups are on (core/backup.py); archive_mode needs a restart on a cluster
    # that ran without it: the "restarts" task below (patroni.apply_pending_restarts), step 06 then says so.
    parameters.update(backup.archive_parameters(run.settings, run.ctx.selection, run.ctx.credentials))
    return parameters


def dynamic_config(run: TaskRun) -> dict:
    """The cluster-wide part of the configuration, kept in the DCS."""
    patroni = run.settings.patroni
    plan = plan_for(run.settings)  # the timing plan's ttl/loop_wait/retry_timeout (kbpg.toml's own with "custom")
    synchronous: dict[str, bool | str] = {"off": False, "on": True, "quorum": "quorum"}  # kbpg.toml -> Patroni
    return {
        "ttl": plan.ttl,
        "loop_wait": plan.loop_wait,
        "retry_timeout": plan.retry_timeout,
        "maximum_lag_on_failover": patroni.maximum_lag_on_failover,
        # Patroni 4 takes false, true or "quorum" (any synchronous_node_count of the standbys confirms a commit).
        "synchronous_mode": synchronous[patroni.synchronous_mode],
        "synchronous_mode_strict": patroni.synchronous_mode_strict,
        "postgresql": {
            "use_pg_rewind": True,
            "use_slots": True,
            "parameters": postgresql_parameters(run),
        },
    }


def bootstrap_dcs(run: TaskRun) -> dict:
    """The DCS settings a new cluster starts with: the dynamic configuration, asynchronous at first.

    The synchronous mode is set live once every member streams (the "dynamic config" task): a strict mode from the
    first commit would hold the bootstrap's own writes until a replica exists, and Patroni 4.0's validator
    (``patroni --validate-config``) does not know ``synchronous_mode: quorum`` in the bootstrap section.
    """
    return {**dynamic_config(run), "synchronous_mode": False, "synchronous_mode_strict": False}


def monitor_role(run: TaskRun) -> tuple[str, str]:
    """(name, password) of the monitoring role; step 00 adds both to postgres.env (an additive name)."""
    values = run.ctx.credentials
    missing = [n for n in ("POSTGRES_MONITOR_USER", "POSTGRES_MONITOR_PASS") if not values.get(n)]
    if missing:
        raise TaskError(f"{' and '.join(missing)} missing from credentials/postgres.env: run kbpg install without "
                        "--step (step 00 adds them, changing nothing else)")
    return values["POSTGRES_MONITOR_USER"], values["POSTGRES_MONITOR_PASS"]


def hba_rules(run: TaskRun) -> list[str]:
    """pg_hba.conf, least privilege: the superuser over the local socket and from the DB nodes only (refused from
    anywhere else, the LB and HAProxy included), the monitoring role from the private subnet, every other role from
    the DB and HAProxy nodes and network.direct_clients. With TLS every remote line is ``hostssl``: a plaintext
    login from another host matches no line and is refused."""
    values = run.ctx.credentials
    # Role names double-quoted: a role named "all" or "replication" must not turn into pg_hba's keyword.
    admin, repl = f'"{values["POSTGRES_SUPERUSER"]}"', f'"{values["POSTGRES_REPL_USER"]}"'
    monitor = f'"{monitor_role(run)[0]}"'
    remote = "hostssl" if run.settings.tls.enabled else "host"
    rules = [
        f"local all {admin} peer map=kbpg",  # the postgres OS user (Patroni, kbpg's psql) acts as the superuser
        "local all all scram-sha-256",
    ]
    for host in run.ctx.db_hosts:
        rules.append(f"{remote} replication {repl} {host.address}/32 scram-sha-256")
    # The superuser: pg_rewind and a DBA on a DB node; nowhere else, whatever the lines below admit ("host" matches
    # TLS and plaintext alike).
    for host in run.ctx.db_hosts:
        rules.append(f"{remote} all {admin} {host.address}/32 scram-sha-256")
    rules.append(f"host all {admin} 0.0.0.0/0 reject")
    rules.append(f"host all {admin} ::/0 reject")
    # Field failure 12: applications pointed at a node's address work until the next failover. Roles other than
    # the superuser come only from the HAProxy nodes (HAProxy, PgBouncer), the DB nodes, and the networks the
    # operator lists in network.direct_clients.
    for host in run.ctx.db_hosts + run.ctx.haproxy_hosts:
        rules.append(f"{remote} all all {host.address}/32 scram-sha-256")
    network = run.settings.network
    for cidr in network.direct_clients:
        rules.append(f"{remote} all all {ipaddress.ip_network(cidr, strict=False)} scram-sha-256")
    # network.private_subnet is where administrators and kbpg's diagnostics reach a node directly: the monitoring
    # role only (read-only, pg_monitor). Patroni and pg_rewind need only the DB nodes and the socket.
    rules.append(f"{remote} all {monitor} {ipaddress.ip_network(network.private_subnet, strict=False)} scram-sha-256")
    rules.append("host all all 127.0.0.1/32 scram-sha-256")
    return rules


def render_config(run: TaskRun, host: Host) -> dict:
    """patroni.yml for one node, as data (dumped with a YAML library, never a string template)."""
    settings, values = run.settings, run.ctx.credentials
    ports = settings.ports
    version = settings.postgresql.version
    bind = host.address if settings.network.bind == "private" else "0.0.0.0"
    partners = [f"{h.address}:{ports.raft}" for h in run.ctx.db_hosts if h.name != host.name]
    restapi: dict = {
        "listen": f"{bind}:{ports.patroni_rest}",
        "connect_address": f"{host.address}:{ports.patroni_rest}",
        # Unsafe endpoints (restart, switchover, config changes) need these; reads stay open for HAProxy checks.
        "authentication": {"username": REST_USER, "password": values["PATRONI_API_PASSWORD"]},
    }
    ctl: dict = {"authentication": {"username": REST_USER, "password": values["PATRONI_API_PASSWORD"]}}
    replication = {"username": values["POSTGRES_REPL_USER"], "password": values["POSTGRES_REPL_PASS"]}
    rewind = {"username": values["POSTGRES_SUPERUSER"], "password": values["POSTGRES_SUPERPASS"]}
    # Local parameters (this node's files; not in the DCS): PostgreSQL reloads them on SIGHUP, ssl included.
    parameters: dict = {"unix_socket_directories": "/var/run/postgresql"}
    if settings.tls.enabled:
        # HTTPS (Patroni's api_url turns https:// by itself); no client certificate asked (Basic auth stays).
        restapi.update(certfile=NODE_CERT, keyfile=NODE_KEY, cafile=NODE_CA, verify_client="none")
        ctl["cacert"] = NODE_CA  # patronictl on the node verifies the members' certificates with kbpg's CA
        parameters.update(ssl="on", ssl_cert_file=NODE_CERT, ssl_key_file=NODE_KEY, ssl_ca_file=NODE_CA,
                          ssl_min_protocol_version="TLSv1.2")
        # Replicas (primary_conninfo, pg_basebackup) and pg_rewind check the primary's certificate and address.
        for connection in (replication, rewind):
            connection.update(sslmode="verify-full", sslrootcert=NODE_CA)
    return {
        "scope": values["PATRONI_CLUSTER_NAME"],
        "namespace": "/kbpg/",
        "name": host.name,
        "restapi": restapi,
        "ctl": ctl,
        "raft": {
            "data_dir": RAFT_DIR,
            "self_addr": f"{host.address}:{ports.raft}",
            "partner_addrs": partners,
            # Whoever can write the DCS can change PostgreSQL's configuration (archive_command...): encrypt and
            # authenticate Raft's traffic (pysyncobj, with python3-cryptography).
            "password": values["PATRONI_RAFT_PASSWORD"],
        },
        # Without a bootstrap section Patroni waits forever for a leader that never comes.
        "bootstrap": {
            "dcs": bootstrap_dcs(run),
            "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"],
        },
        "postgresql": {
            "listen": f"{bind}:{ports.postgresql}",
            "connect_address": f"{host.address}:{ports.postgresql}",
            "data_dir": settings.postgresql.effective_data_dir,
            "bin_dir": f"/usr/lib/postgresql/{version}/bin",
            "pgpass": PGPASS_PATH,
            "use_unix_socket": True,
            "authentication": {
                "superuser": {"username": values["POSTGRES_SUPERUSER"], "password": values["POSTGRES_SUPERPASS"]},
                "replication": replication,
                "rewind": rewind,
            },
            "parameters": parameters,
            "pg_hba": hba_rules(run),
            "pg_ident": [f"kbpg postgres {values['POSTGRES_SUPERUSER']}"],
            # A replica past wal_keep_size catches up from the backup repository (only with backups on).
            **({"recovery_conf": recovery} if (recovery := backup.recovery_conf(settings, run.ctx.selection,
                                                                                 values)) else {}),
        },
        "watchdog": {"mode": "off"},
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
    }


def render_yaml(config: dict) -> str:
    return "# written by kbpg from kbpg.toml and credentials/postgres.env; re-run kbpg to change it\n" + yaml.safe_dump(
        config, sort_keys=False, default_flow_style=False, allow_unicode=True
    )


# --- tasks ----------------------------------------------------------------------------------

def guard_host(run: TaskRun) -> host_guards.Verdict:
    """What the node already holds (host_guards), read again here: ``--step 02`` runs without preflight."""
    assert run.host is not None
    data_dir = run.settings.postgresql.effective_data_dir
    state = host_guards.parse(run.run(host_guards.probe_script(data_dir), on_line=None,
                                      what="reading the data directory and any other PostgreSQL").stdout)
    verdict = host_guards.judge(state, data_dir, run.settings.postgresql.version)
    if verdict.errors:
        raise TaskError(f"{run.host.name}: " + "; ".join(verdict.errors))
    return verdict


def install_packages(run: TaskRun) -> Outcome:
    before = guard_host(run).clusters  # refused here, before anything is written: --step 02 has no preflight
    changed = ensure_source(run)
    # Keep postgresql-common from creating and starting its default cluster on our port.
    changed |= run.connection().upload(CREATECLUSTER_PATH, "# written by kbpg: Patroni owns the clusters here\n"
                                       "create_main_cluster = false\n", mode=0o644)
    installed = ensure_installed(run, package_names(run))
    stopped = stop_default_clusters(run, before) if installed else []
    details = []
    if installed:
        details.append("installed " + ", ".join(installed))
    if stopped:
        details.append("stopped and disabled the distro's default cluster " + ", ".join(stopped))
    return Outcome.of(changed or bool(installed) or bool(stopped), "; ".join(details) or "packages present")


def stop_default_clusters(run: TaskRun, existing: set[tuple[str, str]]) -> list[str]:
    """Stop and disable the clusters this run's package install just made (never drop them).

    ``existing``: the clusters that were there before it; they are never touched (a running one, or one that
    starts at boot, was refused before the install). kbpg.conf in createcluster.d keeps postgresql-common from
    making one at all; this is for a postgresql-common that made one anyway.
    """
    listing = run.run("command -v pg_lsclusters >/dev/null && pg_lsclusters -h || true").stdout
    stopped = []
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        version, name, status = fields[0], fields[1], fields[3]
        if not (version.isdigit() and re.fullmatch(r"[A-Za-z0-9_.-]+", name)):
            continue  # not a line of pg_lsclusters we understand: leave that cluster alone
        if (version, name) in existing:
            continue  # not made by this run: not kbpg's to stop
        start_conf = f"/etc/postgresql/{version}/{name}/start.conf"
        state = run.run(f"cat {shlex.quote(start_conf)} 2>/dev/null | grep -v '^#' | tr -d ' \\n' || true").stdout.strip()
        if status.startswith("online") or state != "disabled":
            run.run(
                f"pg_ctlcluster {version} {name} stop -m fast 2>/dev/null || true; "
                f"echo disabled > {shlex.quote(start_conf)}; systemctl disable --now postgresql@{version}-{name} 2>/dev/null || true",
                what=f"stopping the default cluster {version}/{name}",
            )
            stopped.append(f"{version}/{name}")
    return stopped


def check_versions(run: TaskRun) -> Outcome:
    """Nodes built separately drift: refuse different versions across the DB nodes."""
    names = package_names(run)
    by_host = {}
    with ThreadPoolExecutor(max_workers=len(run.ctx.db_hosts)) as pool:
        found = pool.map(lambda h: installed_versions(TaskRun(run.ctx, run.step, h), names), run.ctx.db_hosts)
        for host, versions in zip(run.ctx.db_hosts, found, strict=True):
            by_host[host.name] = versions
    drift = []
    for name in names:
        seen = {versions.get(name, "") for versions in by_host.values()}
        if len(seen) > 1:
            drift.append(f"{name}: " + ", ".join(f"{h}={v.get(name) or 'missing'}" for h, v in by_host.items()))
    if drift:
        raise TaskError("DB nodes run different versions: " + "; ".join(drift) + ". Align them (apt-get install pkg=version) before going on")
    first = next(iter(by_host.values()))
    return Outcome.unchanged(", ".join(f"{name} {first[name]}" for name in names[:1] + names[2:3]))


def upload_tls_files(run: TaskRun) -> Outcome:
    """kbpg's CA and this node's certificate and key (step 00 issued them) in /etc/patroni/tls, for PostgreSQL and
    Patroni's REST API; nodes whose files changed are reloaded by the "start" task (no restart)."""
    host = run.host
    assert host is not None
    if not run.settings.tls.enabled:
        return Outcome.unchanged("TLS disabled in kbpg.toml")
    try:
        cert, key = tls.node_files(run.ctx.workdir, host.name)
        ca = tls.ca_pem(run.ctx.workdir)
    except tls.TlsError as exc:
        raise TaskError(f"{host.name}: {exc}") from None
    directory = shlex.quote(tls.DB_DIR)
    changes = []
    fixed = run.run(
        "if [ ! -d /etc/patroni ]; then install -d -o root -g postgres -m 0750 /etc/patroni; fi; "
        f"if [ \"$(stat -c '%a %U %G' {directory} 2>/dev/null)\" != '750 root postgres' ]; then "
        f"install -d -o root -g postgres -m 0750 {directory}; echo fixed; fi",
        what=f"making {tls.DB_DIR}").stdout.strip()
    if fixed:
        changes.append(f"{tls.DB_DIR} (0750 root:postgres)")
    connection = run.connection()
    # The key before its certificate: Patroni reloads its REST certificate when the certificate's serial changes.
    written = [path for path, data, mode, owner in ((NODE_CA, ca, 0o644, "root"), (NODE_KEY, key, 0o600, "postgres"),
                                                    (NODE_CERT, cert, 0o644, "root"))
               if connection.upload(path, data, mode=mode, owner=owner)]
    if written:
        run.ctx.state.setdefault("tls_files_changed", set()).add(host.name)  # the "start" task reloads the node
        changes.append(", ".join(written) + " written")
    return Outcome.of(bool(changes), "; ".join(changes) or "TLS files up to date")


# Keys of patroni.yml that must never change under a live node: they would point it at another (empty) data
# directory, other binaries or another cluster. Changing them is an upgrade or a migration, not a re-run.
PINNED_KEYS = (("postgresql", "data_dir"), ("postgresql", "bin_dir"), ("scope",), ("raft", "password"))


def _dig(config: dict, path: tuple[str, ...]) -> Any:
    value: Any = config
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def refuse_live_changes(run: TaskRun, host: Host, wanted: dict) -> None:
    """Refuse a patroni.yml that changes what a running, initialised node is (see PINNED_KEYS)."""
    current_text = run.connection().read_file(CONFIG_PATH)
    if current_text is None:
        return
    try:
        current = yaml.safe_load(current_text) or {}
    except yaml.YAMLError:
        return  # an unreadable file is simply replaced
    data_dir = _dig(current, ("postgresql", "data_dir")) or ""
    if not data_dir:
        return
    # An explicit answer either way: a guard that reads silence as "not initialised" would let this run through.
    answer = run.run(f"if [ -f {shlex.quote(data_dir)}/PG_VERSION ]; then echo initialised; else echo empty; fi",
                     what=f"looking for {data_dir}/PG_VERSION").stdout.strip()
    if answer not in ("initialised", "empty"):
        raise TaskError(f"{host.name}: could not tell whether {data_dir} holds a cluster (answer {answer!r}); "
                        "nothing was written. Run the same command again.")
    if answer == "empty":
        return
    changed = [".".join(path) for path in PINNED_KEYS if _dig(current, path) != _dig(wanted, path)]
    if changed:
        shown = [name if name != "raft.password" else "raft.password (PATRONI_RAFT_PASSWORD)" for name in changed]
        raise TaskError(
            f"{host.name} runs an initialised cluster in {data_dir}; this run would change {', '.join(shown)} under it "
            "(a new PostgreSQL version, data directory, cluster name or Raft password is an upgrade or a migration, "
            "which kbpg does not do yet). Put the old values back in kbpg.toml / postgres.env to continue."
        )


def write_config(run: TaskRun) -> Outcome:
    host = run.host
    assert host is not None
    connection = run.connection()
    wanted = render_config(run, host)
    refuse_live_changes(run, host, wanted)
    changes = []
    # Directories: owned by postgres, 0700, created empty (initdb refuses a data directory with files in it);
    # only those kbpg created or that hold PostgreSQL data are ever chowned (host_guards).
    commands = [host_guards.directory_commands(guard_host(run)),
                "if [ ! -d /etc/patroni ]; then install -d -o root -g postgres -m 0750 /etc/patroni; echo /etc/patroni; fi"]
    fixed = " ".join(run.run("; ".join(c for c in commands if c)).stdout.split())
    if fixed:
        changes.append("directories " + fixed)
    config_changed = connection.upload(CONFIG_PATH, render_yaml(wanted), mode=0o600,
                                       owner="postgres", group="postgres")
    if config_changed:
        changes.append(f"{CONFIG_PATH} written")
        run.ctx.state.setdefault("patroni_config_changed", set()).add(host.name)
    if connection.upload(DROPIN_PATH, DROPIN, mode=0o644):
        run.run("systemctl daemon-reload")
        changes.append("systemd drop-in (Restart=always)")
    return Outcome.of(bool(changes), "; ".join(changes) or "configuration up to date")


def install_raft_watchdog(run: TaskRun) -> Outcome:
    """The Raft watchdog on this node (kbpg_tui.core.raft: a timer whose looks restart Patroni when its Raft stays
    silent), each file uploaded only when it differs; with patroni.raft_watchdog = false, removed (timer stopped)."""
    timer = f"{raft.WATCH_UNIT}.timer"
    paths = [path for path, _text, _mode in raft.watchdog_files()]
    if not run.settings.patroni.raft_watchdog:
        quoted = " ".join(shlex.quote(path) for path in paths)
        removed = run.run(
            f"found=''; for f in {quoted}; do if [ -e \"$f\" ]; then found=yes; fi; done; "
            f"if [ -n \"$found\" ]; then systemctl disable --now {timer} >/dev/null 2>&1 || true; rm -f {quoted}; "
            f"systemctl daemon-reload; rm -rf {shlex.quote(raft_watch.STATE_DIR)}; echo removed; fi",
            what="removing the Raft watchdog").stdout.strip()
        return Outcome.of(bool(removed), "Raft watchdog removed (patroni.raft_watchdog = false)" if removed
                          else "no Raft watchdog (patroni.raft_watchdog = false)")
    connection = run.connection()
    written = [path for path, text, mode in raft.watchdog_files() if connection.upload(path, text, mode=mode)]
    changes = [", ".join(written) + " written"] if written else []
    if any(path != raft.WATCH_SCRIPT for path in written):
        run.run("systemctl daemon-reload")
    state = run.run(f"systemctl is-enabled {timer} 2>/dev/null; systemctl is-active {timer} 2>/dev/null; true",
                    what="reading the Raft watchdog's timer").stdout.split()
    if state[:2] != ["enabled", "active"] or raft.WATCH_TIMER in written:
        # A timer whose file changed is restarted: its new schedule, from now.
        run.run(f"systemctl enable {timer} >/dev/null 2>&1; systemctl restart {timer}", what="starting the Raft watchdog")
        changes.append(f"{timer} " + ("restarted" if state[:2] == ["enabled", "active"] else "enabled and started"))
    return Outcome.of(bool(changes), "; ".join(changes) or f"Raft watchdog in place ({timer} active)")


def _service_states(run: TaskRun) -> dict[str, str]:
    def state(host: Host) -> str:
        return run.run("systemctl is-active patroni || true", host=host).stdout.strip()

    with ThreadPoolExecutor(max_workers=len(run.ctx.db_hosts)) as pool:
        return dict(zip([h.name for h in run.ctx.db_hosts], pool.map(state, run.ctx.db_hosts), strict=True))


def start_cluster(run: TaskRun) -> Outcome:
    states = _service_states(run)
    hosts = {h.name: h for h in run.ctx.db_hosts}
    stopped = [name for name, state in states.items() if state != "active"]
    details = []
    if stopped:
        # All together: Raft elects only with a quorum, so a node started alone just waits.
        with ThreadPoolExecutor(max_workers=len(stopped)) as pool:
            list(pool.map(lambda name: run.run("systemctl enable patroni >/dev/null 2>&1; systemctl start patroni",
                                               host=hosts[name], what="starting patroni"), stopped))
        details.append("started on " + ", ".join(stopped))
    else:
        enabled = [n for n in hosts if run.run("systemctl is-enabled patroni || true", host=hosts[n]).stdout.strip() != "enabled"]
        for name in enabled:
            run.run("systemctl enable patroni", host=hosts[name])
        if enabled:
            details.append("enabled on " + ", ".join(enabled))
    # A changed patroni.yml, or changed certificate files (a renewal): reloaded, never restarted.
    changed = run.ctx.state.get("patroni_config_changed", set()) | run.ctx.state.get("tls_files_changed", set())
    running = [name for name in hosts if name not in stopped]
    to_reload = [name for name in running if name in changed]
    # A run killed after writing a node's files and before reloading it leaves nothing "changed" for the next run,
    # while the node still serves the old scheme or certificate: what each running node serves is asked too.
    others = [name for name in running if name not in to_reload]
    if others:
        with ThreadPoolExecutor(max_workers=len(others)) as pool:
            serving = dict(zip(others, pool.map(lambda name: served(run, hosts[name]), others), strict=True))
        stale = [name for name in others if _serves_stale(run, serving[name])]
        if stale:
            details.append(f"{', '.join(stale)} still served {'; '.join(_shown_state(serving[n]) for n in stale)}")
        to_reload = [name for name in running if name in to_reload or name in stale]
    warnings: list[str] = []
    if to_reload:
        details.append(reload_members(run, to_reload, warnings))
    return Outcome.of(bool(details), "; ".join(details) or "patroni active on every DB node", warnings)


def served(run: TaskRun, host: Host) -> dict[str, str]:
    """What a DB node's Patroni REST API and PostgreSQL serve now, against its node.crt (rest_tls.served)."""
    ports = run.settings.ports
    return rest_tls.served(run, host, ports.postgresql, ports.patroni_rest, NODE_CERT)


def _serves_wanted(run: TaskRun, state: dict[str, str]) -> bool:
    if run.settings.tls.enabled:  # a PostgreSQL that is down (a replica being rebuilt) is wait_for_cluster's business
        return state["disk"].startswith("tls:") and state["rest"] == state["disk"] and state["pg"] in (state["disk"],
                                                                                                       "down")
    # Without TLS only the REST API's scheme matters (HAProxy's checks follow it); a PostgreSQL that is not up at
    # this moment is wait_for_cluster's business, as before TLS existed.
    return state["rest"] == "plain" and state["pg"] in ("plain", "down")


def _serves_stale(run: TaskRun, state: dict[str, str]) -> bool:
    """Whether a node serves something kbpg.toml no longer wants (what is down is not judged here: a PostgreSQL
    that is starting is wait_for_cluster's business)."""
    if run.settings.tls.enabled:
        return any(state[key] != "down" and state[key] != state["disk"] for key in ("rest", "pg"))
    return any(state[key].startswith("tls:") for key in ("rest", "pg"))


def _shown_state(state: dict[str, str]) -> str:
    def short(value: str) -> str:
        if value == state["disk"] and value.startswith("tls:"):
            return "TLS with /etc/patroni/tls/node.crt"
        return f"TLS with another certificate ({value[4:16]}...)" if value.startswith("tls:") else value
    return f"REST API {short(state['rest'])}, PostgreSQL {short(state['pg'])}"


def wait_served(run: TaskRun, names: list[str]) -> None:
    """Until every node of ``names`` serves what kbpg.toml wants: with TLS, node.crt as it is on disk now on the REST
    API and on PostgreSQL; without, plaintext on both.

    Patroni applies a SIGHUP at its next loop (up to loop_wait later). A SIGHUP re-reads the REST certificate only
    when patroni.yml did not change at the same time (Patroni 4.0.7: ``local or sighup and
    api.reload_local_certificate()``), so a node still serving an older certificate is sent another one each loop.
    """
    loop_wait = plan_for(run.settings).loop_wait
    deadline = time.monotonic() + 3 * loop_wait + 10
    next_hup = {name: time.monotonic() + loop_wait + 2 for name in names}
    waiting = list(names)
    while True:
        run.check_cancel()
        with ThreadPoolExecutor(max_workers=len(waiting)) as pool:
            states = dict(zip(waiting, pool.map(lambda n: served(run, run.ctx.host(n)), waiting), strict=True))
        waiting = [name for name in waiting if not _serves_wanted(run, states[name])]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise TaskError("after reloading Patroni, " + "; ".join(f"{n} serves {_shown_state(states[n])}"
                                                                  for n in waiting)
                            + (" (wanted: TLS with /etc/patroni/tls/node.crt on both)" if run.settings.tls.enabled
                               else " (wanted: plaintext on both, [tls] enabled = false)")
                            + ". Look at `journalctl -u patroni` on " + ", ".join(waiting))
        for name in waiting:
            if time.monotonic() >= next_hup[name]:
                run.run("systemctl reload patroni", host=run.ctx.host(name), what="reloading patroni")
                next_hup[name] = time.monotonic() + loop_wait + 2
        time.sleep(1)


def _rest_scheme_change(run: TaskRun, names: list[str]) -> contextlib.AbstractContextManager[rest_tls.SchemeChange]:
    """steps.rest_tls.rest_scheme_change: keeps HAProxy's checks right while the REST API's scheme changes."""
    return rest_tls.rest_scheme_change(run, names)


def reload_members(run: TaskRun, names: list[str], warnings: list[str] | None = None) -> str:
    """``systemctl reload patroni`` on ``names`` (no restart), then wait until each serves what kbpg.toml wants.

    Replicas first and the leader last, except when TLS is being turned on: then the leader first, and waited for.
    A replica reloaded before it would reconnect with sslmode=verify-full to a primary that does not speak TLS yet
    (replication stops until the leader's turn); the leader's hostssl lines leave the replicas' live connections
    alone, and their reconnections (sslmode=prefer until their own reload) use TLS.
    Nodes with new certificate files also get ``SELECT pg_reload_conf()`` at once (PostgreSQL re-reads its ssl_*
    files on reload); Patroni's own SIGHUP reloads PostgreSQL again at its next loop.
    """
    hosts = {name: run.ctx.host(name) for name in names}
    leaders = {m.name for m in cluster.read_patronictl(run).members if m.is_leader}
    tls_changed = run.ctx.state.get("tls_files_changed", set())
    leader_first = False
    if run.settings.tls.enabled and leaders & set(names):
        leader_first = any(served(run, hosts[name])["pg"] == "plain" for name in names if name in leaders)
    order = sorted(names, key=lambda n: (n not in leaders) if leader_first else (n in leaders))
    with _rest_scheme_change(run, order) as change:
        for name in order:
            run.check_cancel()
            run.run("systemctl reload patroni", host=hosts[name], what="reloading patroni")
            if name in tls_changed:
                command = cluster.PSQL.format(port=run.settings.ports.postgresql,
                                              user=shlex.quote(run.ctx.credentials["POSTGRES_SUPERUSER"]),
                                              database="postgres")
                run.run(command, host=hosts[name], stdin="SELECT pg_reload_conf();", on_line=None, check=False,
                        what="reloading PostgreSQL's certificate")
            if leader_first and name in leaders:
                wait_served(run, [name])
        wait_served(run, order)
    if warnings is not None:
        warnings.extend(change.warnings)
    return ("reloaded " + ", ".join(order) + (" (the leader first: TLS turned on)" if leader_first else "")
            + "".join(f"; {detail}" for detail in change.details))  # HAProxy following the REST API's new scheme


def _judge(run: TaskRun) -> tuple[cluster.ClusterState | None, cluster.Health]:
    """The cluster now, judged against the DB nodes of servers.tsv; a cluster that cannot be read is unhealthy."""
    try:
        state = cluster.read_patronictl(run)
    except TaskError as exc:
        return None, cluster.Health((str(exc),), str(exc))
    return state, cluster.health(state, [h.name for h in run.ctx.db_hosts])


def _shown(verdict: cluster.Health) -> str:
    """The members and what is wrong with them (a cluster that could not be read: the reason, once)."""
    problems = [problem for problem in verdict.problems if problem != verdict.summary]
    return verdict.summary + (f" ({'; '.join(problems)})" if problems else "")


def wait_for_cluster(run: TaskRun) -> Outcome:
    expected = len(run.ctx.db_hosts)
    deadline = time.monotonic() + CLUSTER_WAIT_SECONDS
    started = time.monotonic()
    while True:
        run.check_cancel()
        state, verdict = _judge(run)
        if state is not None and verdict.ok:
            break
        if time.monotonic() > deadline:
            raise TaskError(f"no healthy cluster after {CLUSTER_WAIT_SECONDS} s ({_shown(verdict)}). "
                            f"Look at `journalctl -u patroni` on the DB nodes.\n{journal_tails(run)}")
        run.ctx.sink(Progress(f"waiting for one leader and {expected - 1} streaming replicas: {verdict.summary}",
                              min(0.99, (time.monotonic() - started) / CLUSTER_WAIT_SECONDS)))
        time.sleep(2)
    # The members judged healthy, not a second reading: a failover in between must not end in StopIteration.
    assert state is not None
    leader = state.running_leaders[0].name
    run.ctx.state["leader"] = leader
    return Outcome.unchanged(f"leader {leader}; {verdict.summary}")


def journal_tails(run: TaskRun, lines: int = 8) -> str:
    tails = []
    for host in run.ctx.db_hosts:
        try:
            result = run.run(f"journalctl -u patroni -n {lines} --no-pager -o cat 2>/dev/null || true", host=host,
                             check=False, on_line=None, timeout=30)
        except Cancelled:
            raise
        except SshError as exc:  # a node that is down must not replace the "no healthy cluster" message
            tails.append(f"--- {host.name}\n(no journal: {str(exc).splitlines()[0]})")
            continue
        tails.append(f"--- {host.name}\n{result.stdout.strip()}")
    return "\n".join(tails)


def _subset_differs(wanted, current) -> bool:
    if isinstance(wanted, dict):
        if not isinstance(current, dict):
            return True
        return any(_subset_differs(value, current.get(key)) for key, value in wanted.items())
    return str(wanted).lower() != str(current).lower()


def apply_dynamic_config(run: TaskRun) -> Outcome:
    """Keep the DCS settings (timing, cluster-wide parameters) equal to kbpg.toml."""
    leader = leader_host(run)
    shown = run.run(f"{PATRONICTL} show-config", host=leader, on_line=None, what="reading the dynamic configuration")
    current = yaml.safe_load(shown.stdout) or {}
    wanted = dynamic_config(run)
    warnings = []
    if not backup.backups_on(run.settings, run.ctx.selection):
        # Backups turned off, or the backup host left servers.tsv: a cluster still archiving to pgBackRest would
        # pile WAL up for a repository that is gone. archive_command becomes /bin/true (archive_mode stays on:
        # turning it off would need a restart).
        current_parameters = ((current.get("postgresql") or {}).get("parameters") or {}) if isinstance(current, dict) \
            else {}
        stop = backup.neutralised(current_parameters)
        if stop:
            wanted["postgresql"]["parameters"].update(stop)
            warnings.append(f"WAL archiving stopped ({backup.why_off(run.settings, run.ctx.selection)}): "
                            f"archive_command set to {backup.ARCHIVE_OFF}; the repository gets no more WAL")
    changed = _subset_differs(wanted, current)
    if changed:
        run.run(f"{PATRONICTL} edit-config --force --apply -", host=leader, stdin=yaml.safe_dump(wanted),
                what="applying the dynamic configuration")
        run.ctx.state["dynamic_config_changed"] = True
    return Outcome.of(changed, "dynamic configuration updated" if changed else "dynamic configuration up to date",
                      warnings)


RESTART_WAIT_SECONDS = 180


def apply_pending_restarts(run: TaskRun) -> Outcome:
    """Members waiting for a restart (a changed shared_buffers, max_connections ...).

    With ``patroni.apply_pending_restarts`` they are restarted one at a time, replicas first and the leader
    last, each back and streaming before the next: no failover, a few seconds without writes at the end.
    Without it they are reported on every run, never left looking "unchanged" in silence.
    """
    pending = cluster.read_patronictl(run).pending_restart
    if not pending and run.ctx.state.get("dynamic_config_changed"):
        # Members notice a DCS change on their next loop: give them two before concluding nothing waits.
        deadline = time.monotonic() + 2 * run.settings.patroni.loop_wait + 2
        while not pending and time.monotonic() < deadline:
            run.check_cancel()
            time.sleep(1)
            pending = cluster.read_patronictl(run).pending_restart
    if not pending:
        return Outcome.unchanged("no restart pending")
    names = [m.name for m in pending]  # replicas first, the leader last
    if not run.settings.patroni.apply_pending_restarts:
        return Outcome.unchanged(f"restart pending on {', '.join(names)}", [
            f"restart pending on {', '.join(names)}: a changed parameter waits for a PostgreSQL restart. Set "
            "patroni.apply_pending_restarts = true in kbpg.toml and re-run (replicas first, leader last), or restart "
            "them yourself with patronictl restart"])
    scope = shlex.quote(run.ctx.credentials["PATRONI_CLUSTER_NAME"])
    for name in names:
        run.check_cancel()
        host = run.ctx.host(name)
        run.run(f"{PATRONICTL} restart {scope} {shlex.quote(name)} --force", host=host, what=f"restarting {name}")
        deadline = time.monotonic() + RESTART_WAIT_SECONDS
        while True:
            run.check_cancel()
            state, verdict = _judge(run)
            member = state.member(name) if state is not None else None
            still = member is None or member.pending_restart
            if verdict.ok and not still:
                break
            if time.monotonic() > deadline:
                raise TaskError(f"{name} did not come back healthy within {RESTART_WAIT_SECONDS} s after its restart "
                                f"({_shown(verdict)}); the members after it were not restarted")
            time.sleep(2)
    return Outcome.changed(f"restarted {', '.join(names)} one at a time (replicas first, leader last)")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def ensure_roles(run: TaskRun) -> Outcome:
    """The roles and the database, least privilege, each role's stored verifier matching postgres.env:

    - the app role logs in and is neither superuser nor createrole (taken away, and reported, when it is), and owns
      the database (given back, and reported, when another role does);
    - the monitoring role logs in and is a member of pg_monitor (statistics, read only), nothing more;
    - the superuser and the replication role keep what they are.
    """
    leader = leader_host(run)
    values = run.ctx.credentials
    app = values["POSTGRES_APP_USER"]
    monitor, monitor_password = monitor_role(run)
    roles = {
        values["POSTGRES_SUPERUSER"]: values["POSTGRES_SUPERPASS"],
        values["POSTGRES_REPL_USER"]: values["POSTGRES_REPL_PASS"],
        app: values["POSTGRES_APP_PASS"],
        monitor: monitor_password,
    }
    if len(roles) != 4:  # postgres.env's own check refuses this; a superuser must never be "least privileged"
        raise TaskError("POSTGRES_SUPERUSER, POSTGRES_REPL_USER, POSTGRES_APP_USER and POSTGRES_MONITOR_USER must be "
                        "four different roles")
    names = ", ".join(_literal(name) for name in roles)
    current = psql(run, leader,
                   "SELECT r.rolname, r.rolsuper, r.rolcreaterole, r.rolcanlogin, EXISTS (SELECT 1 FROM pg_auth_members m "
                   "WHERE m.member = r.oid AND m.roleid = 'pg_monitor'::regrole), coalesce(r.rolpassword, '') "
                   f"FROM pg_authid r WHERE r.rolname IN ({names});", "reading roles").stdout
    found = {fields[0]: fields[1:] for line in current.splitlines() if len(fields := line.split("|", 5)) == 6}
    stored = {name: fields[4] for name, fields in found.items()}
    statements, changes = [], []
    for role, extra in ((app, ""), (monitor, " IN ROLE pg_monitor")):
        if role not in found:
            statements.append(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEROLE{extra};')
            changes.append(f"role {role} created" + (" (member of pg_monitor)" if extra else ""))
            continue
        superuser, createrole, login, in_monitor = (flag == "t" for flag in found[role][:4])
        wrong = [word for word, bad in (("SUPERUSER", superuser), ("CREATEROLE", createrole)) if bad]
        if wrong or not login:
            statements.append(f'ALTER ROLE "{role}" LOGIN NOSUPERUSER NOCREATEROLE;')
            changes.append(f"role {role}: " + ", ".join([f"{word} taken away" for word in wrong]
                                                         + ([] if login else ["LOGIN given"])))
        if extra and not in_monitor:
            statements.append(f'GRANT pg_monitor TO "{role}";')
            changes.append(f"role {role} made a member of pg_monitor")
    for role, password in roles.items():
        if not creds.scram_matches(stored.get(role, ""), password):
            # The verifier is computed here: the plain password never reaches the server.
            statements.append(f'ALTER ROLE "{role}" PASSWORD {_literal(creds.scram_sha256_verifier(password))};')
            if role in stored:
                changes.append(f"password of {role} set")
    if statements:
        psql(run, leader, "\n".join(statements), "creating roles")
    database = values["POSTGRES_DB"]
    owner = psql(run, leader, f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = {_literal(database)};",
                 "reading databases").stdout.strip()
    if not owner:
        psql(run, leader, f'CREATE DATABASE "{database}" OWNER "{app}";', "creating the database")
        changes.append(f"database {database} created (owner {app})")
    elif owner != app:
        psql(run, leader, f'ALTER DATABASE "{database}" OWNER TO "{app}";', "giving the database to the app role")
        changes.append(f"database {database}: owner {owner} -> {app}")
    return Outcome.of(bool(changes), "; ".join(changes) or f"roles and database {database} in place")


_IN_USE = re.compile(r"Port (\d+) is already in use")


def validate_config(run: TaskRun) -> Outcome:
    """``patroni --validate-config`` on the live file.

    The validator also checks that listen ports are free; on a running node they are held by this very
    Patroni and its PostgreSQL, so exactly those findings are set aside (after checking who holds the port).
    """
    assert run.host is not None
    result = run.run(f"runuser -u postgres -- patroni --validate-config {CONFIG_PATH}", check=False, on_line=None)
    if result.ok:
        return Outcome.unchanged("patroni --validate-config passed")
    findings = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    holders = run.run("ss -Hltnp").stdout
    ours = {"patroni", "postgres"}
    remaining, set_aside = [], []
    for finding in findings:
        match = _IN_USE.search(finding)
        if match:
            port = match.group(1)
            owners = {m.group(1) for line in holders.splitlines() if re.search(rf":{port}\s", line)
                      for m in re.finditer(r'\("([^"]+)"', line)}
            if owners and owners <= ours:
                set_aside.append(port)
                continue
        remaining.append(finding)
    if remaining:
        raise TaskError(f"{run.host.name}: patroni --validate-config failed: " + "; ".join(remaining[:8]))
    return Outcome.unchanged(f"patroni --validate-config passed (ports {', '.join(set_aside)} held by this node's own Patroni/PostgreSQL)")


NODES_APPLY = "nodes_apply"  # ctx.state's flag: the run is `kbpg nodes apply`'s own (it changes the nodes itself)
NODES_CHECKED = "nodes_checked"  # ctx.state's flag: `kbpg install` compared the nodes just before this run


def refuse_node_changes(run: TaskRun) -> Outcome:
    """A cluster already runs and servers.tsv changes its nodes: refused here (the wizard, ``kbpg install --step``),
    before anything is written. Configuring the new set of nodes as if it were new would point Raft's partners and
    pg_hba at it while Raft's membership still holds the old addresses (a dead member kept forever, a quorum counted
    on a host that is gone): membership changes are ``kbpg nodes apply``'s, one node at a time, which runs these
    steps itself. A full ``kbpg install`` shows the plan and applies it with the operator's yes."""
    from .. import nodes

    if run.ctx.state.get(NODES_APPLY):
        return Outcome.unchanged("the nodes are being changed by kbpg nodes apply")
    if run.ctx.state.get(NODES_CHECKED):  # read once per install, not again here
        return Outcome.unchanged("servers.tsv's nodes are the cluster's (compared by kbpg install before its steps)")
    membership = nodes.read_membership(run.ctx)
    run.check_cancel()  # a cancel while reading: no verdict from a half-read cluster
    if not membership.raft_members and not membership.patroni_read:
        return Outcome.unchanged("no cluster runs yet on the DB nodes")
    result = nodes.plan(run.ctx.selection, membership)
    if not result.needs_apply:
        return Outcome.unchanged("servers.tsv's nodes are the cluster's" if not result.changes else
                                 "new HAProxy nodes only: this install sets them up")
    steps = "; ".join(f"{number}. {action.text}" for number, action in enumerate(result.actions, 1))
    raise TaskError(f"servers.tsv changes the running cluster's nodes ({steps}): nothing was written. Run "
                    "`kbpg nodes plan` to see the plan and `kbpg nodes apply` to carry it out one node at a time "
                    "(or a full `kbpg install`, which shows it and asks)"
                    + (f"; it would be refused now: {'; '.join(result.refused)}" if result.refused else ""))


STEP = Step("02", "Patroni cluster", [
    Task("nodes", "cluster", refuse_node_changes),
    Task("packages", "db", install_packages),
    Task("versions", "cluster", check_versions),
    Task("tls files", "db", upload_tls_files),
    Task("config", "db", write_config),
    Task("raft watchdog", "db", install_raft_watchdog),
    Task("start", "cluster", start_cluster),
    Task("cluster", "cluster", wait_for_cluster),
    Task("dynamic config", "cluster", apply_dynamic_config),
    Task("restarts", "cluster", apply_pending_restarts),
    Task("roles", "cluster", ensure_roles),
    Task("validate", "db", validate_config),
])

__all__ = ["NODES_APPLY", "NODES_CHECKED", "STEP", "CLUSTER", "refuse_node_changes", "render_config"]
