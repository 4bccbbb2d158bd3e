"""The lab's LB stand-in (lb-lab, 198.18.0.10) balances over the HAProxy spare too, without a running lab.

Like a cloud LB whose target group holds the spare: haproxy-spare-01 (198.18.0.13) is a health-checked backend
of every port the LB forwards; stopped or not yet serving, it fails its checks and gets no traffic. The config
is written into lb-lab's upper layer at each boot (``up`` and ``start-host``): the image keeps the config it was
built with, so its recipe and cache key do not change (no rebuild).

Nothing here touches a real lab host: every machine-side call is replaced by a fake, every path is in tmp_path.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from types import SimpleNamespace

import pytest

from kbpg_tui.core.lab import hosts as hosts_mod
from kbpg_tui.core.lab import image as image_mod
from kbpg_tui.core.lab import lab as lab_mod
from kbpg_tui.core.lab import workdir as lab_files
from kbpg_tui.core.lab.topology import LB_ADDRESS, LB_PORTS, host_by_name
from kbpg_tui.core.lab.util import Reporter

BACKENDS = {"haproxy-01": "198.18.0.11", "haproxy-02": "198.18.0.12", "haproxy-spare-01": "198.18.0.13"}
IMAGE_CONFIG = "# the config baked into the image's LB layer\n"


def _sections(config: str) -> dict[str, list[str]]:
    """``listen``/``defaults`` section name -> its lines (stripped)."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in config.splitlines():
        if line.startswith("#"):
            continue
        if line and not line[0].isspace():
            current = sections.setdefault(line.strip(), [])
        elif line.strip():
            current.append(line.strip())
    return sections


def test_the_lb_balances_every_port_over_both_haproxy_hosts_and_the_spare_with_health_checks():
    sections = _sections(image_mod.lb_haproxy_cfg())
    assert "default-server inter 2s fall 2 rise 2 on-marked-down shutdown-sessions" in sections["defaults"]
    assert "timeout check 2s" in sections["defaults"]
    for port in LB_PORTS:
        lines = sections[f"listen lb_{port}"]
        assert f"bind {LB_ADDRESS}:{port}" in lines
        servers = [line for line in lines if line.startswith("server ")]
        assert servers == [f"server {name} {address}:{port} check" for name, address in BACKENDS.items()]
    assert set(sections) == {"global", "defaults", *(f"listen lb_{port}" for port in LB_PORTS)}


def test_the_image_keeps_its_config_so_its_cache_key_does_not_change():
    """The spare is added at boot, not in the image: the recipe still hashes the two-backend config."""
    baked = image_mod.recipe()["lb_haproxy_cfg"]
    assert baked == image_mod.render_lb_haproxy_cfg()
    assert "haproxy-01 198.18.0.11:5432 check" in baked and "198.18.0.13" not in baked


# --- the config written at boot ---------------------------------------------------------------------


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """An image with an LB layer, host directories in tmp_path, and a fake ``hosts.start`` that records, per
    host, the haproxy.cfg its upper layer holds when it boots (None: the host's upper has none)."""
    image = image_mod.Image("k", tmp_path / "image")
    baked = image.lb_layer / image_mod.LB_CONFIG_PATH
    baked.parent.mkdir(parents=True)
    baked.write_text(IMAGE_CONFIG)
    os.chmod(baked, 0o640)
    image.rootfs.mkdir(parents=True)
    image.repo.mkdir(parents=True)
    monkeypatch.setattr(hosts_mod, "host_paths", lambda host: hosts_mod.HostPaths(tmp_path / "hosts" / host.name))
    booted: dict[str, str | None] = {}

    def start(host, lowers, repo_dir=None) -> int:
        config = hosts_mod.host_paths(host).upper / image_mod.LB_CONFIG_PATH
        booted[host.name] = config.read_text() if config.is_file() else None
        if config.is_file():
            booted[host.name + ":mode"] = oct(config.stat().st_mode & 0o777)
        return 4242

    def refuse(*args, **kwargs):
        raise AssertionError("a real lab host was about to be touched")

    for name in ("kill_host", "create_network", "ensure_bridge", "stop_hosts", "sweep", "kill_cgroup"):
        monkeypatch.setattr(hosts_mod, name, refuse)
    monkeypatch.setattr(hosts_mod, "start", start)
    monkeypatch.setattr(hosts_mod, "wait_for_init", lambda host, timeout=30.0: 1)
    monkeypatch.setattr(lab_mod, "_write_state", lambda state: None)

    def prepare_upper(host, lowers, host_key, operator, sudo_password) -> None:  # the real one, minus identity files
        upper = hosts_mod.host_paths(host).upper
        if upper.exists():
            shutil.rmtree(upper)
        upper.mkdir(parents=True)

    monkeypatch.setattr(lab_mod, "_prepare_upper", prepare_upper)
    return image, booted


def test_up_boots_the_lb_with_the_spare_in_its_config(machine, monkeypatch):
    image, booted = machine
    monkeypatch.setattr(hosts_mod, "ensure_bridge", lambda: None)
    monkeypatch.setattr(hosts_mod, "create_network", lambda host: None)
    lb, haproxy = host_by_name("lb-lab"), host_by_name("haproxy-01")
    keys = {host.name: lab_files.new_key_pair(host.name) for host in (lb, haproxy)}
    state: dict = {"hosts": {}}
    lab_mod._boot(image, keys, lab_files.new_key_pair("operator"), "pw", Reporter(None), state, (lb, haproxy))
    assert booted["lb-lab"] == image_mod.lb_haproxy_cfg() and "server haproxy-spare-01 198.18.0.13:6432 check" in booted["lb-lab"]
    assert booted["lb-lab:mode"] == "0o640", "the config keeps the image's mode"
    assert booted["haproxy-01"] is None, "only the LB stand-in gets the LB's config"


@pytest.mark.parametrize("fresh", [False, True])
def test_start_host_lb_lab_writes_the_config_on_a_kept_disk_too(machine, monkeypatch, tmp_path, fresh):
    """A lab brought up before the spare: `stop-host lb-lab`, `start-host lb-lab` gives the LB the spare."""
    image, booted = machine
    lb = host_by_name("lb-lab")
    old = hosts_mod.host_paths(lb).upper / image_mod.LB_CONFIG_PATH
    old.parent.mkdir(parents=True)
    old.write_text(image_mod.render_lb_haproxy_cfg())  # what an older `up` left: no spare
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(lab_mod, "check_environment", lambda need_build: None)
    monkeypatch.setattr(lab_mod, "_lab_lock", contextlib.nullcontext)
    monkeypatch.setattr(lab_mod, "_recorded_lab", lambda: {"workdir": str(tmp_path), "image_key": "k", "hosts": {}})
    monkeypatch.setattr(lab_mod.image_mod, "cached_image", lambda key=None: image)
    monkeypatch.setattr(lab_mod.files, "host_keys", lambda workdir: {"lb-lab": lab_files.new_key_pair("lb-lab")})
    monkeypatch.setattr(lab_mod.files, "write_host_key_files", lambda workdir, keys: None)
    monkeypatch.setattr(lab_mod.files, "ssh_key", lambda workdir: lab_files.new_key_pair("operator"))
    monkeypatch.setattr(hosts_mod, "init_pid", lambda host: None)
    monkeypatch.setattr(hosts_mod, "kill_host", lambda host, timeout=10.0: None)
    monkeypatch.setattr(hosts_mod, "create_network", lambda host: None)
    monkeypatch.setattr(lab_mod, "_wait_ready", lambda workdir, reporter, hosts: None)
    monkeypatch.setattr(lab_mod, "status", lambda workdir=None, probe_ssh=True: SimpleNamespace(changed=False, message=""))
    lab_mod.start_host("lb-lab", fresh=fresh)
    assert booted["lb-lab"] == image_mod.lb_haproxy_cfg()
    assert re.search(r"server haproxy-spare-01 198\.18\.0\.13:5432 check", booted["lb-lab"])

