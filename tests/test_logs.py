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
