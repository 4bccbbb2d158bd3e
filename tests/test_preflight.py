"""Step 01's host check against canned host facts (the lab runs it against real hosts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbpg_tui.core.engine import TaskError, TaskRun
from kbpg_tui.core.settings import from_dict
from kbpg_tui.core.ssh import Result
from kbpg_tui.core.steps import s01_preflight as preflight

from .test_patroni_config import make_run

FACTS = """os=debian
version=12
codename=bookworm
now={now}
ntp=yes
fstype=xfs
avail=107374182400
"""


class _Pool:
    def __init__(self, listen: list[str]):
        self.listen = listen

    def get(self, host):
        listen = self.listen

        class _Connection:
            sudo_mode = "root"

            def run(self, script, **kwargs):
                import time
                text = FACTS.format(now=time.time()) + "".join(f"listen={line}\n" for line in listen)
                return Result(script, 0, text, "", 0.0)

        return _Connection()


def _check(real_inventory: Path, listen: list[str], host_index: int, settings=None):
    run = make_run(real_inventory, settings)
    run.ctx.pool = _Pool(listen)
    hosts = run.ctx.db_hosts + run.ctx.haproxy_hosts
    return preflight.check_host(TaskRun(run.ctx, "01", hosts[host_index]))


def test_a_stranger_on_loopback_5432_blocks_an_haproxy_node(real_inventory: Path) -> None:
    listen = ['LISTEN 0 244 127.0.0.1:5432 0.0.0.0:* users:(("postgres",pid=812,fd=6))']
    with pytest.raises(TaskError, match=r"port 5432 \(ports.haproxy_write\) is already taken by postgres \(pid 812\)"):
        _check(real_inventory, listen, host_index=3)


def test_a_loopback_listener_does_not_block_a_db_node(real_inventory: Path) -> None:
    listen = ['LISTEN 0 4096 127.0.0.1:8008 0.0.0.0:* users:(("sshd",pid=99,fd=3))']
    assert _check(real_inventory, listen, host_index=0).status.value == "unchanged"


def test_binding_everything_collides_with_any_address(real_inventory: Path) -> None:
    listen = ['LISTEN 0 4096 10.9.9.9:8008 0.0.0.0:* users:(("node",pid=7,fd=3))']
    with pytest.raises(TaskError, match="port 8008"):
        _check(real_inventory, listen, host_index=0, settings=from_dict({"network": {"bind": "all"}}))


def test_our_own_services_are_fine_on_a_rerun(real_inventory: Path) -> None:
    listen = ['LISTEN 0 4096 127.0.0.1:5432 0.0.0.0:* users:(("haproxy",pid=5,fd=7))',
              'LISTEN 0 4096 10.0.0.11:6432 0.0.0.0:* users:(("pgbouncer",pid=6,fd=8))']
    assert _check(real_inventory, listen, host_index=3).status.value == "unchanged"
