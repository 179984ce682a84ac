# aspose-cloud-proxy: the proxy on 0.0.0.0:8080 as a non-root user.
#   docker build -t aspose-cloud-proxy .
#   docker run --rm -p 8080:8080 -e ASPOSE_PROXY_CLIENT_ID=... \
#     -e ASPOSE_PROXY_CLIENT_SECRET_FILE=/run/secrets/aspose_client_secret \
#     -v "$PWD/aspose_client_secret:/run/secrets/aspose_client_secret:ro" aspose-cloud-proxy
# The same image runs the offline sandbox: `docker run --rm aspose-cloud-proxy sandbox --host 0.0.0.0`.

# Build stage: install the package (non-editable, as the README's first command does) into a venv.
FROM python:3.12-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN /opt/venv/bin/pip install --no-cache-dir '.[fast]'

# Runtime stage: the venv only; no build tools, no source tree, no curl (the health check is Python).
FROM python:3.12-slim
LABEL org.opencontainers.image.title="aspose-cloud-proxy" \
      org.opencontainers.image.description="A local reverse proxy that authenticates every call to the Aspose Cloud REST API" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 aspose \
    && useradd --system --uid 10001 --gid aspose --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin aspose
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ASPOSE_PROXY_HOST=0.0.0.0 \
    ASPOSE_PROXY_LOG_FORMAT=json
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
# Liveness only (/healthz); /readyz says whether a token is held. Follows ASPOSE_PROXY_PORT if set.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('ASPOSE_PROXY_PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["aspose-proxy"]
CMD ["run"]
