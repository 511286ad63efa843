# syntax=docker/dockerfile:1
# tokenproxy: build a venv in one stage, copy only it into a clean slim image.
# Run with a read-only root filesystem; secrets (key ring, clients file, Stripe key,
# database password) are mounted files, never build arguments or environment values.
# The base is pinned by digest (a tag moves); to update it, resolve the tag's current
# digest (`docker buildx imagetools inspect python:3.11-slim-bookworm`) and replace both.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# tini runs as PID 1 in the image: it forwards SIGTERM to the proxy from the first
# instruction on (a Python PID 1 ignores it until a handler is installed) and reaps.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Everything installed is pinned exactly (`make lock`: the postgres and kms extras; the
# whole tree, so --no-deps leaves nothing to resolve).
# No compilers in either stage: a dependency without a wheel fails the build.
COPY deploy/docker/requirements.lock deploy/docker/build-requirements.lock ./
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --no-deps -r build-requirements.lock \
    && python -m venv --without-pip /opt/tokenproxy \
    && /opt/build/bin/pip --python /opt/tokenproxy/bin/python install --no-cache-dir \
       --no-deps --only-binary=:all: -r requirements.lock
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY vault ./vault
COPY pandetect ./pandetect
# The project itself, built by the locked setuptools without fetching anything; then
# byte-compiled here because the runtime root filesystem is read-only.
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation -w /tmp/wheel . \
    && /opt/build/bin/pip --python /opt/tokenproxy/bin/python install --no-cache-dir \
       --no-deps /tmp/wheel/tokenproxy-*.whl \
    && /opt/tokenproxy/bin/python -m compileall -q /opt/tokenproxy/lib

FROM ${PYTHON_IMAGE} AS runtime
# The base image's own pip, setuptools and wheel (and ensurepip's bundled copies) are
# never used at run time and age into known vulnerabilities: remove them.
RUN rm -rf /usr/local/lib/python3.*/site-packages/pip /usr/local/lib/python3.*/site-packages/pip-* \
       /usr/local/lib/python3.*/site-packages/setuptools /usr/local/lib/python3.*/site-packages/setuptools-* \
       /usr/local/lib/python3.*/site-packages/_distutils_hack /usr/local/lib/python3.*/site-packages/distutils-precedence.pth \
       /usr/local/lib/python3.*/site-packages/pkg_resources \
       /usr/local/lib/python3.*/site-packages/wheel /usr/local/lib/python3.*/site-packages/wheel-* \
       /usr/local/lib/python3.*/ensurepip /usr/local/bin/pip /usr/local/bin/pip3* /usr/local/bin/wheel \
    && groupadd --system --gid 10001 tokenproxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin tokenproxy \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/tokenproxy /var/lib/tokenproxy/secrets
COPY --from=build /usr/bin/tini-static /usr/bin/tini
COPY --from=build /opt/tokenproxy /opt/tokenproxy
ENV PATH=/opt/tokenproxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TOKENPROXY_LISTEN=0.0.0.0:8080 \
    TOKENPROXY_OPS_LISTEN=0.0.0.0:9090 \
    TOKENPROXY_VAULT_URL=sqlite:////var/lib/tokenproxy/vault.db \
    TOKENPROXY_KEYRING=/run/secrets/tokenproxy/keyring.json \
    TOKENPROXY_CLIENTS=/run/secrets/tokenproxy/clients.json \
    STRIPE_API_KEY_FILE=/run/secrets/tokenproxy/stripe-api-key \
    TOKENPROXY_LOG_FORMAT=json
VOLUME ["/var/lib/tokenproxy"]
USER 10001:10001
# 8080 public API, 8443 internal API (when TOKENPROXY_INTERNAL_LISTEN=0.0.0.0:8443), 9090 ops.
# Certificates are mounted files too (TOKENPROXY_TLS_CERT_FILE, _KEY_FILE, _CLIENT_CA_FILE).
EXPOSE 8080 8443 9090
# No curl in the slim image: the interpreter we ship asks the ops listener, over TLS when
# the listeners have a certificate (this only asks whether the process lives, on loopback:
# the certificate is not what is checked).
HEALTHCHECK --interval=15s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, ssl, sys, urllib.request; tls = bool(os.environ.get('TOKENPROXY_TLS_CERT_FILE')); url = ('https' if tls else 'http') + '://127.0.0.1:9090/healthz'; ctx = ssl._create_unverified_context() if tls else None; sys.exit(urllib.request.urlopen(url, timeout=2, context=ctx).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "tokenproxy"]
CMD ["serve"]
