"""Readiness follows the store at runtime: a sidecar whose store stops taking writes answers `/readyz` with 503."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from stepscope.commands.sidecar import Sidecar
from stepscope.commands.wiring import Seams
from stepscope.config import load

pytestmark = pytest.mark.anyio


async def test_readyz_is_503_while_the_store_cannot_be_written(tmp_path: Path) -> None:
    """A write that fails after start turns /readyz to 503 until the next write succeeds; /healthz stays 200."""
    path = tmp_path / "state.db"
    config = load(
        env={
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",  # never contacted: no credential check, no discovery
            "OPENAI_API_KEY": "sk-test",
            "STEPSCOPE_LISTEN": "127.0.0.1:0",
            "STEPSCOPE_STATE": str(path),
            "OTEL_TRACES_EXPORTER": "none",
        }
    )
    sidecar = Sidecar(config, Seams(registry=CollectorRegistry()), discover=False, check_api=False)
    await sidecar.start()
    try:
        assert sidecar.http_server is not None
        base = f"http://127.0.0.1:{sidecar.http_server.port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            assert (await client.get("/readyz")).status_code == 200
            with sqlite3.connect(path) as other:  # another writer holds the database: every write of ours fails
                other.execute("BEGIN EXCLUSIVE")
                refused = await client.post("/v1/watch", json={"thread_id": "thread_a"})
                locked = (await client.get("/readyz")).status_code
                alive = (await client.get("/healthz")).status_code
                other.rollback()
            assert refused.status_code == 503
            assert locked == 503
            assert alive == 200
            assert (await client.post("/v1/watch", json={"thread_id": "thread_b"})).status_code == 202
            assert (await client.get("/readyz")).status_code == 200
    finally:
        await sidecar.shutdown()
