"""kbpg's sudo with a password (haproxy-02, user kbops): the password reaches sudo's prompt and nothing else.

With a NOPASSWD rule for the shells (sudo then does not ask), a password sent ahead on stdin would be read by
the command itself: ``cat`` would print it. kbpg sends it only when sudo's own prompt shows.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from kbpg_tui.core import install as inst
from kbpg_tui.core.credentials import read_env
from kbpg_tui.core.lab.topology import host_by_name
from kbpg_tui.core.settings import load_settings

from .conftest import sh

pytestmark = pytest.mark.lab

RULE = Path("/etc/sudoers.d/kbpg-test-shells-nopasswd")


def _connection(lab_workdir: Path):
    run = inst.prepare(lab_workdir, load_settings(lab_workdir / "kbpg.toml"), lambda event: None)
    host = next(h for h in run.ctx.haproxy_hosts if h.name == "haproxy-02")
    return run, run.ctx.pool.get(host)


def test_cat_through_kbpgs_sudo_never_outputs_the_password(connect, lab_workdir: Path) -> None:
    password = read_env(lab_workdir / "credentials" / "sudo.env")["KBPG_SUDO_PASSWORD"]
    host = host_by_name("haproxy-02")
    assert host.user_ssh == "kbops"
    root = connect(host)
    rule = "kbops ALL=(ALL) NOPASSWD: /usr/bin/sh, /bin/sh, /usr/bin/bash, /bin/bash\n"
    outputs = []
    try:
        # sudo asks (every command needs the password): the password goes to the prompt, "data" to cat.
        run, connection = _connection(lab_workdir)
        try:
            assert connection.sudo_mode == "password"
            result = connection.run("cat; id -u", stdin="data for cat\n")
            outputs.append(result)
            assert result.stdout == "data for cat\n0\n"
        finally:
            run.close()
        # sudo does not ask for the shells (but still for `true`: kbpg stays in password mode).
        code, _, err = sh(root, f"printf %s {shlex.quote(rule)} > {RULE}.tmp && chmod 0440 {RULE}.tmp && "
                                f"visudo -cf {RULE}.tmp && mv {RULE}.tmp {RULE}")
        assert code == 0, err
        run, connection = _connection(lab_workdir)
        try:
            assert connection.sudo_mode == "password"
            result = connection.run("cat; id -u", stdin="data for cat\n")
            outputs.append(result)
            assert result.stdout == "data for cat\n0\n"
            result = connection.run("cat")  # no stdin at all: cat reads nothing, not the password
            outputs.append(result)
            assert result.stdout == ""
        finally:
            run.close()
    finally:
        sh(root, f"rm -f {RULE} {RULE}.tmp")
    for result in outputs:
        assert password not in result.stdout and password not in result.stderr
        assert "[kbpg-sudo" not in result.stdout + result.stderr  # prompt and start marker never shown
