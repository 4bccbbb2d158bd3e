"""Log files: written under logs/, 0600, and never holding a registered secret."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

from kbpg_tui.core import credentials as creds
from kbpg_tui.core import logs


def test_secrets_are_redacted_in_log_files(tmp_path: Path) -> None:
    values, _ = creds.generate()  # registers the passwords
    path = logs.setup_file_logging(tmp_path)
    logger = logging.getLogger("kbpg.test")
    secret = values["POSTGRES_SUPERPASS"]
    logger.info("running psql with password %s", secret)
    logger.warning(f"inline {values['PATRONI_API_PASSWORD']} and {values['POSTGRES_REPL_PASS']}")
    try:
        raise RuntimeError(f"failed with {values['POSTGRES_APP_PASS']}")
    except RuntimeError:
        logger.exception("boom")
    for handler in logging.getLogger("kbpg").handlers:
        handler.flush()
    text = path.read_text()
    for name in creds.PASSWORD_NAMES:
        assert values[name] not in text
    assert text.count(logs.REDACTED) >= 4
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_short_values_are_not_treated_as_secrets() -> None:
    logs.register_secret("ab")
    assert logs.redact("ab cd") == "ab cd"


# --- redaction at every output point (issue 10) ------------------------------------------------------------

import io  # noqa: E402
import threading  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from kbpg_tui.core import events as ev  # noqa: E402

from .fakes import FakePool  # noqa: E402

OUT_SECRET = "Out-point-secret-4Kz9Qw"


def _printed(*events, verbose: bool = True) -> str:
    from kbpg_tui.cli import PlainPrinter

    logs.register_secret(OUT_SECRET)
    stream = io.StringIO()
    printer = PlainPrinter(verbose=verbose, stream=stream)
    for event in events:
        printer(event)
    return stream.getvalue()


def test_the_terminal_never_prints_a_secret() -> None:
    text = _printed(
        ev.TaskFinished("02", "db-1", "bootstrap", ev.Status.FAILED, f"psql: bad password {OUT_SECRET}\nmore"),
        ev.TaskFinished("02", "db-2", "bootstrap", ev.Status.CHANGED, f"set {OUT_SECRET}"),
        ev.Message(ev.Level.WARNING, f"weak {OUT_SECRET}", "db-1"),
        ev.OutputLine("02", "db-1", "stdout", f"raw {OUT_SECRET}"),
        ev.StepFinished("02", "Patroni", ev.Status.FAILED, detail=OUT_SECRET),
        ev.Progress(f"waiting with {OUT_SECRET}"),
    )
    assert OUT_SECRET not in text
    assert text.count(logs.REDACTED) >= 5


def test_the_terminal_names_a_host_that_stops_answering() -> None:
    text = _printed(ev.HostSilent("02", "db-slave-02", 30.2), ev.HostAnswering("02", "db-slave-02"))
    first, second = text.splitlines()
    assert "db-slave-02" in first and "NOT ANSWERING" in first and "30s" in first
    assert "db-slave-02" in second and "answering again" in second


def test_the_terminal_prints_nothing_after_the_summary() -> None:
    from kbpg_tui.cli import PlainPrinter

    stream = io.StringIO()
    printer = PlainPrinter(stream=stream)
    printer.close()
    printer(ev.TaskFinished("02", "db-1", "late", ev.Status.CHANGED))
    assert stream.getvalue() == ""


def test_events_to_the_tui_are_redacted_whole_before_any_cut() -> None:
    """The install screen shows OutputLine/TaskFinished/Message texts, cut to its width: they arrive redacted."""
    from pathlib import Path

    from kbpg_tui.core.engine import Context
    from kbpg_tui.core.settings import Settings
    from kbpg_tui.core.ssh import Host, output_sink

    logs.register_secret(OUT_SECRET)
    seen = ev.EventCollector()
    ctx = Context(Settings(), creds.Credentials(), SimpleNamespace(db_nodes=[], haproxy_nodes=[]), Path("/nonexistent"),
                  FakePool(), seen, threading.Event())  # type: ignore[arg-type]
    ctx.sink(ev.Message(ev.Level.ERROR, f"{'x' * 110}{OUT_SECRET}", "db-1"))  # a screen cuts at 120
    ctx.sink(ev.TaskFinished("02", "db-1", "t", ev.Status.FAILED, f"failed: {OUT_SECRET}"))
    output_sink(ctx.sink, "02", Host("db-1", "198.51.100.1"))("stdout", f"line {OUT_SECRET}")
    assert len(seen.events) == 3
    for event in seen.events:
        assert OUT_SECRET not in repr(event)
        for half in (OUT_SECRET[:10], OUT_SECRET[10:]):
            assert half not in repr(event)
    assert seen.events[0].text[:120] == "x" * 110 + logs.REDACTED[:10]


def test_reports_and_diagnostics_reasons_are_redacted(tmp_path) -> None:
    from pathlib import Path

    from kbpg_tui.core import diagnostics as diag
    from kbpg_tui.core.engine import Context
    from kbpg_tui.core.settings import Settings

    logs.register_secret(OUT_SECRET)
    ctx = Context(Settings(), creds.Credentials(), SimpleNamespace(db_nodes=[], haproxy_nodes=[]), Path("/nonexistent"),
                  FakePool(), lambda e: None, threading.Event())  # type: ignore[arg-type]
    diagnostics = diag.Diagnostics(ctx, timeout=1)

    def failing() -> str:
        raise diag.CheckFailed(f"haproxy stats refused user kb_stats password {OUT_SECRET}")

    def warning() -> str:
        raise diag.CheckWarning(f"lag with {OUT_SECRET}")

    diagnostics.probes = lambda: [diag.Probe(11, "haproxy", "haproxy-01", failing),  # type: ignore[method-assign]
                                  diag.Probe(4, "patroni cluster", "cluster", warning)]
    report = diagnostics.run()
    assert all(OUT_SECRET not in r.reason and logs.REDACTED in r.reason for r in report.results)
    markdown, json_path = diag.write_reports(tmp_path, report)
    assert OUT_SECRET not in markdown.read_text() and OUT_SECRET not in json_path.read_text()


def test_a_postgres_error_is_redacted_before_it_is_cut() -> None:
    from kbpg_tui.core.diagnostics import Diagnostics

    logs.register_secret(OUT_SECRET)
    text = Diagnostics._pg_error(RuntimeError("e" * 190 + OUT_SECRET))  # the 200-character cut falls inside it
    assert OUT_SECRET[:10] not in text and text.startswith("e" * 190 + logs.REDACTED[:10])
