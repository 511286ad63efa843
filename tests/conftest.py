"""Shared fixtures: real parts only (localstripe, SQLite files, the HTTP server on loopback)."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from tokenproxy_sandbox.launcher import SANDBOX_API_KEY, Localstripe, free_port

from proxy.infra.clients import PUBLISHABLE_SCOPES, ClientRegistry, add_client, parse_scopes
from proxy.infra.log import configure_logging
from proxy.infra.metrics import Metrics
from proxy.infra.settings import Settings
from proxy.partners.stripe import StripePartner
from proxy.web.app import create_app, create_ops_app
from proxy.web.appkeys import METRICS
from proxy.web.limits import ApiRunner, ops_server_options, server_options
from tests.backends import (
    PG_HOST,
    PG_URL,
    RawRows,
    create_schema,
    drop_schema,
    pg_unreachable_reason,
)
from vault import LocalKekProvider, Vault
from vault.keys.ring import init_keyring


class _Tee(io.StringIO):
    """Every log line the session writes, kept for the leak scan."""


LOG_STREAM = _Tee()


@pytest.fixture(scope="session", autouse=True)
def _session_logging() -> Iterator[_Tee]:
    """Route all structlog and stdlib logging of the session into one scannable buffer.

    At the end it is kept as test-artifacts/session-log.jsonl, so a failure that only
    shows under load (CI) leaves its server-side traceback behind.
    """
    configure_logging(json=True, level="debug", stream=LOG_STREAM)
    yield LOG_STREAM
    artifacts = Path(__file__).resolve().parent.parent / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "session-log.jsonl").write_text(LOG_STREAM.getvalue())


@pytest.fixture(scope="session")
def log_stream() -> _Tee:
    """The session's captured log output."""
    return LOG_STREAM


@pytest.fixture(scope="session")
def localstripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Localstripe]:
    """A localstripe process for the whole session, on a free loopback port."""
    log = tmp_path_factory.mktemp("localstripe") / "localstripe.log"
    sandbox = Localstripe(log=log)
    yield sandbox
    sandbox.stop()


@pytest.fixture
def keyring_path(tmp_path: Path) -> Path:
    """A fresh key ring file (0600) in the test's directory."""
    path = tmp_path / "keys" / "keyring.json"
    init_keyring(path)
    return path


@pytest.fixture
def vault_path(tmp_path: Path) -> Path:
    """Where the test's SQLite vault lives."""
    return tmp_path / "vault.db"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL test server's URL: skipped when unreachable, a failure in CI."""
    reason = pg_unreachable_reason(PG_URL)
    if reason is not None:
        message = f"PostgreSQL at {PG_HOST} unreachable: {reason}"
        if ci():
            pytest.fail(message)
        pytest.skip(message)
    return PG_URL


@pytest.fixture
def pg_schema_url(postgres_url: str) -> Iterator[str]:
    """A vault URL on a fresh, uniquely named schema, dropped after the test."""
    schema, url = create_schema(postgres_url)
    yield url
    drop_schema(schema, postgres_url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_name(request: pytest.FixtureRequest) -> str:
    """Which storage backend the test runs on: every vault test runs on both."""
    name: str = request.param
    return name


@pytest.fixture
def vault_url(backend_name: str, vault_path: Path, request: pytest.FixtureRequest) -> str:
    """A vault URL of the test's backend: a fresh SQLite file or a fresh PostgreSQL schema."""
    if backend_name == "sqlite":
        return f"sqlite:///{vault_path}"
    url: str = request.getfixturevalue("pg_schema_url")
    return url


@pytest.fixture
def raw_rows(backend_name: str, vault_path: Path, vault_url: str) -> RawRows:
    """Direct row access to the test's vault database, behind the vault's back."""
    return RawRows(backend_name, path=vault_path, url=vault_url)


@pytest.fixture
async def vault(vault_url: str, keyring_path: Path) -> AsyncIterator[Vault]:
    """An open vault (SQLite, then PostgreSQL) with migrations applied."""
    v = await Vault.open(vault_url, LocalKekProvider.from_file(keyring_path))
    yield v
    await v.close()


@pytest.fixture
async def stripe_partner(localstripe: Localstripe) -> AsyncIterator[StripePartner]:
    """The real Stripe adapter pointed at localstripe."""
    partner = StripePartner(SANDBOX_API_KEY, api_base=localstripe.base_url)
    yield partner
    await partner.close()


CLIENT_SCOPES = {
    "checkout": "tokenize",
    "orders": "read",
    "billing": "resolve",
    "eraser": "delete",
    "ops": "admin",
    "invoicer": "invoice",
}


@pytest.fixture
def client_keys(tmp_path: Path) -> dict[str, str]:
    """A clients file with one client per scope; returns name -> key."""
    path = tmp_path / "clients.json"
    return {name: add_client(path, name, parse_scopes(s)) for name, s in CLIENT_SCOPES.items()}


# The browser origin publishable test keys are bound to.
SHOP = "https://shop.example"


def add_shop_key(
    client_keys: dict[str, str], tmp_path: Path, name: str = "shop", origin: str = SHOP
) -> dict[str, str]:
    """Add a publishable key bound to ``origin`` to the test's clients file and to
    ``client_keys`` (under ``name``); returns ``client_keys``."""
    client_keys[name] = add_client(
        tmp_path / "clients.json",
        name,
        PUBLISHABLE_SCOPES,
        publishable=True,
        origins=frozenset({origin}),
    )
    return client_keys


@dataclass
class RunningProxy:
    """A proxy serving on loopback, with its ops listener."""

    base: str
    ops: str
    keys: dict[str, str]
    app: web.Application
    http: aiohttp.ClientSession
    settings: Settings
    vault_path: Path
    responses: list[bytes] = field(default_factory=list)

    def auth(self, client: str) -> dict[str, str]:
        """Authorization header for the named test client."""
        return {"Authorization": f"Bearer {self.keys[client]}"}

    async def request(
        self, method: str, path: str, *, client: str | None = None, **kwargs: object
    ) -> tuple[int, dict[str, object] | None, aiohttp.ClientResponse]:
        """Send a request; returns status, parsed JSON body (if any) and the response."""
        headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[call-overload]
        if client:
            headers.update(self.auth(client))
        async with self.http.request(method, self.base + path, headers=headers, **kwargs) as resp:  # type: ignore[arg-type]
            raw = await resp.read()
            self.responses.append(raw)
            body = None
            if resp.content_type == "application/json":
                body = await resp.json()
            return resp.status, body, resp


def make_settings(
    tmp_path: Path,
    keyring_path: Path,
    partner_base: str,
    extra: dict[str, str] | None = None,
) -> Settings:
    """Settings for a test proxy, from an environment as an operator would write it."""
    return Settings.from_env(
        {
            "TOKENPROXY_LISTEN": f"127.0.0.1:{free_port()}",
            "TOKENPROXY_OPS_LISTEN": f"127.0.0.1:{free_port()}",
            "TOKENPROXY_VAULT_URL": f"sqlite:///{tmp_path / 'vault.db'}",
            "TOKENPROXY_KEYRING": str(keyring_path),
            "TOKENPROXY_CLIENTS": str(tmp_path / "clients.json"),
            "STRIPE_API_KEY": SANDBOX_API_KEY,
            "TOKENPROXY_STRIPE_API_BASE": partner_base,
            # Every test client shares 127.0.0.1, and many tests send bad keys on
            # purpose; tests of the throttle itself set a small limit.
            "TOKENPROXY_AUTH_FAILURE_LIMIT": "100000",
            **(extra or {}),
        }
    )


@contextlib.asynccontextmanager
async def running_proxy(
    tmp_path: Path,
    keys: dict[str, str],
    settings: Settings,
    *,
    clients: ClientRegistry | None = None,
) -> AsyncIterator[RunningProxy]:
    """Serve the full proxy with ``settings`` (and ``clients`` if given) until the block ends."""
    app = create_app(settings, metrics=Metrics(), clients=clients)
    ops = create_ops_app(app)
    metrics = app[METRICS]
    runner = ApiRunner(app, access_log=None, **server_options(settings, metrics.closer("api")))
    ops_runner = ApiRunner(
        ops, access_log=None, **ops_server_options(settings, metrics.closer("ops"))
    )
    await runner.setup()
    await ops_runner.setup()
    try:
        await web.TCPSite(runner, settings.listen.host, settings.listen.port).start()
        await web.TCPSite(ops_runner, settings.ops_listen.host, settings.ops_listen.port).start()
        async with aiohttp.ClientSession() as http:
            yield RunningProxy(
                base=f"http://{settings.listen}",
                ops=f"http://{settings.ops_listen}",
                keys=keys,
                app=app,
                http=http,
                settings=settings,
                vault_path=tmp_path / "vault.db",
            )
    finally:
        await runner.cleanup()
        await ops_runner.cleanup()


@pytest.fixture
def proxy_env() -> dict[str, str]:
    """Extra settings for the `proxy` fixture; a test module overrides it to add some."""
    return {}


@pytest.fixture
async def proxy(
    tmp_path: Path,
    keyring_path: Path,
    client_keys: dict[str, str],
    localstripe: Localstripe,
    proxy_env: dict[str, str],
) -> AsyncIterator[RunningProxy]:
    """The full proxy (SQLite vault, localstripe partner) serving on free loopback ports."""
    settings = make_settings(tmp_path, keyring_path, localstripe.base_url, proxy_env)
    async with running_proxy(tmp_path, client_keys, settings) as running:
        yield running


@pytest.fixture
def pg_proxy_env() -> dict[str, str]:
    """Settings `pg_proxy` adds to `proxy_env` (pool sizes, say); a test module overrides it."""
    return {}


@pytest.fixture
async def pg_proxy(
    tmp_path: Path,
    keyring_path: Path,
    client_keys: dict[str, str],
    localstripe: Localstripe,
    *,
    proxy_env: dict[str, str],
    pg_proxy_env: dict[str, str],
    pg_schema_url: str,
) -> AsyncIterator[RunningProxy]:
    """The `proxy` fixture's proxy with its vault on a fresh PostgreSQL schema.

    Through ``pg_schema_url`` it is skipped when PostgreSQL is unreachable, and fails in CI.
    """
    env = {**proxy_env, "TOKENPROXY_VAULT_URL": pg_schema_url, **pg_proxy_env}
    settings = make_settings(tmp_path, keyring_path, localstripe.base_url, env)
    async with running_proxy(tmp_path, client_keys, settings) as running:
        yield running


def registry_for(keys_path: Path) -> ClientRegistry:
    """Load a clients file the way the app does."""
    return ClientRegistry.load(keys_path)


def ci() -> bool:
    """True in CI, where a missing service is a failure rather than a skip."""
    return os.environ.get("CI", "").lower() == "true"
