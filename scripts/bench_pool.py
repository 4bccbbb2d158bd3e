#!/usr/bin/env python3
"""Benchmark of the application path on an installed lab, in one run:

- pgbench (-S read-only, and the default TPC-B-like mix) as the app role through LB:6432 (LB → PgBouncer →
  HAProxy → primary) against LB:5432 (LB → HAProxy → primary, no pool; pg_hba admits no role straight to a DB
  node from this machine, and the superuser only from the DB nodes): TPS and the ratio (libpq's default
  sslmode=prefer: TLS when the cluster has it, see scripts/bench_tls.py for its cost);
- 1,000 client connections held open through LB:6432 at once, with the server-side connections
  counted on the primary (they must stay within PgBouncer's pool sizes);
- a Patroni switchover with writes going on through LB:5432 and LB:6432: seconds writes were refused.

Run as root from the repo, on a lab where kbpg has installed the cluster:
  .venv/bin/python scripts/bench_pool.py --workdir lab-work [--seconds 15] [--clients 1000]
Traffic goes only to the lab's own hosts (198.18.0.0/24).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from kbpg_tui.core import credentials as creds  # noqa: E402
from kbpg_tui.core import install as inst  # noqa: E402
from kbpg_tui.core import tls  # noqa: E402
from kbpg_tui.core.engine import TaskRun  # noqa: E402
from kbpg_tui.core.settings import load_settings  # noqa: E402
from kbpg_tui.core.steps.s04_pgbouncer import pool_size  # noqa: E402


def pgbench_binary() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise SystemExit("pgbench not found (apt-get install postgresql)")
    return found[-1]


def pgbench(binary: str, host: str, port: int, values: dict, seconds: int, extra: list[str],
            ssl: dict | None = None) -> float:
    """TPS of pgbench as the app role (8 clients, 2 threads); ``ssl``: libpq's PGSSLMODE/PGSSLROOTCERT for it."""
    user, password = values["POSTGRES_APP_USER"], values["POSTGRES_APP_PASS"]
    env = {**os.environ, "PGPASSWORD": password, **(ssl or {})}  # a local child's environment, never argv
    command = [binary, "-h", host, "-p", str(port), "-U", user, "-T", str(seconds),
               "-c", "8", "-j", "2", "-n", *extra, values["POSTGRES_DB"]]
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=seconds + 120)
    match = re.search(r"tps = ([0-9.]+)", out.stdout)
    if out.returncode != 0 or not match:
        raise SystemExit(f"pgbench failed: {out.stderr.strip()[-500:]}")
    return float(match.group(1))


def primary_address(ctx) -> str:
    values = ctx.credentials
    with psycopg.connect(host=ctx.settings.network.lb_address, port=ctx.settings.ports.haproxy_write,
                         user=values["POSTGRES_APP_USER"], password=values["POSTGRES_APP_PASS"],
                         dbname=values["POSTGRES_DB"], connect_timeout=5) as conn:
        return conn.execute("SELECT host(inet_server_addr())").fetchone()[0]


def hold_connections(ctx, clients: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, clients * 2 + 256)), hard))
    values, settings = ctx.credentials, ctx.settings
    lb = settings.network.lb_address
    opened: list[psycopg.Connection] = []
    started = time.monotonic()
    failures = 0
    lock = threading.Lock()

    def open_some(count: int) -> None:
        nonlocal failures
        for _ in range(count):
            try:
                conn = psycopg.connect(host=lb, port=settings.ports.pgbouncer, user=values["POSTGRES_APP_USER"],
                                       password=values["POSTGRES_APP_PASS"], dbname=values["POSTGRES_DB"],
                                       connect_timeout=20, autocommit=True)
                conn.execute("SELECT 1")
                with lock:
                    opened.append(conn)
            except psycopg.Error:
                with lock:
                    failures += 1

    threads = [threading.Thread(target=open_some, args=(clients // 20,)) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    took = time.monotonic() - started
    primary = primary_address(ctx)
    haproxy_addresses = [h.address for h in ctx.haproxy_hosts]
    # The monitoring role (pg_monitor: every session's address) from this machine; the superuser may not.
    with psycopg.connect(host=primary, port=settings.ports.postgresql, user=values["POSTGRES_MONITOR_USER"],
                         password=values["POSTGRES_MONITOR_PASS"], dbname="postgres", connect_timeout=5,
                         **tls.libpq_params(ctx.workdir, settings)) as conn:
        # Connections from PgBouncer reach the primary through the local HAProxy: their client address is a HAProxy node.
        server_side = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND host(client_addr) = ANY(%s)",
            (values["POSTGRES_APP_USER"], haproxy_addresses)).fetchone()[0]
    limit = pool_size(TaskRun(ctx, "bench", None)) * len(ctx.haproxy_hosts)
    print(f"\n{len(opened)} client connections held through LB:{settings.ports.pgbouncer} "
          f"({failures} refused) in {took:.1f} s; app connections on the primary from the HAProxy nodes: "
          f"{server_side} (pool limit {limit}: {'within' if server_side <= limit else 'OVER'})")
    for conn in opened:
        conn.close()


def switchover_refusal(ctx) -> None:
    values, settings = ctx.credentials, ctx.settings
    lb = settings.network.lb_address
    refused: dict[int, list[float]] = {settings.ports.haproxy_write: [], settings.ports.pgbouncer: []}
    stop = threading.Event()

    def write(port: int) -> None:
        while not stop.is_set():
            at = time.monotonic()
            try:
                with psycopg.connect(host=lb, port=port, user=values["POSTGRES_APP_USER"], password=values["POSTGRES_APP_PASS"],
                                     dbname=values["POSTGRES_DB"], connect_timeout=2, autocommit=True) as conn:
                    conn.execute("CREATE TABLE IF NOT EXISTS bench_switchover (at timestamptz DEFAULT now())")
                    conn.execute("INSERT INTO bench_switchover DEFAULT VALUES")
            except psycopg.Error:
                refused[port].append(at)
            time.sleep(0.05)

    threads = [threading.Thread(target=write, args=(port,), daemon=True) for port in refused]
    for thread in threads:
        thread.start()
    time.sleep(2)
    old = primary_address(ctx)
    leader = next(h for h in ctx.db_hosts if h.address == old)
    result = ctx.pool.get(leader).run(f"patronictl -c /etc/patroni/config.yml switchover --leader {leader.name} --force",
                                      check=False)
    deadline = time.monotonic() + 60
    new = old
    while new == old and time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            new = primary_address(ctx)
        except psycopg.Error:
            pass
    time.sleep(3)
    stop.set()
    for thread in threads:
        thread.join(5)
    print(f"\nswitchover {old} -> {new} ({'ok' if result.ok else 'patronictl: ' + result.tail(2)}):")
    for port, times in refused.items():
        span = (max(times) - min(times) + 0.05) if times else 0.0
        print(f"  writes through LB:{port} refused for {span:.1f} s ({len(times)} failed attempts)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="work dir of an installed lab")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--clients", type=int, default=1000)
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    run = inst.prepare(workdir, load_settings(workdir / "kbpg.toml"), lambda event: None)
    ctx = run.ctx
    values = creds.read_env(workdir / creds.ENV_FILE)
    ctx.credentials = values
    try:
        binary = pgbench_binary()
        primary = primary_address(ctx)
        env = {**os.environ, "PGPASSWORD": values["POSTGRES_APP_PASS"]}
        lb = ctx.settings.network.lb_address
        # Tables made by the app role through the LB's write port (the app role may not reach a node directly).
        subprocess.run([binary, "-i", "-q", "-s", "4", "-h", lb, "-p", str(ctx.settings.ports.haproxy_write),
                        "-U", values["POSTGRES_APP_USER"], values["POSTGRES_DB"]], check=True, capture_output=True, env=env)
        print(f"pgbench, 8 clients, {args.seconds} s each (primary {primary}):")
        for label, extra in (("select-only (-S)", ["-S"]), ("default mix (TPC-B-like)", [])):
            direct = pgbench(binary, lb, ctx.settings.ports.haproxy_write, values, args.seconds, extra)
            pooled = pgbench(binary, lb, ctx.settings.ports.pgbouncer, values, args.seconds, extra)
            print(f"  {label:<26} LB:5432 {direct:8.0f} tps   LB:6432 {pooled:8.0f} tps   ratio {pooled / direct:.2f}")
        hold_connections(ctx, args.clients)
        switchover_refusal(ctx)
    finally:
        run.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
