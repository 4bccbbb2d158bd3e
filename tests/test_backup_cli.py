"""`kbpg backup now | list | check` on the command line, in-process: the refusals (exit 2, one line, nothing connected
to) and what each command prints and returns, with the backup host a scripted connection (the lab's inventory:
backup-01 198.18.0.153; every connection goes through a FakePool, so nothing is reached)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbpg_tui import cli
from kbpg_tui.core import install as inst
from kbpg_tui.core import runlock
from kbpg_tui.core.ops import backup as ops
from kbpg_tui.core.ssh import Host

from .fakes import FakePool, ScriptedConnection, result
from .test_backup_ops import NOW, BackupHost, archiver, sample

BACKUP = Host("backup-01", "198.18.0.153")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    from kbpg_tui.core.lab.topology import LB_ADDRESS, SUBNET
    from kbpg_tui.core.lab.workdir import write_servers_tsv

    write_servers_tsv(tmp_path)
    (tmp_path / "kbpg.toml").write_text(f'[network]\nlb_address = "{LB_ADDRESS}"\nprivate_subnet = "{SUBNET}"\n')
    assert cli.main(["--workdir", str(tmp_path), "credentials", "generate"]) == 0
    return tmp_path


class Hosts:
    """The pool every prepared run gets: the backup host answers with ``handler``; ``gets`` records each host asked."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, handler=None):
        self.pool = FakePool({"backup-01": ScriptedConnection(BACKUP, handler or (lambda s, i: result("")))})
        real = inst.prepare

        def prepare(workdir, settings, sink, *args, **kwargs):
            run = real(workdir, settings, sink, *args, **kwargs)
            run.ctx.pool = self.pool
            return run

        monkeypatch.setattr(inst, "prepare", prepare)
        monkeypatch.setattr(ops, "read_archiver", lambda ctx, timeout: archiver("archiver-ok.json"))

    @property
    def scripts(self) -> list[str]:
        return self.pool.connections["backup-01"].scripts


def kbpg(workdir: Path, *args: str) -> int:
    return cli.main(["--workdir", str(workdir), *args])


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# --- refused: exit 2, one line, nothing connected to ------------------------------------------------------

@pytest.mark.parametrize("action", [["now"], ["now", "--type", "full", "--no-wait"], ["list"], ["check", "--json"]])
def test_no_backup_host_is_refused(workdir: Path, monkeypatch, capsys, action: list[str]) -> None:
    lines = (workdir / "servers.tsv").read_text().splitlines(keepends=True)
    (workdir / "servers.tsv").write_text("".join(line for line in lines if "\tbackup-01\t" not in line))
    hosts = Hosts(monkeypatch)
    assert kbpg(workdir, "backup", *action) == 2
    assert one_line(capsys) == (f"kbpg: backup {action[0]}: no backup host matches ENV=prod, ROLE=backup, "
                                "SUBROLE=backup: backups are not set up (see [inventory.backup_rule] and [backup] in "
                                "kbpg.toml)")
    assert hosts.pool.gets == []


def test_backups_turned_off_are_refused(workdir: Path, monkeypatch, capsys) -> None:
    with (workdir / "kbpg.toml").open("a") as f:
        f.write("\n[backup]\nenabled = false\n")
    hosts = Hosts(monkeypatch)
    assert kbpg(workdir, "backup", "now", "--type", "full") == 2
    line = one_line(capsys)
    assert line.startswith("kbpg: backup now: [backup] enabled = false in kbpg.toml") and hosts.pool.gets == []


def test_a_pending_rotation_is_refused(workdir: Path, monkeypatch, capsys) -> None:
    from kbpg_tui.core import rotation

    (workdir / rotation.PENDING_FILE).write_text("POSTGRES_APP_PASS\n")
    hosts = Hosts(monkeypatch)
    assert kbpg(workdir, "backup", "check") == 2
    assert "a credential rotation is pending" in one_line(capsys) and hosts.pool.gets == []


def test_a_cluster_name_pgbackrest_cannot_take_is_refused_naming_the_key(workdir: Path, monkeypatch, capsys) -> None:
    env = workdir / "credentials" / "postgres.env"
    env.write_text("".join("PATRONI_CLUSTER_NAME='keybuzz pg'\n" if line.startswith("PATRONI_CLUSTER_NAME=") else line
                           for line in env.read_text().splitlines(keepends=True)))
    hosts = Hosts(monkeypatch)
    assert kbpg(workdir, "backup", "list") == 2
    assert one_line(capsys) == ("kbpg: backup list: credentials/postgres.env: PATRONI_CLUSTER_NAME 'keybuzz pg' cannot "
                                "name a pgBackRest stanza: 1 to 64 letters, digits, '_', '.' or '-'")
    assert hosts.pool.gets == []


def test_an_unknown_type_is_named_with_the_types(workdir: Path, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        kbpg(workdir, "backup", "now", "--type", "weekly")
    assert caught.value.code == 2
    assert "argument --type: invalid choice: 'weekly' (choose from" in capsys.readouterr().err


# --- what they print ------------------------------------------------------------------------------------

@pytest.fixture
def no_lock(monkeypatch):
    taken = []

    class Lock:
        def release(self) -> None:
            taken.append("released")

    def acquire(run, command):
        taken.append(command)
        return Lock()

    monkeypatch.setattr(runlock, "acquire_for_run", acquire)
    return taken


def test_backup_now_follows_the_backup_and_releases_the_lock_once_it_runs(workdir, monkeypatch, capsys,
                                                                         no_lock) -> None:
    host = BackupHost()
    hosts = Hosts(monkeypatch, host)
    monkeypatch.setattr(ops, "POLL_SECONDS", 0.0)
    assert kbpg(workdir, "backup", "now", "--type", "full", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["backup"]["label"] == "20261122-010002F_20261126-010003D" and out["type"] == "full"
    assert no_lock == ["kbpg backup now --type full", "released"]
    assert any(s == "date +%s && systemctl start --no-block kbpg-backup@full.service" for s in hosts.scripts)


def test_backup_now_while_one_runs_exits_3_naming_it(workdir, monkeypatch, capsys, no_lock) -> None:
    Hosts(monkeypatch, BackupHost(running=f"running kbpg-backup@full.service activating {NOW - 30:.0f}\n"))
    assert kbpg(workdir, "backup", "now", "--type", "diff") == 3
    err = capsys.readouterr().err
    assert ("kbpg backup now: not started: kbpg-backup@full.service is already running on backup-01, since "
            "2026-11-26 11:59:30 UTC (30 s ago)") in err
    assert no_lock == ["kbpg backup now --type diff", "released"]


def test_backup_now_failing_exits_1_with_the_journal(workdir, monkeypatch, capsys, no_lock) -> None:
    Hosts(monkeypatch, BackupHost(result_="exit-code"))
    monkeypatch.setattr(ops, "POLL_SECONDS", 0.0)
    assert kbpg(workdir, "backup", "now", "--type", "full") == 1
    out = capsys.readouterr().out
    assert "kbpg-backup@full.service on backup-01 FAILED: result exit-code, exit status 82" in out
    assert "   | ERROR: [082]: WAL segment" in out


def test_backup_list_prints_each_backup_and_the_restore_window(workdir, monkeypatch, capsys) -> None:
    Hosts(monkeypatch, lambda script, stdin: result(f"{NOW:.0f}\n" + sample("info-ok.json")))
    assert kbpg(workdir, "backup", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "backup-01: stanza keybuzz-pg, status ok, repository cipher aes-256-cbc"
    assert lines[2].startswith("20261122-010002F                   full 2026-11-22 01:00:02 2026-11-22 01:04:41    279s "
                               "   1.2 GiB  297.0 MiB     297.0 MiB  0000000300000004000000A2 .. "
                               "0000000300000004000000A3")
    assert lines[-1] == ("restorable from 2026-11-22 01:04:41 UTC to the newest archived WAL, 12 s ago "
                         "(000000030000000600000011)")


def test_backup_list_with_no_backup_exits_1(workdir, monkeypatch, capsys) -> None:
    Hosts(monkeypatch, lambda script, stdin: result(f"{NOW:.0f}\n" + sample("info-no-backup.json")))
    assert kbpg(workdir, "backup", "list", "--json") == 1
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == {"code": 2, "message": "no valid backups"} and out["backups"] == []


def test_backup_check_exit_codes(workdir, monkeypatch, capsys) -> None:
    answers = {"info": "info-ok.json", "check": 0}

    def handler(script: str, stdin: bytes):
        if script.endswith(" check"):
            assert "--archive-timeout=60" in script  # the CLI waits as long as pgBackRest's own default
            return result("", answers["check"], "ERROR: [082]: WAL segment 000000030000000600000013 was not archived "
                                                "before the 60000ms timeout\n" if answers["check"] else "")
        return result(f"{NOW:.0f}\n" + sample(answers["info"]))

    Hosts(monkeypatch, handler)
    assert kbpg(workdir, "backup", "check") == 0
    assert capsys.readouterr().out.startswith("backup-01: backups PASS: last full 4.5 d ago")
    answers["info"] = "info-stale.json"
    assert kbpg(workdir, "backup", "check") == 0  # a warning is said, not failed
    assert capsys.readouterr().out.startswith("backup-01: backups WARN: the newest backup is 3.5 d old")
    answers["check"] = 82
    assert kbpg(workdir, "backup", "check", "--json") == 1
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "fail" and out["figures"]["check"]["error"].startswith("ERROR: [082]")


def test_an_unreachable_backup_host_is_exit_1_in_one_line(workdir, monkeypatch, capsys) -> None:
    from .fakes import unreachable

    hosts = Hosts(monkeypatch)
    hosts.pool.connections["backup-01"] = unreachable(BACKUP)
    assert kbpg(workdir, "backup", "list") == 1
    assert one_line(capsys) == "kbpg backup list: backup-01 (198.18.0.153): no SSH answer within 10 s"

