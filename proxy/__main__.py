"""The `tokenproxy` command: serve, dev, keys, clients, migrate.

Secrets never come from the command line (they would show in `ps` and shell
history): keys are read from files named by settings, client keys are printed once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from proxy.clients import (
    PUBLISHABLE_SCOPES,
    ClientsFileError,
    add_client,
    parse_origins,
    parse_scopes,
)
from proxy.log import configure_logging
from proxy.settings import Settings, SettingsError
from vault import LocalKekProvider, Vault, VaultError
from vault.keyring import init_keyring


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
    from proxy.app import serve

    settings = _settings()
    configure_logging(json=settings.log_json, level=settings.log_level)
    asyncio.run(serve(settings))
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    """`make run`: a local vault, key ring and client under var/, localstripe when no key."""
    from proxy.app import serve
    from proxy.sandbox import SANDBOX_API_KEY, Localstripe

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
            clients, f"dev-{os.getpid()}", parse_scopes("tokenize,read,resolve,delete,admin")
        )
        fd = os.open(dev_key_file, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
    key = dev_key_file.read_text().strip()
    sandbox: Localstripe | None = None
    if not os.environ.get("STRIPE_API_KEY") and not os.environ.get("STRIPE_API_KEY_FILE"):
        sandbox = Localstripe(log=var / "localstripe.log")
        os.environ["STRIPE_API_KEY"] = SANDBOX_API_KEY
        os.environ["TOKENPROXY_STRIPE_API_BASE"] = sandbox.base_url
    try:
        settings = _settings()
        configure_logging(json=settings.log_json, level=settings.log_level)
        base = f"http://{settings.listen}"
        partner = f"localstripe at {sandbox.base_url}" if sandbox else settings.stripe_api_base
        print(
            f"tokenproxy (dev) on {base}, ops on http://{settings.ops_listen}, partner: {partner}\n"
            f"dev client key (all scopes; also in {dev_key_file}):\n  {key}\n"
            "try:\n"
            f"  curl -s {base}/v1/cards -H 'Authorization: Bearer {key}' "
            "-H 'Content-Type: application/json' "
            '-d \'{"number":"4242 4242 4242 4242","exp_month":12,"exp_year":2030,"cvc":"123"}\'\n'
            f"  curl -s {base}/v1/tokens/TOKEN -H 'Authorization: Bearer {key}'",
            flush=True,
        )
        asyncio.run(serve(settings))
    finally:
        if sandbox is not None:
            sandbox.stop()
    return 0


def cmd_keys_init(args: argparse.Namespace) -> int:
    """Create a new key ring file (refuses to overwrite one)."""
    settings = _settings(need_partner=False)
    ring = init_keyring(settings.keyring_path)
    print(f"created key ring {settings.keyring_path} (active version {ring.active_version})")
    return 0


def cmd_clients_add(args: argparse.Namespace) -> int:
    """Add a client and print its key once."""
    settings = _settings(need_partner=False)
    try:
        if args.publishable:
            if args.scopes not in (None, "tokenize"):
                return _fail("a publishable client holds only the tokenize scope")
            if not args.origins:
                return _fail("a publishable client needs --origins https://shop.example[,...]")
            origins = parse_origins(args.origins)
            key = add_client(
                settings.clients_path,
                args.name,
                PUBLISHABLE_SCOPES,
                publishable=True,
                origins=origins,
            )
        else:
            if args.scopes is None:
                return _fail("--scopes is required (e.g. --scopes resolve)")
            if args.origins:
                return _fail("--origins applies to publishable clients only (add --publishable)")
            scopes = parse_scopes(args.scopes)
            key = add_client(settings.clients_path, args.name, scopes)
    except ValueError as exc:
        return _fail(str(exc))
    if args.publishable:
        print(f"publishable client {args.name!r} added for {', '.join(sorted(origins))}.")
        missing = origins - set(settings.cors_origins)
        if missing:
            print(f"note: add {', '.join(sorted(missing))} to TOKENPROXY_CORS_ORIGINS as well.")
        print("Its key is public by design (it goes in the checkout page):")
        print(key)
        return 0
    print(f"client {args.name!r} added with scopes {','.join(sorted(scopes))}.")
    print("Its key is shown only this once; store it in the service's secret store:")
    print(key)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply pending schema migrations to the configured vault."""
    settings = _settings(need_partner=False)

    async def run() -> int:
        keys = LocalKekProvider.from_file(settings.keyring_path)
        vault = await Vault.open(
            settings.vault_url, keys, migrate=False, pool_min=0, db_timeout=settings.db_timeout
        )
        try:
            return await vault.backend.migrate()
        finally:
            await vault.close()

    version = asyncio.run(run())
    print(f"vault schema at version {version}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = argparse.ArgumentParser(prog="tokenproxy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the proxy").set_defaults(func=cmd_serve)
    sub.add_parser("dev", help="run locally with a sandbox partner").set_defaults(func=cmd_dev)
    sub.add_parser("migrate", help="apply schema migrations").set_defaults(func=cmd_migrate)

    keys = sub.add_parser("keys", help="key ring management").add_subparsers(
        dest="keys_command", required=True
    )
    keys.add_parser("init", help="create a key ring").set_defaults(func=cmd_keys_init)

    clients = sub.add_parser("clients", help="client keys").add_subparsers(
        dest="clients_command", required=True
    )
    add = clients.add_parser("add", help="add a client and print its key once")
    add.add_argument("name")
    add.add_argument("--scopes", help="e.g. tokenize,read")
    add.add_argument(
        "--publishable",
        action="store_true",
        help="a public pk_ key for checkout pages (tokenize only, bound to --origins)",
    )
    add.add_argument("--origins", help="comma-separated origins, e.g. https://shop.example")
    add.set_defaults(func=cmd_clients_add)
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


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
