# syntax=docker/dockerfile:1
# One image recipe, one target per service:
#   docker build --target edge    -t switchboard-edge .
#   docker build --target worker  -t switchboard-worker .
#   docker build --target control -t switchboard-control .
#   docker build --target emulator -t switchboard-deepgram-emulator .
# All configuration comes from environment variables at run time (docs/deployment.md);
# nothing secret is baked into any layer.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# tini as PID 1 forwards SIGTERM to the Python process and reaps zombies, so the
# worker's graceful drain runs in a container exactly as it does on a host.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 switchboard \
    && useradd --system --uid 10001 --gid switchboard --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin switchboard

FROM base AS build
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first: this layer is rebuilt only when pyproject.toml or the lock changes,
# not on every code change. requirements.lock pins every runtime package with its hashes
# (`./dev lock`), so two builds install the same bytes.
COPY pyproject.toml requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY README.md ./
COPY src ./src
COPY services ./services
COPY tools ./tools
RUN pip install --no-cache-dir --no-deps . \
    && python -c "import switchboard_edge.main, switchboard_worker.main, switchboard_emulator.main"

FROM base AS runtime
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
ENTRYPOINT ["/usr/bin/tini", "--"]

FROM runtime AS edge
EXPOSE 8080 9101
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('METRICS_PORT', '9101') + '/healthz', timeout=2)"]
CMD ["switchboard-edge"]

FROM runtime AS worker
EXPOSE 9102
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('METRICS_PORT', '9102') + '/healthz', timeout=2)"]
CMD ["switchboard-worker"]

FROM runtime AS control
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CONTROL_PORT', '8000') + '/healthz', timeout=2)"]
CMD ["switchboard-control"]

FROM runtime AS emulator
ENV EMULATOR_HOST=0.0.0.0 \
    EMULATOR_PORT=8765
EXPOSE 8765
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('EMULATOR_PORT', '8765') + '/_emulator/healthz', timeout=2)"]
CMD ["switchboard-deepgram-emulator"]
