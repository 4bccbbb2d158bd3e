"""The lab host image: built once from Debian's packages, cached outside the repo.

One cache entry, ``/var/cache/kbpg-lab/<recipe key>/``, holds:

- ``rootfs/``: Debian trixie, ``debootstrap --variant=minbase`` plus the base
  packages (systemd, sshd, sudo, python3, ...), none of the cluster's packages,
  no apt sources (lab hosts have no outside network), no SSH host keys and no
  machine-id (each host gets its own at ``up``), container-pointless units masked;
- ``repo/``: the signed apt repository of the cluster's packages and every
  dependency missing from ``rootfs`` (see :mod:`.repo`);
- ``lb-layer/``: an overlay layer over ``rootfs`` for the LB stand-in, with
  haproxy installed from that repository, its TCP balancer config and the unit
  serving the repository over HTTP;
- ``build.json``: what was built, when, how long it took.

The key is a hash of the recipe (the asset files and the constants below), so
changing a package list or a masked unit rebuilds. A build happens in a
``.build-*`` directory renamed into place at the very end: a crash never leaves
a half image that looks valid.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Callable, Iterator

from . import repo as repo_mod
from .topology import (
    ALL_HOSTS,
    CACHE_ROOT,
    HOSTS,
    LB_ADDRESS,
    LB_PORTS,
    REPO_COMPONENT,
    REPO_MOUNT,
    REPO_PORT,
    REPO_SUITE,
    LabHost,
)
from .util import LabError, Reporter, read_list_file, remove_tree, run, unmount_all_under

SUITE = "trixie"
VARIANT = "minbase"
# Bump when the build steps below change in a way the asset files do not show.
RECIPE_VERSION = 1
BUILD_TIMEOUT = 1800  # seconds for any one long command (debootstrap, apt-get)

APT_ENV = {
    "DEBIAN_FRONTEND": "noninteractive",
    "LC_ALL": "C",
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
}
# dpkg's fsyncs cost minutes in a throw-away chroot and buy nothing there.
APT_OPTIONS = ["-o", "Dpkg::Options::=--force-unsafe-io", "-o", "Acquire::Retries=3", "-o", "APT::Color=0"]

SSHD_DROPIN = """\
# kbpg lab: each host gets its own ed25519 host key at `kbpg lab up`.
HostKey /etc/ssh/ssh_host_ed25519_key
"""

REPO_HTTP_UNIT = f"""\
[Unit]
Description=kbpg lab apt repository over HTTP
After=network.target

[Service]
ExecStart=/usr/bin/python3 -m http.server {REPO_PORT} --bind {LB_ADDRESS} --directory {REPO_MOUNT}
User=nobody
AmbientCapabilities=CAP_NET_BIND_SERVICE
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
"""


def assets_dir() -> Traversable:
    """The recipe files: ``assets/lab`` in the source tree, package data of ``kbpg_tui.assets`` once installed."""
    return resources.files("kbpg_tui.assets").joinpath("lab")


# The HAProxy hosts in the config baked into the image's LB layer: HOSTS' only, as when the image was first
# built, so that the recipe (hence the cache key) did not change when the spares came; the LB stand-in boots
# with LB_BACKENDS instead (:func:`lb_haproxy_cfg`, written into its upper layer at every boot).
IMAGE_LB_BACKENDS: tuple[LabHost, ...] = tuple(host for host in HOSTS if host.kind == "haproxy")
# What the LB stand-in balances over: every HAProxy host the lab can run, the spare too, like a cloud LB whose
# target group holds the spare: a backend stopped or not yet serving fails its health checks and gets no traffic.
LB_BACKENDS: tuple[LabHost, ...] = tuple(host for host in ALL_HOSTS if host.kind == "haproxy")
LB_CONFIG_PATH = "etc/haproxy/haproxy.cfg"  # relative to the LB stand-in's root


def render_lb_haproxy_cfg(backends: tuple[LabHost, ...] = IMAGE_LB_BACKENDS) -> str:
    """The LB stand-in's HAProxy config: a plain TCP balancer over ``backends`` (default: the image's).

    In production this is the cloud's load balancer, configured outside kbpg;
    here the lab configures it. TCP checks are what a cloud LB does.
    """
    parts = [
        "# kbpg lab: stand-in for the cloud load balancer (TCP, health-checked).",
        "global",
        "    log /dev/log local0 notice",
        "    maxconn 4000",
        "    user haproxy",
        "    group haproxy",
        "",
        "defaults",
        "    mode tcp",
        "    log global",
        "    option tcplog",
        "    timeout connect 3s",
        "    timeout client 30m",
        "    timeout server 30m",
        "    timeout check 2s",
        "    default-server inter 2s fall 2 rise 2 on-marked-down shutdown-sessions",
    ]
    for port in LB_PORTS:
        parts += ["", f"listen lb_{port}", f"    bind {LB_ADDRESS}:{port}", "    balance roundrobin"]
        parts += [f"    server {host.name} {host.address}:{port} check" for host in backends]
    return "\n".join(parts) + "\n"


def lb_haproxy_cfg() -> str:
    """The config the LB stand-in runs: over :data:`LB_BACKENDS` (the HAProxy spare included)."""
    return render_lb_haproxy_cfg(LB_BACKENDS)


def recipe() -> dict:
    """Everything that shapes the image, as plain data (hashed into the cache key)."""
    assets = assets_dir()
    files = {}
    for path in sorted(assets.iterdir(), key=lambda entry: entry.name):
        if path.is_file() and not path.name.startswith("."):
            files[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return {
        "recipe_version": RECIPE_VERSION,
        "suite": SUITE,
        "variant": VARIANT,
        "assets": files,
        "sshd_dropin": SSHD_DROPIN,
        "repo_http_unit": REPO_HTTP_UNIT,
        "lb_haproxy_cfg": render_lb_haproxy_cfg(),
        "repo": [REPO_SUITE, REPO_COMPONENT],
    }


def recipe_key() -> str:
    """The cache key: a short hash of :func:`recipe`."""
    blob = json.dumps(recipe(), sort_keys=True).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class Image:
    """A built, cached image."""

    key: str
    path: Path

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def lb_layer(self) -> Path:
        return self.path / "lb-layer" / "upper"

    @property
    def repo(self) -> Path:
        return self.path / "repo"

    @property
    def repo_key(self) -> Path:
        return self.repo / repo_mod.PUBLIC_KEY_NAME

    def info(self) -> dict:
        return json.loads((self.path / "build.json").read_text(encoding="utf-8"))


def cached_image(key: str | None = None) -> Image | None:
    """The cached image for ``key`` (default: the current recipe), or None if not built."""
    key = key or recipe_key()
    path = CACHE_ROOT / key
    if (path / "build.json").is_file():
        return Image(key, path)
    return None


def debian_mirror() -> str:
    """The Debian mirror URL this machine's apt uses (never hard-coded: read at run time)."""
    sources_dir = Path("/etc/apt/sources.list.d")
    candidates: list[str] = []
    for path in sorted(sources_dir.glob("*.sources")) if sources_dir.is_dir() else []:
        for stanza in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace")):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
                continue
            suites = fields.get("suites", "").split()
            if any(suite.endswith("-security") for suite in suites):
                continue
            candidates += [uri for uri in fields.get("uris", "").split() if uri.startswith(("http://", "https://"))]
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text(encoding="utf-8", errors="replace").splitlines():
            words = re.sub(r"\[[^\]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb" and not words[2].endswith("-security"):
                candidates.append(words[1])
    for uri in candidates:
        if "security" not in uri:
            return uri.rstrip("/")
    raise LabError("no Debian mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list", 2)


def _stream(argv: list[str], on_line: Callable[[str], None], env: dict[str, str], what: str) -> None:
    """Run a long command, handing each output line to ``on_line``; raise LabError on failure."""
    tail: list[str] = []
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=env, errors="replace"
    )
    started = time.monotonic()
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-20:]
        on_line(line)
        if time.monotonic() - started > BUILD_TIMEOUT:
            process.kill()
    code = process.wait()
    if code != 0:
        raise LabError(f"{what} failed (exit {code}):\n" + "\n".join(tail))


class _Throttle:
    """Forwards at most one progress line every ``interval`` seconds (apt prints hundreds)."""

    def __init__(self, reporter: Reporter, prefix: str, start: float, end: float, expected_lines: int, interval: float = 2.0):
        self.reporter, self.prefix = reporter, prefix
        self.start, self.end, self.expected = start, end, max(expected_lines, 1)
        self.interval, self.count, self.last = interval, 0, 0.0

    def __call__(self, line: str) -> None:
        if not line.strip():
            return
        self.count += 1
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            fraction = self.start + (self.end - self.start) * min(self.count / self.expected, 1.0)
            self.reporter.progress(f"{self.prefix}: {line.strip()[:100]}", fraction)


@contextlib.contextmanager
def _chroot_mounts(root: Path) -> Iterator[None]:
    """/proc, /dev and /dev/pts for apt and maintainer scripts inside a chroot (lab.md pitfall)."""
    try:
        (root / "proc").mkdir(exist_ok=True)
        run(["mount", "-t", "proc", "proc", root / "proc"], what="mount /proc in the chroot")
        (root / "dev").mkdir(exist_ok=True)
        run(["mount", "--bind", "/dev", root / "dev"], what="bind /dev into the chroot")
        (root / "dev" / "pts").mkdir(exist_ok=True)
        run(["mount", "--bind", "/dev/pts", root / "dev" / "pts"], what="bind /dev/pts into the chroot")
        yield
    finally:
        for sub in ("dev/pts", "dev", "proc"):
            unmount_all_under(root / sub)


def _chroot_apt(root: Path, args: list[str], on_line: Callable[[str], None], what: str) -> None:
    _stream(["chroot", str(root), "apt-get", *APT_OPTIONS, *args], on_line, APT_ENV, what)


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def ensure_image(reporter: Reporter, rebuild: bool = False, in_use_key: str | None = None) -> Image:
    """The cached image for the current recipe, building it first if needed.

    ``in_use_key`` names an image a running lab still mounts: never deleted here.
    """
    key = recipe_key()
    with _build_lock():
        image = cached_image(key)
        if image and not rebuild:
            return image
        if image and rebuild:
            if in_use_key == key:
                raise LabError("the lab is up on this image: run `kbpg lab down` before rebuilding it")
            remove_tree(image.path)
        image = _build(key, reporter)
        _prune_old_images(keep={key} if in_use_key is None else {key, in_use_key})
        return image


def _prune_old_images(keep: set[str]) -> None:
    """Remove cache entries of older recipes (a few hundred MB each)."""
    for path in CACHE_ROOT.iterdir():
        if path.is_dir() and not path.name.startswith(".") and path.name not in keep:
            remove_tree(path)


def _build(key: str, reporter: Reporter) -> Image:
    for missing in ("debootstrap", "chroot", "gpg", "dpkg-deb", "mount"):
        if shutil.which(missing, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            raise LabError(f"building the lab image needs `{missing}` (apt-get install debootstrap gnupg)", 2)
    # A crashed build leaves a .build-* directory, perhaps with mounts: clear those first.
    for stale in CACHE_ROOT.glob(".build-*"):
        remove_tree(stale)
    build_dir = CACHE_ROOT / f".build-{key}-{os.getpid()}"
    build_dir.mkdir(parents=True)
    started = time.monotonic()
    try:
        rootfs = build_dir / "rootfs"
        mirror = debian_mirror()
        reporter.progress(f"image: debootstrap --variant={VARIANT} {SUITE} (about a minute)", 0.0)
        _stream(
            ["debootstrap", f"--variant={VARIANT}", SUITE, str(rootfs), mirror],
            _Throttle(reporter, "image: debootstrap", 0.0, 0.3, 350),
            dict(os.environ, LC_ALL="C"),
            "debootstrap",
        )
        base_packages = read_list_file(assets_dir() / "base-packages.txt")
        repo_packages = read_list_file(assets_dir() / "repo-packages.txt")
        # Keep services from starting inside the build chroot.
        policy = rootfs / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        with _chroot_mounts(rootfs):
            reporter.progress("image: apt-get update (trixie)", 0.3)
            _chroot_apt(rootfs, ["update"], lambda _line: None, "apt-get update in the image")
            reporter.progress(f"image: installing {len(base_packages)} base packages", 0.32)
            _chroot_apt(
                rootfs,
                ["install", "-y", "--no-install-recommends", *base_packages],
                _Throttle(reporter, "image", 0.32, 0.6, 700),
                "apt-get install of the base packages",
            )
            _chroot_apt(rootfs, ["clean"], lambda _line: None, "apt-get clean")
            reporter.progress("repo: downloading the cluster's packages and their dependencies", 0.6)
            _chroot_apt(
                rootfs,
                ["install", "-y", "--download-only", *repo_packages],
                _Throttle(reporter, "repo", 0.6, 0.8, 250),
                "apt-get --download-only of the cluster's packages",
            )
        repo_dir = build_dir / "repo"
        pool = repo_dir / "pool" / REPO_COMPONENT
        pool.mkdir(parents=True)
        archives = rootfs / "var/cache/apt/archives"
        for deb in archives.glob("*.deb"):
            shutil.move(str(deb), pool / deb.name)
        reporter.progress("repo: indexing and signing", 0.8)
        count = repo_mod.index_repository(repo_dir)
        repo_mod.sign_repository(repo_dir)
        reporter.progress(f"repo: {count} packages indexed and signed", 0.85)

        _finish_rootfs(rootfs)
        reporter.progress("image: LB stand-in layer (haproxy from the lab repository)", 0.86)
        _build_lb_layer(build_dir, rootfs, repo_dir, reporter)

        seconds = time.monotonic() - started
        info = {
            "key": key,
            "suite": SUITE,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(seconds, 1),
            "repo_packages": count,
            "recipe": recipe(),
        }
        (build_dir / "build.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        final = CACHE_ROOT / key
        if final.exists():
            remove_tree(final)
        os.rename(build_dir, final)  # the one step that makes the image valid
        reporter.progress(f"image ready in {seconds:.0f} s", 1.0)
        return Image(key, final)
    except BaseException:
        remove_tree(build_dir)
        raise


def _finish_rootfs(rootfs: Path) -> None:
    """Make the rootfs a bare, host-neutral server image (run after the repo download)."""
    (rootfs / "usr/sbin/policy-rc.d").unlink(missing_ok=True)
    # No outside network in the lab: no Debian sources, and no stale lists that
    # would let `apt-get install -s` pass without the lab repository.
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    for path in (rootfs / "etc/apt/sources.list.d").glob("*"):
        path.unlink()
    lists = rootfs / "var/lib/apt/lists"
    for path in lists.iterdir():
        if path.is_file() and path.name != "lock":
            path.unlink()
    for path in (rootfs / "var/cache/apt").glob("*.bin"):
        path.unlink()
    # Per-host identity is written at `up`: host keys, machine-id, hostname.
    for path in (rootfs / "etc/ssh").glob("ssh_host_*"):
        path.unlink()
    dropin = rootfs / "etc/ssh/sshd_config.d/kbpg-lab.conf"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(SSHD_DROPIN)
    (rootfs / "etc/machine-id").write_text("")
    (rootfs / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    (rootfs / "etc/hostname").write_text("localhost\n")
    resolv = rootfs / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text("# kbpg lab: no DNS, the lab has no outside network\n")
    system_dir = rootfs / "etc/systemd/system"
    for unit in read_list_file(assets_dir() / "masked-units.txt"):
        link = system_dir / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")


def _build_lb_layer(build_dir: Path, rootfs: Path, repo_dir: Path, reporter: Reporter) -> None:
    """Install haproxy from the lab repository into an overlay layer used only by the LB stand-in."""
    layer = build_dir / "lb-layer"
    upper, work, merged = layer / "upper", layer / "work", layer / "merged"
    for path in (upper, work, merged):
        path.mkdir(parents=True)
    try:
        run(
            ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={rootfs},upperdir={upper},workdir={work}", merged],
            what="mount the LB layer overlay",
        )
        repo_in_root = merged / REPO_MOUNT.lstrip("/")
        repo_in_root.mkdir(parents=True)
        run(["mount", "--bind", "-o", "ro", repo_dir, repo_in_root], what="bind the repository into the LB layer")
        policy = merged / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        build_source = merged / "etc/apt/sources.list.d/kbpg-lab-build.list"
        # The build itself checks the repository's signature, as every host will.
        build_source.write_text(
            f"deb [signed-by={REPO_MOUNT}/{repo_mod.PUBLIC_KEY_NAME}] file:{REPO_MOUNT} {REPO_SUITE} {REPO_COMPONENT}\n"
        )
        with _chroot_mounts(merged):
            _chroot_apt(merged, ["update"], lambda _line: None, "apt-get update from the lab repository")
            _chroot_apt(
                merged,
                ["install", "-y", "haproxy"],
                _Throttle(reporter, "lb layer", 0.86, 0.95, 60),
                "apt-get install haproxy on the LB layer",
            )
            _chroot_apt(merged, ["clean"], lambda _line: None, "apt-get clean")
            (merged / "etc/haproxy/haproxy.cfg").write_text(render_lb_haproxy_cfg())
            run(["chroot", merged, "haproxy", "-c", "-f", "/etc/haproxy/haproxy.cfg"], what="haproxy -c on the LB config")
        build_source.unlink()
        policy.unlink()
        for path in (merged / "var/lib/apt/lists").iterdir():
            if path.is_file() and path.name != "lock":
                path.unlink()
        for path in (merged / "var/cache/apt").glob("*.bin"):
            path.unlink()
        unit = merged / "etc/systemd/system/kbpg-lab-repo.service"
        unit.write_text(REPO_HTTP_UNIT)
        wants = merged / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / "kbpg-lab-repo.service").symlink_to("/etc/systemd/system/kbpg-lab-repo.service")
    finally:
        unmount_all_under(merged)
    shutil.rmtree(work)
    merged.rmdir()
