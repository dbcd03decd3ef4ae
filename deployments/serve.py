"""Entry point of the deployment server: ``python -m deployments.serve``.

Guarded by ``__main__``: Prefect re-imports the flow's module for each run, and a bare
``serve()`` at import would start a second server inside every run.
"""

from __future__ import annotations

import json
import os

from deployments.prefect_home import configure_prefect_home

configure_prefect_home()  # before Prefect is first imported, just below

from deployments.definitions import serve_deployments  # noqa: E402

if __name__ == "__main__":
    overrides = (
        json.loads(os.environ["RECFLOW_DEPLOY_OVERRIDES"])
        if "RECFLOW_DEPLOY_OVERRIDES" in os.environ
        else None
    )
    serve_deployments(overrides=overrides)
