"""The lab's fixed layout: hosts, addresses, names and the machine paths it uses.

Everything lives in 198.18.0.0/24 (RFC 2544 benchmarking range): lab traffic must
stay on this machine's own test hosts, never reach 10.x or any real network.
The DB, HAProxy and backup hosts mirror the real inventory's 10.0.0.x layout (.120-.122,
.11-.12, backup-01 .153, LB .10) so that what is tried here reads like production.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SUBNET = "198.18.0.0/24"
PREFIX_LEN = 24
BRIDGE_ADDRESS = "198.18.0.1"
BRIDGE_NAME = "kbpglab0"
# Every netns, veth and cgroup the lab makes starts with this, so that `down`
# can sweep what a crashed `up` left behind even without a state file.
NAME_PREFIX = "kbpglab"
DOMAIN = "lab.kbpg.test"  # RFC 2606 .test: never resolvable outside

LB_ADDRESS = "198.18.0.10"
REPO_PORT = 80
REPO_URL = f"http://{LB_ADDRESS}/" if REPO_PORT == 80 else f"http://{LB_ADDRESS}:{REPO_PORT}/"
REPO_SUITE = "kbpg-lab"
REPO_COMPONENT = "main"
REPO_MOUNT = "/srv/kbpg-lab-repo"  # where the LB stand-in sees the repository
LB_PORTS = (5432, 5433, 6432)  # PostgreSQL write, read-only, PgBouncer

SUDO_USER = "kbops"
SUDO_UID = 1000

POSTGRESQL_VERSION = 17  # trixie's; production defaults to 16 from PGDG

# Machine-side places. The image cache survives reboots; run state does not need to.
CACHE_ROOT = Path("/var/cache/kbpg-lab")
HOSTS_ROOT = Path("/var/lib/kbpg-lab/hosts")
RUN_ROOT = Path("/run/kbpg-lab")
STATE_FILE = RUN_ROOT / "state.json"
LOCK_FILE = RUN_ROOT / "lock"
CGROUP_GROUP = NAME_PREFIX  # directory under the cgroup2 root holding one cgroup per host


@dataclass(frozen=True)
class LabHost:
    """One host of the lab and its place in the inventory."""

    name: str
    address: str
    kind: str  # "db" | "haproxy" | "backup" | "lb"
    user_ssh: str = "root"
    fqdn_label: str = ""
    public_address: str = ""

    @property
    def octet(self) -> int:
        return int(self.address.rsplit(".", 1)[1])

    @property
    def netns(self) -> str:
        return f"{NAME_PREFIX}-{self.name}"

    @property
    def veth_host(self) -> str:
        # IFNAMSIZ is 16 including the NUL: keep names short and unique by octet.
        return f"{NAME_PREFIX}-v{self.octet}"

    @property
    def veth_peer(self) -> str:
        return f"{NAME_PREFIX}-p{self.octet}"

    @property
    def mac(self) -> str:
        """The host's fixed MAC (locally administered, from its address): a host stopped and started again, or
        brought down and up with the lab, keeps it, so its peers' ARP entries stay right (a new MAC left them
        sending to the old one for up to ~30 s)."""
        return f"02:6b:62:12:00:{self.octet:02x}"

    @property
    def fqdn(self) -> str:
        return f"{self.fqdn_label or self.name}.{DOMAIN}"


HOSTS: tuple[LabHost, ...] = (
    LabHost("lb-lab", LB_ADDRESS, "lb", fqdn_label="lb", public_address="198.18.1.10"),
    LabHost("haproxy-01", "198.18.0.11", "haproxy", fqdn_label="haproxy1", public_address="198.18.1.11"),
    LabHost("haproxy-02", "198.18.0.12", "haproxy", user_ssh=SUDO_USER, fqdn_label="haproxy2", public_address="198.18.1.12"),
    LabHost("db-master-01", "198.18.0.120", "db", fqdn_label="db-master", public_address="198.18.1.120"),
    LabHost("db-slave-01", "198.18.0.121", "db", fqdn_label="db-slave1", public_address="198.18.1.121"),
    LabHost("db-slave-02", "198.18.0.122", "db", fqdn_label="db-slave2", public_address="198.18.1.122"),
    # The pgBackRest repository host (the company's backup-01 is 10.0.0.153).
    LabHost("backup-01", "198.18.0.153", "backup", fqdn_label="backup", public_address="198.18.1.153"),
)

# Every host kbpg reaches over SSH (DB, HAProxy, backup): in servers.tsv, their host keys pinned in kbpg.toml.
CLUSTER_HOSTS: tuple[LabHost, ...] = tuple(host for host in HOSTS if host.kind != "lb")

# Spare servers, to replace a DB or HAProxy node and to grow 3 -> 5 DB nodes: bare hosts like the others,
# their host keys pinned in kbpg.toml, but NOT in servers.tsv (a test edits servers.tsv to use them) and
# not booted by `kbpg lab up` (`kbpg lab start-host NAME` boots one: `up` stays as fast as it was).
# Kept out of HOSTS, which every existing user reads as "the lab's cluster hosts and the LB".
SPARE_HOSTS: tuple[LabHost, ...] = (
    LabHost("db-spare-01", "198.18.0.123", "db", fqdn_label="db-spare1", public_address="198.18.1.123"),
    LabHost("db-spare-02", "198.18.0.124", "db", fqdn_label="db-spare2", public_address="198.18.1.124"),
    LabHost("haproxy-spare-01", "198.18.0.13", "haproxy", fqdn_label="haproxy-spare1", public_address="198.18.1.13"),
)

# Every host the lab can run: what `down` stops and sweeps, what `status` lists.
ALL_HOSTS: tuple[LabHost, ...] = HOSTS + SPARE_HOSTS

# Every host whose key is pinned in the lab's kbpg.toml: the cluster hosts and the spares.
PINNED_HOSTS: tuple[LabHost, ...] = CLUSTER_HOSTS + SPARE_HOSTS


def host_by_name(name: str) -> LabHost:
    """The lab host called ``name`` (spares included); KeyError if there is none."""
    for host in ALL_HOSTS:
        if host.name == name:
            return host
    raise KeyError(name)
