"""Worker-process bodies for the concurrency test (importable by ``spawn`` children)."""

from __future__ import annotations

import random
from typing import Any

RETRIES = 3


def post_all_feedback(
    settings: dict[str, Any], items: list[dict[str, Any]], seed: int, barrier: Any, out: Any
) -> None:
    """Build an own app on the shared database, wait for the others, post every item twice
    in shuffled batches of 1-5; put the status codes on ``out``. A 503 (the store could not
    write: under this contention PostgreSQL may abort one of two transactions that wait on
    each other) is retried as the EHR would, up to ``RETRIES`` times; the final status counts."""
    from cds_server.store import get_store
    from cds_server.web.app import create_app

    app = create_app({"TESTING": True, "AUTH_REQUIRED": False, **settings})
    client = app.test_client()
    rng = random.Random(seed)
    work = items * 2
    rng.shuffle(work)
    barrier.wait(timeout=120)
    statuses = []
    while work:
        size = rng.randint(1, 5)
        batch, work = work[:size], work[size:]
        for _ in range(RETRIES + 1):
            resp = client.post("/cds-services/infusion-safety/feedback", json={"feedback": batch})
            if resp.status_code != 503:
                break
        statuses.append(resp.status_code)
    get_store(app).close()
    out.put(statuses)
