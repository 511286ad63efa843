"""Settings from the environment: defaults, parsing, one-line errors naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.infra.settings import Settings, SettingsError

BASE = {"TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:12111"}


def test_defaults_are_loopback_and_sqlite() -> None:
    """With only a sandbox partner set, the proxy listens on loopback with a SQLite vault."""
    s = Settings.from_env(BASE)
    assert str(s.listen) == "127.0.0.1:8080"
    assert str(s.ops_listen) == "127.0.0.1:9090"
    assert s.vault_url.startswith("sqlite:///")
    assert s.max_body_bytes == 16 * 1024
    assert (s.header_timeout, s.max_connections) == (10.0, 1024)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"TOKENPROXY_LISTEN": "8080"}, "TOKENPROXY_LISTEN"),
        ({"TOKENPROXY_OPS_LISTEN": "localhost:http"}, "TOKENPROXY_OPS_LISTEN"),
        ({"TOKENPROXY_VAULT_URL": "mysql://x"}, "TOKENPROXY_VAULT_URL"),
        ({"TOKENPROXY_PARTNER_TIMEOUT": "soon"}, "TOKENPROXY_PARTNER_TIMEOUT"),
        ({"TOKENPROXY_LOG_LEVEL": "loud"}, "TOKENPROXY_LOG_LEVEL"),
        ({"TOKENPROXY_MAX_BODY_BYTES": "-1"}, "TOKENPROXY_MAX_BODY_BYTES"),
        ({"STRIPE_API_KEY": "pk_live_public"}, "STRIPE_API_KEY"),
        ({"STRIPE_API_KEY_FILE": "/nonexistent/key"}, "STRIPE_API_KEY_FILE"),
        ({"TOKENPROXY_HEADER_TIMEOUT": "0"}, "TOKENPROXY_HEADER_TIMEOUT"),
        ({"TOKENPROXY_MAX_CONNECTIONS": "0"}, "TOKENPROXY_MAX_CONNECTIONS"),
        ({"TOKENPROXY_PARTNER_MAX_IN_FLIGHT": "0"}, "TOKENPROXY_PARTNER_MAX_IN_FLIGHT"),
        ({"TOKENPROXY_PARTNER_MAX_IN_FLIGHT": "many"}, "TOKENPROXY_PARTNER_MAX_IN_FLIGHT"),
        # Shorter than Stripe keeps its idempotency keys (24 h).
        ({"TOKENPROXY_IDEMPOTENCY_TTL": "60"}, "TOKENPROXY_IDEMPOTENCY_TTL"),
        ({"TOKENPROXY_IDEMPOTENCY_TTL": "86399"}, "TOKENPROXY_IDEMPOTENCY_TTL"),
    ],
)
def test_bad_setting_names_itself_in_one_line(env: dict[str, str], names: str) -> None:
    """Each malformed setting stops start-up with a single line naming that setting."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**BASE, **env})
    message = str(info.value)
    assert names in message
    assert "\n" not in message


def test_partner_max_in_flight_defaults_to_32_and_takes_one() -> None:
    """The outbound limit is 32 partner calls at once unless set; 1 is the least allowed."""
    assert Settings.from_env(BASE).partner_max_in_flight == 32
    one = Settings.from_env({**BASE, "TOKENPROXY_PARTNER_MAX_IN_FLIGHT": "1"})
    assert one.partner_max_in_flight == 1


def test_idempotency_ttl_of_stripes_24_hours_or_more_is_taken() -> None:
    """The proxy may remember keys as long as Stripe does, or longer."""
    assert Settings.from_env({**BASE, "TOKENPROXY_IDEMPOTENCY_TTL": "86400"}).idempotency_ttl == (
        86400.0
    )


def test_partner_key_required_without_sandbox() -> None:
    """Without STRIPE_API_KEY and without a sandbox base, start-up is refused."""
    with pytest.raises(SettingsError, match="STRIPE_API_KEY"):
        Settings.from_env({})


def test_stripe_key_from_file_and_kept_out_of_repr(tmp_path: Path) -> None:
    """STRIPE_API_KEY_FILE is read, and the key never shows in repr or strip_hazmat."""
    key_file = tmp_path / "stripe.key"
    key_file.write_text("sk_test_filekey123\n")
    s = Settings.from_env({"STRIPE_API_KEY_FILE": str(key_file)})
    assert s.stripe_api_key == "sk_test_filekey123"
    assert "sk_test_filekey123" not in repr(s)
    assert "sk_test_filekey123" not in str(s.strip_hazmat())


def test_webhook_secrets_from_file_one_per_line_and_kept_out_of_repr(tmp_path: Path) -> None:
    """Every whsec_ line of the file is a secret (comments and blanks skipped); none is shown."""
    path = tmp_path / "webhook"
    path.write_text("# rotated 2026-12\nwhsec_oldsecret1\n\nwhsec_newsecret2\n")
    s = Settings.from_env({**BASE, "TOKENPROXY_STRIPE_WEBHOOK_SECRET_FILE": str(path)})
    assert s.stripe_webhook_secrets == ("whsec_oldsecret1", "whsec_newsecret2")
    assert "whsec_" not in repr(s)
    assert "whsec_" not in str(s.strip_hazmat())
    assert Settings.from_env(BASE).stripe_webhook_secrets == ()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "holds no secret"),
        ("whsec_ok\nsk_test_wrongkind\n", "whsec_"),
        (None, "cannot be read"),
    ],
)
def test_bad_webhook_secret_file_names_the_setting(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    """An empty, unreadable or wrong-kind secrets file stops start-up naming the setting."""
    path = tmp_path / "webhook"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**BASE, "TOKENPROXY_STRIPE_WEBHOOK_SECRET_FILE": str(path)})
    assert "TOKENPROXY_STRIPE_WEBHOOK_SECRET_FILE" in str(caught.value)
    assert problem in str(caught.value)
    assert "sk_test_wrongkind" not in str(caught.value)


@pytest.mark.parametrize("base", ["https://api.stripe.com", "http://partner.internal:12111"])
def test_no_partner_key_for_a_partner_off_this_machine_is_refused(base: str) -> None:
    """Without a key only a loopback sandbox may be named: never Stripe with a placeholder."""
    with pytest.raises(SettingsError, match="STRIPE_API_KEY"):
        Settings.from_env({"TOKENPROXY_STRIPE_API_BASE": base})


@pytest.mark.parametrize("base", ["http://127.0.0.1:12111", "http://localhost:12111"])
def test_a_loopback_sandbox_needs_no_key(base: str) -> None:
    """tokenproxy dev and the tests run localstripe on loopback without a key."""
    assert Settings.from_env({"TOKENPROXY_STRIPE_API_BASE": base}).stripe_api_key is None
