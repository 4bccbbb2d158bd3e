#!/usr/bin/env python3
"""What TLS costs the application path: pgbench through the LB with TLS, then without, on the same installed lab.

For each of LB:6432 (LB → PgBouncer → HAProxy → primary) and LB:5432 (LB → HAProxy → primary), as the app role,
8 clients, 2 threads, N seconds each: the select-only script (-S), the default TPC-B-like mix, and -S with a new
connection per transaction (-C: the TLS handshake on every transaction, the worst case). TLS is on (libpq
sslmode=verify-full with kbpg's CA), then `[tls] enabled = false` is installed (the rolling change back to
plaintext, sslmode=disable), the same runs are repeated, and TLS is turned on again (kbpg.toml restored, re-run).
Prints TPS with and without TLS and the ratio; --json for the figures as data.

Run as root from the repo, on a lab where kbpg has installed the cluster (TLS on):
  .venv/bin/python scripts/bench_tls.py --workdir lab-work [--seconds 15]
Traffic goes only to the lab's own hosts (198.18.0.0/24). The cluster is changed twice (off, then on again).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_pool import pgbench, pgbench_binary  # noqa: E402  (scripts/ is on sys.path when run as a script)

from kbpg_tui.core import credentials as creds  # noqa: E402
from kbpg_tui.core import settings as cfg  # noqa: E402
from kbpg_tui.core import tls  # noqa: E402

RUNS = (("select-only (-S)", ["-S"]), ("TPC-B-like mix", []), ("-S, a connection per transaction (-C)", ["-S", "-C"]))


def kbpg(workdir: Path, *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "kbpg_tui", "--workdir", str(workdir), *args], capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parent.parent)
    if result.returncode != 0:
        raise SystemExit(f"kbpg {' '.join(args)} failed:\n{result.stdout[-2000:]}{result.stderr[-1000:]}")


def set_tls(workdir: Path, enabled: bool) -> None:
    path = workdir / "kbpg.toml"
    settings = cfg.load_settings(path)
    settings.tls.enabled = enabled
    cfg.save_settings(settings, path)
    kbpg(workdir, "install", "--yes")


def measure(binary: str, workdir: Path, settings: cfg.Settings, values: dict, seconds: int, ssl: dict) -> dict:
    lb = settings.network.lb_address
    figures = {}
    for port in (settings.ports.pgbouncer, settings.ports.haproxy_write):
        for label, extra in RUNS:
            figures[f"LB:{port} {label}"] = pgbench(binary, lb, port, values, seconds, extra, ssl)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="work dir of an installed lab (TLS on)")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    settings = cfg.load_settings(workdir / "kbpg.toml")
    if not settings.tls.enabled:
        raise SystemExit("kbpg.toml: tls.enabled is false; install with TLS first")
    values = creds.read_env(workdir / creds.ENV_FILE)
    binary = pgbench_binary()
    env = {**os.environ, "PGPASSWORD": values["POSTGRES_APP_PASS"]}
    subprocess.run([binary, "-i", "-q", "-s", "4", "-h", settings.network.lb_address, "-p",
                    str(settings.ports.haproxy_write), "-U", values["POSTGRES_APP_USER"], values["POSTGRES_DB"]],
                   check=True, capture_output=True, env={**env, "PGSSLMODE": "require"})
    with_tls = measure(binary, workdir, settings, values, args.seconds,
                       {"PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(tls.ca_path(workdir))})
    try:
        set_tls(workdir, False)
        without = measure(binary, workdir, settings, values, args.seconds, {"PGSSLMODE": "disable"})
    finally:
        set_tls(workdir, True)
    rows = [{"run": name, "tls_tps": round(with_tls[name]), "plain_tps": round(without[name]),
             "ratio": round(with_tls[name] / without[name], 3)} for name in with_tls]
    if args.json:
        print(json.dumps({"seconds": args.seconds, "clients": 8, "rows": rows}, indent=2))
    else:
        print(f"pgbench as the app role, 8 clients, 2 threads, {args.seconds} s each; TPS with TLS (verify-full) / "
              "without:")
        for row in rows:
            print(f"  {row['run']:<48} {row['tls_tps']:8d} tps  {row['plain_tps']:8d} tps  ratio {row['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
