"""The wizard's order is in one place (kbpg_tui/ui/flows.py): screens do not import one another, each flow
is one list, and a screen added to a list is where the wizard goes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Static

from kbpg_tui.ui import flows
from kbpg_tui.ui.app import KbpgApp
from kbpg_tui.ui.screens.credentials import CredentialsScreen
from kbpg_tui.ui.screens.diagnostics import DiagnosticsScreen
from kbpg_tui.ui.screens.summary import SummaryScreen
from kbpg_tui.ui.screens.welcome import WelcomeScreen

from .conftest import SIZE

UI = Path(flows.__file__).resolve().parent
PACKAGE = "kbpg_tui.ui"


def module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports, anywhere in it (functions included), from the source."""
    files = {module_name(path, root, package): path for path in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")
                    base = base[:len(base) - node.level + (1 if is_package else 0)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [source] + [f"{source}.{alias.name}" for alias in node.names]  # a name may be a module
            for target in targets:
                if target in files and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle found by a depth-first walk (each as the path that closes it)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for following in sorted(graph.get(node, ())):
            if state.get(following) == 1:
                found.append(path[path.index(following):] + [node, following] if following in path
                             else [node, following])
            elif following not in state:
                visit(following, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_the_screens_import_graph_has_no_circle() -> None:
    graph = import_graph(UI, PACKAGE)
    screens = {name for name in graph if name.startswith(f"{PACKAGE}.screens.")}
    assert len(screens) >= 8, sorted(graph)  # the walk sees the screens
    assert cycles({name: graph[name] & screens for name in screens}) == []
    assert cycles(graph) == []  # nor through the app, the flows or the helpers


def test_no_screen_of_a_flow_imports_another() -> None:
    """A screen says it is done, or names the screen apart from the flows it opens (flows.SIDE); which screen that
    is, is the flows' business, never the screen's."""
    graph = import_graph(UI, PACKAGE)
    in_flows = ({kind.__module__ for order in flows.FLOWS.values() for kind in order} | {flows.HOME.__module__}
                | {kind.__module__ for kind in flows.SIDE.values()})
    assert "kbpg_tui.ui.screens.drill" in in_flows
    for name in in_flows:
        assert not graph[name] & (in_flows - {name}), f"{name} imports {sorted(graph[name] & in_flows)}"
        assert f"{PACKAGE}.flows" not in graph[name] and f"{PACKAGE}.app" not in graph[name]


def test_the_walk_finds_a_circle(tmp_path: Path) -> None:
    """The check above can fail: a circle of three modules (one import inside a function) is found."""
    (tmp_path / "screens").mkdir()
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "screens" / "__init__.py").write_text("")
    (tmp_path / "screens" / "a.py").write_text("from .b import B\n")
    (tmp_path / "screens" / "b.py").write_text("from ..helpers import x\n")
    (tmp_path / "helpers.py").write_text("def f():\n    from .screens import a\n")
    found = cycles(import_graph(tmp_path, "pkg"))
    assert found and {"pkg.screens.a", "pkg.screens.b", "pkg.helpers"} <= set(found[0])


def test_each_screen_is_once_in_each_flow() -> None:
    for name, order in flows.FLOWS.items():
        assert order and len(order) == len(set(order)), name


def test_next_screen_follows_the_lists() -> None:
    assert flows.next_screen("install", CredentialsScreen) is flows.FLOWS["install"][1]
    assert flows.next_screen("export", CredentialsScreen) is None  # its last screen: back home
    assert flows.next_screen("diagnostics", DiagnosticsScreen) is SummaryScreen
    assert flows.next_screen(None, DiagnosticsScreen) is SummaryScreen  # opened outside a flow
    assert flows.next_screen("install", SummaryScreen) is None


class DrillScreen(Screen):
    """A later screen (a failover drill), put in a flow with one edit."""

    BINDINGS = [Binding("n", "next", "Next"), Binding("escape", "app.pop_screen", "Back")]

    def compose(self) -> ComposeResult:
        yield Static("drill", id="drill")

    def action_next(self) -> None:
        self.app.screen_done(self)


async def test_a_screen_goes_in_with_one_edit(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    order = list(flows.FLOWS["diagnostics"])
    order.insert(order.index(DiagnosticsScreen) + 1, DrillScreen)
    monkeypatch.setitem(flows.FLOWS, "diagnostics", order)  # the one edit
    monkeypatch.setattr(DiagnosticsScreen, "on_mount", lambda self: None)  # no checks run here
    app = KbpgApp(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        assert isinstance(app.screen, DiagnosticsScreen)
        await pilot.press("n")
        assert isinstance(app.screen, DrillScreen)
        await pilot.press("n")
        assert isinstance(app.screen, SummaryScreen)
        await pilot.press("escape", "escape", "escape")
        assert isinstance(app.screen, WelcomeScreen)


async def test_kbpg_diagnose_opens_on_diagnostics_and_goes_back_home(demo: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DiagnosticsScreen, "on_mount", lambda self: None)
    app = KbpgApp(demo, start="diagnostics")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, DiagnosticsScreen)
        await pilot.press("n")
        assert isinstance(app.screen, SummaryScreen)
        await pilot.press("escape", "escape")
        assert isinstance(app.screen, WelcomeScreen)
        assert "Work directory" in str(app.screen.query_one("#status", Static).render())
