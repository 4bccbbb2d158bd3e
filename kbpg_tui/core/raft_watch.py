"""Runs ON a DB node, never in kbpg: the Raft watchdog, /usr/local/sbin/kbpg-raft-watch (step 02 installs it).

After a crash and a quick restart, pysyncobj's thread inside Patroni can die on an assertion while Patroni runs on
(see kbpg_tui.core.raft): the member's DCS freezes until Patroni is restarted. Each run of this script is one look
(kbpg-raft-watch.timer starts it every 10 s): it restarts Patroni (``systemctl restart patroni``) only when all hold:

- patroni.service is active, and has been for more than GRACE seconds (a young Patroni may still bind its Raft port;
  a stopped one is the operator's business or a drill's);
- the node's own Raft port refused the status request or gave no answer within the ask timeout, on LOOKS looks in a
  row, on that same start of Patroni, none more than STALE seconds after the one before;
- the watchdog restarted nothing in the last EVERY seconds (after that, it logs once and leaves it to the operator).

State between looks is in /run/kbpg-raft-watch (0700 root; /run is emptied at boot, as the monotonic clock restarts).
Every look that finds something logs it to the journal (priority prefixes: the unit's stdout goes there), with the
node and the reason; the Raft password is read by ask_raft on the node and never printed.

The script is raft_node.py's text (``ask_raft``), then this file's, then a call of :func:`main` (rendered by
raft.watchdog_script): the same rules as raft_node.py (standard library only, no import of kbpg, no ``from
__future__``). kbpg imports this module only in tests.
"""

import fcntl
import json
import os
import socket
import subprocess
import time

STATE_DIR = "/run/kbpg-raft-watch"
GRACE = 60  # seconds patroni.service must have been active before its Raft is judged
LOOKS = 3  # silent looks in a row before a restart
STALE = 60  # seconds: a silent look longer ago than this (the timer was stopped...) starts the count again
EVERY = 600  # seconds: at most one restart by the watchdog in this long
RESTART_TIMEOUT = 240  # seconds `systemctl restart patroni` is waited for (the unit's TimeoutStartSec is longer)


def patroni_unit() -> tuple[str, float | None]:
    """(ActiveState, when it became active in seconds of CLOCK_MONOTONIC, or None) of patroni.service."""
    try:
        shown = subprocess.run(["systemctl", "show", "-p", "ActiveState", "-p", "ActiveEnterTimestampMonotonic",
                                "patroni.service"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    values = {key: value for key, _, value in (line.partition("=") for line in shown.splitlines())}
    since = values.get("ActiveEnterTimestampMonotonic", "")
    return values.get("ActiveState") or "unknown", int(since) / 1e6 if since.isdigit() and int(since) > 0 else None


def restart_patroni() -> str:
    """``systemctl restart patroni``: what came of it, in a few words."""
    started = time.monotonic()
    try:
        done = subprocess.run(["systemctl", "restart", "patroni.service"], capture_output=True, text=True,
                              timeout=RESTART_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"systemctl restart patroni still running after {RESTART_TIMEOUT} s"
    except OSError as exc:
        return f"systemctl restart patroni failed: {exc}"
    took = time.monotonic() - started
    if done.returncode != 0:
        return f"systemctl restart patroni failed after {took:.1f} s: {' '.join(done.stderr.split())[:200]}"
    return f"patroni restarted in {took:.1f} s"


def decide(state: dict, now: float, unit: tuple[str, float | None], answer: str | None) -> tuple[str, dict, str]:
    """One look: (what to do, the state for the next look, the reason to log).

    ``state``: what the previous look left ({} the first time). ``now``: time.monotonic() (CLOCK_MONOTONIC, the
    clock of systemd's ...TimestampMonotonic). ``unit``: :func:`patroni_unit`. ``answer``: ask_raft's line, None when
    Patroni was not asked. What to do: "restart" (restart Patroni; log the reason as a warning), "hold" (it would,
    but the rate limit holds it; a warning, once per silent streak), "count" (a silent look, not yet LOOKS of them; a
    notice) or "" (nothing to do or say).
    """
    restarted = state.get("restarted")
    if not isinstance(restarted, (int, float)) or restarted > now:
        restarted = None  # a time from another boot cannot be in /run; an unreadable one is no time at all
    kept: dict = {} if restarted is None else {"restarted": restarted}
    active, since = unit
    if active != "active" or since is None or now - since <= GRACE:
        return "", kept, ""
    if answer is None or not answer.startswith("r:silent "):
        return "", kept, ""  # it answered (or cannot be asked: no configuration, no pysyncobj): the streak ends
    last = state.get("last")
    same = state.get("since") == since and isinstance(last, (int, float)) and 0 <= now - last <= STALE
    silent = (state.get("silent", 0) if same else 0) + 1
    address, _, error = answer[len("r:silent "):].partition(" ")
    what = (f"Patroni's Raft ({address}) did not answer its status request ({error or 'no answer'}) on {silent} "
            f"look(s) in a row, patroni active for {now - since:.0f} s")
    streak = {**kept, "silent": silent, "last": now, "since": since}
    if silent < LOOKS:
        return "count", streak, f"{what}; restarting it at {LOOKS}"
    if restarted is not None and now - restarted < EVERY:
        if state.get("held") and same:
            return "", {**streak, "held": True}, ""
        return "hold", {**streak, "held": True}, (
            f"{what}; NOT restarting it: the watchdog restarted it {now - restarted:.0f} s ago (at most once in "
            f"{EVERY} s). Its DCS stays frozen: look at journalctl -u patroni, restart it by hand if need be")
    return "restart", {"restarted": now}, (f"{what}: most likely pysyncobj's thread died (a known upstream fault "
                                           f"after a crash and quick restart); restarting patroni")


def _load(path: str) -> dict:
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _save(path: str, state: dict) -> None:
    temporary = path + ".new"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    os.replace(temporary, path)


def main(ask, config: str, timeout: float, state_dir: str = STATE_DIR, unit=patroni_unit, restart=restart_patroni,
         clock=time.monotonic, say=print) -> int:
    """One look (see :func:`decide`); ``ask(config, timeout)`` is ask_raft. The others are there for tests."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    os.chmod(state_dir, 0o700)  # root only, whatever made it
    with os.fdopen(os.open(os.path.join(state_dir, "lock"), os.O_WRONLY | os.O_CREAT, 0o600), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another look is running (one started by hand): it decides
        path = os.path.join(state_dir, "state.json")
        state = _load(path)
        found = unit()
        answer = None
        if found[0] == "active" and found[1] is not None and clock() - found[1] > GRACE:
            answer = ask(config, timeout)
        action, state, reason = decide(state, clock(), found, answer)
        _save(path, state)  # before acting: a look killed during the restart still counts for the rate limit
        node = socket.gethostname()
        if action in ("count", "hold"):
            say(f"{'<5>' if action == 'count' else '<4>'}kbpg-raft-watch on {node}: {reason}", flush=True)
        elif action == "restart":
            say(f"<4>kbpg-raft-watch on {node}: {reason}", flush=True)
            say(f"<4>kbpg-raft-watch on {node}: {restart()}", flush=True)
    return 0
