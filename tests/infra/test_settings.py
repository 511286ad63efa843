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
    ],
)
def test_bad_setting_names_itself_in_one_line(env: dict[str, str], names: str) -> None:
    """Each malformed setting stops start-up with a single line naming that setting."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**BASE, **env})
    message = str(info.value)
    assert names in message
    assert "\n" not in message


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
