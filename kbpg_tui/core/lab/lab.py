"""`kbpg lab up | down | status | stop-host | start-host`: the orchestration.

``up`` records what it is about to make in a state file *before* making it, so
that ``down`` can undo a crashed ``up``; ``down`` also sweeps by name prefix
(netns, links, cgroups) so it cleans up even without that file.

Hosts down on purpose: the spares (``topology.SPARE_HOSTS``), which ``up`` does not
boot unless asked, and hosts taken down by ``stop_host`` as dead servers. The state
file knows them (a host absent from ``state["hosts"]`` or listed in
``state["stopped"]``), so the lab is still "up" without them; ``start_host`` boots one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from passlib.hash import sha512_crypt

from . import hosts as hosts_mod
from . import image as image_mod
from . import ssh as ssh_mod
from . import workdir as files
from .topology import (
    ALL_HOSTS,
    BRIDGE_NAME,
    HOSTS,
    LOCK_FILE,
    REPO_URL,
    RUN_ROOT,
    SPARE_HOSTS,
    STATE_FILE,
    SUDO_UID,
    SUDO_USER,
    LabHost,
)
from .util import LabError, ProgressSink, Reporter, run, which_all

BOOT_TIMEOUT = 120.0  # seconds from launch to `systemctl is-system-running` settling, per host
REQUIRED_TOOLS = ("ip", "unshare", "mount", "umount", "chroot", "sh", "mknod", "hostname")
BUILD_TOOLS = ("debootstrap", "gpg", "gpgconf", "dpkg-deb")


@dataclass
class HostStatus:
    """One host as seen now."""

    name: str
    address: str
    kind: str
    user_ssh: str
    running: bool = False  # its systemd is alive
    ssh: bool = False  # sshd answers on port 22
    system_state: str = ""  # `systemctl is-system-running`, when asked and reachable
    failed_units: list[str] = field(default_factory=list)
    spare: bool = False  # one of the spares (not in the lab's servers.tsv)
    stopped: bool = False  # down on purpose: a spare not started, or a host `kbpg lab stop-host` took down
    never_started: bool = False  # a spare this lab has not booted yet


@dataclass
class LabStatus:
    """The lab as a whole: ``state`` is "up", "down" or "partial"."""

    state: str
    hosts: list[HostStatus]
    workdir: str = ""
    image_key: str = ""
    repo_url: str = REPO_URL
    message: str = ""
    changed: bool = False  # whether the call that returned this changed anything

    @property
    def up(self) -> bool:
        return self.state == "up"

    def to_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        """A plain table for the CLI."""
        lines = [f"lab: {self.state}" + (f" (work dir {self.workdir})" if self.workdir else "")]
        if self.message:
            lines.append(self.message)
        lines.append(f"{'HOST':<18}{'ADDRESS':<15}{'ROLE':<9}{'USER':<7}{'SYSTEMD':<9}{'SSH':<5}STATE")
        for host in self.hosts:
            state = host.system_state or "-"
            if host.failed_units:
                state += " (failed: " + ", ".join(host.failed_units) + ")"
            if host.stopped and not host.running:
                state = ("spare, not started" if host.never_started else "stopped for good") + f": kbpg lab start-host {host.name}"
            elif host.spare:
                state += " (spare)"
            lines.append(
                f"{host.name:<18}{host.address:<15}{host.kind:<9}{host.user_ssh:<7}"
                f"{'running' if host.running else 'stopped':<9}{'yes' if host.ssh else 'no':<5}{state}"
            )
        return "\n".join(lines)


# --- environment -------------------------------------------------------------


def check_environment(need_build: bool, search_path: str | None = None) -> None:
    """Refuse early, with exit code 2, where the lab cannot run: nothing is made before this passes.

    ``search_path`` replaces the PATH searched for tools (tests use it).
    """
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, mounts, cgroups): run it with sudo or as root", 2)
    missing = which_all(REQUIRED_TOOLS + (BUILD_TOOLS if need_build else ()), search_path)
    if missing:
        packages = {"debootstrap": "debootstrap", "gpg": "gnupg", "gpgconf": "gnupg", "dpkg-deb": "dpkg", "ip": "iproute2", "unshare": "util-linux"}
        hint = " ".join(sorted({packages.get(name, name) for name in missing}))
        raise LabError(f"missing tools: {', '.join(missing)} (apt-get install {hint})", 2)
    with open("/proc/filesystems", encoding="utf-8") as filesystems:
        if "overlay" not in filesystems.read():
            raise LabError("this kernel has no overlay filesystem (modprobe overlay)", 2)
    for path in ("/proc/self/ns/net", "/proc/self/ns/pid", "/proc/self/ns/cgroup", "/proc/self/ns/uts", "/proc/self/ns/ipc"):
        if not os.path.exists(path):
            raise LabError(f"this kernel lacks namespaces ({path} missing)", 2)
    probe = run(
        ["unshare", "--pid", "--mount", "--uts", "--ipc", "--cgroup", "--net", "--fork", "true"], check=False
    )
    if probe.returncode != 0:
        raise LabError(f"cannot create namespaces here (unshare: {probe.stderr.strip() or probe.returncode})", 2)


@contextlib.contextmanager
def _lab_lock() -> Iterator[None]:
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LabError("another `kbpg lab` command is running on this machine") from None
        yield


def _read_state() -> dict:
    try:
        return json.loads(STATE_FILE.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}


def _write_state(state: dict) -> None:
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    files.atomic_write(STATE_FILE, (json.dumps(state, indent=2) + "\n").encode(), mode=0o644)


# --- per-host files written into the upper directory before boot ---------------


def _lower_stat(lowers: list[Path], relative: str) -> os.stat_result | None:
    for layer in lowers:
        path = layer / relative
        if path.exists() or path.is_symlink():
            return path.lstat()
    return None


def _ensure_dirs(upper: Path, lowers: list[Path], relative_dir: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Path:
    """Create ``relative_dir`` in the upper layer, each level with the lower layer's mode and owner.

    An upper directory's attributes win in the merged view: a /root made 0755
    here would open root's home to everyone.
    """
    current = upper
    for part in Path(relative_dir).parts:
        current = current / part
        relative = current.relative_to(upper).as_posix()
        if current.is_dir():
            continue
        below = _lower_stat(lowers, relative)
        current.mkdir()
        if below is not None:
            os.chmod(current, below.st_mode & 0o7777)
            os.chown(current, below.st_uid, below.st_gid)
        else:
            os.chmod(current, mode)
            os.chown(current, uid, gid)
    return current


def _put(upper: Path, lowers: list[Path], relative: str, content: str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
    parent = _ensure_dirs(upper, lowers, str(Path(relative).parent))
    path = parent / Path(relative).name
    path.write_text(content, encoding="utf-8")
    os.chmod(path, mode)
    os.chown(path, uid, gid)


def _lower_text(lowers: list[Path], relative: str) -> str:
    for layer in lowers:
        if (layer / relative).is_file():
            return (layer / relative).read_text(encoding="utf-8")
    raise LabError(f"the image has no /{relative}")


def _add_sudo_user(upper: Path, lowers: list[Path], authorized: str, password: str) -> None:
    """The non-root USER_SSH: in group sudo, which Debian's sudoers lets run anything *with* a password."""
    user, uid = SUDO_USER, SUDO_UID
    days = int(time.time() // 86400)
    # Default glibc rounds: sudo checks the password on every call in tests.
    hashed = sha512_crypt.using(rounds=5000).hash(password)

    def add_member(text: str, group: str) -> str:
        out = []
        for line in text.splitlines():
            fields = line.split(":")
            if fields[0] == group:
                members = [m for m in fields[-1].split(",") if m]
                fields[-1] = ",".join(members + [user])
                line = ":".join(fields)
            out.append(line)
        return "\n".join(out) + "\n"

    passwd = _lower_text(lowers, "etc/passwd") + f"{user}:x:{uid}:{uid}:kbpg lab sudo user:/home/{user}:/bin/bash\n"
    group = add_member(_lower_text(lowers, "etc/group"), "sudo") + f"{user}:x:{uid}:\n"
    shadow = _lower_text(lowers, "etc/shadow") + f"{user}:{hashed}:{days}:0:99999:7:::\n"
    gshadow = add_member(_lower_text(lowers, "etc/gshadow"), "sudo") + f"{user}:!::\n"
    _put(upper, lowers, "etc/passwd", passwd, 0o644)
    _put(upper, lowers, "etc/group", group, 0o644)
    shadow_stat = _lower_stat(lowers, "etc/shadow")
    if shadow_stat is None:  # _lower_text has just read it
        raise LabError("the image has no /etc/shadow")
    shadow_gid = shadow_stat.st_gid  # group "shadow"
    _put(upper, lowers, "etc/shadow", shadow, 0o640, 0, shadow_gid)
    _put(upper, lowers, "etc/gshadow", gshadow, 0o640, 0, shadow_gid)
    # Each sudo asks again: the tests try a wrong password right after a right one.
    _put(upper, lowers, f"etc/sudoers.d/kbpg-lab-{user}", f"Defaults:{user} timestamp_timeout=0\n", 0o440)
    _ensure_dirs(upper, lowers, f"home/{user}/.ssh", 0o700, uid, uid)
    os.chmod(upper / "home" / user, 0o700)
    _put(upper, lowers, f"home/{user}/.ssh/authorized_keys", authorized, 0o600, uid, uid)


def _prepare_upper(host: LabHost, lowers: list[Path], host_key: files.KeyPair, operator: files.KeyPair, sudo_password: str | None) -> None:
    """The host's own identity, written into its (fresh) upper directory before boot."""
    upper = hosts_mod.host_paths(host).upper
    if upper.exists():
        shutil.rmtree(upper)
    upper.mkdir(parents=True)
    _put(upper, lowers, "etc/hostname", f"{host.name}\n")
    _put(
        upper,
        lowers,
        "etc/hosts",
        f"127.0.0.1\tlocalhost\n{host.address}\t{host.fqdn}\t{host.name}\n"
        "::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n",
    )
    _put(upper, lowers, "etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    _put(upper, lowers, "etc/ssh/ssh_host_ed25519_key", host_key.private_openssh, 0o600)
    _put(upper, lowers, "etc/ssh/ssh_host_ed25519_key.pub", host_key.public_line + "\n", 0o644)
    authorized = operator.public_line + "\n"
    _ensure_dirs(upper, lowers, "root/.ssh", 0o700)
    os.chmod(upper / "root" / ".ssh", 0o700)
    _put(upper, lowers, "root/.ssh/authorized_keys", authorized, 0o600)
    if host.user_ssh != "root":
        assert sudo_password is not None
        _add_sudo_user(upper, lowers, authorized, sudo_password)


def _put_lb_config(host: LabHost, lowers: list[Path]) -> None:
    """The LB stand-in's HAProxy config, written into its upper layer before each boot (a no-op for other hosts).

    The image's LB layer keeps the config it was built with (the recipe, hence the cache key, unchanged); the one
    the LB runs balances over the HAProxy spare too (:data:`.image.LB_BACKENDS`): written at every boot, a lab
    brought up before the spare existed gets it by `stop-host lb-lab` and `start-host lb-lab`.
    """
    if host.kind != "lb":
        return
    below = _lower_stat(lowers, image_mod.LB_CONFIG_PATH)
    mode, uid, gid = (below.st_mode & 0o7777, below.st_uid, below.st_gid) if below is not None else (0o644, 0, 0)
    _put(hosts_mod.host_paths(host).upper, lowers, image_mod.LB_CONFIG_PATH, image_mod.lb_haproxy_cfg(), mode, uid, gid)


# --- up / down / status --------------------------------------------------------


def _down_on_purpose(state: dict) -> set[str]:
    """Names of the hosts the lab runs without: never started by ``up`` (the spares) or stopped by ``stop_host``.

    Only for a lab that ``up`` recorded; a state file written before the lab had spares lists no spare in
    ``hosts``, so they count as not started there too.
    """
    if not state:
        return set()
    started = state.get("hosts", {})
    return {host.name for host in ALL_HOSTS if host.name not in started} | set(state.get("stopped", []))


def _host_status(host: LabHost, bridge_up: bool, stopped: bool = False, never_started: bool = False) -> HostStatus:
    running = hosts_mod.init_pid(host) is not None
    return HostStatus(
        host.name,
        host.address,
        host.kind,
        host.user_ssh,
        running=running,
        # Only through the lab's bridge: without it a packet to 198.18.0.x would
        # follow this machine's default route out, and lab traffic stays here.
        ssh=running and bridge_up and ssh_mod.ssh_answers(host.address, timeout=0.5),
        spare=host in SPARE_HOSTS,
        stopped=stopped,
        never_started=never_started,
    )


def _probe_system(workdir: Path, status: HostStatus) -> None:
    """Fill in `systemctl is-system-running` and the failed units, over SSH as root."""
    try:
        client = ssh_mod.connect(workdir, status.address, timeout=3.0)
    except Exception as exc:  # status must never fail on one host: it reports it
        status.system_state = f"ssh login failed: {type(exc).__name__}"
        return
    try:
        _code, out, _err = ssh_mod.execute(client, "systemctl is-system-running; systemctl list-units --failed --plain --no-legend", timeout=15)
        lines = out.splitlines()
        status.system_state = lines[0].strip() if lines else ""
        status.failed_units = [line.split()[0] for line in lines[1:] if line.strip()]
    finally:
        client.close()


def status(workdir: Path | None = None, probe_ssh: bool = True) -> LabStatus:
    """What runs now: each host's systemd and sshd (and, with the lab key, its system state)."""
    state = _read_state()
    recorded_workdir = state.get("workdir", "")
    key_dir = Path(recorded_workdir) if recorded_workdir else workdir
    bridge_up = BRIDGE_NAME in hosts_mod.link_names()
    down_on_purpose = _down_on_purpose(state)
    started = state.get("hosts", {})
    host_states = [
        _host_status(host, bridge_up, host.name in down_on_purpose, bool(state) and host.name not in started)
        for host in ALL_HOSTS
    ]
    if probe_ssh and key_dir is not None and (key_dir / files.SSH_KEY_NAME).exists():
        reachable = [host for host in host_states if host.ssh]
        with ThreadPoolExecutor(max_workers=len(ALL_HOSTS)) as pool:
            list(pool.map(lambda host: _probe_system(key_dir, host), reachable))
    running = sum(host.running for host in host_states)
    # Up: every host runs but those down on purpose, which do not.
    if state.get("phase") == "up" and all(host.running != host.stopped for host in host_states):
        lab_state = "up"
    elif running == 0 and not state and not any(hosts_mod.leftovers().values()):
        lab_state = "down"
    else:
        lab_state = "partial"
    message = ""
    if lab_state == "partial":
        message = "the lab is partly up (a crashed or unfinished `up`?): `kbpg lab down` cleans it up"
    return LabStatus(lab_state, host_states, recorded_workdir, state.get("image_key", ""), message=message)


def up(workdir: Path, progress: ProgressSink | None = None, rebuild_image: bool = False, with_spares: bool = False) -> LabStatus:
    """Bring the lab up (building the image first if needed) and write the work dir files.

    The spares boot too only ``with_spares`` (else ``start_host`` boots one when needed).
    A second call while the lab is up changes nothing and says so. On failure
    everything made so far is taken down again and LabError is raised.
    """
    reporter = Reporter(progress)
    workdir = Path(workdir).resolve()
    check_environment(need_build=rebuild_image or image_mod.cached_image() is None)
    with _lab_lock():
        current = status(workdir, probe_ssh=False)
        if current.state == "up":
            current.message = f"the lab is already up (work dir {current.workdir}): nothing changed"
            stopped = [host.name for host in current.hosts if host.stopped and not host.spare]
            if stopped:
                current.message += f"; stopped for good: {', '.join(stopped)} (kbpg lab start-host NAME)"
            reporter.info(current.message)
            return current
        if current.state == "partial":
            reporter.progress("cleaning up what a previous lab left behind")
            _down_locked(reporter)
        image = image_mod.ensure_image(reporter, rebuild=rebuild_image)
        started = time.monotonic()
        workdir.mkdir(parents=True, exist_ok=True)
        operator = files.ssh_key(workdir)
        host_keys = files.host_keys(workdir)
        sudo_password = files.sudo_password(workdir)
        files.copy_repo_key(workdir, image.repo_key)
        files.write_host_key_files(workdir, host_keys)
        # Recorded before anything is made: `down` after a crash knows what to look for.
        state = {"phase": "starting", "workdir": str(workdir), "image_key": image.key, "started_at": time.time(), "hosts": {}}
        _write_state(state)
        booted = ALL_HOSTS if with_spares else HOSTS
        try:
            _boot(image, host_keys, operator, sudo_password, reporter, state, booted)
            _wait_ready(workdir, reporter, booted)
            files.write_servers_tsv(workdir)
            fingerprints = {host.address: host_keys[host.name].fingerprint for host in ALL_HOSTS}
            if files.write_kbpg_toml(workdir, fingerprints):
                reporter.info(f"wrote {workdir / 'kbpg.toml'}")
            else:
                reporter.info(f"kept the existing {workdir / 'kbpg.toml'}")
                added = files.add_spare_pins(workdir, fingerprints)
                if added:
                    reporter.info(f"pinned the spares' host keys in it ({', '.join(added)})")
        except BaseException:
            reporter.warning("`up` failed: taking down what it made")
            _save_console_logs(workdir)
            _down_locked(reporter)
            raise
        state["phase"] = "up"
        state["up_seconds"] = round(time.monotonic() - started, 1)
        _write_state(state)
        result = status(workdir)
        result.changed = True
        reporter.progress(f"lab up in {state['up_seconds']:.1f} s", 1.0)
        result.message = (
            f"SSH key {workdir / files.SSH_KEY_NAME}; next: `kbpg --workdir {workdir} inventory`, "
            f"then `kbpg --workdir {workdir} install --answers {workdir / 'kbpg.toml'} --yes`"
        )
        return result


def _lowers(image: image_mod.Image, host: LabHost) -> list[Path]:
    return [image.lb_layer, image.rootfs] if host.kind == "lb" else [image.rootfs]


def _boot(
    image: image_mod.Image,
    host_keys: dict,
    operator: files.KeyPair,
    sudo_password: str,
    reporter: Reporter,
    state: dict,
    booted: tuple[LabHost, ...] = HOSTS,
) -> None:
    reporter.progress("network: bridge and namespaces", 0.0)
    hosts_mod.ensure_bridge()
    for index, host in enumerate(booted):
        lowers = _lowers(image, host)
        hosts_mod.create_network(host)
        _prepare_upper(host, lowers, host_keys[host.name], operator, sudo_password if host.user_ssh != "root" else None)
        _put_lb_config(host, lowers)
        pid = hosts_mod.start(host, lowers, image.repo if host.kind == "lb" else None)
        state["hosts"][host.name] = {"launcher_pid": pid, "address": host.address}
        _write_state(state)
        reporter.progress(f"boot: {host.name} ({host.address}) started", 0.1 + 0.3 * (index + 1) / len(booted))
    for host in booted:
        state["hosts"][host.name]["init_pid"] = hosts_mod.wait_for_init(host)
    _write_state(state)


def _wait_ready(workdir: Path, reporter: Reporter, hosts: tuple[LabHost, ...] = HOSTS) -> None:
    """Every host answers SSH and its systemd has finished booting ("running", else a warning)."""
    reporter.progress("waiting for SSH and for systemd to finish booting on every host", 0.45)
    done: list[str] = []

    def one(host: LabHost) -> tuple[str, str, str]:
        client = ssh_mod.wait_for_login(workdir, host.address, BOOT_TIMEOUT)
        try:
            _code, out, _err = ssh_mod.execute(
                client,
                "systemctl is-system-running --wait; systemctl list-units --failed --plain --no-legend",
                timeout=BOOT_TIMEOUT,
            )
        finally:
            client.close()
        lines = out.splitlines()
        done.append(host.name)
        reporter.progress(f"ssh: {host.name} answers ({lines[0] if lines else '?'})", 0.45 + 0.5 * len(done) / len(hosts))
        return host.name, (lines[0].strip() if lines else ""), " ".join(line.split()[0] for line in lines[1:] if line.strip())

    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        results = list(pool.map(one, hosts))
    for name, system_state, failed in results:
        if system_state != "running":
            reporter.warning(f"{name}: systemd says {system_state!r}" + (f"; failed units: {failed}" if failed else ""))


def _save_console_logs(workdir: Path) -> None:
    """Keep each host's console (systemd's boot messages) in <workdir>/logs/lab/ for diagnosis."""
    target = workdir / "logs" / "lab"
    for host in ALL_HOSTS:
        console = hosts_mod.host_paths(host).console
        if console.exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(console, target / f"{host.name}.console.log")


def down(workdir: Path | None = None, progress: ProgressSink | None = None) -> LabStatus:
    """Stop every host and remove every namespace, mount, process, bridge, veth and cgroup of the lab.

    Works after a crashed ``up`` too (it sweeps by name, not only by the state
    file). Leaves the work dir's files (keys, servers.tsv, kbpg.toml) in place.
    """
    reporter = Reporter(progress)
    if os.geteuid() != 0:
        raise LabError("the lab needs root: run `kbpg lab down` with sudo or as root", 2)
    missing = which_all(("ip", "umount"))
    if missing:
        raise LabError(f"missing tools: {', '.join(missing)}", 2)
    with _lab_lock():
        before = status(workdir, probe_ssh=False)
        if before.state == "down":
            before.message = "the lab is not up: nothing to do"
            reporter.info(before.message)
            return before
        _down_locked(reporter)
        after = status(workdir, probe_ssh=False)
        after.changed = True
        after.message = "lab down: nothing of it is left"
        reporter.progress(after.message, 1.0)
        return after


def _down_locked(reporter: Reporter) -> None:
    started = time.monotonic()
    reporter.progress("stopping the hosts (poweroff, SIGKILL after a timeout)", 0.1)
    outcome = hosts_mod.stop_hosts(list(ALL_HOSTS))
    killed = [name for name, how in outcome.items() if how == "killed"]
    if killed:
        reporter.warning(f"did not power off in time, killed: {', '.join(killed)}")
    reporter.progress("removing namespaces, links, cgroups and host directories", 0.7)
    hosts_mod.sweep(list(ALL_HOSTS))
    STATE_FILE.unlink(missing_ok=True)
    left = {kind: items for kind, items in hosts_mod.leftovers().items() if items}
    if left:
        raise LabError(f"`down` could not remove everything: {left}")
    reporter.progress(f"stopped and cleaned in {time.monotonic() - started:.1f} s", 0.95)


def memory_usage() -> dict[str, int]:
    """Memory (PSS, bytes) of each running host's processes: what the idle lab costs this machine."""
    usage: dict[str, int] = {}
    for host in ALL_HOSTS:
        total = 0
        pids = hosts_mod.cgroup_pids(hosts_mod.host_cgroup(host))
        if not pids:
            continue  # not running (a spare not started, a host stopped for good)
        for pid in pids:
            try:
                with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as rollup:
                    for line in rollup:
                        if line.startswith("Pss:"):
                            total += int(line.split()[1]) * 1024
                            break
            except (OSError, ValueError):
                continue
        usage[host.name] = total
    return usage




def set_host_link(name: str, up: bool, address: str | None = None) -> None:
    """Cut (``up=False``) or restore a host's network link, as a failover drill does to a leader.

    The host keeps running; only its veth on the bridge goes down, so it is cut
    off from every other host and from this machine.

    With ``address``, the host is the lab host at that address (spares included) and ``name`` only names it in
    messages: a node replaced under its own name runs on a spare's host (servers.tsv's db-slave-02 at
    198.18.0.123 is the lab's db-spare-01), so its name would find the wrong lab host.
    """
    if address is not None:
        host = lab_host_at(address)
        shown = name if host.name == name else f"{name} (the lab's {host.name})"
    else:
        found = next((host for host in ALL_HOSTS if host.name == name), None)
        if found is None:
            raise LabError(f"no lab host called {name!r}")
        host, shown = found, name
    if hosts_mod.init_pid(host) is None:
        raise LabError(f"{shown} is not running")
    run(["ip", "link", "set", host.veth_host, "up" if up else "down"], what=f"set {shown}'s link {'up' if up else 'down'}")


# --- one host at a time: a dead server, a spare ------------------------------------


def lab_host(name: str) -> LabHost:
    """The lab host called ``name``; LabError (exit 2) naming every known host otherwise."""
    host = next((host for host in ALL_HOSTS if host.name == name), None)
    if host is None:
        known = ", ".join(host.name for host in ALL_HOSTS)
        raise LabError(f"no lab host called {name!r}: the lab's hosts are {known}", 2)
    return host


def lab_host_at(address: str) -> LabHost:
    """The lab host at ``address`` (spares included), whatever servers.tsv calls the node there; LabError (exit 2)
    naming every lab address otherwise."""
    host = next((host for host in ALL_HOSTS if host.address == address), None)
    if host is None:
        known = ", ".join(f"{host.name} {host.address}" for host in ALL_HOSTS)
        raise LabError(f"no lab host at {address}: the lab's hosts are {known}", 2)
    return host


def _need_root(action: str) -> None:
    if os.geteuid() != 0:
        raise LabError(f"the lab needs root: run `kbpg lab {action}` with sudo or as root", 2)


def _recorded_lab() -> dict:
    """The state of a lab that is up (its host changes need one); LabError (exit 2) otherwise."""
    state = _read_state()
    if state.get("phase") != "up":
        raise LabError("the lab is not up: `kbpg lab up` first" + (" (`kbpg lab down` clears a partial one)" if state else ""), 2)
    return state


def stop_host(name: str, progress: ProgressSink | None = None) -> LabStatus:
    """Take one host down for good, as a dead server: its link cut, every process SIGKILLed, its namespace gone.

    The lab stays "up" without it (``status`` shows it stopped) until ``start_host`` boots it again;
    ``down`` removes it with the rest. A host already stopped: nothing changes.
    """
    reporter = Reporter(progress)
    host = lab_host(name)
    _need_root("stop-host")
    with _lab_lock():
        state = _recorded_lab()
        already = state.get("stopped", [])
        if host.name in already and not hosts_mod.host_leftovers(host):
            result = status(None, probe_ssh=False)
            result.message = f"{host.name} is already stopped: nothing changed"
            reporter.info(result.message)
            return result
        # Recorded first: a crash halfway leaves a host that `status` shows as not what it should be.
        state["stopped"] = sorted({*already, host.name})
        _write_state(state)
        started = time.monotonic()
        hosts_mod.kill_host(host)
        left = hosts_mod.host_leftovers(host)
        if left:
            raise LabError(f"{host.name}: could not remove everything: {', '.join(left)}")
        result = status(None, probe_ssh=False)
        result.changed = True
        result.message = (f"{host.name} ({host.address}) stopped for good in {time.monotonic() - started:.1f} s: "
                          f"processes killed, network gone; `kbpg lab start-host {host.name}` boots it again")
        reporter.progress(result.message, 1.0)
        return result


def start_host(name: str, progress: ProgressSink | None = None, fresh: bool = False) -> LabStatus:
    """Boot one host of a lab that is up: a spare, or a host ``stop_host`` took down (with its disk as it was
    left, as a server that comes back; ``fresh``: a blank disk, as a new server with the same name, address
    and pinned host key). Waits for its SSH and its systemd, like ``up``. On failure the host is taken down
    again (it stays stopped) and LabError is raised. A host already running: nothing changes.
    """
    reporter = Reporter(progress)
    host = lab_host(name)
    _need_root("start-host")
    check_environment(need_build=False)
    with _lab_lock():
        state = _recorded_lab()
        if hosts_mod.init_pid(host) is not None:
            result = status(None, probe_ssh=False)
            result.message = f"{host.name} is already running: nothing changed"
            reporter.info(result.message)
            return result
        image = image_mod.cached_image(state.get("image_key") or None)
        if image is None:
            raise LabError(f"the image the lab runs ({state.get('image_key', '?')}) is no longer cached: "
                           "`kbpg lab down`, then `kbpg lab up`")
        workdir = Path(state["workdir"])
        started = time.monotonic()
        keys = files.host_keys(workdir)  # made for a spare of a lab brought up before spares existed
        files.write_host_key_files(workdir, keys)
        lowers = _lowers(image, host)
        try:
            hosts_mod.kill_host(host)  # whatever a crashed start or stop of this host left
            paths = hosts_mod.host_paths(host)
            if fresh or not paths.upper.is_dir():
                if paths.work.exists():
                    shutil.rmtree(paths.work)
                sudo = files.sudo_password(workdir) if host.user_ssh != "root" else None
                _prepare_upper(host, lowers, keys[host.name], files.ssh_key(workdir), sudo)
            reporter.progress(f"boot: {host.name} ({host.address})" + (" on a blank disk" if fresh else ""), 0.1)
            _put_lb_config(host, lowers)
            hosts_mod.create_network(host)
            pid = hosts_mod.start(host, lowers, image.repo if host.kind == "lb" else None)
            init = hosts_mod.wait_for_init(host)
            _wait_ready(workdir, reporter, (host,))
        except BaseException:
            reporter.warning(f"{host.name} did not start: taking it down again")
            hosts_mod.kill_host(host)
            raise
        state["hosts"][host.name] = {"launcher_pid": pid, "init_pid": init, "address": host.address}
        state["stopped"] = [other for other in state.get("stopped", []) if other != host.name]
        _write_state(state)
        result = status(None, probe_ssh=False)
        result.changed = True
        result.message = f"{host.name} ({host.address}) started in {time.monotonic() - started:.1f} s"
        reporter.progress(result.message, 1.0)
        return result
