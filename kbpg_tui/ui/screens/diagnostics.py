"""Diagnostics: every check with its state, reason and duration, and the live cluster view."""

from __future__ import annotations

import threading

from rich.cells import cell_len
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Header, Static
from textual.worker import Worker, WorkerState

from ...core import install as inst
from ...core.checks.report import CheckResult, Report, Verdict, write_reports
from ...core.checks.runner import Diagnostics
from ...core.cluster import ClusterUnreadable, Member, cluster_view
from ..workers import cancel_event, run_cancellable

REFRESH_SECONDS = 5.0
VERDICT = {"pass": "✓ pass", "warn": "! warn", "fail": "✗ FAIL"}
RANK = {Verdict.FAIL: 0, Verdict.WARN: 1, Verdict.PASS: 2}


def problems_first(results: list[CheckResult]) -> list[CheckResult]:
    """Failures, then warnings, then passes; each group in check order (probe order within a check)."""
    return sorted(results, key=lambda r: (RANK[r.verdict], r.number))


def detail_text(r: CheckResult) -> Text:
    """The selected row in full: check, target, verdict, time, and the whole reason (wrapped by the pane)."""
    style = {Verdict.FAIL: "bold red", Verdict.WARN: "bold yellow", Verdict.PASS: "bold green"}[r.verdict]
    text = Text.assemble((VERDICT[r.verdict.value], style), f"  check {r.number} {r.check} — {r.target}  "
                         f"({r.duration:.2f}s)\n")
    text.append(r.reason or "(no reason given)")
    return text


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
        Binding("d", "drill", "Failover drill", show=False),  # on the button "(d)", and in ? help
        Binding("n", "next", "Summary"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, autorun: bool = True) -> None:
        """``autorun``: run the checks and watch the cluster as soon as the screen opens (False: on ``r`` only)."""
        super().__init__()
        self.autorun = autorun
        self.report: Report | None = None
        self.results: list[CheckResult] = []  # as they arrive; shown problems first
        self.shown: list[CheckResult] = []  # the table's rows, in order
        self.running = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Diagnostics — all checks at once, via the LB and each node; problems first",
                     classes="title")
        yield Static("", id="diag-status", classes="hint")
        members = DataTable(id="members", cursor_type="none")
        members.add_columns("member", "host", "role", "state", "TL", "lag")
        with Horizontal(id="members-row"):
            yield members
            yield Button("Failover drill (d)", id="drill", compact=True)
        checks = DataTable(id="checks", cursor_type="row", zebra_stripes=True)
        checks.add_column("#", key="number")
        checks.add_column("check", key="check")
        checks.add_column("target", key="target")
        checks.add_column("state", key="state")
        checks.add_column("time", key="time")
        checks.add_column("reason", key="reason")
        yield checks
        yield Static("", id="check-detail")
        yield Footer()

    def on_mount(self) -> None:
        problems = self.app.state.cluster_problems()
        self.query_one("#check-detail", Static).display = False
        self.query_one("#checks", DataTable).focus()
        if problems:
            self.set_status("cannot run: " + "; ".join(problems))
            return
        if not self.autorun:
            self.set_status("r runs the checks")
            return
        self.action_run()
        self.start_watching()

    def start_watching(self) -> None:
        self.set_interval(REFRESH_SECONDS, self.refresh_cluster)
        self.refresh_cluster()

    def set_status(self, text: str) -> None:
        self.query_one("#diag-status", Static).update(Text(text))  # literal: errors quote the operator's files

    # checks

    def action_run(self) -> None:
        if self.running or not self.app.state.selection:
            return
        self.running = True
        self.results = []
        self.show_results()
        self.set_status("running …")
        self.run_checks()

    @work(thread=True, exclusive=True, exit_on_error=False, group="diagnose")
    def run_checks(self) -> None:
        """Every check; ends with the worker (quit, leaving the screen): the run and its SSH pool are cancelled."""
        cancel = cancel_event()
        report = run_cancellable(lambda: self.checks(cancel), cancel, name="kbpg-diagnose")
        if report is not None and not cancel.is_set():
            self.post_message(DiagnosticsDone(report))

    def checks(self, cancel: threading.Event) -> Report:
        state = self.app.state
        run = inst.prepare(state.workdir, state.settings, lambda event: None, cancel=cancel, selection=state.selection)
        try:
            return Diagnostics(run.ctx).run(on_result=lambda result: self.post_message(CheckDone(result)),
                                            cancel=cancel)
        finally:
            run.close()

    def on_check_done(self, message: CheckDone) -> None:
        self.results.append(message.result)
        self.show_results()

    def on_diagnostics_done(self, message: DiagnosticsDone) -> None:
        self.running = False
        self.report = report = message.report
        self.results = list(report.results)  # the final set, in probe order
        self.show_results()
        counts = report.counts()
        verdict = "ALL GREEN" if not report.failed else "FAILURES"
        status = self.query_one("#diag-status", Static)
        status.set_class(not report.failed, "green")
        status.set_class(report.failed, "red")
        self.set_status(f"{verdict}: {counts['fail']} fail, {counts['warn']} warn, {counts['pass']} pass in "
                        f"{report.elapsed:.2f}s — r runs again, e exports")

    def show_results(self) -> None:
        """Redraw the table problems first; the cursor stays on the row it was on (or the first problem)."""
        table = self.query_one("#checks", DataTable)
        selected = self.selected()
        self.shown = problems_first(self.results)
        rows = [[str(r.number), r.check, r.target, VERDICT[r.verdict.value], f"{r.duration:.2f}s"] for r in self.shown]
        # The reason gets what is left of the width (the detail pane below shows all of it): no sideways scrolling.
        used = sum(max([cell_len(str(column.label))] + [cell_len(row[i]) for row in rows]) + 2 * table.cell_padding
                   for i, column in enumerate(list(table.columns.values())[:-1]))
        width = max(8, (table.size.width or 200) - used - 2 * table.cell_padding - 2)  # 2: the vertical scrollbar
        table.clear()
        for row, r in zip(rows, self.shown, strict=True):
            reason = r.reason if cell_len(r.reason) <= width else r.reason[:width - 1] + "…"
            table.add_row(*row, reason)
        # The row the operator moved to stays selected; the top row stays on top (the worst problem so far).
        row = 0 if table.cursor_row <= 0 else next((i for i, r in enumerate(self.shown) if r is selected), 0)
        if self.shown:
            table.move_cursor(row=row, animate=False)
        self.show_detail(row)

    def on_resize(self) -> None:
        if self.shown:
            self.show_results()

    def selected(self) -> CheckResult | None:
        row = self.query_one("#checks", DataTable).cursor_row
        return self.shown[row] if 0 <= row < len(self.shown) else None

    def show_detail(self, row: int) -> None:
        detail = self.query_one("#check-detail", Static)
        if 0 <= row < len(self.shown):
            detail.update(detail_text(self.shown[row]))
            detail.display = True
        else:
            detail.display = False

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "checks":
            self.show_detail(event.cursor_row)

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
        """The cluster now; bounded by its own timeouts, and never holding a quit wizard (run_cancellable)."""
        cancel = cancel_event()
        seen = run_cancellable(lambda: self.cluster(cancel), cancel, name="kbpg-cluster-view")
        if seen is not None and not cancel.is_set():
            self.post_message(seen)

    def cluster(self, cancel: threading.Event) -> ClusterSeen:
        state = self.app.state
        run = inst.prepare(state.workdir, state.settings, lambda event: None, cancel=cancel, selection=state.selection)
        try:
            return ClusterSeen(cluster_view(run.ctx))
        except ClusterUnreadable as exc:
            return ClusterSeen([], str(exc))
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

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "drill":
            self.action_drill()

    def action_drill(self) -> None:
        """The failover drill (flows.SIDE), over this screen: leaving it comes back here."""
        self.app.open_side("drill")

    def action_next(self) -> None:
        self.app.screen_done(self)

    def action_back(self) -> None:
        self.app.pop_screen()
