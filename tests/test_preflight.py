"""Step 01's host check against canned host facts (the lab runs it against real hosts)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kbpg_tui.core.engine import TaskError, TaskRun
from kbpg_tui.core.settings import from_dict
from kbpg_tui.core.steps import host_guards as guards
from kbpg_tui.core.steps import s01_preflight as preflight

from .fakes import FakePool, ScriptedConnection, result
from .test_patroni_config import make_run

FACTS = """os=debian
version=12
codename=bookworm
now={now}
ntp=yes
fstype=xfs
avail=107374182400
"""


# A bare DB node as host_guards' probe sees it: no data or Raft directory yet, no other PostgreSQL.
BARE = "g:dir data missing\ng:dir raft missing\n"


def _pool(run: TaskRun, listen: list[str], guard: str = BARE) -> FakePool:
    """Every node reports FACTS and ``listen``; DB nodes (the only ones host_guards probes) also ``guard``."""

    def answer(script: str, stdin: bytes):
        text = FACTS.format(now=time.time()) + "".join(f"listen={line}\n" for line in listen)
        if "g:dir" in script:  # only DB nodes are probed
            text += guard
        return result(text)

    return FakePool({h.name: ScriptedConnection(h, answer) for h in run.ctx.db_hosts + run.ctx.haproxy_hosts})


def _check(real_inventory: Path, listen: list[str], host_index: int, settings=None, guard: str = BARE):
    run = make_run(real_inventory, settings)
    run.ctx.pool = _pool(run, listen, guard)
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


# --- what a DB node already holds (host_guards): field failure modes 2 and 4, another PostgreSQL -----------


DATA = "/var/lib/postgresql/17/patroni"
RAFT = guards.RAFT_DIR
OURS_PG = "g:dir data stat postgres:postgres 700 22\ng:pgversion data 17\n"
OURS_RAFT = "g:dir raft stat postgres:postgres 700 2\ng:entry raft 198.18.0.120:7000.journal\ng:entry raft 198.18.0.120:7000.journal.meta\n"
KBPG_CONFIG = f"g:configured {RAFT}\ng:configured {DATA}\n"  # patroni.yml's data_dir lines
PATRONI_PM = f"g:postmaster 812 5432 17 /system.slice/patroni.service {DATA}\n"


def verdict(text: str, data_dir: str = DATA, version: int = 17) -> guards.Verdict:
    return guards.judge(guards.parse(text), data_dir, version)


def test_a_stray_file_in_the_data_directory_is_refused_with_what_is_there() -> None:
    found = verdict("g:dir data stat root:root 755 7\n" + "".join(f"g:entry data f{i}\n" for i in range(7))
                    + "g:dir raft missing\n")
    assert len(found.errors) == 1
    error = found.errors[0]
    assert f"the data directory {DATA} is not empty and holds no PG_VERSION (7 entries: f0, f1, f2, f3, f4, ...)" in error
    assert "postgresql.data_dir" in error
    assert DATA not in found.repair + found.create  # never chowned


def test_a_mount_point_is_named_as_such() -> None:
    found = verdict("g:dir data stat root:root 755 1\ng:entry data lost+found\ng:dir raft missing\n")
    assert "1 entry: lost+found" in found.errors[0] and "mount point" in found.errors[0]


def test_patroni_working_in_the_data_directory_is_left_alone() -> None:
    # A re-run while Patroni bootstraps (initdb) or clones (pg_basebackup): files, no PG_VERSION yet.
    for busy in (f"initdb -D {DATA} --encoding=UTF8", f"/usr/lib/postgresql/17/bin/pg_basebackup --pgdata={DATA}/ -X stream"):
        found = verdict(f"g:dir data stat postgres:postgres 700 3\ng:entry data base\ng:busy {busy}\n"
                        + OURS_RAFT + KBPG_CONFIG)
        assert found.errors == [] and found.repair == [], busy
    other = verdict("g:dir data stat postgres:postgres 700 3\ng:entry data base\ng:busy initdb -D /elsewhere\n" + OURS_RAFT + KBPG_CONFIG)
    assert other.errors


def test_a_postgresql_data_directory_with_a_wrong_mode_or_owner_is_repaired() -> None:
    # Field failure mode 4: a data directory chmod'ed or chown'ed behind Patroni's back.
    for owner_mode in ("root:root 755", "postgres:postgres 755", "root:postgres 700"):
        found = verdict(f"g:dir data stat {owner_mode} 22\ng:pgversion data 17\n" + OURS_RAFT + KBPG_CONFIG + PATRONI_PM)
        assert (found.errors, found.repair) == ([], [DATA]), owner_mode
    assert verdict(OURS_PG + OURS_RAFT + KBPG_CONFIG + PATRONI_PM).repair == []


def test_data_of_another_postgresql_version_is_an_upgrade_and_refused() -> None:
    found = verdict("g:dir data stat postgres:postgres 700 22\ng:pgversion data 16\ng:dir raft missing\n")
    assert "holds PostgreSQL 16 data but postgresql.version is 17" in found.errors[0]


def test_postgresql_data_kbpg_did_not_create_is_taken_over_with_a_warning() -> None:
    found = verdict(OURS_PG + "g:dir raft missing\n")
    assert found.errors == [] and "kbpg did not create" in found.warnings[0]
    assert verdict(OURS_PG + "g:dir raft missing\n" + f"g:created {DATA}\n").warnings == []
    assert verdict(OURS_PG + OURS_RAFT + KBPG_CONFIG + PATRONI_PM).warnings == []  # a cluster kbpg installed earlier


def test_an_existing_directory_kbpg_did_not_create_is_never_chowned() -> None:
    # data_dir = "/srv": empty on a fresh Debian, root's. It must not be handed to postgres.
    found = verdict("g:dir data stat root:root 755 0\ng:dir raft missing\n", data_dir="/srv")
    assert found.repair == [] and found.create == [RAFT]
    assert "the data directory /srv exists but kbpg did not create it (root:root 755, empty)" in found.errors[0]
    assert "chown postgres:postgres /srv && chmod 700 /srv" in found.errors[0]
    # Named in patroni.yml is no proof for a data directory: an older kbpg wrote whatever it was given.
    assert verdict("g:dir data stat root:root 755 0\ng:dir raft missing\ng:configured /srv\n", data_dir="/srv").errors


def test_an_empty_directory_already_given_to_postgres_is_used_as_it_is() -> None:
    found = verdict("g:dir data stat postgres:postgres 700 0\ng:dir raft missing\n", data_dir="/data/pg")
    assert (found.errors, found.repair, found.create) == ([], [], [RAFT])


def test_directories_kbpg_created_are_repaired() -> None:
    found = verdict("g:dir data stat root:root 755 0\ng:dir raft stat root:root 755 0\n" + f"g:created {DATA}\ng:created {RAFT}\n")
    assert (found.errors, sorted(found.repair)) == ([], sorted([DATA, RAFT]))
    # The Raft directory of a cluster installed before kbpg kept its record: patroni.yml names it.
    old = verdict(OURS_PG + OURS_RAFT.replace("postgres:postgres 700", "root:root 755") + KBPG_CONFIG + PATRONI_PM)
    assert (old.errors, old.repair) == ([], [RAFT])


def test_missing_directories_are_created_and_a_file_is_refused() -> None:
    assert verdict("g:dir data missing\ng:dir raft missing\n").create == [DATA, RAFT]
    found = verdict("g:dir data notdir regular file\ng:dir raft missing\n")
    assert f"the data directory {DATA} exists but is a regular file, not a directory" in found.errors[0]
    assert "could not read the state of the data directory" in verdict("g:dir raft missing\n").errors[0]


def test_the_raft_directory_holds_only_kbpgs_raft_files() -> None:
    assert verdict(OURS_PG + OURS_RAFT + KBPG_CONFIG + PATRONI_PM).errors == []
    stray = verdict(OURS_PG + OURS_RAFT.replace(" 2\n", " 3\n") + "g:entry raft notes.txt\n" + KBPG_CONFIG + PATRONI_PM)
    assert f"the Raft directory {RAFT} holds files that are not Raft's (3 entries:" in stray.errors[0]
    foreign = verdict(OURS_PG + OURS_RAFT + f"g:created {DATA}\n")  # Raft state, but not from kbpg's Patroni
    assert "holds Raft state kbpg's Patroni did not write" in foreign.errors[0]


def test_patronis_postgres_is_not_another_postgresql() -> None:
    # A re-run on kbpg's own cluster, patroni.yml hand-edited or not: Patroni's server lives in its service.
    assert verdict(OURS_PG + OURS_RAFT + KBPG_CONFIG + PATRONI_PM).errors == []
    assert verdict(OURS_PG + OURS_RAFT + f"g:created {DATA}\ng:created {RAFT}\n" + PATRONI_PM).errors == []
    # The same server in another unit (started by hand from Patroni's data directory) is not Patroni's.
    other = verdict(OURS_PG + OURS_RAFT + KBPG_CONFIG + PATRONI_PM.replace("patroni.service", "session-4.scope"))
    assert "PostgreSQL 17 runs (data /var/lib/postgresql/17/patroni, port 5432, pid 812, unit session-4.scope)" in other.errors[0]


def test_a_running_postgresql_common_cluster_is_refused_by_name() -> None:
    text = ("g:dir data missing\ng:dir raft missing\n"
            "g:postmaster 4242 5432 15 /system.slice/system-postgresql.slice/postgresql@15-main.service /var/lib/postgresql/15/main\n"
            "g:cluster 15 main 5432 online auto /var/lib/postgresql/15/main\n")
    error = verdict(text).errors[0]
    assert "another PostgreSQL is on this node: PostgreSQL 15 cluster main runs" in error
    for part in ("data /var/lib/postgresql/15/main", "port 5432", "pid 4242", "unit postgresql@15-main.service",
                 "never stops, disables or removes", "pg_dropcluster --stop 15 main"):
        assert part in error


def test_a_bare_postgres_process_is_refused() -> None:
    text = "g:dir data missing\ng:dir raft missing\ng:postmaster 77 5433 16 /system.slice/docker-ab12.scope /srv/pg16\n"
    error = verdict(text).errors[0]
    assert "PostgreSQL 16 runs (data /srv/pg16, port 5433, pid 77, unit docker-ab12.scope)" in error


def test_stopped_clusters_are_refused_only_when_they_would_start_or_share_the_data_directory() -> None:
    bare = "g:dir data missing\ng:dir raft missing\n"
    assert verdict(bare + "g:cluster 17 old 5432 down disabled /var/lib/postgresql/17/old\n").errors == []
    assert verdict(bare + "g:cluster 17 old 5432 down manual /var/lib/postgresql/17/old\n").errors == []
    boot = verdict(bare + "g:cluster 17 main 5432 down auto /var/lib/postgresql/17/main\n").errors[0]
    assert "PostgreSQL 17 cluster main is stopped but starts at boot" in boot
    shared = verdict(OURS_PG + "g:dir raft missing\n" + f"g:cluster 17 old 5432 down disabled {DATA}\n").errors[0]
    assert "PostgreSQL 17 cluster old uses postgresql.data_dir" in shared


def test_the_probe_reads_a_real_directory(tmp_path: Path) -> None:
    import subprocess

    data, raft = tmp_path / "data", tmp_path / "raft"
    data.mkdir()
    (data / "notes.txt").write_text("x")
    (data / "odd\nname").write_text("x")  # shown escaped, counted once
    raft.mkdir()
    (raft / "PG_VERSION").write_text("17\n")
    out = subprocess.run(["bash", "-c", guards.probe_script(str(data), str(raft))], capture_output=True, text=True, check=False).stdout
    state = guards.parse(out)
    assert (state.dirs["data"].count, sorted(state.dirs["data"].entries)) == (2, ["notes.txt", "odd\\nname"])
    assert state.dirs["data"].pg_version == "" and state.dirs["raft"].pg_version == "17"
    missing = guards.parse(subprocess.run(["bash", "-c", guards.probe_script(str(tmp_path / "none"), str(raft))],
                                          capture_output=True, text=True, check=False).stdout)
    assert missing.dirs["data"].seen and not missing.dirs["data"].exists


def test_preflight_refuses_a_db_node_holding_stray_files_or_another_postgresql(real_inventory: Path) -> None:
    guard = ("g:dir data stat root:root 755 1\ng:entry data notes.txt\ng:dir raft missing\n"
             "g:cluster 16 main 5432 down auto /var/lib/postgresql/16/main\n")
    with pytest.raises(TaskError) as caught:
        _check(real_inventory, [], host_index=0, guard=guard)
    message = str(caught.value)
    assert message.startswith("db-master-01: ")
    assert "/var/lib/postgresql/16/patroni is not empty and holds no PG_VERSION (1 entry: notes.txt)" in message
    assert "PostgreSQL 16 cluster main is stopped but starts at boot" in message


def test_the_probe_finds_a_running_server_and_ignores_other_postgres_processes(tmp_path: Path) -> None:
    import shutil
    import subprocess

    binary = tmp_path / "postgres"  # a process whose name is postgres, like PostgreSQL's own
    shutil.copy(shutil.which("sleep"), binary)
    server_dir, tool_dir = tmp_path / "server", tmp_path / "tool"
    server_dir.mkdir()
    tool_dir.mkdir()
    (server_dir / "PG_VERSION").write_text("16\n")
    server = subprocess.Popen([str(binary), "30"], cwd=server_dir)
    tool = subprocess.Popen([str(binary), "30"], cwd=tool_dir)  # `postgres -C ...`: no postmaster.pid of its own
    try:
        (server_dir / "postmaster.pid").write_text(f"{server.pid}\n{server_dir}\n1700000000\n5499\n/tmp\n")
        out = subprocess.run(["bash", "-c", guards.probe_script(str(tmp_path / "d"), str(tmp_path / "r"))],
                             capture_output=True, text=True, check=False).stdout
        found = {pm.pid: pm for pm in guards.parse(out).postmasters}
        assert str(tool.pid) not in found
        pm = found[str(server.pid)]
        assert (pm.port, pm.version, pm.data_dir) == ("5499", "16", str(server_dir)) and pm.cgroup.startswith("/")
    finally:
        server.kill()
        tool.kill()
        server.wait()
        tool.wait()
