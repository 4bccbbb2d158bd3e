"""The diagnostics' checks, numbered like design.md's list (13 and 14: checks for the field failures; 15: synchronous
replication; 16: TLS on every hop; 17: every secret works where it is used, its previous value refused; 18:
backups: the newest backup's age, the archive's lag and `pgbackrest check`; 19: Raft's membership is the selected
DB nodes).

One module per check declares its number, name, targets and function (``CHECK``); :data:`ALL_CHECKS` is the one
list of them. Adding a check is one module and one line here. The runner (``runner.Diagnostics``) runs their
probes in parallel; ``report`` holds the results and writes them out; ``probe`` the helpers every check talks
through (psycopg, HTTP, SSH).
"""

from __future__ import annotations

from .base import Check
from .c01_inventory import CHECK as INVENTORY
from .c02_ssh import CHECK as SSH
from .c03_services import CHECK as SERVICES
from .c04_patroni_cluster import CHECK as PATRONI_CLUSTER
from .c05_patroni_timing import CHECK as PATRONI_TIMING
from .c06_writes import CHECK as WRITES
from .c07_read_only import CHECK as READ_ONLY
from .c08_pgbouncer import CHECK as PGBOUNCER
from .c09_roles import CHECK as ROLES
from .c10_pgvector import CHECK as PGVECTOR
from .c11_haproxy import CHECK as HAPROXY
from .c12_secret_files import CHECK as SECRET_FILES
from .c13_rest_auth import CHECK as REST_AUTH
from .c14_client_sessions import CHECK as CLIENT_SESSIONS
from .c15_sync import CHECK as SYNCHRONOUS
from .c16_tls import CHECK as TLS
from .c17_secrets import CHECK as SECRETS
from .c18_backup import CHECK as BACKUPS
from .c19_raft_members import CHECK as RAFT_MEMBERS

ALL_CHECKS: tuple[Check, ...] = (INVENTORY, SSH, SERVICES, PATRONI_CLUSTER, PATRONI_TIMING, WRITES, READ_ONLY,
                                 PGBOUNCER, ROLES, PGVECTOR, HAPROXY, SECRET_FILES, REST_AUTH, CLIENT_SESSIONS,
                                 SYNCHRONOUS, TLS, SECRETS, BACKUPS, RAFT_MEMBERS)

CHECK_NAMES: dict[int, str] = {check.number: check.name for check in ALL_CHECKS}
