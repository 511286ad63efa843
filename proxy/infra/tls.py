"""TLS for the listeners: server contexts, certificate reload, and client-certificate identities.

Card numbers travel on the public listener, partner references on the internal one:
PCI DSS 4.2.1 wants strong cryptography on both. The contexts made here accept TLS 1.2
and 1.3 only; on TLS 1.2 only forward-secret AEAD suites (ECDHE with AES-GCM or
ChaCha20-Poly1305), so no RSA key exchange, CBC, RC4, 3DES or export suite is ever
negotiated. TLS 1.3's suites are all AEAD and need no filter.

A certificate is renewed by replacing its files (a Kubernetes Secret volume swaps a
symlink). :class:`CertificateReloader` notices the change, checks the new pair in a
scratch context first (a half-written or mismatched pair changes nothing), and then
loads it into the live contexts: new handshakes present the new certificate, while
connections already open keep the session they negotiated and are not dropped.

A changed client-CA bundle is noticed the same way, but cannot be loaded into the live
context: OpenSSL only adds to a context's trust store, so a CA taken out of the bundle
would stay trusted. The reloader builds a whole new context for the internal listener
instead, and each new handshake moves onto the newest one (the listener's first context
keeps doing the accepting); a bundle that does not load leaves the old one in force.
Session resumption is looked up in the first context's cache and is not verified again:
a session made before the change lasts until it expires (docs/deployment.md says so).
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from proxy.infra.settings import Settings, SettingsError

# ECDHE only (forward secrecy), AEAD only; OpenSSL's names for the TLS 1.2 suites.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!SHA1:!DSS:!PSK:!SRP"


class CertificateError(SettingsError):
    """A certificate, key or CA file cannot be used; the message names the file and setting."""


def _readable(path: Path, setting: str) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        reason = (exc.strerror or type(exc).__name__).lower()
        raise CertificateError(f"{setting} {path} cannot be read ({reason})") from None


def _load_pair(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    # ssl's own errors for a missing file name no file: say which setting is wrong.
    _readable(cert, "TOKENPROXY_TLS_CERT_FILE")
    _readable(key, "TOKENPROXY_TLS_KEY_FILE")
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (ssl.SSLError, OSError) as exc:
        # The library's text names no key material, only what went wrong.
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise CertificateError(
            f"TOKENPROXY_TLS_CERT_FILE {cert} and TOKENPROXY_TLS_KEY_FILE {key}"
            f" do not load as a certificate and its key ({reason})"
        ) from None


def server_context(cert: Path, key: Path, *, client_ca: Path | None = None) -> ssl.SSLContext:
    """A server context: TLS 1.2+, strong suites; client certificates required if ``client_ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    # Renegotiation lets a client restart handshakes at will (a CPU lever) and has a history
    # of splicing attacks; nothing here needs it. Compression leaks secrets (CRIME).
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_pair(context, cert, key)
    if client_ca is not None:
        _readable(client_ca, "TOKENPROXY_TLS_CLIENT_CA_FILE")
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except (ssl.SSLError, OSError):
            raise CertificateError(
                f"TOKENPROXY_TLS_CLIENT_CA_FILE {client_ca} is not a readable PEM CA bundle"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass(frozen=True, slots=True)
class ListenerContexts:
    """The TLS contexts of each listener (None: plain HTTP)."""

    public: ssl.SSLContext | None = None
    internal: ssl.SSLContext | None = None
    ops: ssl.SSLContext | None = None

    def all(self) -> list[ssl.SSLContext]:
        """Every context in use, once each."""
        seen: dict[int, ssl.SSLContext] = {}
        for context in (self.public, self.internal, self.ops):
            if context is not None:
                seen.setdefault(id(context), context)
        return list(seen.values())


def listener_contexts(settings: Settings) -> ListenerContexts:
    """The contexts ``settings`` ask for; CertificateError names a file that does not load."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if cert is None or key is None:
        return ListenerContexts()
    public = server_context(cert, key)
    internal = None
    if settings.internal_listen is not None:
        # The internal listener alone asks for client certificates: browsers reach the
        # public one and have none.
        ca = settings.tls_client_ca_file
        internal = public if ca is None else server_context(cert, key, client_ca=ca)
    return ListenerContexts(public=public, internal=internal, ops=public)


Stamp = tuple[tuple[int, int, int] | None, ...]


def _stamp(*paths: Path) -> Stamp:
    """The files' identities (inode, size, mtime); a renewal replaces them, so one changes."""
    stamps: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            stamps.append(None)
        else:
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


class CertificateReloader:
    """Loads a renewed certificate and key into live contexts when their files change, and
    a changed client-CA bundle into a fresh context for the listener that verifies clients.

    ``verifying`` is that listener's context (as :func:`listener_contexts` made it with
    ``client_ca``); the reloader takes over its ``sni_callback``.
    """

    def __init__(
        self,
        cert: Path,
        key: Path,
        contexts: Iterable[ssl.SSLContext],
        *,
        client_ca: Path | None = None,
        verifying: ssl.SSLContext | None = None,
    ) -> None:
        if (client_ca is None) != (verifying is None):
            raise ValueError("client_ca and verifying go together")
        self.cert = cert
        self.key = key
        self.client_ca = client_ca
        self.contexts = list(contexts)
        self._loaded = _stamp(cert, key)
        self._failed: Stamp | None = None
        self._verifying = verifying
        self._ca_loaded = _stamp(client_ca) if client_ca is not None else ()
        self._ca_failed: Stamp | None = None
        if verifying is not None:
            verifying.sni_callback = self._to_newest

    @property
    def served_pair(self) -> Stamp:
        """The identities of the certificate and key files the contexts hold."""
        return self._loaded

    def _to_newest(
        self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        # Called early in every handshake on the listener's first context, SNI or not:
        # the certificate sent and the client-CA store checked are then the new context's.
        if self._verifying is not None and self._verifying is not context:
            ssl_object.context = self._verifying

    def reload(self) -> bool | None:
        """Load what changed: True when anything loaded, None when nothing changed.

        CertificateError when what changed does not load: the old pair (or bundle) stays
        in force, and the same files are not tried again until one of them changes once
        more (a certificate written before its key loads at the key's turn). The pair and
        the bundle are tried each on its own: a broken bundle holds back no renewal.
        """
        loaded: bool | None = None
        problem: CertificateError | None = None
        for step in (self._reload_pair, self._reload_client_ca):
            try:
                loaded = step() or loaded
            except CertificateError as exc:
                problem = problem or exc
        if problem is not None:
            raise problem
        return loaded

    def _reload_pair(self) -> bool | None:
        stamp = _stamp(self.cert, self.key)
        if stamp in (self._loaded, self._failed):
            return None
        live = list(self.contexts)
        if self._verifying is not None and self._verifying not in live:
            live.append(self._verifying)
        try:
            # A scratch context first, so the live contexts only ever get a pair that loads.
            _load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), self.cert, self.key)
            for context in live:
                _load_pair(context, self.cert, self.key)
        except CertificateError:
            self._failed = stamp
            raise
        self._loaded, self._failed = stamp, None
        return True

    def _reload_client_ca(self) -> bool | None:
        if self.client_ca is None or _stamp(self.client_ca) == self._ca_loaded:
            return None
        # The new context needs the pair too: a failure is tried again once any of the
        # three files changes (a bundle read beside a half-written pair loads later).
        attempt = _stamp(self.cert, self.key, self.client_ca)
        if attempt == self._ca_failed:
            return None
        try:
            fresh = server_context(self.cert, self.key, client_ca=self.client_ca)
        except CertificateError:
            self._ca_failed = attempt
            raise
        self._verifying = fresh
        self._ca_loaded, self._ca_failed = _stamp(self.client_ca), None
        return True


def not_after(cert: Path) -> float | None:
    """When the first certificate in ``cert`` (the server's own) expires, Unix seconds."""
    try:
        leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError):
        return None
    return leaf.not_valid_after_utc.timestamp()


def is_loopback(host: str) -> bool:
    """Whether a listen host reaches this machine only (so plain HTTP stays on it)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or "" / "0.0.0.0" style wildcards: reachable from outside


# How a client entry names the certificate it is bound to: subject attributes
# ("CN=billing" or "CN=billing,O=Casall") or one subjectAltName ("DNS:billing.svc",
# "URI:spiffe://casall/billing", "email:billing@casall.example", "IP:10.0.0.5").
_SUBJECT_NAMES = {
    "CN": "commonName",
    "O": "organizationName",
    "OU": "organizationalUnitName",
    "C": "countryName",
    "L": "localityName",
    "ST": "stateOrProvinceName",
}
_SAN_TYPES = {"DNS": "DNS", "URI": "URI", "EMAIL": "email", "IP": "IP Address"}


def parse_identity(text: str) -> str:
    """A certificate identity in its canonical spelling; ValueError naming the forms allowed."""
    text = text.strip()
    kind, sep, value = text.partition(":")
    if sep and kind.upper() in _SAN_TYPES and value.strip():
        value = value.strip()
        if kind.upper() == "IP":
            value = str(ipaddress.ip_address(value))
        return f"{kind.upper()}:{value}"
    pairs = []
    for part in text.split(","):
        name, eq, attr = part.partition("=")
        if not eq or name.strip().upper() not in _SUBJECT_NAMES or not attr.strip():
            raise ValueError(
                "a certificate identity is subject attributes (CN=billing, CN=billing,O=Casall:"
                f" {', '.join(_SUBJECT_NAMES)}) or one subjectAltName (DNS:, URI:, EMAIL:, IP:)"
            )
        pairs.append(f"{name.strip().upper()}={attr.strip()}")
    return ",".join(pairs)


def _subject(peercert: Mapping[str, Any]) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for rdn in peercert.get("subject", ()):
        for name, value in rdn:
            found.add((name, value))
    return found


def identity_matches(identity: str, peercert: Mapping[str, Any] | None) -> bool:
    """Whether the verified peer certificate ``peercert`` (ssl's dict form) carries ``identity``."""
    if not peercert:
        return False
    kind, sep, value = identity.partition(":")
    if sep and kind in _SAN_TYPES:
        wanted = (_SAN_TYPES[kind], value)
        sans = {(name, str(v)) for name, v in peercert.get("subjectAltName", ())}
        if kind == "IP":
            # ssl spells IPv6 SANs expanded ("2001:DB8:0:0:..."): compare as addresses.
            sans = {
                (name, str(ipaddress.ip_address(v.strip())))
                for name, v in sans
                if name == "IP Address"
            }
        return wanted in sans
    subject = _subject(peercert)
    for pair in identity.split(","):
        name, _, attr = pair.partition("=")
        if (_SUBJECT_NAMES[name], attr) not in subject:
            return False
    return True
