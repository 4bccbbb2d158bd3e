"""Step 05: pgvector in the app database, through the primary, then a real vector query.

A failing query fails the step: an extension that "installed" but cannot compute
a distance is not installed.
"""

from __future__ import annotations

from ..cluster import on_leader
from ..engine import Outcome, Step, Task, TaskError, TaskRun

EXPECTED_DISTANCE = "1"  # '[1,2,3]' <-> '[1,2,4]'


def ensure_pgvector(run: TaskRun) -> Outcome:
    database = run.ctx.credentials["POSTGRES_DB"]

    def sql(text: str, what: str) -> str:
        return on_leader(run, text, what, database=database).stdout.strip()

    before = sql("SELECT extversion FROM pg_extension WHERE extname = 'vector';", "reading extensions")
    if not before:
        sql("CREATE EXTENSION IF NOT EXISTS vector;", "creating the vector extension")
    version = sql("SELECT extversion FROM pg_extension WHERE extname = 'vector';", "reading extensions")
    distance = sql("SELECT '[1,2,3]'::vector <-> '[1,2,4]'::vector;", "a vector distance query")
    if distance != EXPECTED_DISTANCE:
        raise TaskError(f"pgvector answered {distance!r} for a distance that is {EXPECTED_DISTANCE}")
    detail = f"vector {version} in {database}; distance query returned {distance}"
    return Outcome.of(not before, ("created " if not before else "") + detail)


STEP = Step("05", "pgvector", [Task("extension", "cluster", ensure_pgvector)])
