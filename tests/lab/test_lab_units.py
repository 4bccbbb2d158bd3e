"""Checks of the lab's code that need no running lab (still marked `lab`: they belong to its suite)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from kbpg_tui.core import lab
from kbpg_tui.core.lab import hosts, image
from kbpg_tui.core.lab.lab import BUILD_TOOLS, REQUIRED_TOOLS, check_environment
from kbpg_tui.core.lab.util import LabError

pytestmark = pytest.mark.lab


def test_the_lab_does_not_import_textual():
    code = "import sys, kbpg_tui.core.lab, kbpg_tui.core.lab.cli; sys.exit('textual' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_not_root_is_refused_before_anything_is_made(monkeypatch, tmp_path):
    before = hosts.leftovers()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(LabError) as raised:
        lab.up(tmp_path / "work")
    assert raised.value.exit_code == 2 and "root" in str(raised.value)
    with pytest.raises(LabError) as raised:
        lab.down(tmp_path / "work")
    assert raised.value.exit_code == 2
    assert not (tmp_path / "work").exists()
    assert hosts.leftovers() == before


def test_a_missing_tool_is_named_with_its_package(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in REQUIRED_TOOLS + BUILD_TOOLS:
        if tool != "debootstrap":
            found = shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
            assert found, tool
            (bin_dir / tool).symlink_to(found)
    check_environment(need_build=False, search_path=str(bin_dir))  # a cached image needs no debootstrap
    with pytest.raises(LabError) as raised:
        check_environment(need_build=True, search_path=str(bin_dir))
    assert raised.value.exit_code == 2
    assert "debootstrap" in str(raised.value) and "apt-get install" in str(raised.value)


def test_the_cli_exits_2_where_the_lab_cannot_run(tmp_path):
    """`lab up` as an unprivileged user: a clear message, exit code 2 (run through setpriv)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not installed")
    code = (
        "import sys; from kbpg_tui.core.lab.cli import main; "
        f"sys.exit(main(['--workdir', {str(tmp_path / 'w')!r}, 'lab', 'up']))"
    )
    # The unprivileged user cannot read root's Python installation: fake only the uid check instead
    # when that is the case.
    probe = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", "pass"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("the unprivileged user cannot run this Python")
    result = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd="/",
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert result.returncode == 2, result.stderr
    assert "needs root" in result.stderr


def test_recipe_key_follows_the_recipe(monkeypatch, tmp_path):
    assets = tmp_path / "assets"
    shutil.copytree(image.assets_dir(), assets)
    monkeypatch.setattr(image, "assets_dir", lambda: assets)
    first = image.recipe_key()
    assert image.recipe_key() == first
    with (assets / "repo-packages.txt").open("a") as handle:
        handle.write("postgresql-contrib\n")
    assert image.recipe_key() != first


def test_the_lb_config_balances_every_port_over_both_haproxy_hosts():
    config = image.render_lb_haproxy_cfg()
    for port in lab.topology.LB_PORTS:
        assert f"bind {lab.LB_ADDRESS}:{port}" in config
        for host in lab.HOSTS:
            if host.kind == "haproxy":
                assert f"server {host.name} {host.address}:{port} check" in config
