"""`tokenproxy reconcile`: compare the partner's payment methods with the vault's tokens.

Findings go to stdout as JSON lines, then one summary line; progress goes to stderr
when it is a terminal. Exit status 0 when the run completed, 1 when a partner call or
vault read failed along the way (the run can be repeated: it resumes), 2 on bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

from proxy.core import admin, reconcile
from proxy.core.services import Services
from proxy.domain.errors import ProxyError
from proxy.domain.fields import validate_customer_ref
from proxy.infra.metrics import Metrics
from proxy.infra.settings import Settings
from proxy.partners.resilience import ResilientPartner
from proxy.partners.stripe import StripePartner
from proxy.web.app import resilient
from proxy.web.sharedlimits import BudgetRows
from vault.limits import shared_limits


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 1000:
        raise argparse.ArgumentTypeError("must be a number of calls per second, 0 < N <= 1000")
    return value


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    if not kinds or any(k not in reconcile.PARTNER_KINDS for k in kinds):
        raise argparse.ArgumentTypeError(
            "comma-separated from: " + ", ".join(reconcile.PARTNER_KINDS)
        )
    return kinds


def add_command(sub: Any, handler: Callable[[argparse.Namespace], int]) -> None:
    """Add `reconcile` to the command tree, run by ``handler``."""
    cmd = sub.add_parser(
        "reconcile", help="compare partner payment methods with the vault (--fix to repair)"
    )
    cmd.add_argument("--customer", metavar="REF", help="only this customer_ref")
    cmd.add_argument(
        "--fix",
        action="store_true",
        help="detach orphans at the partner and mark dangling tokens detached (audited)",
    )
    cmd.add_argument(
        "--rate", type=_rate, default=10.0, metavar="N", help="partner calls per second (10)"
    )
    cmd.add_argument(
        "--types",
        type=_kinds,
        default=reconcile.PARTNER_KINDS,
        metavar="LIST",
        help="payment method types to list per customer (card,sepa_debit)",
    )
    cmd.set_defaults(func=handler)


def run_command(args: argparse.Namespace, settings: Settings, operator: admin.Operator) -> int:
    """Run reconciliation with the configured vault and partner; print what it finds."""
    on_terminal = sys.stderr.isatty()

    def emit(line: dict[str, Any]) -> None:
        print(json.dumps(line, sort_keys=True), flush=True)

    def progress(customers: int) -> None:
        if on_terminal:
            print(f"\rreconcile: {customers} customers checked", end="", file=sys.stderr)

    async def run() -> dict[str, Any]:
        async with admin.session(settings, operator) as session:
            metrics = Metrics()
            partner = StripePartner(
                settings.stripe_api_key or "sk_test_sandbox",
                api_base=settings.stripe_api_base,
                timeout=settings.partner_timeout,
                connect_timeout=settings.partner_connect_timeout,
            )
            try:
                resilient_partner = resilient(partner, settings, metrics)
                limits = shared_limits(session.vault)
                if (
                    limits is not None
                    and isinstance(resilient_partner, ResilientPartner)
                    and resilient_partner.budget is not None
                ):
                    # Its calls spend from the budget the serving replicas share.
                    resilient_partner.budget.source = BudgetRows(limits)
                services = Services(
                    vault=session.vault,
                    partner=resilient_partner,
                    metrics=metrics,
                )
                options = reconcile.Options(
                    actor=operator.actor,
                    origin=operator.origin,
                    customer_ref=customer,
                    fix=args.fix,
                    rate=args.rate,
                    kinds=args.types,
                )
                return await reconcile.reconcile(services, options, emit=emit, progress=progress)
            finally:
                await partner.close()

    try:
        customer = validate_customer_ref(args.customer) if args.customer is not None else None
        result = asyncio.run(run())
    except ProxyError as exc:
        if on_terminal:
            print(file=sys.stderr)
        print(f"tokenproxy: reconcile: {exc.message} ({exc.code})", file=sys.stderr)
        return 1
    if on_terminal:
        print(file=sys.stderr)
    emit(result)
    return 1 if result["summary"]["errors"] else 0
