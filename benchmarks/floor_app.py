"""The framework's floor for ``make bench-serve``: a bare FastAPI endpoint returning a constant."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.get("/constant")
async def constant() -> dict[str, bool]:
    """No work at all: what one request costs in uvicorn + FastAPI alone."""
    return {"ok": True}
