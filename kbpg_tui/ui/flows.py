"""The wizard's order, in one place: the screens each flow goes through, first to last.

Screens never open one another: a screen that is done calls ``app.screen_done(self)``, and the app opens
the next screen of the running flow, or goes back home (the welcome screen) after its last one. A new
screen (backups after the diagnostics) goes in with one edit here.

A screen reached from another one by a key, apart from any flow's order (the failover drill, from the
diagnostics), is in ``SIDE``: the screen asks for it by name (``app.open_side("drill")``), and leaving it goes
back to the screen it was opened from.
"""

from __future__ import annotations

from textual.screen import Screen

from .screens.credentials import CredentialsScreen
from .screens.diagnostics import DiagnosticsScreen
from .screens.drill import DrillScreen
from .screens.hosts import HostsScreen
from .screens.install import InstallScreen
from .screens.plan import PlanScreen
from .screens.rotation import RotateScreen
from .screens.summary import SummaryScreen
from .screens.welcome import WelcomeScreen

HOME: type[Screen] = WelcomeScreen  # where every flow starts from and returns to

# Each screen at most once per flow (a screen's place in its flow is found by its class).
FLOWS: dict[str, list[type[Screen]]] = {
    "install": [CredentialsScreen, HostsScreen, PlanScreen, InstallScreen, DiagnosticsScreen, SummaryScreen],
    "diagnostics": [DiagnosticsScreen, SummaryScreen],
    "export": [CredentialsScreen],
}

# Screens opened over the current one by name, outside the flows (see above).
SIDE: dict[str, type[Screen]] = {
    "drill": DrillScreen,
    "rotate": RotateScreen,  # from the credentials screen (r)
}


def next_screen(flow: str | None, current: type[Screen]) -> type[Screen] | None:
    """The screen after ``current`` in ``flow``; None after the flow's last screen (back home).

    A screen opened outside a flow (``flow`` None, or a flow without it) goes on as in the first flow that
    has it.
    """
    order = FLOWS.get(flow or "", [])
    if current not in order:
        order = next((screens for screens in FLOWS.values() if current in screens), [])
    if current not in order:
        return None
    index = order.index(current)
    return order[index + 1] if index + 1 < len(order) else None
