"""Diagnostics: every check with its state, reason and duration, and the live cluster view."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static
from textual.worker import Worker, WorkerState

from ...core import install as inst
from ...core.diagnostics import CheckFailed, CheckResult, Diagnostics, Member, Report, cluster_view, write_reports

REFRESH_SECONDS = 5.0
VERDICT = {"pass": "✓ pass", "warn": "! warn", "fail": "✗ FAIL"}


class CheckDone(Message):
    def __init__(self, result: CheckResult):
        super().__init__()
        self.result = result


class DiagnosticsDone(Message):
    def __init__(self, report: Report):
        super().__init__()
        self.report = report


class ClusterSeen(Message):
    def __init__(self, members: list[Member], error: str = ""):
        super().__init__()
        self.members, self.error = members, error


class DiagnosticsScreen(Screen):
    BINDINGS = [
        Binding("r", "run", "Run again"),
        Binding("e", "export", "Export report"),
        Binding("n", "next", "Summary"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.report: Report | None = None
        self.running = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Diagnostics — 12 checks in parallel, through the LB and each node", classes="title")
        yield Static("", id="diag-status", classes="hint")
        members = DataTable(id="members", cursor_type="none")
        members.add_columns("member", "host", "role", "state", "TL", "lag")
        yield members
        checks = DataTable(id="checks", cursor_type="row", zebra_stripes=True)
        checks.add_column("#", key="number")
        checks.add_column("check", key="check")
        checks.add_column("target", key="target")
        checks.add_column("state", key="state")
        checks.add_column("time", key="time")
        checks.add_column("reason", key="reason")
        yield checks
        yield Footer()

    def on_mount(self) -> None:
        state = self.app.state
        problems = []
        if not state.answers_path.exists():
            problems.append(f"no kbpg.toml in {state.workdir}")
        if state.settings_error:
            problems.append(state.settings_error)
        if not state.env_path.exists():
            problems.append("no credentials/postgres.env")
        if not state.selection:
            problems.append("servers.tsv has errors")
        if problems:
            self.set_status("cannot run: " + "; ".join(problems))
            return
        self.action_run()
        self.set_interval(REFRESH_SECONDS, self.refresh_cluster)
        self.refresh_cluster()

    def set_status(self, text: str) -> None:
        self.query_one("#diag-status", Static).update(Text(text))  # literal: errors quote the operator's files

    # checks

    def action_run(self) -> None:
        if self.running or not self.app.state.selection:
            return
        self.running = True
        self.query_one("#checks", DataTable).clear()
        self.set_status("running …")
        self.run_checks()

    @work(thread=True, exclusive=True, exit_on_error=False, group="diagnose")
    def run_checks(self) -> None:
        state = self.app.state
        run = inst.prepare(state.workdir, state.settings, lambda event: None, selection=state.selection)
        try:
            report = Diagnostics(run.ctx).run(on_result=lambda result: self.post_message(CheckDone(result)))
        finally:
            run.close()
        self.post_message(DiagnosticsDone(report))

    def on_check_done(self, message: CheckDone) -> None:
        r = message.result
        self.query_one("#checks", DataTable).add_row(str(r.number), r.check, r.target, VERDICT[r.verdict.value],
                                                     f"{r.duration:.2f}s", r.reason)

    def on_diagnostics_done(self, message: DiagnosticsDone) -> None:
        self.running = False
        self.report = report = message.report
        table = self.query_one("#checks", DataTable)
        table.clear()
        for r in report.results:  # the final order: by check number
            table.add_row(str(r.number), r.check, r.target, VERDICT[r.verdict.value], f"{r.duration:.2f}s", r.reason)
        counts = report.counts()
        verdict = "ALL GREEN" if not report.failed else "FAILURES"
        status = self.query_one("#diag-status", Static)
        status.set_class(not report.failed, "green")
        status.set_class(report.failed, "red")
        self.set_status(f"{verdict}: {counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail in "
                        f"{report.elapsed:.2f}s — r runs again, e exports the report")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "diagnose" and event.state == WorkerState.ERROR:
            self.running = False
            self.set_status(f"could not run: {event.worker.error}")

    def action_export(self) -> None:
        if not self.report:
            self.notify("no report yet")
            return
        markdown, _json = write_reports(self.app.state.workdir, self.report)
        self.notify(f"report written: {markdown}")

    # live cluster view

    def refresh_cluster(self) -> None:
        self.watch_cluster()

    @work(thread=True, exclusive=True, exit_on_error=False, group="cluster-view")
    def watch_cluster(self) -> None:
        state = self.app.state
        run = inst.prepare(state.workdir, state.settings, lambda event: None, selection=state.selection)
        try:
            self.post_message(ClusterSeen(cluster_view(run.ctx)))
        except CheckFailed as exc:
            self.post_message(ClusterSeen([], str(exc)))
        finally:
            run.close()

    def on_cluster_seen(self, message: ClusterSeen) -> None:
        table = self.query_one("#members", DataTable)
        table.clear()
        for m in message.members:
            lag = "" if m.lag is None else f"{m.lag} B"
            table.add_row(m.name, m.host, m.role, m.state, str(m.timeline or ""), lag)
        if message.error:
            table.add_row("—", message.error[:60], "", "", "", "")

    # navigation

    def action_next(self) -> None:
        from .summary import SummaryScreen

        self.app.push_screen(SummaryScreen())

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()
        else:
            from .welcome import WelcomeScreen

            self.app.switch_screen(WelcomeScreen())
