"""The API as deployed, plus two baseline routes for bench/load.py: one indexed SELECT, one single-row INSERT.

The baselines are served by the same uvicorn processes, through the same middleware, on the same engine and
connection pool as the real routes, and answer JSON the same way: what a real route costs beyond its
baseline is its own work (authentication, rate limiting, validation, the broker), not the server's.
"""

import json
import uuid
from typing import Any

from fastapi import APIRouter, Body, status
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.main import create_app
from db.session import get_engine

BENCH_TABLE = "bench_rows"
CREATE_BENCH_TABLE = f"CREATE TABLE IF NOT EXISTS {BENCH_TABLE} (id uuid PRIMARY KEY, body jsonb NOT NULL)"

router = APIRouter(prefix="/bench", include_in_schema=False)


@router.post("/insert", status_code=status.HTTP_202_ACCEPTED)
def insert_row(body: dict[str, Any] = Body(...)) -> dict[str, str]:
    """One single-row INSERT of the request body, committed: the floor under ``POST /v1/jobs``."""
    row_id = uuid.uuid4()
    with get_engine().begin() as connection:
        connection.execute(
            text(f"INSERT INTO {BENCH_TABLE} (id, body) VALUES (:id, CAST(:body AS jsonb))"),
            {"id": row_id, "body": json.dumps(body)},
        )
    return {"id": str(row_id)}


@router.get("/select/{job_id}")
def select_row(job_id: uuid.UUID) -> Any:
    """One SELECT of a job row by its primary key: the floor under ``GET /v1/jobs/{id}``."""
    with get_engine().connect() as connection:
        row = (
            connection.execute(
                text("SELECT id, kind, status, input, metadata, created_at FROM jobs WHERE id = :id"), {"id": job_id}
            )
            .mappings()
            .first()
        )
    if row is None:
        return JSONResponse({"error": "not found"}, status_code=404)
    return dict(row)


app = create_app()
app.include_router(router)
