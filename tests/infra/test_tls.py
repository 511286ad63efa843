"""TLS settings, server contexts and client-certificate identities, without a listener."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from proxy.cli.main import main
from proxy.infra.clients import ClientRegistry, ClientsFileError, add_client, parse_scopes
from proxy.infra.settings import Settings, SettingsError
from proxy.infra.tls import (
    CertificateError,
    CertificateReloader,
    identity_matches,
    is_loopback,
    parse_identity,
    server_context,
)

BASE = {"TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:1"}


def _peercert(cn: str, *sans: tuple[str, str]) -> dict[str, object]:
    """A verified peer certificate in the form ssl's getpeercert() gives it."""
    return {
        "subject": ((("organizationName", "Casall"),), (("commonName", cn),)),
        "subjectAltName": sans,
    }


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"TOKENPROXY_TLS_CERT_FILE": "c.pem"}, "set together"),
        ({"TOKENPROXY_TLS_KEY_FILE": "k.pem"}, "set together"),
        ({"TOKENPROXY_TLS_CLIENT_CA_FILE": "ca.pem"}, "needs TOKENPROXY_TLS_CERT_FILE"),
        (
            {
                "TOKENPROXY_TLS_CERT_FILE": "c.pem",
                "TOKENPROXY_TLS_KEY_FILE": "k.pem",
                "TOKENPROXY_TLS_CLIENT_CA_FILE": "ca.pem",
            },
            "needs TOKENPROXY_INTERNAL_LISTEN",
        ),
        ({"TOKENPROXY_INTERNAL_LISTEN": "nope"}, "TOKENPROXY_INTERNAL_LISTEN"),
        ({"TOKENPROXY_TLS_RELOAD_INTERVAL": "0"}, "TOKENPROXY_TLS_RELOAD_INTERVAL"),
    ],
)
def test_transport_settings_refuse_incomplete_combinations(
    env: dict[str, str], problem: str
) -> None:
    """A certificate without its key, or a client CA without TLS and an internal listener,
    stops start-up with one line naming the setting."""
    with pytest.raises(SettingsError, match=problem):
        Settings.from_env({**BASE, **env})


def test_transport_settings_default_to_one_plain_listener() -> None:
    """Unset, there is no internal listener and no TLS (the development default)."""
    settings = Settings.from_env(BASE)
    assert settings.internal_listen is None
    assert settings.tls_cert_file is None
    assert settings.strip_hazmat()["tls"] is False


def test_server_context_floor_and_suites(tmp_path: Path) -> None:
    """The context refuses anything below TLS 1.2 and offers no non-forward-secret suite."""
    leaf = trustme.CA().issue_cert("127.0.0.1")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    context = server_context(cert, key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    for suite in context.get_ciphers():
        if suite["protocol"] == "TLSv1.2":
            assert suite["kea"] == "kx-ecdhe", suite["name"]
            assert suite["aead"], suite["name"]
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    assert server_context(cert, key, client_ca=ca_file).verify_mode == ssl.CERT_REQUIRED


def test_certificate_files_that_do_not_load_are_named(tmp_path: Path) -> None:
    """A missing file, a key of another certificate and a bad CA each fail in one line."""
    ca = trustme.CA()
    one, other = ca.issue_cert("a.example"), ca.issue_cert("b.example")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    one.cert_chain_pems[0].write_to_path(str(cert))
    other.private_key_pem.write_to_path(str(key))
    with pytest.raises(CertificateError, match="do not load"):
        server_context(cert, key)
    with pytest.raises(CertificateError, match=r"TOKENPROXY_TLS_CERT_FILE .*missing\.pem"):
        server_context(tmp_path / "missing.pem", key)
    one.private_key_pem.write_to_path(str(key))
    (tmp_path / "ca.pem").write_text("not a certificate")
    with pytest.raises(CertificateError, match="TOKENPROXY_TLS_CLIENT_CA_FILE"):
        server_context(cert, key, client_ca=tmp_path / "ca.pem")


def test_reloader_loads_only_changed_pairs_that_load(tmp_path: Path) -> None:
    """Unchanged files are not reloaded; a mismatched pair fails once and is not retried
    until a file changes; the completed pair then loads."""
    ca = trustme.CA()
    first, second = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    first.cert_chain_pems[0].write_to_path(str(cert))
    first.private_key_pem.write_to_path(str(key))
    reloader = CertificateReloader(cert, key, [server_context(cert, key)])
    assert reloader.reload() is None
    second.cert_chain_pems[0].write_to_path(str(cert))  # the key follows later
    with pytest.raises(CertificateError):
        reloader.reload()
    assert reloader.reload() is None
    second.private_key_pem.write_to_path(str(key))
    assert reloader.reload() is True
    assert reloader.reload() is None


def test_reloader_takes_a_client_ca_bundle_apart_from_the_pair(tmp_path: Path) -> None:
    """A broken bundle holds back no renewal of the pair and is not retried until a file
    changes; a good bundle then loads."""
    ca, clients = trustme.CA(), trustme.CA()
    first, second = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.1")
    cert, key, bundle = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    first.cert_chain_pems[0].write_to_path(str(cert))
    first.private_key_pem.write_to_path(str(key))
    clients.cert_pem.write_to_path(str(bundle))
    public = server_context(cert, key)
    verifying = server_context(cert, key, client_ca=bundle)
    reloader = CertificateReloader(
        cert, key, [public, verifying], client_ca=bundle, verifying=verifying
    )
    assert reloader.reload() is None
    served = reloader.served_pair
    bundle.write_text("not a certificate")
    second.cert_chain_pems[0].write_to_path(str(cert))
    second.private_key_pem.write_to_path(str(key))
    with pytest.raises(CertificateError, match="TOKENPROXY_TLS_CLIENT_CA_FILE"):
        reloader.reload()
    assert reloader.served_pair != served
    assert reloader.reload() is None
    trustme.CA().cert_pem.write_to_path(str(bundle))
    assert reloader.reload() is True
    assert reloader.reload() is None
    with pytest.raises(ValueError, match="together"):
        CertificateReloader(cert, key, [public], client_ca=bundle)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),  # noqa: S104 - the wildcard is the case under test
        ("", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    """Only loopback binds keep plain HTTP off the network (no warning for them)."""
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("CN=billing", "CN=billing"),
        (" cn = billing , o=Casall ", "CN=billing,O=Casall"),
        ("dns:billing.svc", "DNS:billing.svc"),
        ("URI:spiffe://casall/billing", "URI:spiffe://casall/billing"),
        ("IP:2001:db8::0:1", "IP:2001:db8::1"),
    ],
)
def test_identities_are_parsed_to_one_spelling(text: str, canonical: str) -> None:
    """The forms operators type become one canonical spelling in the clients file."""
    assert parse_identity(text) == canonical


@pytest.mark.parametrize("text", ["billing", "CN=", "XX=billing", "DNS:", "IP:not-an-ip", ""])
def test_malformed_identities_are_refused(text: str) -> None:
    """Anything that names no subject attribute or SAN is refused, not taken literally."""
    with pytest.raises(ValueError, match=r"identity|address"):
        parse_identity(text)


def test_identity_matching_against_peer_certificates() -> None:
    """Subject attributes must all be present; a SAN must be one of the certificate's."""
    cert = _peercert("billing", ("DNS", "billing.svc"), ("IP Address", "10.0.0.5"))
    assert identity_matches("CN=billing", cert)
    assert identity_matches("CN=billing,O=Casall", cert)
    assert identity_matches("DNS:billing.svc", cert)
    assert identity_matches("IP:10.0.0.5", cert)
    assert not identity_matches("CN=billing,O=Other", cert)
    assert not identity_matches("CN=orders", cert)
    assert not identity_matches("DNS:orders.svc", cert)
    assert not identity_matches("URI:billing.svc", cert)
    assert not identity_matches("CN=billing", {})
    assert not identity_matches("CN=billing", None)


@given(st.text(min_size=1, max_size=20).filter(lambda s: "," not in s and s.strip() == s))
def test_a_bound_identity_matches_no_other_common_name(name: str) -> None:
    """CN=billing is never satisfied by a certificate of any other common name."""
    cert = _peercert(name)
    assert identity_matches("CN=billing", cert) is (name == "billing")


@given(st.text(min_size=1, max_size=30))
def test_parse_identity_never_accepts_a_bare_name(text: str) -> None:
    """Text without a NAME=value or TYPE:value shape never becomes an identity."""
    if "=" in text or ":" in text:
        return
    with pytest.raises(ValueError, match="certificate identity"):
        parse_identity(text)


def test_bound_clients_in_the_clients_file(tmp_path: Path) -> None:
    """The binding is stored canonically, read back, and refused on publishable or bad entries."""
    path = tmp_path / "clients.json"
    key = add_client(path, "billing", parse_scopes("resolve"), cert_identity="cn=billing")
    client = ClientRegistry.load(path).authenticate(key)
    assert client is not None
    assert client.cert_identity == "CN=billing"
    doc = json.loads(path.read_text())
    assert doc["clients"][0]["cert_subject"] == "CN=billing"
    with pytest.raises(ValueError, match="publishable"):
        add_client(
            path,
            "shop",
            parse_scopes("tokenize"),
            publishable=True,
            origins=frozenset({"https://shop.example"}),
            cert_identity="CN=shop",
        )
    doc["clients"][0]["cert_subject"] = "billing"
    path.write_text(json.dumps(doc))
    with pytest.raises(ClientsFileError):
        ClientRegistry.load(path)


def test_cli_adds_and_lists_a_bound_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`clients add --cert-subject` says the key needs its certificate; `list` shows it."""
    monkeypatch.setenv("TOKENPROXY_KEYRING", str(tmp_path / "keyring.json"))
    monkeypatch.setenv("TOKENPROXY_CLIENTS", str(tmp_path / "clients.json"))
    monkeypatch.setenv("TOKENPROXY_VAULT_URL", f"sqlite:///{tmp_path / 'vault.db'}")
    assert main(["keys", "init"]) == 0
    assert (
        main(["clients", "add", "billing", "--scopes", "resolve", "--cert-subject", "CN=billing"])
        == 0
    )
    out = capsys.readouterr().out
    assert "client certificate of CN=billing" in out
    assert main(["clients", "list"]) == 0
    assert "CN=billing" in capsys.readouterr().out
    assert main(["clients", "add", "orders", "--scopes", "read", "--cert-subject", "billing"]) == 2
    assert "certificate identity" in capsys.readouterr().err


def test_serve_refuses_a_certificate_that_does_not_load(tmp_path: Path) -> None:
    """`serve` with an unreadable certificate stops before binding, with one line naming it."""
    env = {
        **os.environ,
        **BASE,
        "TOKENPROXY_VAULT_URL": f"sqlite:///{tmp_path / 'vault.db'}",
        "TOKENPROXY_LISTEN": "127.0.0.1:0",
        "TOKENPROXY_OPS_LISTEN": "127.0.0.1:0",
        "TOKENPROXY_TLS_CERT_FILE": str(tmp_path / "missing.crt"),
        "TOKENPROXY_TLS_KEY_FILE": str(tmp_path / "missing.key"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "TOKENPROXY_TLS_CERT_FILE" in lines[0]
    assert "missing.crt" in lines[0]
