# aspose-cloud-proxy: the proxy on 0.0.0.0:8080 as a non-root user (uid 10001).
#   docker build -t aspose-cloud-proxy .
#   docker run --rm -p 127.0.0.1:8080:8080 -e ASPOSE_PROXY_CLIENT_ID=... \
#     -e ASPOSE_PROXY_CLIENT_SECRET_FILE=/run/secrets/aspose_client_secret \
#     -v "$PWD/aspose_client_secret:/run/secrets/aspose_client_secret:ro" aspose-cloud-proxy
# The same image runs the offline sandbox: `docker run --rm aspose-cloud-proxy sandbox --host 0.0.0.0`.
# Dependencies come from requirements.lock (exact versions with hashes), so an image built later
# holds what CI tested. PYTHON_IMAGE names another Debian-based Python base (CI builds on a local
# debootstrap image: deploy/container-check.sh); `python3 -m venv` works on either.
ARG PYTHON_IMAGE=python:3.12-slim

# Build stage: the locked dependencies, then the package itself (no dependency resolution).
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python3 -m venv /opt/venv
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
    && /opt/venv/bin/pip check

# Runtime stage: the venv only; no build tools, no source tree, no curl (the health check is Python).
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="aspose-cloud-proxy" \
      org.opencontainers.image.description="A local reverse proxy that authenticates every call to the Aspose Cloud REST API" \
      org.opencontainers.image.licenses="MIT"
# /var/lib/aspose-proxy: the proxy's state (the usage store's SQLite file, see usage_store, and
# the token request schedule next to it, token-schedule.json);
# /var/cache/aspose-proxy: the conversion cache with cache_store = "disk" (XDG_CACHE_HOME below,
# docs/cache.md). Mount a volume on each to keep it across containers.
RUN groupadd --system --gid 10001 aspose \
    && useradd --system --uid 10001 --gid aspose --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin aspose \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/aspose-proxy /var/cache/aspose-proxy
COPY --from=build /opt/venv /opt/venv
# allow_from: loopback plus the private ranges where container networks and a pod's neighbours
# live (the proxy's own default, loopback only, would refuse even the host's port forwarding).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ASPOSE_PROXY_HOST=0.0.0.0 \
    ASPOSE_PROXY_ALLOW_FROM='["127.0.0.0/8","::1/128","10.0.0.0/8","172.16.0.0/12","192.168.0.0/16","fc00::/7"]' \
    ASPOSE_PROXY_LOG_FORMAT=json \
    ASPOSE_PROXY_USAGE_STORE=sqlite:///var/lib/aspose-proxy/usage.db \
    XDG_CACHE_HOME=/var/cache
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
# Liveness only (/healthz); /readyz says whether a token is held. Follows ASPOSE_PROXY_PORT if set.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('ASPOSE_PROXY_PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["aspose-proxy"]
CMD ["run"]
