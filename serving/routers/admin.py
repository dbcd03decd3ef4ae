"""Operating the service: ``/health``, Prometheus ``/metrics`` and ``POST /admin/reload``.

Nothing here depends on settings at route creation, so the router is built once.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from serving.bundle import NoBundleError
from serving.dependencies import HolderDep, MetricsDep, require_admin_key
from serving.metrics import CONTENT_TYPE
from serving.schemas import UNAUTHORIZED, UNAVAILABLE, Health, ReloadResult

router = APIRouter()


@router.get("/health", response_model=Health, responses=UNAVAILABLE, tags=["service"])
async def health(holder: HolderDep, request: Request) -> dict[str, Any]:
    """The live bundle's version, model and sizes; 503 until a bundle is published."""
    bundle = holder.get()
    refusal = holder.live_refusal()
    detail = None
    if refusal is not None:
        detail = f"CURRENT names {refusal[0]}, which was refused: {refusal[1]}"
    return {
        "status": "ok" if refusal is None else "degraded",
        "catalogue": request.app.state.settings.catalogue,
        "bundle_version": bundle.version,
        "model": bundle.model_name,
        "counts": bundle.counts,
        "loaded_at": bundle.loaded_at,
        "detail": detail,
        "delta_seq": bundle.delta_seq,
        "fresh_items": bundle.n_items - bundle.model_items,
        "pool_date": bundle.pool.pool_date if bundle.pool is not None else None,
    }


@router.get(
    "/metrics",
    tags=["service"],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}}},
)
async def prometheus(holder: HolderDep, metrics: MetricsDep) -> Response:
    """Prometheus metrics: requests and latency histograms per endpoint, the live bundle."""
    bundle = holder.bundle
    if bundle is not None:
        metrics.set_bundle(bundle.version, bundle.model_name)
    return Response(metrics.render(), media_type=CONTENT_TYPE)


@router.post(
    "/admin/reload",
    response_model=ReloadResult,
    responses={**UNAVAILABLE, **UNAUTHORIZED},
    tags=["admin"],
    dependencies=[Depends(require_admin_key)],
)
async def reload(holder: HolderDep) -> dict[str, Any]:
    """Check ``CURRENT`` now instead of at the next interval (retries refused bundles)."""
    before = holder.bundle
    after = await run_in_threadpool(holder.reload)  # may load a bundle: off the loop
    if after is None:
        raise NoBundleError(holder.unavailable_reason())
    previous = before.version if before is not None else None
    return {
        "bundle_version": after.version,
        "previous_version": previous,
        "changed": after.version != previous,
        "refused": holder.refused,
    }
