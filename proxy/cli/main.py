"""The `tokenproxy` command: serve, dev, keys, clients, audit, migrate, purge.

Secrets never come from the command line (they would show in `ps` and shell
history): keys are read from files named by settings, client keys are printed once.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from prometheus_client import write_to_textfile

from proxy.core.retention import AUDIT_KIND, audit_cutoff
from proxy.infra.clients import (
    PUBLISHABLE_SCOPES,
    SCOPES,
    ClientsFileError,
    add_client,
    parse_grace,
    parse_origins,
    parse_scopes,
    parse_time,
    read_entries,
    remove_client,
    rotate_client,
)
from proxy.infra.keys import AdminProvider, init_keys, load_provider
from proxy.infra.log import configure_logging
from proxy.infra.metrics import Metrics
from proxy.infra.settings import Settings, SettingsError, listen_addresses
from proxy.web import devmode
from proxy.web.app import bind_listeners, serve
from vault import Vault, VaultError
from vault.audit import EventType, Outcome, parse_since
from vault.keys.ring import init_keyring
from vault.rotation import (
    DEFAULT_BATCH,
    RewrapProgress,
    key_status,
    retire_version,
    rewrap,
    rewrap_remaining,
)

T = TypeVar("T")


def _fail(message: str) -> int:
    print(f"tokenproxy: {message}", file=sys.stderr)
    return 2


def _settings(*, need_partner: bool = True) -> Settings:
    env = dict(os.environ)
    if not need_partner:
        # Admin commands never call the partner; don't demand its key.
        env.setdefault("TOKENPROXY_STRIPE_API_BASE", "http://127.0.0.1:1")
    return Settings.from_env(env)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the proxy with settings from the environment."""

    settings = _settings()
    sockets = bind_listeners(settings.listen, settings.ops_listen)
    configure_logging(json=settings.log_json, level=settings.log_level)
    asyncio.run(serve(settings, sockets=sockets))
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    """`make run`: vault, key ring and clients under var/, localstripe, the demo checkout page."""
    # The sandbox partner is a development tool of the source tree, not of the wheel.
    try:
        from tokenproxy_sandbox.launcher import SANDBOX_API_KEY, Localstripe
    except ImportError:
        print(
            "tokenproxy: `dev` needs the sandbox partner (make venv installs it from sandbox/); "
            "production installs serve with `tokenproxy serve`",
            file=sys.stderr,
        )
        return 2

    sockets = bind_listeners(*listen_addresses())
    var = Path(os.environ.get("TOKENPROXY_DEV_DIR", "var"))
    var.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("TOKENPROXY_VAULT_URL", f"sqlite:///{var / 'vault.db'}")
    os.environ.setdefault("TOKENPROXY_KEYRING", str(var / "keyring.json"))
    os.environ.setdefault("TOKENPROXY_CLIENTS", str(var / "clients.json"))
    keyring = Path(os.environ["TOKENPROXY_KEYRING"])
    if not keyring.exists():
        init_keyring(keyring)
    clients = Path(os.environ["TOKENPROXY_CLIENTS"])
    dev_key_file = var / "dev-client.key"
    if not clients.exists() or not dev_key_file.exists():
        key = add_client(
            clients,
            f"dev-{os.getpid()}",
            parse_scopes("tokenize,read,resolve,delete,admin,invoice"),
        )
        fd = os.open(dev_key_file, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
    sandbox: Localstripe | None = None
    if not os.environ.get("STRIPE_API_KEY") and not os.environ.get("STRIPE_API_KEY_FILE"):
        sandbox = Localstripe(log=var / "localstripe.log")
        os.environ["STRIPE_API_KEY"] = SANDBOX_API_KEY
        os.environ["TOKENPROXY_STRIPE_API_BASE"] = sandbox.base_url
        # For a billing service tried against the dev stack (docs/billing.md): the sandbox
        # partner's address changes per run.
        (var / "dev-partner.url").write_text(sandbox.base_url + "\n")
    try:
        settings = _settings()
        configure_logging(json=settings.log_json, level=settings.log_level)
        demo_origin = devmode.browser_origin(settings.demo_listen)
        demo_key = devmode.ensure_demo_key(
            settings.clients_path, var / devmode.DEMO_KEY_FILE, demo_origin
        )
        settings = devmode.with_demo_origin(settings, demo_origin)
        demo_sock = devmode.bind_demo(settings)
        partner = f"localstripe at {sandbox.base_url}" if sandbox else settings.stripe_api_base
        print(
            devmode.banner(
                settings,
                partner=partner,
                dev_key_file=dev_key_file,
                demo_url=demo_origin + "/" if demo_sock is not None else None,
                state_dir=var,
                sandbox=sandbox is not None,
            ),
            flush=True,
        )
        if demo_sock is None:
            asyncio.run(serve(settings, sockets=sockets))
        else:
            demo = devmode.create_demo_app(
                devmode.browser_origin(settings.listen), demo_key, str(dev_key_file)
            )
            asyncio.run(devmode.serve_with_demo(settings, demo, demo_sock, sockets=sockets))
    finally:
        if sandbox is not None:
            sandbox.stop()
    return 0


def _actor() -> str:
    """Who runs an admin command, for the audit trail (PCI DSS 10.2.2: user id)."""
    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):
        return f"cli:uid-{os.getuid()}"


def _origin() -> str:
    return socket.gethostname()[:200]


def _ring(settings: Settings) -> str:
    """How messages name the configured key ring."""
    return f"key ring {settings.keyring_path}"


def _with_vault(
    settings: Settings,
    work: Callable[[Vault, AdminProvider], Awaitable[T]],
    *,
    migrate: bool = True,
) -> T:
    """Run ``work`` with the configured vault and key provider, then close the vault.

    The key ring is checked against the vault first (``Vault.check_key_ring``): a ring
    that is not the vault's own is refused before any command reads or writes anything.
    ``migrate=False`` leaves migrations and that check to ``work``.
    """

    async def run() -> T:
        keys = load_provider(settings)
        vault = await Vault.open(
            settings.vault_url,
            keys,
            migrate=migrate and settings.migrate_on_start,
            check_keys=migrate,
            source=_ring(settings),
            # CLI commands run one statement at a time: no idle connections up front.
            pool_min=0,
            pool_max=2,
            db_timeout=settings.db_timeout,
        )
        try:
            return await work(vault, keys)
        finally:
            await vault.close()

    return asyncio.run(run())


async def _audit(
    vault: Vault,
    event_type: str,
    *,
    ok: bool,
    resource: str | None,
    detail: dict[str, str | int | bool | None] | None = None,
) -> None:
    await vault.audit.append(
        event_type,
        outcome=Outcome.SUCCESS if ok else Outcome.FAILURE,
        actor=_actor(),
        origin=_origin(),
        resource=resource,
        detail=detail,
    )


def cmd_keys_init(args: argparse.Namespace) -> int:
    """Create a new key ring file, or KMS key map (refuses to overwrite one)."""
    settings = _settings(need_partner=False)
    active = init_keys(settings)

    async def record(vault: Vault, keys: AdminProvider) -> None:
        await _audit(vault, EventType.KEY_INIT, ok=True, resource=f"key_version:{active}")

    _with_vault(settings, record)
    print(f"created key ring {settings.keyring_path} (active version {active})")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """Add a key version and make it active for new data keys."""
    settings = _settings(need_partner=False)

    async def work(vault: Vault, keys: AdminProvider) -> tuple[int, int, int]:
        old = keys.active_version
        try:
            new = keys.rotate()
            # Record the new version's check value now: servers adopt it within seconds.
            await vault.check_key_ring(source=_ring(settings))
        except VaultError:
            await _audit(vault, EventType.KEY_ROTATE, ok=False, resource=f"key_version:{old}")
            raise
        await _audit(
            vault,
            EventType.KEY_ROTATE,
            ok=True,
            resource=f"key_version:{new}",
            detail={"from": old},
        )
        return old, new, await rewrap_remaining(vault)

    old, new, remaining = _with_vault(settings, work)
    print(f"rotated: version {new} is active (was {old}); {remaining} data key(s) to rewrap")
    print("next: tokenproxy keys rewrap, then tokenproxy keys retire " + str(old))
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    """Show every key version, its state and what it wraps (what `keys retire` counts)."""
    settings = _settings(need_partner=False)

    async def work(vault: Vault, keys: AdminProvider) -> int:
        status = await key_status(vault)
        print(f"{'version':>7}  {'created':20}  {'state':12}  {'deks':>10}  {'idempotency':>11}")
        for s in status:
            created = s.created_at.strftime("%Y-%m-%dT%H:%M:%SZ") if s.created_at else "-"
            print(
                f"{s.version:>7}  {created:20}  {s.state:12}  {s.deks:>10}  "
                f"{s.idempotency_keys:>11}"
            )
        remaining = sum(s.in_use for s in status if s.version != keys.active_version)
        print(f"rewrap remaining: {remaining}")
        return 0

    return _with_vault(settings, work)


def cmd_keys_retire(args: argparse.Namespace) -> int:
    """Retire a key version; refused while any data key still uses it."""
    settings = _settings(need_partner=False)

    async def work(vault: Vault, keys: AdminProvider) -> None:
        resource = f"key_version:{args.version}"
        try:
            await retire_version(vault, keys, args.version)
        except VaultError:
            await _audit(vault, EventType.KEY_RETIRE, ok=False, resource=resource)
            raise
        await _audit(vault, EventType.KEY_RETIRE, ok=True, resource=resource)

    _with_vault(settings, work)
    print(f"retired key version {args.version}")
    return 0


def cmd_keys_rewrap(args: argparse.Namespace) -> int:
    """Re-wrap every data key on an older version with the active one; resumable."""
    settings = _settings(need_partner=False)

    def show(p: RewrapProgress) -> None:
        print(
            f"rewrap: {p.rewrapped}/{p.total} data keys moved to version {p.target_version}, "
            f"{p.remaining} remaining",
            flush=True,
        )

    async def work(vault: Vault, keys: AdminProvider) -> RewrapProgress:
        try:
            progress = await rewrap(vault, batch_size=args.batch_size, on_batch=show)
        except VaultError:
            await _audit(vault, EventType.KEY_REWRAP, ok=False, resource=None)
            raise
        await _audit(
            vault,
            EventType.KEY_REWRAP,
            ok=progress.failed == 0,
            resource=f"key_version:{progress.target_version}",
            detail={"rewrapped": progress.rewrapped, "failed": progress.failed},
        )
        return progress

    p = _with_vault(settings, work)
    print(
        f"rewrap done: {p.rewrapped} moved to version {p.target_version}, "
        f"{p.failed} failed, {p.remaining} remaining"
    )
    if p.failed:
        return _fail(f"{p.failed} data key(s) could not be unwrapped; see `tokenproxy keys list`")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Walk the audit hash chain; exit 1 naming the first broken event."""
    settings = _settings(need_partner=False)

    async def work(vault: Vault, keys: AdminProvider) -> int:
        report = await vault.audit.verify()
        if report.first_break is not None:
            print(f"tokenproxy: audit chain broken: {report.first_break.message}", file=sys.stderr)
            return 1
        since = ""
        if report.checkpoint_seq is not None:
            since = (
                f" from event {report.first_seq}"
                f" (older events pruned behind checkpoint event {report.checkpoint_seq})"
            )
        print(f"audit chain intact: {report.events} events{since}, head {report.head}")
        return 0

    return _with_vault(settings, work)


def cmd_audit_digest(args: argparse.Namespace) -> int:
    """Print the keyed digest the audit trail records for a token or customer ref."""
    settings = _settings(need_partner=False)

    async def work(vault: Vault, keys: AdminProvider) -> int:
        print(vault.audit.digest(args.what, args.value))
        return 0

    return _with_vault(settings, work)


def cmd_audit_export(args: argparse.Namespace) -> int:
    """Write audit events as JSON lines to stdout."""
    settings = _settings(need_partner=False)
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError:
        return _fail("--since must be an ISO-8601 time, e.g. 2026-01-31T00:00:00Z")

    async def work(vault: Vault, keys: AdminProvider) -> int:
        return await vault.audit.export(sys.stdout.write, since=since)

    _with_vault(settings, work)
    return 0


def _add_client(settings: Settings, args: argparse.Namespace) -> tuple[str, list[str]]:
    """Add the client ``args`` describe; returns (scopes, lines to print). ValueError if bad."""
    if args.publishable:
        if args.scopes not in (None, "tokenize"):
            raise ValueError("a publishable client holds only the tokenize scope")
        if not args.origins:
            raise ValueError("a publishable client needs --origins https://shop.example[,...]")
        origins = parse_origins(args.origins)
        key = add_client(
            settings.clients_path,
            args.name,
            PUBLISHABLE_SCOPES,
            publishable=True,
            origins=origins,
        )
        lines = [f"publishable client {args.name!r} added for {', '.join(sorted(origins))}."]
        missing = origins - set(settings.cors_origins)
        if missing:
            lines.append(
                f"note: add {', '.join(sorted(missing))} to TOKENPROXY_CORS_ORIGINS as well."
            )
        lines += ["Its key is public by design (it goes in the checkout page):", key]
        return ",".join(sorted(PUBLISHABLE_SCOPES)), lines
    if args.scopes is None:
        raise ValueError("--scopes is required (e.g. --scopes resolve)")
    if args.origins:
        raise ValueError("--origins applies to publishable clients only (add --publishable)")
    scopes = parse_scopes(args.scopes)
    key = add_client(settings.clients_path, args.name, scopes)
    return ",".join(sorted(scopes)), [
        f"client {args.name!r} added with scopes {','.join(sorted(scopes))}.",
        "Its key is shown only this once; store it in the service's secret store:",
        key,
    ]


def cmd_clients_add(args: argparse.Namespace) -> int:
    """Add a client and print its key once (and record the change in the audit trail)."""
    settings = _settings(need_partner=False)

    async def work(vault: Vault, keys: AdminProvider) -> int:
        resource = f"client:{args.name}"
        try:
            scopes, lines = _add_client(settings, args)
        except ValueError as exc:
            # A refused name may be anything typed, a card number even: only its digest.
            refused = vault.audit.digest("client", args.name)
            await _audit(vault, EventType.CLIENT_ADD, ok=False, resource=refused)
            return _fail(str(exc))
        detail: dict[str, str | int | bool | None] = {
            "scopes": scopes,
            "publishable": bool(args.publishable),
        }
        await _audit(vault, EventType.CLIENT_ADD, ok=True, resource=resource, detail=detail)
        print("\n".join(lines))
        return 0

    return _with_vault(settings, work)


def cmd_clients_list(args: argparse.Namespace) -> int:
    """Print every client: name, kind, scopes, created, and previous keys' end; never a key."""
    settings = _settings(need_partner=False)
    entries = read_entries(settings.clients_path)
    now = datetime.now(UTC)
    rows = [("NAME", "KIND", "SCOPES", "CREATED", "PREVIOUS KEY VALID UNTIL")]
    for entry in entries:
        client = entry.client
        live = sorted(p.valid_until for p in entry.previous if p.valid_until > now)
        rows.append(
            (
                client.name,
                "publishable" if client.publishable else "secret",
                ",".join(sorted(client.scopes)),
                entry.created_at or "-",
                ", ".join(t.astimezone(UTC).isoformat(timespec="seconds") for t in live) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def cmd_clients_remove(args: argparse.Namespace) -> int:
    """Remove a client and all its keys (and record it in the audit trail)."""
    settings = _settings(need_partner=False)

    async def work(vault: Vault, keys: AdminProvider) -> int:
        resource = f"client:{args.name}"[:200]
        try:
            remove_client(settings.clients_path, args.name)
        except ValueError as exc:
            await _audit(vault, EventType.CLIENT_REMOVE, ok=False, resource=resource)
            return _fail(str(exc))
        await _audit(vault, EventType.CLIENT_REMOVE, ok=True, resource=resource)
        print(
            f"client {args.name!r} removed; a serving proxy refuses its keys after its next look."
        )
        return 0

    return _with_vault(settings, work)


def cmd_clients_rotate(args: argparse.Namespace) -> int:
    """Give a client a new key, print it once; the old key works until the given time."""
    settings = _settings(need_partner=False)

    async def work(vault: Vault, keys: AdminProvider) -> int:
        resource = f"client:{args.name}"[:200]
        try:
            if args.old_valid_until is not None:
                until = parse_time(args.old_valid_until)
            else:
                until = datetime.now(UTC) + parse_grace(args.grace)
            key = rotate_client(settings.clients_path, args.name, old_valid_until=until)
        except ValueError as exc:
            await _audit(vault, EventType.CLIENT_ROTATE, ok=False, resource=resource)
            return _fail(str(exc))
        stamp = until.astimezone(UTC).isoformat(timespec="seconds")
        detail: dict[str, str | int | bool | None] = {"old_valid_until": stamp}
        await _audit(vault, EventType.CLIENT_ROTATE, ok=True, resource=resource, detail=detail)
        old = (
            f"the old key works until {stamp}"
            if until > datetime.now(UTC)
            else "the old key no longer works"
        )
        print(
            f"client {args.name!r} has a new key; {old}.\n"
            "The new key is shown only this once; store it in the service's secret store:\n"
            f"{key}"
        )
        return 0

    return _with_vault(settings, work)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply pending schema migrations to the configured vault."""
    settings = _settings(need_partner=False)

    async def work(vault: Vault, keys: AdminProvider) -> int:
        # The check needs the schema: a vault older than its table gets it here first.
        version = await vault.backend.migrate()
        await vault.check_key_ring(source=_ring(settings))
        return version

    version = _with_vault(settings, work, migrate=False)
    print(f"vault schema at version {version}")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    """Delete (or with --dry-run count) every token and audit event past retention."""

    settings = _settings(need_partner=False)
    policy = settings.retention_policy()
    if not policy.active:
        print("retention: every token kind is kept (no TOKENPROXY_RETENTION_*_DAYS set)")

    async def work(vault: Vault, keys: AdminProvider) -> dict[str, int]:
        vault.retention = policy
        counts = await vault.purge_expired(dry_run=args.dry_run) if policy.active else {}
        pruned = await vault.audit.prune(
            audit_cutoff(settings.audit_retention_days),
            actor=_actor(),
            origin=_origin(),
            dry_run=args.dry_run,
        )
        counts[AUDIT_KIND] = pruned.pruned
        if not args.dry_run:
            await _audit(vault, "retention.purge", ok=True, resource=None, detail=dict(counts))
        return counts

    counts = _with_vault(settings, work)
    verb = "would purge" if args.dry_run else "purged"
    print(f"{verb}: " + " ".join(f"{kind}={count}" for kind, count in sorted(counts.items())))
    if args.metrics_file and not args.dry_run:
        # A one-shot process has no /metrics: leave the counts for node_exporter's
        # textfile collector instead.
        metrics = Metrics()
        for kind, count in counts.items():
            metrics.retention_purged.labels(kind).inc(count)
        write_to_textfile(str(args.metrics_file), metrics.registry)
    return 0


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("must be a whole number of at least 1")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = argparse.ArgumentParser(prog="tokenproxy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the proxy").set_defaults(func=cmd_serve)
    sub.add_parser("dev", help="run locally with a sandbox partner").set_defaults(func=cmd_dev)
    sub.add_parser("migrate", help="apply schema migrations").set_defaults(func=cmd_migrate)
    purge = sub.add_parser("purge", help="delete tokens and audit events past the retention policy")
    purge.add_argument("--dry-run", action="store_true", help="count only; change nothing")
    purge.add_argument(
        "--metrics-file", type=Path, help="write tokenproxy_retention_purged_total here (.prom)"
    )
    purge.set_defaults(func=cmd_purge)

    keys = sub.add_parser("keys", help="key ring management").add_subparsers(
        dest="keys_command", required=True
    )
    keys.add_parser("init", help="create a key ring").set_defaults(func=cmd_keys_init)
    keys.add_parser("rotate", help="add a key version and make it active").set_defaults(
        func=cmd_keys_rotate
    )
    keys.add_parser("list", help="versions, state and data keys per version").set_defaults(
        func=cmd_keys_list
    )
    retire = keys.add_parser("retire", help="retire a version no data key uses")
    retire.add_argument("version", type=int)
    retire.set_defaults(func=cmd_keys_retire)
    rewrap_cmd = keys.add_parser("rewrap", help="re-wrap data keys with the active version")
    rewrap_cmd.add_argument("--batch-size", type=_positive, default=DEFAULT_BATCH)
    rewrap_cmd.set_defaults(func=cmd_keys_rewrap)

    audit = sub.add_parser("audit", help="the audit trail").add_subparsers(
        dest="audit_command", required=True
    )
    audit.add_parser("verify", help="check the hash chain").set_defaults(func=cmd_audit_verify)
    digest = audit.add_parser(
        "digest", help="the keyed digest the trail records for a token or customer ref"
    )
    digest.add_argument("what", choices=["token", "customer"])
    digest.add_argument("value")
    digest.set_defaults(func=cmd_audit_digest)
    export = audit.add_parser("export", help="write events as JSON lines")
    export.add_argument("--since", help="ISO-8601 time; events at or after it")
    export.set_defaults(func=cmd_audit_export)

    clients = sub.add_parser("clients", help="client keys").add_subparsers(
        dest="clients_command", required=True
    )
    add = clients.add_parser("add", help="add a client and print its key once")
    add.add_argument("name")
    add.add_argument(
        "--scopes",
        help=f"comma-separated, from: {', '.join(sorted(SCOPES))} (e.g. tokenize,read)",
    )
    add.add_argument(
        "--publishable",
        action="store_true",
        help="a public pk_ key for checkout pages (tokenize only, bound to --origins)",
    )
    add.add_argument("--origins", help="comma-separated origins, e.g. https://shop.example")
    add.set_defaults(func=cmd_clients_add)
    clients.add_parser(
        "list", help="names, kinds, scopes and creation times (never keys)"
    ).set_defaults(func=cmd_clients_list)
    remove = clients.add_parser("remove", help="remove a client and every key it holds")
    remove.add_argument("name")
    remove.set_defaults(func=cmd_clients_remove)
    rotate = clients.add_parser(
        "rotate", help="issue a new key and print it once; the old key works for a while"
    )
    rotate.add_argument("name")
    until = rotate.add_mutually_exclusive_group()
    until.add_argument(
        "--old-valid-until",
        metavar="TIME",
        help="ISO-8601 time with a zone (e.g. 2030-01-31T12:00:00Z) until which the old key works",
    )
    until.add_argument(
        "--grace",
        default="24h",
        metavar="DURATION",
        help="how long the old key keeps working: 90s, 30m, 24h, 7d; 0 ends it now (default 24h)",
    )
    rotate.set_defaults(func=cmd_clients_rotate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tokenproxy` console script."""
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except (SettingsError, ClientsFileError, VaultError) as exc:
        # One line naming the setting, file or problem; no traceback, no key bytes.
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    return result
