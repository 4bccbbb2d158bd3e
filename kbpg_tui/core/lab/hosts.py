"""Lab hosts: network namespaces on a bridge, overlay roots, real systemd as PID 1.

One host is:
- a network namespace ``kbpglab-<name>`` with a veth pair into the bridge
  ``kbpglab0`` (198.18.0.1/24 on this machine) and its own 198.18.0.x address;
- a cgroup ``<cgroup2 root>/kbpglab/<name>``, entered *before* the cgroup
  namespace is made, so that each host's systemd owns its own subtree (and so
  that ``down`` can find and kill every process of a host, whatever happened);
- ``unshare --pid --mount --uts --ipc --cgroup --fork`` running a small shell
  launcher that mounts the overlay root (lower = the shared image, upper = the
  host's own directory), /proc (with /proc/sys read-only but for net), a
  read-only /sys, cgroup2, a private /dev (tmpfs + devpts + a few nodes), then
  ``chroot``s and execs ``/lib/systemd/systemd --system`` as PID 1.

Every mount is made inside the host's own mount namespace: when its PID 1 dies
the kernel drops them all, so nothing can stay mounted on this machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .topology import (
    BRIDGE_ADDRESS,
    BRIDGE_NAME,
    CGROUP_GROUP,
    HOSTS_ROOT,
    NAME_PREFIX,
    PREFIX_LEN,
    REPO_MOUNT,
    RUN_ROOT,
    LabHost,
)
from .util import LabError, mounts_under, remove_tree, run, wait_until

STOP_TIMEOUT = 15.0  # seconds for a clean poweroff before SIGKILL (lab.md: it sometimes hangs)
CONTAINER_NAME = "kbpg-lab"  # the `container=` value systemd sees

# Runs as PID 1 of the new PID namespace, inside the host's netns, mount, UTS,
# IPC and cgroup namespaces; ends by exec'ing systemd, which keeps PID 1.
LAUNCHER = r"""
set -eu
R="$KBPG_ROOT"
mount -t overlay overlay -o "lowerdir=$KBPG_LOWER,upperdir=$KBPG_UPPER,workdir=$KBPG_WORK" "$R"
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
# The kernel's settings are the machine's: keep /proc/sys read-only, except the
# host's own network namespace's settings under /proc/sys/net.
mount --bind "$R/proc/sys" "$R/proc/sys"
mount --bind "$R/proc/sys/net" "$R/proc/sys/net"
mount -o remount,bind,ro "$R/proc/sys"
if [ -e "$R/proc/sysrq-trigger" ]; then
    mount --bind "$R/proc/sysrq-trigger" "$R/proc/sysrq-trigger"
    mount -o remount,bind,ro "$R/proc/sysrq-trigger"
fi
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
# A private /dev: the machine's own would hand its ttys to the host's gettys.
mount -t tmpfs -o mode=755,nosuid,size=8m tmpfs "$R/dev"
for node in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
    set -- $node
    mknod -m 666 "$R/dev/$1" c "$2" "$3"
done
mkdir -m 755 "$R/dev/pts" "$R/dev/net"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mkdir -m 1777 "$R/dev/shm"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
mknod -m 666 "$R/dev/net/tun" c 10 200
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
# systemd writes its boot status to /dev/console: make that the host's console log.
touch "$R/dev/console"
mount --bind "$KBPG_CONSOLE" "$R/dev/console"
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$R/run"
if [ -n "${KBPG_REPO:-}" ]; then
    mount --bind -o ro "$KBPG_REPO" "$R$KBPG_REPO_MOUNT"
fi
hostname "$KBPG_HOSTNAME"
exec env -i container="$KBPG_CONTAINER" PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    chroot "$R" /lib/systemd/systemd --system
"""

# Popen objects of hosts started by this process: polled so they never linger as zombies.
_children: list[subprocess.Popen] = []


def _reap() -> None:
    for child in list(_children):
        if child.poll() is not None:
            _children.remove(child)


# --- cgroups -----------------------------------------------------------------


def cgroup2_root() -> Path:
    """Where this machine's cgroup2 hierarchy is mounted, mounting one under /run if none is."""
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "cgroup2":
                return Path(fields[1])
    target = RUN_ROOT / "cgroup2"
    target.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "cgroup2", "cgroup2", target], what="mount a cgroup2 hierarchy")
    return target


def lab_cgroup() -> Path:
    return cgroup2_root() / CGROUP_GROUP


def host_cgroup(host: LabHost) -> Path:
    return lab_cgroup() / host.name


def cgroup_pids(cgroup: Path) -> list[int]:
    """Every process in ``cgroup`` and below (cgroups vanishing meanwhile are skipped)."""
    pids: list[int] = []
    # os.walk ignores directories that disappear under it; a host's systemd
    # removes its own cgroups while it powers off.
    for directory, _subdirs, _files in os.walk(cgroup):
        try:
            with open(os.path.join(directory, "cgroup.procs"), encoding="ascii") as procs:
                pids += [int(pid) for pid in procs.read().split()]
        except (OSError, ValueError):
            continue
    return pids


def _remove_cgroup(cgroup: Path) -> None:
    """rmdir a cgroup tree bottom-up (cgroupfs directories cannot be removed any other way)."""
    if not cgroup.is_dir():
        return
    for directory, _subdirs, _files in os.walk(cgroup, topdown=False):
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise LabError(f"cannot remove cgroup {directory}: {exc.strerror}") from exc


def init_pid(host: LabHost) -> int | None:
    """The machine-side PID of the host's systemd (PID 1 in its PID namespace), or None."""
    for pid in cgroup_pids(host_cgroup(host)):
        try:
            with open(f"/proc/{pid}/status", encoding="utf-8") as status:
                for line in status:
                    if line.startswith("NSpid:"):
                        ids = line.split()[1:]
                        if len(ids) >= 2 and ids[-1] == "1":
                            return pid
                        break
        except OSError:
            continue
    return None


# --- network -----------------------------------------------------------------


def link_names() -> list[str]:
    """Names of every network link on this machine."""
    output = run(["ip", "-o", "link", "show"], what="ip link show").stdout
    names = []
    for line in output.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def netns_names() -> list[str]:
    output = run(["ip", "netns", "list"], what="ip netns list").stdout
    return [line.split()[0] for line in output.splitlines() if line.strip()]


def ensure_bridge() -> None:
    """The lab bridge with 198.18.0.1/24, up. Refuses if another interface already uses the subnet."""
    if BRIDGE_NAME not in link_names():
        clash = run(["ip", "-o", "-4", "addr", "show", "to", "198.18.0.0/24"], what="ip addr show").stdout.strip()
        if clash:
            raise LabError(f"198.18.0.0/24 is already in use on this machine:\n{clash}", 2)
        run(["ip", "link", "add", BRIDGE_NAME, "type", "bridge"], what="create the lab bridge")
        run(["ip", "addr", "add", f"{BRIDGE_ADDRESS}/{PREFIX_LEN}", "dev", BRIDGE_NAME], what="address the lab bridge")
    run(["ip", "link", "set", BRIDGE_NAME, "up"], what="bring the lab bridge up")


def create_network(host: LabHost) -> None:
    """The host's netns, its veth pair into the bridge, its address; loopback up."""
    run(["ip", "netns", "add", host.netns], what=f"ip netns add {host.netns}")
    run(["ip", "link", "add", host.veth_host, "type", "veth", "peer", "name", host.veth_peer], what="create a veth pair")
    run(["ip", "link", "set", host.veth_peer, "netns", host.netns], what="move the veth into the host")
    run(["ip", "link", "set", host.veth_host, "master", BRIDGE_NAME, "up"], what="attach the veth to the bridge")
    inside = ["ip", "-n", host.netns]
    run([*inside, "link", "set", host.veth_peer, "name", "eth0"], what="rename the host's veth")
    run([*inside, "link", "set", "eth0", "address", host.mac], what="give the host its fixed MAC")
    run([*inside, "addr", "add", f"{host.address}/{PREFIX_LEN}", "dev", "eth0"], what="address the host")
    run([*inside, "link", "set", "eth0", "up"], what="bring the host's link up")
    run([*inside, "link", "set", "lo", "up"], what="bring the host's loopback up")


# --- start / stop ------------------------------------------------------------


@dataclass(frozen=True)
class HostPaths:
    """The machine-side directories of one host."""

    base: Path

    @property
    def upper(self) -> Path:
        return self.base / "upper"

    @property
    def work(self) -> Path:
        return self.base / "work"

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def console(self) -> Path:
        return self.base / "console.log"


def host_paths(host: LabHost) -> HostPaths:
    return HostPaths(HOSTS_ROOT / host.name)


def start(host: LabHost, lower_layers: list[Path], repo_dir: Path | None = None) -> int:
    """Boot the host (its network and upper directory must be ready); return the launcher's PID.

    ``lower_layers`` are overlay lower directories, topmost first.
    """
    paths = host_paths(host)
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.work.mkdir(parents=True, exist_ok=True)
    cgroup = host_cgroup(host)
    cgroup.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "KBPG_ROOT": str(paths.root),
        "KBPG_LOWER": ":".join(str(layer) for layer in lower_layers),
        "KBPG_UPPER": str(paths.upper),
        "KBPG_WORK": str(paths.work),
        "KBPG_CONSOLE": str(paths.console),
        "KBPG_HOSTNAME": host.name,
        "KBPG_CONTAINER": CONTAINER_NAME,
        "KBPG_REPO": str(repo_dir) if repo_dir else "",
        "KBPG_REPO_MOUNT": REPO_MOUNT,
        "KBPG_LAUNCHER": LAUNCHER,
        "KBPG_CGROUP_PROCS": str(cgroup / "cgroup.procs"),
    }
    # Enter the host's cgroup first: the cgroup namespace made next is rooted there.
    outer = (
        'echo $$ > "$KBPG_CGROUP_PROCS" && '
        f"exec ip netns exec {host.netns} "
        'unshare --pid --mount --uts --ipc --cgroup --fork --propagation private sh -c "$KBPG_LAUNCHER"'
    )
    console = open(paths.console, "ab")
    try:
        child = subprocess.Popen(
            ["sh", "-c", outer],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not in the terminal's process group: Ctrl-C on the CLI leaves hosts alone
        )
    finally:
        console.close()
    _children.append(child)
    return child.pid


def wait_for_init(host: LabHost, timeout: float = 30.0) -> int:
    """The host's systemd PID once it runs; LabError with the console's tail if it died."""
    found: list[int] = []

    def ready() -> bool:
        _reap()
        pid = init_pid(host)
        if pid is not None:
            try:
                if os.readlink(f"/proc/{pid}/exe").endswith("/systemd"):
                    found.append(pid)
                    return True
            except OSError:
                pass
        return False

    if not wait_until(ready, timeout, 0.05):
        tail = ""
        console = host_paths(host).console
        if console.exists():
            tail = "\n".join(console.read_text(errors="replace").splitlines()[-15:])
        raise LabError(f"{host.name}: systemd did not start within {timeout:.0f} s\n{tail}")
    return found[0]


def stop_hosts(hosts: list[LabHost], timeout: float | None = None) -> dict[str, str]:
    """Power off every host (SIGRTMIN+4 to its systemd), SIGKILL what is left after ``timeout``.

    ``timeout`` defaults to STOP_TIMEOUT. Returns how each host ended:
    "poweroff", "killed" or "not running".
    """
    timeout = STOP_TIMEOUT if timeout is None else timeout
    outcome: dict[str, str] = {}
    pending: list[LabHost] = []
    for host in hosts:
        pid = init_pid(host)
        if pid is None and not cgroup_pids(host_cgroup(host)):
            outcome[host.name] = "not running"
            continue
        if pid is not None:
            try:
                os.kill(pid, signal.SIGRTMIN + 4)  # systemd: poweroff
            except ProcessLookupError:
                pass
        pending.append(host)

    def all_gone() -> bool:
        _reap()
        return all(not cgroup_pids(host_cgroup(host)) for host in pending)

    wait_until(all_gone, timeout, 0.1)
    for host in pending:
        if cgroup_pids(host_cgroup(host)):
            kill_cgroup(host_cgroup(host))
            outcome[host.name] = "killed"
        else:
            outcome[host.name] = "poweroff"
    if not wait_until(all_gone, 10.0, 0.1):
        left = {host.name: cgroup_pids(host_cgroup(host)) for host in pending}
        raise LabError(f"processes still alive after SIGKILL: {left}")
    return outcome


def kill_host(host: LabHost, timeout: float = 10.0) -> None:
    """Take one host down as a server dies: no poweroff, nothing said to its peers.

    Its link goes first (deleting the bridge side of its veth deletes the pair: no FIN or RST
    from its dying sockets reaches anyone, its address simply stops answering), then every
    process of its cgroup is SIGKILLed, then its namespace and cgroup are removed. Its
    directories (its disk: the overlay's upper layer) stay, for ``start`` to boot it again.
    Also clears what a crashed start or stop of this host left behind.
    """
    if host.veth_host in link_names():
        run(["ip", "link", "del", host.veth_host], what=f"remove {host.name}'s link")
    cgroup = host_cgroup(host)
    if cgroup_pids(cgroup):
        kill_cgroup(cgroup)
    if host.netns in netns_names():
        for pid in run(["ip", "netns", "pids", host.netns], check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    def gone() -> bool:
        _reap()
        return not cgroup_pids(cgroup) and (
            host.netns not in netns_names() or not run(["ip", "netns", "pids", host.netns], check=False).stdout.split()
        )

    if not wait_until(gone, timeout, 0.05):
        raise LabError(f"{host.name}: processes still alive after SIGKILL: {cgroup_pids(cgroup)}")
    if host.netns in netns_names():
        run(["ip", "netns", "del", host.netns], what=f"ip netns del {host.netns}")
    # A cgroup whose last process has just died may still be busy for a moment.
    errors: list[LabError] = []

    def removed() -> bool:
        try:
            _remove_cgroup(cgroup)
            return True
        except LabError as exc:
            errors[:] = [exc]
            return False

    if not wait_until(removed, 5.0, 0.05):
        raise errors[0]


def host_leftovers(host: LabHost) -> list[str]:
    """What of one host exists on this machine now, its directories aside (empty: nothing runs, no network)."""
    found = []
    if cgroup_pids(host_cgroup(host)):
        found.append(f"processes {cgroup_pids(host_cgroup(host))}")
    if host_cgroup(host).is_dir():
        found.append(f"cgroup {host_cgroup(host)}")
    if host.netns in netns_names():
        found.append(f"netns {host.netns}")
    if host.veth_host in link_names():
        found.append(f"link {host.veth_host}")
    return found


def kill_cgroup(cgroup: Path) -> None:
    """SIGKILL every process in ``cgroup`` and below (cgroup.kill where the kernel has it)."""
    kill_file = cgroup / "cgroup.kill"
    if kill_file.exists():
        try:
            kill_file.write_text("1")
            return
        except OSError:
            pass
    for pid in cgroup_pids(cgroup):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- sweep ---------------------------------------------------------------------


def leftovers() -> dict[str, list[str]]:
    """Everything of the lab's that exists on this machine right now (empty lists = clean)."""
    found: dict[str, list[str]] = {"netns": [], "links": [], "cgroups": [], "processes": [], "mounts": [], "dirs": []}
    found["netns"] = [name for name in netns_names() if name.startswith(NAME_PREFIX)]
    found["links"] = [name for name in link_names() if name.startswith(NAME_PREFIX)]
    group = lab_cgroup()
    if group.is_dir():
        found["cgroups"] = [directory for directory, _subdirs, _files in os.walk(group)]
        found["processes"] = [str(pid) for pid in cgroup_pids(group)]
    for name in found["netns"]:
        pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
        found["processes"] += [pid for pid in pids if pid not in found["processes"]]
    found["mounts"] = mounts_under(HOSTS_ROOT)
    if HOSTS_ROOT.is_dir():
        found["dirs"] = [str(path) for path in HOSTS_ROOT.iterdir()]
    return found


def sweep(hosts: list[LabHost]) -> None:
    """Remove every trace of the lab, whatever state a crash left it in.

    Order matters: processes first (their mounts go with their namespaces),
    then network, cgroups, then the hosts' directories.
    """
    stop_hosts(hosts)
    group = lab_cgroup()
    if cgroup_pids(group):  # hosts of an older layout, or strays
        kill_cgroup(group)
        wait_until(lambda: not cgroup_pids(group), 10.0, 0.1)
    for name in netns_names():
        if name.startswith(NAME_PREFIX):
            for pid in run(["ip", "netns", "pids", name], check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            run(["ip", "netns", "del", name], check=False)
    for name in link_names():
        if name.startswith(NAME_PREFIX):  # veths still on this side, and the bridge
            run(["ip", "link", "del", name], check=False)
    _reap()
    _remove_cgroup(group)
    if HOSTS_ROOT.exists():
        remove_tree(HOSTS_ROOT)
