# syntax=docker/dockerfile:1
# tokenproxy: build a venv in one stage, copy only it into a clean slim image.
# Run with a read-only root filesystem; secrets (key ring, clients file, Stripe key)
# are mounted files, never build arguments or environment values.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY vault ./vault
COPY pandetect ./pandetect
# No compilers in either stage (a dependency without a wheel fails the build); byte-compiled here because the runtime
# root filesystem is read-only; pip itself is not needed at run time.
RUN python -m venv /opt/tokenproxy \
    && /opt/tokenproxy/bin/pip install --no-cache-dir --prefer-binary ".[postgres]" \
    && /opt/tokenproxy/bin/python -m compileall -q /opt/tokenproxy/lib \
    && /opt/tokenproxy/bin/pip uninstall -y -q pip

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 tokenproxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin tokenproxy \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/tokenproxy /var/lib/tokenproxy/secrets
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
ENTRYPOINT ["tokenproxy"]
CMD ["serve"]
