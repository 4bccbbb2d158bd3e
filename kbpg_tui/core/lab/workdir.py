"""What the lab writes into the work directory for kbpg (and its tests) to use.

- ``lab_ssh_key`` (+ ``.pub``): the operator key authorized on every host, 0600;
- ``lab_host_keys.json``: ``{address: "SHA256:..."}`` of each host's SSH key (the spares' too),
  and ``lab_known_hosts`` (OpenSSH format) for the lab's own tests; the hosts'
  private host keys stay in ``.kbpg-lab/host-keys/`` so that a lab brought down
  and up again keeps the keys kbpg has already accepted;
- ``credentials/sudo.env``: ``KBPG_SUDO_PASSWORD`` of the sudo user (0600);
- ``lab-repo.asc``: the public key of the lab's apt repository;
- ``servers.tsv``: the real 12-column inventory format (DB, HAProxy and backup hosts), decoys included;
- ``kbpg.toml``: the lab's answers (written only if absent: the operator's edits win; the spares'
  pinned keys are added to an existing one that lacks them).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kbpg_tui.core.credentials import CredentialsError, generate_password, quote, read_env
from kbpg_tui.core.files import atomic_write

from .topology import (
    ALL_HOSTS,
    CLUSTER_HOSTS,
    LB_ADDRESS,
    PINNED_HOSTS,
    POSTGRESQL_VERSION,
    REPO_COMPONENT,
    REPO_SUITE,
    REPO_URL,
    SPARE_HOSTS,
    SUBNET,
    LabHost,
)

SSH_KEY_NAME = "lab_ssh_key"
HOST_KEYS_JSON = "lab_host_keys.json"
KNOWN_HOSTS_NAME = "lab_known_hosts"
SUDO_ENV = Path("credentials") / "sudo.env"
SUDO_VARIABLE = "KBPG_SUDO_PASSWORD"
REPO_KEY_NAME = "lab-repo.asc"
PRIVATE_DIR = ".kbpg-lab"


@dataclass(frozen=True)
class KeyPair:
    """An ed25519 key: OpenSSH private key text and ``ssh-ed25519 AAAA...`` public line."""

    private_openssh: str
    public_line: str

    @property
    def fingerprint(self) -> str:
        """OpenSSH's ``SHA256:...`` fingerprint of the public key."""
        blob = base64.b64decode(self.public_line.split()[1])
        return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def new_key_pair(comment: str) -> KeyPair:
    """A fresh ed25519 key pair (paramiko reads the OpenSSH private format)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return KeyPair(private.decode("ascii"), f"{public.decode('ascii')} {comment}")


def _load_or_make_key(path: Path, comment: str) -> KeyPair:
    """The key pair stored at ``path`` (private, 0600) and ``path.pub``, made if missing or unreadable."""
    try:
        private_key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
        if isinstance(private_key, Ed25519PrivateKey):
            public = private_key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
            return KeyPair(path.read_text(encoding="ascii"), f"{public.decode('ascii')} {comment}")
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        pass
    pair = new_key_pair(comment)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, pair.private_openssh.encode("ascii"), mode=0o600)
    atomic_write(path.with_name(path.name + ".pub"), (pair.public_line + "\n").encode("ascii"), mode=0o644)
    return pair


def ssh_key(workdir: Path) -> KeyPair:
    """The operator key authorized on every lab host (``<workdir>/lab_ssh_key``)."""
    return _load_or_make_key(workdir / SSH_KEY_NAME, "kbpg-lab-operator")


def host_keys(workdir: Path) -> dict[str, KeyPair]:
    """Each host's SSH host key, kept across `down`/`up` so accepted keys stay valid."""
    directory = workdir / PRIVATE_DIR / "host-keys"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(workdir / PRIVATE_DIR, 0o700)
    os.chmod(directory, 0o700)
    return {host.name: _load_or_make_key(directory / host.name, f"root@{host.name}") for host in ALL_HOSTS}


def write_host_key_files(workdir: Path, keys: dict[str, KeyPair]) -> None:
    """``lab_host_keys.json`` ({address: fingerprint}) and ``lab_known_hosts``."""
    fingerprints = {host.address: keys[host.name].fingerprint for host in ALL_HOSTS}
    atomic_write(workdir / HOST_KEYS_JSON, (json.dumps(fingerprints, indent=2) + "\n").encode(), mode=0o644)
    lines = [f"{host.address} {' '.join(keys[host.name].public_line.split()[:2])}" for host in ALL_HOSTS]
    atomic_write(workdir / KNOWN_HOSTS_NAME, ("\n".join(lines) + "\n").encode(), mode=0o644)


def sudo_password(workdir: Path) -> str:
    """The sudo user's password from ``credentials/sudo.env``, generated (0600 from creation) if missing."""
    path = workdir / SUDO_ENV
    if path.exists():
        try:
            value = read_env(path).get(SUDO_VARIABLE, "")
            if value:
                return value
        except CredentialsError:
            pass
    password = generate_password()
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    text = (
        "# Sudo password of the kbpg lab's non-root SSH user. Keep this file 0600.\n"
        f"{SUDO_VARIABLE}={quote(password)}\n"
    )
    atomic_write(path, text.encode("utf-8"), mode=0o600)
    return password


def copy_repo_key(workdir: Path, repo_key: Path) -> Path:
    """Put the lab repository's public key where kbpg.toml points (``<workdir>/lab-repo.asc``)."""
    target = workdir / REPO_KEY_NAME
    atomic_write(target, repo_key.read_bytes(), mode=0o644)
    return target


# --- servers.tsv ---------------------------------------------------------------

TSV_HEADER = ("ENV", "IP_PUBLIQUE", "HOSTNAME", "IP_PRIVEE", "FQDN", "USER_SSH", "POOL", "ROLE", "SUBROLE", "DOCKER_STACK", "CORE", "NOTES")

# Rows that look like cluster hosts but must never be selected (the real file's
# pitfalls). Their addresses are in 198.18.0.200+ where nothing runs.
DECOY_ROWS: tuple[tuple[str, ...], ...] = (
    ("prod", "198.18.1.200", "temporal-db-01", "198.18.0.200", "temporal-db.lab.kbpg.test", "root",
     "temporal", "db", "postgres", "temporal-db-docker", "no", "DB Temporal (leurre : même ROLE/SUBROLE que les nœuds Patroni)"),
    ("prod", "198.18.1.201", "analytics-db-01", "198.18.0.201", "analytics-db.lab.kbpg.test", "root",
     "analytics", "db", "postgres", "analytics-db-docker", "no", "DB Analytics (leurre)"),
    ("prod", "198.18.1.202", "maria-01", "198.18.0.202", "maria-01.lab.kbpg.test", "root",
     "db-pool", "db", "mariadb", "mariadb-galera-docker", "yes", "MariaDB Galera (leurre dans db-pool)"),
    ("prod", "198.18.1.203", "proxysql-01", "198.18.0.203", "proxysql-01.lab.kbpg.test", "root",
     "haproxy-pool", "db_proxy", "proxysql", "proxysql-docker", "yes", "ProxySQL (leurre dans haproxy-pool)"),
    ("prod", "198.18.1.204", "api-gateway-01", "198.18.0.204", "gateway.lab.kbpg.test", "root",
     "gateway", "lb", "api-gateway", "api-gateway-docker", "no", "API Gateway (leurre ROLE=lb)"),
    ("staging", "198.18.1.205", "db-staging-01", "198.18.0.205", "db-staging.lab.kbpg.test", "root",
     "db-pool", "db", "postgres", "patroni-node", "no", "Patroni de staging (leurre ENV=staging)"),
)

# Rows the backup rule (ENV=prod, ROLE=backup, SUBROLE=backup) must not select.
BACKUP_DECOY_ROWS: tuple[tuple[str, ...], ...] = (
    ("staging", "198.18.1.206", "backup-staging-01", "198.18.0.206", "backup-staging.lab.kbpg.test", "root",
     "backup", "backup", "backup", "backup-docker", "no", "Backup de staging (leurre ENV=staging)"),
    ("prod", "198.18.1.207", "minio-sync-01", "198.18.0.207", "minio-sync.lab.kbpg.test", "root",
     "backup", "backup", "minio-sync", "minio-sync-docker", "yes", "Sync MinIO (leurre ROLE=backup, SUBROLE=minio-sync)"),
)


def _cluster_row(host: LabHost) -> tuple[str, ...]:
    if host.kind == "db":
        pool, role, subrole, stack = "db-pool", "db", "postgres", "patroni-node"
        note = f"PostgreSQL {POSTGRESQL_VERSION} + Patroni (hôte du lab)"
    elif host.kind == "backup":
        pool, role, subrole, stack = "backup", "backup", "backup", "backup-docker"
        note = "Point central de backup (dépôt pgBackRest du lab)"
    else:
        pool, role, subrole, stack = "haproxy-pool", "lb", "internal-haproxy", "haproxy-docker"
        note = f"HAProxy interne (derrière le LB du lab {LB_ADDRESS})"
        if host.user_ssh != "root":
            note += " ; USER_SSH non-root avec sudo (mot de passe dans credentials/sudo.env)"
    return ("prod", host.public_address, host.name, host.address, host.fqdn, host.user_ssh, pool, role, subrole, stack, "yes", note)


def render_servers_tsv() -> str:
    """The lab's inventory: the 6 hosts kbpg reaches (3 DB, 2 HAProxy, 1 backup) and decoys, in the real
    12-column format.

    Like the real file, it does not list the cloud LB (its address is in kbpg.toml).
    """
    rows: list[tuple[str, ...]] = [TSV_HEADER]
    rows += [_cluster_row(host) for host in CLUSTER_HOSTS if host.kind == "db"]
    rows += DECOY_ROWS[:3]
    rows += [_cluster_row(host) for host in CLUSTER_HOSTS if host.kind == "haproxy"]
    rows += DECOY_ROWS[3:]
    rows += BACKUP_DECOY_ROWS[:1]
    rows += [_cluster_row(host) for host in CLUSTER_HOSTS if host.kind == "backup"]
    rows += BACKUP_DECOY_ROWS[1:]
    # Trailing blank lines, like the real file.
    return "\n".join("\t".join(row) for row in rows) + "\n\n\n"


def write_servers_tsv(workdir: Path) -> Path:
    path = workdir / "servers.tsv"
    atomic_write(path, render_servers_tsv().encode("utf-8"), mode=0o644)
    return path


# --- kbpg.toml -------------------------------------------------------------------


def lab_settings(workdir: Path, fingerprints: dict[str, str]):
    """The lab's kbpg settings (through the core's Settings tree): PG 17 from the lab repository, small memory."""
    from kbpg_tui.core.settings import Settings

    settings = Settings()
    settings.inventory.path = "servers.tsv"
    settings.postgresql.version = POSTGRESQL_VERSION
    # Seven hosts share this machine's 2 cores and its memory.
    settings.postgresql.max_connections = 60
    settings.postgresql.shared_buffers = "32MB"
    settings.postgresql.parameters = {"work_mem": "2MB", "maintenance_work_mem": "16MB", "effective_cache_size": "128MB"}
    settings.packages.source = "custom"
    settings.packages.url = REPO_URL
    settings.packages.suite = REPO_SUITE
    settings.packages.components = [REPO_COMPONENT]
    settings.packages.key_file = str((workdir / REPO_KEY_NAME).resolve())
    settings.network.lb_address = LB_ADDRESS
    settings.network.private_subnet = SUBNET
    settings.patroni.timing_plan = "fast"
    # Backups to backup-01 with the defaults, but a shorter archive lag warning and drill time limit: the lab's
    # cluster is small and mostly idle, and its tests wait for these.
    settings.backup.warn_archive_lag_seconds = 90
    settings.backup.drill_timeout = 1200
    settings.ssh.key_file = str((workdir / SSH_KEY_NAME).resolve())
    # The spares' keys too: a test points a servers.tsv row at a spare and kbpg connects with --yes.
    settings.ssh.pinned_host_keys = {host.address: fingerprints[host.address] for host in PINNED_HOSTS}
    return settings


def write_kbpg_toml(workdir: Path, fingerprints: dict[str, str]) -> bool:
    """Write ``<workdir>/kbpg.toml`` for the lab unless one exists; True if written."""
    from kbpg_tui.core.settings import from_dict, save_settings, to_dict

    path = workdir / "kbpg.toml"
    if path.exists():
        return False
    settings = lab_settings(workdir, fingerprints)
    from_dict(to_dict(settings), str(path))  # validate before writing: a bad lab default is a bug here
    save_settings(settings, path)
    return True


def add_spare_pins(workdir: Path, fingerprints: dict[str, str]) -> list[str]:
    """Pin the spares' host keys in an existing ``<workdir>/kbpg.toml`` that has no pin for their addresses
    (one written before the lab had spares); returns the addresses added.

    A pin already there (the operator's) is kept; a kbpg.toml that does not load is left as it is.
    """
    from kbpg_tui.core.settings import SettingsError, load_settings, save_settings

    path = workdir / "kbpg.toml"
    try:
        settings = load_settings(path)
    except SettingsError:
        return []
    missing = [host.address for host in SPARE_HOSTS if host.address not in settings.ssh.pinned_host_keys]
    if not missing:
        return []
    settings.ssh.pinned_host_keys.update({address: fingerprints[address] for address in missing})
    save_settings(settings, path)
    return missing


def remove_private_dir(workdir: Path) -> None:
    """Forget the hosts' private keys (used only by tests that want a fully fresh work dir)."""
    shutil.rmtree(workdir / PRIVATE_DIR, ignore_errors=True)
