"""Settings: read once from the environment, validated, frozen. The only reader of os.environ."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote, urlsplit

from proxy.domain.origins import OriginError, parse_origin_list
from vault.errors import VaultUrlError
from vault.retention import RetentionPolicy
from vault.urls import POSTGRES_PREFIXES, check_vault_url, describe_vault_url


class SettingsError(Exception):
    """One bad setting; the message names it in one line."""


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
X_FORWARDED_FOR = "X-Forwarded-For"
FORWARDED = "Forwarded"


@dataclass(frozen=True, slots=True)
class HostPort:
    """A listen address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _host_port(name: str, value: str) -> HostPort:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{name} must be HOST:PORT, got {value!r}")
    return HostPort(host.strip("[]"), int(port))


def _float(name: str, value: str, *, minimum: float) -> float:
    try:
        number = float(value)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {value!r}") from None
    if number < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value!r}")
    return number


def _int(name: str, value: str, *, minimum: int) -> int:
    if not value.isdigit() or int(value) < minimum:
        raise SettingsError(f"{name} must be a whole number of at least {minimum}, got {value!r}")
    return int(value)


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """A secret from ``NAME_FILE`` (preferred: no secret in the process environment) or ``NAME``."""
    path = env.get(f"{name}_FILE")
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(f"{name}_FILE cannot be read: {path} ({exc.strerror})") from None
        if not value:
            raise SettingsError(f"{name}_FILE is empty: {path}")
        return value
    return env.get(name) or None


def _with_database_password(url: str, path: str) -> str:
    """``url`` with the PostgreSQL password read from ``path`` (the URL itself holds none)."""
    name = "TOKENPROXY_DATABASE_PASSWORD_FILE"
    if not url.startswith(POSTGRES_PREFIXES):
        raise SettingsError(f"{name} needs a postgresql:// TOKENPROXY_VAULT_URL")
    scheme, _, rest = url.partition("://")
    userinfo, at, hostpart = rest.partition("@")
    if not at or not userinfo:
        raise SettingsError(
            f"{name}: TOKENPROXY_VAULT_URL must name the user (postgresql://USER@HOST/DB)"
        )
    if ":" in userinfo:
        raise SettingsError(f"{name}: TOKENPROXY_VAULT_URL already holds a password; remove it")
    try:
        # Only line ends are trimmed: spaces may be part of a password.
        password = Path(path).read_bytes().decode("utf-8").rstrip("\r\n")
    except OSError as exc:
        raise SettingsError(f"{name} cannot be read: {path} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{name} is not UTF-8 text: {path}") from None
    if not password:
        raise SettingsError(f"{name} is empty: {path}")
    return f"{scheme}://{userinfo}:{quote(password, safe='')}@{hostpart}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the service; see docs/operations.md and deploy/env.example."""

    listen: HostPort = field(default_factory=lambda: HostPort("127.0.0.1", 8080))
    ops_listen: HostPort = field(default_factory=lambda: HostPort("127.0.0.1", 9090))
    # `tokenproxy dev` only: the demo checkout page's own origin (`serve` never listens here).
    demo_listen: HostPort = field(default_factory=lambda: HostPort("127.0.0.1", 8081))
    vault_url: str = "sqlite:///var/vault.db"
    keyring_path: Path = Path("var/keyring.json")
    clients_path: Path = Path("var/clients.json")
    clients_reload_interval: float = 2.0  # seconds between clients-file looks; 0: SIGHUP only
    stripe_api_key: str | None = field(default=None, repr=False)
    stripe_api_base: str = "https://api.stripe.com"
    partner_timeout: float = 10.0
    partner_connect_timeout: float = 3.0
    max_body_bytes: int = 16 * 1024
    log_level: str = "info"
    log_json: bool | None = None
    migrate_on_start: bool = True
    # Per migration statement (and the wait for the migration lock): not db_timeout.
    migrate_timeout: float = 600.0
    db_pool_min: int = 1
    db_pool_max: int = 10
    db_timeout: float = 5.0
    # Derived from the partner and database settings unless set (see min_shutdown_grace).
    shutdown_grace: float = 40.0
    # Retention (days; 0 keeps forever): cards and banks since last use, invoices since creation.
    retention_card_days: int = 0
    retention_bank_days: int = 0
    retention_invoice_days: int = 0
    purge_interval: float = 0.0  # seconds between sweeps inside `serve`; 0 = no sweeper
    last_used_flush_interval: float = 10.0
    kek_provider: str = "local"
    kms_key_id: str | None = None
    kms_endpoint: str | None = None
    kms_region: str | None = None
    # How often a serving process re-confirms its KEKs with KMS (a disabled key stops
    # tokenize and resolve within this many seconds; an unreachable KMS stops nothing).
    kms_refresh_interval: float = 60.0
    # Resilience: idempotency, partner retries, circuit breaker, request limits.
    idempotency_ttl: float = 24 * 3600.0
    partner_max_retries: int = 2
    partner_retry_budget: float = 20.0
    partner_backoff_base: float = 0.2
    partner_backoff_max: float = 2.0
    breaker_failures: int = 5
    breaker_reset: float = 30.0
    # Partner calls running at once from one process (the rest wait in the proxy). With
    # Stripe's typical 0.2-0.4 s per call, 32 is about Stripe's live default of 100
    # operations a second per account (https://docs.stripe.com/rate-limits).
    partner_max_in_flight: int = 32
    # Partner calls a second for the whole deployment (see proxy.partners.budget); None:
    # the default against Stripe, no budget against a sandbox on loopback.
    partner_rate: float | None = None
    # Stripe's allow_redisplay for every PaymentMethod the proxy creates (see docs/stripe.md).
    allow_redisplay: str = "unspecified"
    body_read_timeout: float = 10.0
    max_header_bytes: int = 8190
    header_timeout: float = 10.0
    max_connections: int = 1024
    cors_origins: tuple[str, ...] = ()
    publishable_rate_per_minute: float = 30.0
    publishable_burst: int = 10
    # Failed authentications and the audit trail (see proxy.web.authguard, vault.audit).
    auth_failure_limit: int = 30
    auth_failure_window: float = 60.0
    auth_failure_max_sources: int = 10_000
    auth_failure_audit_interval: float = 60.0
    audit_retention_days: int = 365
    # Signing secrets of the Stripe webhook endpoint (several while one is rotated).
    stripe_webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    # Reverse proxies whose forwarding header names the client (see proxy.web.clientaddr).
    trusted_proxies: tuple[IPNetwork, ...] = ()
    forwarded_header: str = X_FORWARDED_FOR
    # Seconds between background reads of the data-key counts for /metrics.
    key_status_interval: float = 60.0
    # Transport (see proxy.infra.tls): a second, internal API listener, and TLS on all.
    internal_listen: HostPort | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    tls_reload_interval: float = 5.0  # seconds between looks at the certificate files
    # Processes serving one port (SO_REUSEPORT) under `tokenproxy serve`'s supervisor.
    workers: int = 1
    # Where worker processes keep their metric values for the ops listener to sum (the
    # supervisor sets PROMETHEUS_MULTIPROC_DIR for its workers; unset = one process).
    metrics_multiproc_dir: Path | None = None
    # Whether this process runs the once-per-deployment jobs (retention sweep, idempotency
    # purge): every worker but the first is started with False.
    singleton_jobs: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:  # noqa: PLR0915 - one branch per setting reads best
        """Build settings from ``env`` (default os.environ); SettingsError names a bad one."""
        env = os.environ if env is None else env
        kwargs: dict[str, object] = {}
        if "TOKENPROXY_LISTEN" in env:
            kwargs["listen"] = _host_port("TOKENPROXY_LISTEN", env["TOKENPROXY_LISTEN"])
        if "TOKENPROXY_OPS_LISTEN" in env:
            kwargs["ops_listen"] = _host_port("TOKENPROXY_OPS_LISTEN", env["TOKENPROXY_OPS_LISTEN"])
        if "TOKENPROXY_DEMO_LISTEN" in env:
            kwargs["demo_listen"] = _host_port(
                "TOKENPROXY_DEMO_LISTEN", env["TOKENPROXY_DEMO_LISTEN"]
            )
        if "TOKENPROXY_VAULT_URL" in env:
            url = env["TOKENPROXY_VAULT_URL"]
            try:
                check_vault_url(url)
            except VaultUrlError as exc:
                # Only the scheme is echoed: a PostgreSQL URL may carry a password.
                raise SettingsError(
                    f"TOKENPROXY_VAULT_URL: {exc}; got a value starting {url[:12]!r}"
                ) from None
            kwargs["vault_url"] = url
        if env.get("TOKENPROXY_DATABASE_PASSWORD_FILE"):
            kwargs["vault_url"] = _with_database_password(
                str(kwargs.get("vault_url", "")), env["TOKENPROXY_DATABASE_PASSWORD_FILE"]
            )
        if "TOKENPROXY_KEYRING" in env:
            kwargs["keyring_path"] = Path(env["TOKENPROXY_KEYRING"])
        if "TOKENPROXY_CLIENTS" in env:
            kwargs["clients_path"] = Path(env["TOKENPROXY_CLIENTS"])
        if "TOKENPROXY_CLIENTS_RELOAD_INTERVAL" in env:
            kwargs["clients_reload_interval"] = _float(
                "TOKENPROXY_CLIENTS_RELOAD_INTERVAL",
                env["TOKENPROXY_CLIENTS_RELOAD_INTERVAL"],
                minimum=0.0,
            )
        key = _secret(env, "STRIPE_API_KEY")
        if key is not None:
            if not key.startswith(("sk_", "rk_")):
                raise SettingsError("STRIPE_API_KEY must be a Stripe secret or restricted key")
            kwargs["stripe_api_key"] = key
        if "TOKENPROXY_STRIPE_API_BASE" in env:
            base = env["TOKENPROXY_STRIPE_API_BASE"].rstrip("/")
            if not base.startswith(("https://", "http://")):
                raise SettingsError("TOKENPROXY_STRIPE_API_BASE must be an http(s) URL")
            kwargs["stripe_api_base"] = base
        if "TOKENPROXY_ALLOW_REDISPLAY" in env:
            redisplay = env["TOKENPROXY_ALLOW_REDISPLAY"].strip().lower()
            if redisplay not in ALLOW_REDISPLAY_VALUES:
                given = env["TOKENPROXY_ALLOW_REDISPLAY"]
                raise SettingsError(
                    "TOKENPROXY_ALLOW_REDISPLAY must be one of "
                    f"{', '.join(ALLOW_REDISPLAY_VALUES)}, got {given!r}"
                )
            kwargs["allow_redisplay"] = redisplay
        if "TOKENPROXY_PARTNER_TIMEOUT" in env:
            kwargs["partner_timeout"] = _float(
                "TOKENPROXY_PARTNER_TIMEOUT", env["TOKENPROXY_PARTNER_TIMEOUT"], minimum=0.1
            )
        if "TOKENPROXY_PARTNER_CONNECT_TIMEOUT" in env:
            kwargs["partner_connect_timeout"] = _float(
                "TOKENPROXY_PARTNER_CONNECT_TIMEOUT",
                env["TOKENPROXY_PARTNER_CONNECT_TIMEOUT"],
                minimum=0.05,
            )
        if "TOKENPROXY_MAX_BODY_BYTES" in env:
            kwargs["max_body_bytes"] = _int(
                "TOKENPROXY_MAX_BODY_BYTES", env["TOKENPROXY_MAX_BODY_BYTES"], minimum=1024
            )
        if "TOKENPROXY_LOG_LEVEL" in env:
            level = env["TOKENPROXY_LOG_LEVEL"].lower()
            if level not in {"debug", "info", "warning", "error"}:
                raise SettingsError("TOKENPROXY_LOG_LEVEL must be debug, info, warning or error")
            kwargs["log_level"] = level
        if "TOKENPROXY_LOG_FORMAT" in env:
            fmt = env["TOKENPROXY_LOG_FORMAT"].lower()
            if fmt not in {"json", "console", "auto"}:
                raise SettingsError("TOKENPROXY_LOG_FORMAT must be json, console or auto")
            kwargs["log_json"] = {"json": True, "console": False, "auto": None}[fmt]
        if "TOKENPROXY_MIGRATE_ON_START" in env:
            flag = env["TOKENPROXY_MIGRATE_ON_START"].lower()
            if flag not in {"true", "false", "1", "0"}:
                raise SettingsError("TOKENPROXY_MIGRATE_ON_START must be true or false")
            kwargs["migrate_on_start"] = flag in {"true", "1"}
        if "TOKENPROXY_MIGRATE_TIMEOUT" in env:
            kwargs["migrate_timeout"] = _float(
                "TOKENPROXY_MIGRATE_TIMEOUT", env["TOKENPROXY_MIGRATE_TIMEOUT"], minimum=1
            )
        if "TOKENPROXY_DB_POOL_MIN" in env:
            kwargs["db_pool_min"] = _int(
                "TOKENPROXY_DB_POOL_MIN", env["TOKENPROXY_DB_POOL_MIN"], minimum=0
            )
        if "TOKENPROXY_DB_POOL_MAX" in env:
            kwargs["db_pool_max"] = _int(
                "TOKENPROXY_DB_POOL_MAX", env["TOKENPROXY_DB_POOL_MAX"], minimum=1
            )
        if "TOKENPROXY_DB_TIMEOUT" in env:
            kwargs["db_timeout"] = _float(
                "TOKENPROXY_DB_TIMEOUT", env["TOKENPROXY_DB_TIMEOUT"], minimum=0.1
            )
        if "TOKENPROXY_SHUTDOWN_GRACE" in env:
            kwargs["shutdown_grace"] = _float(
                "TOKENPROXY_SHUTDOWN_GRACE", env["TOKENPROXY_SHUTDOWN_GRACE"], minimum=0
            )
        for kind in ("CARD", "BANK", "INVOICE"):
            name = f"TOKENPROXY_RETENTION_{kind}_DAYS"
            if name in env:
                kwargs[f"retention_{kind.lower()}_days"] = _int(name, env[name], minimum=0)
        if "TOKENPROXY_PURGE_INTERVAL" in env:
            interval = _float(
                "TOKENPROXY_PURGE_INTERVAL", env["TOKENPROXY_PURGE_INTERVAL"], minimum=0
            )
            if 0 < interval < 1:
                raise SettingsError("TOKENPROXY_PURGE_INTERVAL must be 0 (off) or at least 1")
            kwargs["purge_interval"] = interval
        if "TOKENPROXY_LAST_USED_FLUSH_INTERVAL" in env:
            kwargs["last_used_flush_interval"] = _float(
                "TOKENPROXY_LAST_USED_FLUSH_INTERVAL",
                env["TOKENPROXY_LAST_USED_FLUSH_INTERVAL"],
                minimum=0.05,
            )
        kwargs.update(_resilience_settings(env))
        if "TOKENPROXY_CORS_ORIGINS" in env:
            try:
                kwargs["cors_origins"] = parse_origin_list(env["TOKENPROXY_CORS_ORIGINS"])
            except OriginError as exc:
                raise SettingsError(f"TOKENPROXY_CORS_ORIGINS: {exc}") from None
        if "TOKENPROXY_PUBLISHABLE_RATE_PER_MINUTE" in env:
            kwargs["publishable_rate_per_minute"] = _float(
                "TOKENPROXY_PUBLISHABLE_RATE_PER_MINUTE",
                env["TOKENPROXY_PUBLISHABLE_RATE_PER_MINUTE"],
                minimum=0.1,
            )
        if "TOKENPROXY_PUBLISHABLE_BURST" in env:
            kwargs["publishable_burst"] = _int(
                "TOKENPROXY_PUBLISHABLE_BURST", env["TOKENPROXY_PUBLISHABLE_BURST"], minimum=1
            )
        kwargs.update(_kek_settings(env))
        kwargs.update(_worker_settings(env))
        kwargs.update(_audit_settings(env))
        kwargs.update(_webhook_settings(env))
        kwargs.update(_trusted_proxy_settings(env))
        if "TOKENPROXY_KEY_STATUS_INTERVAL" in env:
            kwargs["key_status_interval"] = _float(
                "TOKENPROXY_KEY_STATUS_INTERVAL", env["TOKENPROXY_KEY_STATUS_INTERVAL"], minimum=1
            )
        kwargs.update(_transport_settings(env))
        settings = cls(**kwargs)  # type: ignore[arg-type]
        settings = _with_shutdown_grace(settings, explicit="shutdown_grace" in kwargs)
        if settings.db_pool_min > settings.db_pool_max:
            raise SettingsError("TOKENPROXY_DB_POOL_MIN must not exceed TOKENPROXY_DB_POOL_MAX")
        if settings.stripe_api_key is None and not _sandbox_base(settings.stripe_api_base):
            # Without a key the proxy would call this partner with a placeholder: only a
            # sandbox on this machine (tokenproxy dev, the tests) may be run so.
            raise SettingsError(
                "STRIPE_API_KEY (or STRIPE_API_KEY_FILE) is required unless "
                "TOKENPROXY_STRIPE_API_BASE points at a sandbox partner on loopback"
            )
        return settings

    def outbound_rate(self) -> float | None:
        """Partner calls a second for the deployment, or None for no budget.

        ``TOKENPROXY_PARTNER_RATE`` when set; else DEFAULT_PARTNER_RATE against Stripe, and
        no budget against a sandbox on loopback, which has no rate limiter to protect.
        """
        if self.partner_rate is not None:
            return self.partner_rate
        return None if _sandbox_base(self.stripe_api_base) else DEFAULT_PARTNER_RATE

    def retention_policy(self) -> RetentionPolicy:
        """The vault's retention policy from these settings."""
        return RetentionPolicy(
            card_days=self.retention_card_days,
            bank_days=self.retention_bank_days,
            invoice_days=self.retention_invoice_days,
        )

    @property
    def vault_location(self) -> str:
        """Where the vault lives, safe to log: the absolute SQLite file or the server."""
        return describe_vault_url(self.vault_url)

    def strip_hazmat(self) -> dict[str, object]:
        """A copy safe to log: no secrets."""
        return {
            "listen": str(self.listen),
            "ops_listen": str(self.ops_listen),
            "vault_backend": self.vault_url.split(":", 1)[0],
            "vault": self.vault_location,
            "keyring_path": str(self.keyring_path),
            "clients_path": str(self.clients_path),
            "stripe_api_base": self.stripe_api_base,
            "stripe_api_key_set": self.stripe_api_key is not None,
            "partner_timeout": self.partner_timeout,
            "db_pool": f"{self.db_pool_min}-{self.db_pool_max}",
            "retention_days": {
                "card": self.retention_card_days,
                "bank": self.retention_bank_days,
                "invoice": self.retention_invoice_days,
            },
            "purge_interval": self.purge_interval,
            "kek_provider": self.kek_provider,
            "partner_max_retries": self.partner_max_retries,
            "idempotency_ttl": self.idempotency_ttl,
            "cors_origins": list(self.cors_origins),
            "stripe_webhook_secrets": len(self.stripe_webhook_secrets),
            "trusted_proxies": [str(net) for net in self.trusted_proxies],
            "forwarded_header": self.forwarded_header,
            "shutdown_grace": self.shutdown_grace,
            "migrate_on_start": self.migrate_on_start,
            "internal_listen": str(self.internal_listen) if self.internal_listen else None,
            "tls": self.tls_cert_file is not None,
            "tls_client_ca": self.tls_client_ca_file is not None,
        }

    @property
    def partner_call_worst_case(self) -> float:
        """Longest one partner call may take: the retry budget, then one more attempt's timeout.

        A retry starts while the budget lasts and runs up to TOKENPROXY_PARTNER_TIMEOUT.
        """
        if self.partner_max_retries == 0:
            return self.partner_timeout
        return self.partner_retry_budget + self.partner_timeout

    @property
    def min_shutdown_grace(self) -> float:
        """The least shutdown grace that lets an in-flight tokenization finish.

        A SIGTERM can arrive as a partner call starts; after it the token is written and
        its audit event appended (each bounded by TOKENPROXY_DB_TIMEOUT). Cut shorter, the
        partner object exists and no token names it: an orphan per in-flight request.
        """
        return self.partner_call_worst_case + 2 * self.db_timeout

    @property
    def idempotency_stale_after(self) -> float:
        """How long an in-flight idempotency record may go untouched before a retry takes it over.

        The owner's whole partner phase is bounded by the retry budget plus one more call's
        timeout; the margin covers the vault writes around it and clock skew between replicas.
        """
        return self.partner_retry_budget + self.partner_timeout + 30.0


def _with_shutdown_grace(settings: Settings, *, explicit: bool) -> Settings:
    """``settings`` with the shutdown grace derived, or checked when it was set."""
    needed = settings.min_shutdown_grace
    if not explicit:
        return replace(settings, shutdown_grace=needed)
    if settings.shutdown_grace < needed:
        raise SettingsError(
            f"TOKENPROXY_SHUTDOWN_GRACE must be at least {needed:g} seconds (the longest"
            f" partner call, {settings.partner_call_worst_case:g} s: retry budget plus"
            " partner timeout, then twice TOKENPROXY_DB_TIMEOUT) so a SIGTERM never cuts"
            f" a partner call; got {settings.shutdown_grace:g}"
        )
    return settings


def listen_addresses(env: Mapping[str, str] | None = None) -> tuple[HostPort, HostPort]:
    """The API and ops listen addresses alone, read as ``Settings.from_env`` reads them.

    ``dev`` binds both before it writes or prints anything, and before the rest of the
    settings can be read (its sandbox partner sets some of them).
    """
    env = os.environ if env is None else env
    defaults = Settings()
    api, ops = defaults.listen, defaults.ops_listen
    if "TOKENPROXY_LISTEN" in env:
        api = _host_port("TOKENPROXY_LISTEN", env["TOKENPROXY_LISTEN"])
    if "TOKENPROXY_OPS_LISTEN" in env:
        ops = _host_port("TOKENPROXY_OPS_LISTEN", env["TOKENPROXY_OPS_LISTEN"])
    return api, ops


def _sandbox_base(base: str) -> bool:
    """Whether the partner base is a sandbox on this machine (a loopback host)."""
    host = urlsplit(base).hostname or ""
    return host in {"localhost", "::1"} or host.startswith("127.")


# Stripe's values of a PaymentMethod's allow_redisplay, its default first
# (https://docs.stripe.com/api/payment_methods/object#payment_method_object-allow_redisplay).
ALLOW_REDISPLAY_VALUES = ("unspecified", "limited", "always")

# Stripe's per-endpoint default (25/s) binds POST /v1/payment_methods before the
# account's 100/s in live mode (25/s in a sandbox) does. The budget lets at most 1.5x its
# rate through in any one second (burst and leases, see proxy.partners.budget): 15 keeps
# that under 25, and leaves most of the account's rate to the billing service's own calls
# (https://docs.stripe.com/rate-limits).
DEFAULT_PARTNER_RATE = 15.0

# Stripe's idempotency window: "keys ... at least 24 hours old" may be pruned, no sooner.
MIN_IDEMPOTENCY_TTL = 24 * 3600.0


def _resilience_settings(env: Mapping[str, str]) -> dict[str, object]:
    """The idempotency, retry, breaker and request-limit settings."""
    floats = {
        # Stripe keeps idempotency keys at least 24 h: a shorter window would send a
        # reused client key's new request under a partner key Stripe still holds
        # (https://docs.stripe.com/api/idempotent_requests).
        "TOKENPROXY_IDEMPOTENCY_TTL": ("idempotency_ttl", MIN_IDEMPOTENCY_TTL),
        "TOKENPROXY_PARTNER_RETRY_BUDGET": ("partner_retry_budget", 0.0),
        "TOKENPROXY_PARTNER_BACKOFF_BASE": ("partner_backoff_base", 0.0),
        "TOKENPROXY_PARTNER_BACKOFF_MAX": ("partner_backoff_max", 0.0),
        "TOKENPROXY_BREAKER_RESET": ("breaker_reset", 0.05),
        "TOKENPROXY_BODY_READ_TIMEOUT": ("body_read_timeout", 0.1),
        "TOKENPROXY_HEADER_TIMEOUT": ("header_timeout", 0.1),
        "TOKENPROXY_PARTNER_RATE": ("partner_rate", 0.1),
    }
    ints = {
        "TOKENPROXY_PARTNER_MAX_RETRIES": ("partner_max_retries", 0),
        "TOKENPROXY_BREAKER_FAILURES": ("breaker_failures", 1),
        "TOKENPROXY_MAX_HEADER_BYTES": ("max_header_bytes", 1024),
        "TOKENPROXY_MAX_CONNECTIONS": ("max_connections", 1),
        "TOKENPROXY_PARTNER_MAX_IN_FLIGHT": ("partner_max_in_flight", 1),
    }
    out: dict[str, object] = {}
    for name, (attr, minimum) in floats.items():
        if name in env:
            out[attr] = _float(name, env[name], minimum=minimum)
    for name, (attr, low) in ints.items():
        if name in env:
            out[attr] = _int(name, env[name], minimum=low)
    return out


def _worker_settings(env: Mapping[str, str]) -> dict[str, object]:
    """TOKENPROXY_WORKERS (a count or ``auto``) and the metrics directory workers share."""
    kwargs: dict[str, object] = {}
    workers = env.get("TOKENPROXY_WORKERS", "1").strip().lower()
    if workers == "auto":
        kwargs["workers"] = len(os.sched_getaffinity(0)) or 1
    else:
        kwargs["workers"] = _int("TOKENPROXY_WORKERS", workers, minimum=1)
    if env.get("PROMETHEUS_MULTIPROC_DIR"):
        kwargs["metrics_multiproc_dir"] = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    return kwargs


def _kek_settings(env: Mapping[str, str]) -> dict[str, object]:
    """TOKENPROXY_KEK_PROVIDER and the KMS settings it needs."""
    kwargs: dict[str, object] = {}
    provider = env.get("TOKENPROXY_KEK_PROVIDER", "local").lower()
    if provider not in {"local", "aws-kms"}:
        raise SettingsError("TOKENPROXY_KEK_PROVIDER must be local or aws-kms")
    kwargs["kek_provider"] = provider
    if env.get("TOKENPROXY_KMS_KEY_ID"):
        kwargs["kms_key_id"] = env["TOKENPROXY_KMS_KEY_ID"]
    if env.get("TOKENPROXY_KMS_ENDPOINT"):
        endpoint = env["TOKENPROXY_KMS_ENDPOINT"].rstrip("/")
        if not endpoint.startswith(("https://", "http://")):
            raise SettingsError("TOKENPROXY_KMS_ENDPOINT must be an http(s) URL")
        kwargs["kms_endpoint"] = endpoint
    if env.get("TOKENPROXY_KMS_REGION"):
        kwargs["kms_region"] = env["TOKENPROXY_KMS_REGION"]
    if "TOKENPROXY_KMS_REFRESH_SECONDS" in env:
        kwargs["kms_refresh_interval"] = _float(
            "TOKENPROXY_KMS_REFRESH_SECONDS", env["TOKENPROXY_KMS_REFRESH_SECONDS"], minimum=1
        )
    return kwargs


# PCI DSS 10.5.1: audit logs are retained for at least 12 months.
MIN_AUDIT_RETENTION_DAYS = 365


def _audit_settings(env: Mapping[str, str]) -> dict[str, object]:
    """The auth-failure throttle, its audit aggregation and the audit trail's retention."""
    out: dict[str, object] = {}
    if "TOKENPROXY_AUTH_FAILURE_LIMIT" in env:
        out["auth_failure_limit"] = _int(
            "TOKENPROXY_AUTH_FAILURE_LIMIT", env["TOKENPROXY_AUTH_FAILURE_LIMIT"], minimum=1
        )
    if "TOKENPROXY_AUTH_FAILURE_WINDOW" in env:
        out["auth_failure_window"] = _float(
            "TOKENPROXY_AUTH_FAILURE_WINDOW", env["TOKENPROXY_AUTH_FAILURE_WINDOW"], minimum=1
        )
    if "TOKENPROXY_AUTH_FAILURE_MAX_SOURCES" in env:
        out["auth_failure_max_sources"] = _int(
            "TOKENPROXY_AUTH_FAILURE_MAX_SOURCES",
            env["TOKENPROXY_AUTH_FAILURE_MAX_SOURCES"],
            minimum=1,
        )
    if "TOKENPROXY_AUTH_FAILURE_AUDIT_INTERVAL" in env:
        out["auth_failure_audit_interval"] = _float(
            "TOKENPROXY_AUTH_FAILURE_AUDIT_INTERVAL",
            env["TOKENPROXY_AUTH_FAILURE_AUDIT_INTERVAL"],
            minimum=1,
        )
    if "TOKENPROXY_AUDIT_RETENTION_DAYS" in env:
        out["audit_retention_days"] = _int(
            "TOKENPROXY_AUDIT_RETENTION_DAYS",
            env["TOKENPROXY_AUDIT_RETENTION_DAYS"],
            minimum=MIN_AUDIT_RETENTION_DAYS,
        )
    return out


def _webhook_settings(env: Mapping[str, str]) -> dict[str, object]:
    """The Stripe webhook signing secrets: one ``whsec_…`` per line of a file.

    A file, never the environment itself: rotating means adding the new secret as a
    second line, and removing the old one once Stripe has stopped signing with it.
    """
    path = env.get("TOKENPROXY_STRIPE_WEBHOOK_SECRET_FILE")
    if not path:
        return {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(
            f"TOKENPROXY_STRIPE_WEBHOOK_SECRET_FILE cannot be read: {path} ({exc.strerror})"
        ) from None
    found = tuple(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )
    if not found:
        raise SettingsError(f"TOKENPROXY_STRIPE_WEBHOOK_SECRET_FILE holds no secret: {path}")
    if not all(secret.startswith("whsec_") for secret in found):
        raise SettingsError(
            "TOKENPROXY_STRIPE_WEBHOOK_SECRET_FILE: every line must be a whsec_ signing secret"
        )
    return {"stripe_webhook_secrets": found}


def _trusted_proxy_settings(env: Mapping[str, str]) -> dict[str, object]:
    """TOKENPROXY_TRUSTED_PROXIES (CIDRs) and TOKENPROXY_FORWARDED_HEADER."""
    out: dict[str, object] = {}
    if env.get("TOKENPROXY_TRUSTED_PROXIES", "").strip():
        networks: list[IPNetwork] = []
        for item in env["TOKENPROXY_TRUSTED_PROXIES"].split(","):
            try:
                # strict: 10.0.0.1/8 is more likely a typo than a network.
                networks.append(ipaddress.ip_network(item.strip(), strict=True))
            except ValueError:
                raise SettingsError(
                    "TOKENPROXY_TRUSTED_PROXIES must be comma-separated addresses or CIDR"
                    f" networks (e.g. 10.0.0.0/8), got {item.strip()!r}"
                ) from None
            if networks[-1].prefixlen == 0:
                # Trusting every peer lets any client write its own address into the audit.
                raise SettingsError(
                    f"TOKENPROXY_TRUSTED_PROXIES must not trust every address ({item.strip()})"
                )
        out["trusted_proxies"] = tuple(networks)
    if "TOKENPROXY_FORWARDED_HEADER" in env:
        names = {X_FORWARDED_FOR.lower(): X_FORWARDED_FOR, FORWARDED.lower(): FORWARDED}
        name = names.get(env["TOKENPROXY_FORWARDED_HEADER"].strip().lower())
        if name is None:
            raise SettingsError("TOKENPROXY_FORWARDED_HEADER must be X-Forwarded-For or Forwarded")
        out["forwarded_header"] = name
    return out


def _transport_settings(env: Mapping[str, str]) -> dict[str, object]:
    """The internal listener and the TLS files; a client CA needs TLS and that listener."""
    out: dict[str, object] = {}
    if env.get("TOKENPROXY_INTERNAL_LISTEN"):
        out["internal_listen"] = _host_port(
            "TOKENPROXY_INTERNAL_LISTEN", env["TOKENPROXY_INTERNAL_LISTEN"]
        )
    files = {
        "TOKENPROXY_TLS_CERT_FILE": "tls_cert_file",
        "TOKENPROXY_TLS_KEY_FILE": "tls_key_file",
        "TOKENPROXY_TLS_CLIENT_CA_FILE": "tls_client_ca_file",
    }
    for name, attr in files.items():
        if env.get(name):
            out[attr] = Path(env[name])
    if ("tls_cert_file" in out) != ("tls_key_file" in out):
        raise SettingsError(
            "TOKENPROXY_TLS_CERT_FILE and TOKENPROXY_TLS_KEY_FILE are set together or not at all"
        )
    if "tls_client_ca_file" in out:
        if "tls_cert_file" not in out:
            raise SettingsError("TOKENPROXY_TLS_CLIENT_CA_FILE needs TOKENPROXY_TLS_CERT_FILE")
        if "internal_listen" not in out:
            # Browsers have no client certificate: only the internal listener can ask for one.
            raise SettingsError("TOKENPROXY_TLS_CLIENT_CA_FILE needs TOKENPROXY_INTERNAL_LISTEN")
    if "TOKENPROXY_TLS_RELOAD_INTERVAL" in env:
        out["tls_reload_interval"] = _float(
            "TOKENPROXY_TLS_RELOAD_INTERVAL", env["TOKENPROXY_TLS_RELOAD_INTERVAL"], minimum=0.1
        )
    return out
