"""The install steps, numbered like the seed's scripts so operators recognise them."""

from __future__ import annotations

from ..engine import Step
from .s00_credentials import STEP as CREDENTIALS
from .s01_preflight import STEP as PREFLIGHT
from .s02_patroni import STEP as PATRONI
from .s03_haproxy import STEP as HAPROXY
from .s04_pgbouncer import STEP as PGBOUNCER
from .s05_pgvector import STEP as PGVECTOR
from .s06_backup import STEP as BACKUP

ALL_STEPS: tuple[Step, ...] = (CREDENTIALS, PREFLIGHT, PATRONI, HAPROXY, PGBOUNCER, PGVECTOR, BACKUP)


def install_steps(only: list[str] | None = None) -> list[Step]:
    """The steps of an install, in order; ``only`` keeps the numbers given (e.g. ["01"])."""
    return [step for step in ALL_STEPS if not only or step.number in only]
