"""Runs ON a DB node, never in kbpg: the node's own Patroni Raft (pysyncobj) asked for its status.

Its source text is what the node's python3 runs, in two places: check 3's and the drill's probe (raft.PROBE, over
SSH) and the Raft watchdog's script that step 02 installs (raft.watchdog_script). kbpg imports this module only to
read its text, and tests to call it. Hence: the standard library plus the node's own PyYAML and pysyncobj (imported
by name when asked), no import of kbpg, no ``from __future__`` (the text is pasted into scripts after other code).
The Raft password is read on the node from Patroni's configuration (root only) and never leaves the node.
"""

import importlib
import json

STATUS_KEYS = ("leader", "raft_term", "commit_idx", "last_applied", "state", "has_quorum")
# The membership, as the member itself has it (pysyncobj 0.3.14's getStatus): "self" (its own node, "host:port"),
# "partner_nodes_count" and one "partner_node_status_server_<host:port>" per partner (2 connected, 0 not: 0.3.14
# never says 1, "connecting", which later versions may). Answered as "self" (a string), "partners" ({"host:port":
# 0/1/2}) and "partner_nodes_count".
PARTNER_PREFIX = "partner_node_status_server_"


def _own_raft(config_path: str):
    """(pysyncobj's utility module, this node's Raft address, the Raft password) from Patroni's configuration, or the
    "r:unknown WHAT" line when there is nothing to ask (no configuration, no pysyncobj, no raft.self_addr)."""
    try:
        yaml = importlib.import_module("yaml")
        utility = importlib.import_module("pysyncobj.utility")
        with open(config_path) as f:
            raft = (yaml.safe_load(f) or {}).get("raft") or {}
    except Exception as exc:
        return "r:unknown " + type(exc).__name__
    address = raft.get("self_addr")
    if not address:
        return "r:unknown no raft.self_addr"
    return utility, address, raft.get("password")


def _shown_error(exc: Exception, password) -> str:
    """An error on one short line; whatever it says, the password is not shown (logs, check 3, the drill's report)."""
    error = str(exc) or type(exc).__name__
    if password:
        error = error.replace(str(password), "[password]")
    return " ".join(error.split())[:80]


def ask_raft(config_path: str, timeout: float) -> str:
    """One line: "r:status {json}" (it answered), "r:silent ADDRESS ERROR" (the Raft port refused the connection,
    or took it and gave no answer within ``timeout`` seconds) or "r:unknown WHAT" (nothing to ask: no configuration,
    no pysyncobj)."""
    found = _own_raft(config_path)
    if isinstance(found, str):
        return found
    utility, address, password = found
    try:
        status = utility.TcpUtility(password, timeout).executeCommand(address, ["status"])
    except Exception as exc:
        return f"r:silent {address} {_shown_error(exc, password)}"
    if not isinstance(status, dict):  # a refused connection returns None, it does not raise
        return f"r:silent {address} connection refused"
    answer = {key: status.get(key) for key in STATUS_KEYS}
    me = status.get("self")
    answer["self"] = None if me is None else str(me)  # a pysyncobj Node: its str() is its "host:port"
    answer["partners"] = {key[len(PARTNER_PREFIX):]: value for key, value in status.items()
                          if isinstance(key, str) and key.startswith(PARTNER_PREFIX)}
    answer["partner_nodes_count"] = status.get("partner_nodes_count")
    return "r:status " + json.dumps(answer, default=str)


def change_raft(config_path: str, timeout: float, command: str, address: str) -> str:
    """A membership change sent to the node's own Raft (pysyncobj forwards it to Raft's leader): ``command`` "add"
    or "remove", ``address`` "host:port". One line: "r:changed COMMAND ADDRESS" (Raft committed it), "r:refused
    COMMAND ADDRESS ANSWER" (Raft answered no) or "r:unknown WHAT" (nothing to ask, or no answer)."""
    found = _own_raft(config_path)
    if isinstance(found, str):
        return found
    utility, me, password = found
    try:
        answer = utility.TcpUtility(password, timeout).executeCommand(me, [command, address])
    except Exception as exc:
        return f"r:unknown {_shown_error(exc, password)}"
    text = " ".join(str(answer).split())[:120]
    if text.startswith("SUCCESS"):
        return f"r:changed {command} {address}"
    return f"r:refused {command} {address} {text}"
