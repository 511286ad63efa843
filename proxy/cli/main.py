"""The `tokenproxy` command: serve, dev, keys, clients, audit, migrate, purge, reconcile.

Each command parses its arguments, calls one function (the administrative ones live in
:mod:`proxy.core.admin`) and prints the result. Secrets never come from the command
line (they would show in `ps` and shell history): keys are read from files named by
settings, client keys are printed once.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import getpass
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC
from pathlib import Path
from typing import Any, TypeVar

import structlog
from prometheus_client import write_to_textfile

from proxy.cli import reconcile as reconcile_cli
from proxy.cli.workers import Supervisor, tell_supervisor
from proxy.core import admin
from proxy.core.audit import DIGEST_KINDS
from proxy.infra.clients import SCOPES, ClientsFileError, add_client, parse_scopes
from proxy.infra.log import configure_logging
from proxy.infra.metrics import Metrics
from proxy.infra.settings import Settings, SettingsError, listen_addresses
from proxy.infra.tls import listener_contexts
from proxy.web import devmode
from proxy.web.app import bind_internal, bind_listeners, serve
from vault import VaultError
from vault.audit import parse_since
from vault.keys.ring import init_keyring
from vault.rotation import DEFAULT_BATCH, RewrapProgress

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
    """Run the proxy with settings from the environment (``--workers`` processes)."""
    env = dict(os.environ)
    if args.workers is not None:
        env["TOKENPROXY_WORKERS"] = args.workers
    settings = Settings.from_env(env)
    listener_contexts(settings)  # a certificate that does not load fails before any bind
    if args.worker is not None:
        return _serve_worker(settings, args.worker, args.ready_fd)
    if settings.workers == 1:
        sockets = bind_listeners(settings.listen, settings.ops_listen)
        internal = bind_internal(settings)
        configure_logging(json=settings.log_json, level=settings.log_level)
        asyncio.run(serve(settings, sockets=sockets, internal_socket=internal))
        return 0
    # Fail on a busy port here, in one line, rather than in every worker. Bound without
    # SO_REUSEPORT, so that another deployment's workers count as busy too (with it, a
    # second `serve --workers` would silently join their group).
    probe = [*bind_listeners(settings.listen, settings.ops_listen), bind_internal(settings)]
    for sock in probe:
        if sock is not None:
            sock.close()
    configure_logging(json=settings.log_json, level=settings.log_level)
    if settings.migrate_on_start:
        _run(settings, admin.migrate, migrate=False)
    supervisor = Supervisor(settings.workers, grace=settings.shutdown_grace, base_env=env)
    return supervisor.run()


def _serve_worker(settings: Settings, index: int, ready_fd: int | None) -> int:
    """One worker under the supervisor: the shared port, and jobs only in worker 0."""
    settings = replace(settings, migrate_on_start=False, singleton_jobs=index == 0)
    sockets = bind_listeners(settings.listen, settings.ops_listen, reuse_port=True)
    internal = bind_internal(settings, reuse_port=True)
    configure_logging(json=settings.log_json, level=settings.log_level)
    structlog.contextvars.bind_contextvars(worker=index)
    started = None if ready_fd is None else functools.partial(tell_supervisor, ready_fd)
    asyncio.run(serve(settings, sockets=sockets, internal_socket=internal, on_started=started))
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
                devmode.proxy_origin(settings), demo_key, str(dev_key_file)
            )
            asyncio.run(devmode.serve_with_demo(settings, demo, demo_sock, sockets=sockets))
    finally:
        if sandbox is not None:
            sandbox.stop()
    return 0


def _operator() -> admin.Operator:
    """Who runs this command, for the audit trail (PCI DSS 10.2.2: user id and origin)."""
    try:
        actor = "cli:" + getpass.getuser()
    except (KeyError, OSError):
        actor = f"cli:uid-{os.getuid()}"
    return admin.Operator(actor, socket.gethostname()[:200])


def _run(
    settings: Settings, work: Callable[[admin.Admin], Awaitable[T]], *, migrate: bool = True
) -> T:
    """Run ``work`` in an admin session on the configured vault (see ``admin.session``)."""

    async def run() -> T:
        async with admin.session(settings, _operator(), migrate=migrate) as session:
            return await work(session)

    return asyncio.run(run())


def cmd_keys_init(args: argparse.Namespace) -> int:
    """Create a new key ring file, or KMS key map (refuses to overwrite one)."""
    settings = _settings(need_partner=False)
    active = asyncio.run(admin.init_key_ring(settings, _operator()))
    print(f"created key ring {settings.keyring_path} (active version {active})")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """Add a key version and make it active for new data keys."""
    rotation = _run(_settings(need_partner=False), admin.rotate_keys)
    print(
        f"rotated: version {rotation.new} is active (was {rotation.old}); "
        f"{rotation.to_rewrap} data key(s) to rewrap"
    )
    print("next: tokenproxy keys rewrap, then tokenproxy keys retire " + str(rotation.old))
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    """Show every key version, its state and what it wraps (what `keys retire` counts)."""
    report = _run(_settings(need_partner=False), admin.key_report)
    print(f"{'version':>7}  {'created':20}  {'state':12}  {'deks':>10}  {'idempotency':>11}")
    for s in report.versions:
        created = s.created_at.strftime("%Y-%m-%dT%H:%M:%SZ") if s.created_at else "-"
        print(f"{s.version:>7}  {created:20}  {s.state:12}  {s.deks:>10}  {s.idempotency_keys:>11}")
    print(f"rewrap remaining: {report.to_rewrap}")
    return 0


def cmd_keys_retire(args: argparse.Namespace) -> int:
    """Retire a key version; refused while any data key still uses it."""
    _run(_settings(need_partner=False), lambda session: admin.retire_key(session, args.version))
    print(f"retired key version {args.version}")
    return 0


def cmd_keys_rewrap(args: argparse.Namespace) -> int:
    """Re-wrap every data key on an older version with the active one; resumable."""

    def show(p: RewrapProgress) -> None:
        print(
            f"rewrap: {p.rewrapped}/{p.total} data keys moved to version {p.target_version}, "
            f"{p.remaining} remaining",
            flush=True,
        )

    p = _run(
        _settings(need_partner=False),
        lambda session: admin.rewrap_keys(session, batch_size=args.batch_size, on_batch=show),
    )
    print(
        f"rewrap done: {p.rewrapped} moved to version {p.target_version}, "
        f"{p.failed} failed, {p.remaining} remaining"
    )
    if p.failed:
        return _fail(f"{p.failed} data key(s) could not be unwrapped; see `tokenproxy keys list`")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Walk the audit hash chain; exit 1 naming the first broken event."""
    report = _run(_settings(need_partner=False), lambda session: session.vault.audit.verify())
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


def cmd_audit_digest(args: argparse.Namespace) -> int:
    """Print the keyed digest the audit trail records for a value it does not hold as is."""

    async def digest(session: admin.Admin) -> str:
        return session.vault.audit.digest(args.what, args.value)

    print(_run(_settings(need_partner=False), digest))
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    """Write audit events as JSON lines to stdout."""
    settings = _settings(need_partner=False)
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError:
        return _fail("--since must be an ISO-8601 time, e.g. 2026-01-31T00:00:00Z")
    _run(settings, lambda session: session.vault.audit.export(sys.stdout.write, since=since))
    return 0


def cmd_clients_add(args: argparse.Namespace) -> int:
    """Add a client and print its key once (and record the change in the audit trail)."""
    new = admin.NewClient(args.name, args.scopes, args.publishable, args.origins, args.cert_subject)
    try:
        added = _run(_settings(need_partner=False), lambda session: admin.add(session, new))
    except admin.Refused as exc:
        return _fail(str(exc))
    if added.publishable:
        lines = [f"publishable client {added.name!r} added for {', '.join(sorted(added.origins))}."]
        if added.origins_missing_from_cors:
            missing = ", ".join(sorted(added.origins_missing_from_cors))
            lines.append(f"note: add {missing} to TOKENPROXY_CORS_ORIGINS as well.")
        lines.append("Its key is public by design (it goes in the checkout page):")
    else:
        lines = [
            f"client {added.name!r} added with scopes {','.join(sorted(added.scopes))}.",
            "Its key is shown only this once; store it in the service's secret store:",
        ]
        if added.cert_identity is not None:
            lines.insert(
                1, f"Its key works only with a client certificate of {added.cert_identity}."
            )
    print("\n".join([*lines, added.key]))
    return 0


def cmd_clients_list(args: argparse.Namespace) -> int:
    """Print every client: name, kind, scopes, created, and previous keys' end; never a key."""
    rows = [("NAME", "KIND", "SCOPES", "CREATED", "PREVIOUS KEY VALID UNTIL", "CERTIFICATE")]
    for client in admin.list_clients(_settings(need_partner=False)):
        rows.append(
            (
                client.name,
                "publishable" if client.publishable else "secret",
                ",".join(sorted(client.scopes)),
                client.created_at or "-",
                ", ".join(
                    t.astimezone(UTC).isoformat(timespec="seconds")
                    for t in client.previous_keys_until
                )
                or "-",
                client.cert_identity or "-",
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
    try:
        _run(_settings(need_partner=False), lambda session: admin.remove(session, args.name))
    except admin.Refused as exc:
        return _fail(str(exc))
    print(f"client {args.name!r} removed; a serving proxy refuses its keys after its next look.")
    return 0


def cmd_clients_rotate(args: argparse.Namespace) -> int:
    """Give a client a new key, print it once; the old key works until the given time."""
    try:
        rotated = _run(
            _settings(need_partner=False),
            lambda session: admin.rotate(
                session, args.name, old_valid_until=args.old_valid_until, grace=args.grace
            ),
        )
    except admin.Refused as exc:
        return _fail(str(exc))
    stamp = rotated.old_valid_until.astimezone(UTC).isoformat(timespec="seconds")
    old = (
        f"the old key works until {stamp}"
        if rotated.old_key_works
        else "the old key no longer works"
    )
    print(
        f"client {args.name!r} has a new key; {old}.\n"
        "The new key is shown only this once; store it in the service's secret store:\n"
        f"{rotated.key}"
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply pending schema migrations to the configured vault."""
    version = _run(_settings(need_partner=False), admin.migrate, migrate=False)
    print(f"vault schema at version {version}")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    """Delete (or with --dry-run count) every token and audit event past retention."""
    settings = _settings(need_partner=False)
    if not settings.retention_policy().active:
        print("retention: every token kind is kept (no TOKENPROXY_RETENTION_*_DAYS set)")
    metrics = Metrics()
    purged = _run(settings, lambda session: admin.purge(session, metrics, dry_run=args.dry_run))
    verb = "would purge" if args.dry_run else "purged"
    counts = sorted(purged.deleted.items())
    print(f"{verb}: " + " ".join(f"{kind}={count}" for kind, count in counts))
    if purged.still_attached:
        stays = "would stay" if args.dry_run else "stay"
        print(
            f"{purged.still_attached} of these payment methods {stays} attached to their"
            " customer at the partner (the purge does not detach): erasing the customer"
            " detaches them, and `tokenproxy reconcile --fix` detaches them as orphans"
        )
    if args.metrics_file and not args.dry_run:
        # A one-shot process has no /metrics: leave the counts for node_exporter's
        # textfile collector instead.
        write_to_textfile(str(args.metrics_file), metrics.registry)
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Compare the partner's payment methods with the vault (see proxy.cli.reconcile)."""
    return reconcile_cli.run_command(args, _settings(), _operator())


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("must be a whole number of at least 1")
    return int(text)


def _add_serve(sub: Any) -> None:
    """`tokenproxy serve [--workers N]`."""
    serve_cmd = sub.add_parser("serve", help="run the proxy")
    serve_cmd.add_argument(
        "--workers",
        metavar="N",
        help="processes serving the port: a count or auto (one per core); "
        "default TOKENPROXY_WORKERS, else 1",
    )
    # Set by the supervisor for the processes it starts; not for operators.
    serve_cmd.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    serve_cmd.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    serve_cmd.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = argparse.ArgumentParser(prog="tokenproxy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    sub.add_parser("dev", help="run locally with a sandbox partner").set_defaults(func=cmd_dev)
    sub.add_parser("migrate", help="apply schema migrations").set_defaults(func=cmd_migrate)
    purge = sub.add_parser("purge", help="delete tokens and audit events past the retention policy")
    purge.add_argument("--dry-run", action="store_true", help="count only; change nothing")
    purge.add_argument(
        "--metrics-file", type=Path, help="write tokenproxy_retention_purged_total here (.prom)"
    )
    purge.set_defaults(func=cmd_purge)
    reconcile_cli.add_command(sub, cmd_reconcile)

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
        "digest",
        help="the keyed digest the trail records for a value it does not hold as is (a"
        " token, customer ref, payment method, partner key, Stripe event id, address...)",
    )
    digest.add_argument("what", choices=DIGEST_KINDS)
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
    add.add_argument(
        "--cert-subject",
        metavar="IDENTITY",
        help="accept the key only with this client certificate: CN=billing or a SAN"
        " (DNS:billing.svc, URI:spiffe://...); see docs/security.md",
    )
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
