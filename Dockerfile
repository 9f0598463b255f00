# Zowy Gateway image: `docker build -t zowy-gateway .`; run it with docker-compose.yml (README, "Run in production").
# Python 3.11: what the tests run on. (3.12 changed asyncio's Server.wait_closed() to wait for every open
# connection, which changes how Sanic's graceful shutdown drains; re-run tests/scale before moving.)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv with the dependencies (the ranges pinned in pyproject.toml) and the gateway
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/zowy
ENV PATH=/opt/zowy/bin:$PATH
WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip install -r requirements.txt

# The gateway itself (demo mode's model is built in: app/upstream/demo.py).
COPY README.md ./
COPY app ./app
RUN pip install --no-deps . \
    && python -c "import app.cli, app.upstream.demo"

# ---- runtime: the virtualenv on a clean slim image, as an unprivileged user
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/zowy/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ZOWY_HOST=0.0.0.0 \
    ZOWY_PORT=8000 \
    ZOWY_WORKERS=2 \
    ZOWY_DATA_DIR=/var/lib/zowy
RUN groupadd --system --gid 10001 zowy \
    && useradd --system --uid 10001 --gid zowy --home-dir /var/lib/zowy --no-create-home --shell /usr/sbin/nologin zowy \
    && mkdir -p /var/lib/zowy \
    && chown zowy:zowy /var/lib/zowy
COPY --from=build /opt/zowy /opt/zowy
WORKDIR /var/lib/zowy
USER 10001:10001
EXPOSE 8000

# /healthz answers while the process serves (slim images have no curl: Python's urllib does it).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ZOWY_PORT', '8000'), timeout=2)"]

# SIGTERM starts the graceful drain (ZOWY_DRAIN_TIMEOUT, 30 s by default): give the container longer
# than that to stop (docker-compose.yml: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "app"]
CMD ["serve"]
