"""kbpg_tui.core.raft: telling a live Raft from one whose pysyncobj thread died (no host needed)."""

from __future__ import annotations

from kbpg_tui.core import raft
from kbpg_tui.core.ssh import Host

from .fakes import ScriptedConnection, result

LIVE = 'r:unit active 300\nr:status {"leader": "198.18.0.122:7000", "raft_term": 30, "commit_idx": 7}\n'
SILENT = "r:unit active 300\nr:silent 198.18.0.120:7000 connection lost\n"


def test_a_member_that_answers_is_alive_and_one_that_does_not_is_silent() -> None:
    live = raft.parse(LIVE)
    assert live.answers is True and live.leader == "198.18.0.122:7000" and live.up == 300
    silent = raft.parse(SILENT)
    assert silent.answers is False
    assert silent.detail == ("patroni active for 300 s, its Raft port 198.18.0.120:7000 does not answer: "
                             "connection lost")
    assert "Patroni's Raft stopped answering on db-master-01" in raft.silent_text("db-master-01", silent)


def test_a_stopped_or_young_patroni_or_an_unreadable_answer_is_not_judged() -> None:
    # A stopped Patroni is a drill's fault (stop) or the operator's; a young one may still be binding its port.
    assert raft.parse("r:unit inactive 0\n").answers is None
    young = raft.parse(f"r:unit active {raft.MIN_UP - 1}\nr:silent 198.18.0.120:7000 connection lost\n")
    assert young.answers is None and "started" in young.detail
    assert raft.parse("r:unit active 300\nr:unknown FileNotFoundError\n").answers is None
    assert raft.parse("r:unit active 300\nr:status {not json\n").answers is None
    assert raft.parse("").answers is None


def test_the_probe_reads_the_raft_password_on_the_node_and_asks_only_when_patroni_is_active() -> None:
    calls: list[tuple[str, object]] = []

    def handler(script: str, stdin) -> object:
        calls.append((script, stdin))
        return result(SILENT)

    status = raft.ask(ScriptedConnection(Host("db-master-01", "198.18.0.120"), handler))
    assert status.answers is False
    (script, stdin), = calls
    assert not stdin  # nothing secret travels: the node reads its own Patroni configuration
    assert raft.PATRONI_CONFIG in script and '"status"' in script
    assert script.index('[ "$state" = active ] || exit 0') < script.index("python3 - <<'PY'")


def test_a_probe_that_cannot_run_is_not_judged() -> None:
    status = raft.ask(ScriptedConnection(Host("db-master-01", "198.18.0.120"),
                                         lambda script, stdin: result("", 127, "python3: not found")))
    assert status.answers is None and "python3: not found" in status.detail
