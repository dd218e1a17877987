"""TLS: certificate files read and checked through cryptography; ssl contexts built from them.

No I/O beyond reading the files named in the configuration, no event loop: the
handshake itself runs in uvloop's TLS layer (server.py wraps each accepted
connection, upstream.py each backend connection). What is here:

- ``load_certificate``: one ``{cert, key, password_file}`` entry read and checked:
  a PEM certificate (then its chain), a PEM RSA or ECDSA key that matches it, the
  passphrase right, not expired. Every problem is a ``CertError`` naming the file
  at fault (``which``), so config.py turns it into a key path.
- ``ServerTls``: one generation of a listener's contexts: one ``ssl.SSLContext``
  per certificate, chosen by the client's SNI (exact names first, then a wildcard
  ``*.example.com`` for one label), the first certificate for everything else.
  A generation never changes; a reload or a session-ticket rotation builds a new
  one, and new handshakes start on it (established connections keep theirs).
- ``ListenerTls``: what one listener keeps across generations: the current
  generation, the files' stamps (reload on change), handshake counts by reason,
  reload counts, and the verified client subjects (mTLS) as header lines.
- ``client_context``: the context of an ``https`` pool (CA, client certificate,
  hostname check).

Defaults are Mozilla's "intermediate" profile: TLS 1.2 and 1.3, AEAD ciphers with
forward secrecy only, no compression, no renegotiation, ALPN ``http/1.1``.
"""

import datetime
import hashlib
import ipaddress
import logging
import os
import re
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

__all__ = ["CertError", "LoadedCert", "load_certificate", "load_ca_bundle", "server_context", "ServerTls",
           "ListenerTls", "client_context", "handshake_reason", "describe_tls_error", "subject_text", "VERSIONS", "EXPIRY_WARNING",
           "HANDSHAKE_REASONS"]

log = logging.getLogger("fastlb.tls")

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
EXPIRY_WARNING = 14 * 86400  # seconds: a certificate expiring sooner is warned about at load
ALPN = ["http/1.1"]

# Handshake failures by reason (fastlb_tls_handshake_failures_total): OpenSSL's
# reason codes folded into what an operator can act on.
HANDSHAKE_REASONS = ("protocol_version", "no_shared_cipher", "not_tls", "no_client_certificate",
                     "bad_client_certificate", "certificate_rejected", "timeout", "client_closed", "other")
_SSL_REASONS = {
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "WRONG_VERSION_NUMBER": "protocol_version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
    "VERSION_TOO_LOW": "protocol_version",
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "NO_CIPHERS_AVAILABLE": "no_shared_cipher",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "no_shared_cipher",
    "NO_SHARED_SIGNATURE_ALGORITHMS": "no_shared_cipher",
    "HTTP_REQUEST": "not_tls",
    "HTTPS_PROXY_REQUEST": "not_tls",
    "UNKNOWN_PROTOCOL": "not_tls",
    "RECORD_LAYER_FAILURE": "not_tls",
    "PACKET_LENGTH_TOO_LONG": "not_tls",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_client_certificate",
    "CERTIFICATE_VERIFY_FAILED": "bad_client_certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "certificate_rejected",
    "SSLV3_ALERT_BAD_CERTIFICATE": "certificate_rejected",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate_rejected",
    "TLSV1_ALERT_DECRYPT_ERROR": "certificate_rejected",
}


class CertError(ValueError):
    """A certificate entry that cannot be used; ``which`` names the file at fault
    (``cert``, ``key``, ``password_file``, or a CA bundle's key)."""

    def __init__(self, which, message):
        ValueError.__init__(self, message)
        self.which = which


def file_stamp(path):
    """What tells a replaced or rewritten file: (inode, size, mtime); None when missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class LoadedCert:
    """One checked certificate entry."""

    __slots__ = ("spec", "cert", "names", "not_after", "not_before", "key_type", "name", "password")

    def __init__(self, spec, cert, key_type, password):
        self.spec = spec
        self.cert = cert
        self.key_type = key_type  # "RSA 2048", "ECDSA P-256"
        self.password = password
        self.not_after = cert.not_valid_after_utc
        self.not_before = cert.not_valid_before_utc
        self.names = cert_names(cert)
        self.name = self.names[0] if self.names else cert.subject.rfc4514_string()

    def expires_in(self, now=None):
        now = now or datetime.datetime.now(datetime.timezone.utc)
        return (self.not_after - now).total_seconds()


def cert_names(cert):
    """The DNS names and IP addresses a certificate is for (SAN; else its CN), lowercase."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    names = []
    if san is not None:
        names.extend(n.lower() for n in san.get_values_for_type(x509.DNSName))
        names.extend(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    if not names:
        names.extend(a.value.lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
                     if isinstance(a.value, str))
    return names


def _read(path, which):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CertError(which, "cannot read %s: %s" % (path, exc.strerror or exc)) from None


def _public_der(key):
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_certificate(spec, now=None):
    """Read and check one ``CertificateSpec``; a ``LoadedCert`` or a ``CertError``."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    data = _read(spec.cert, "cert")
    if b"-----BEGIN CERTIFICATE-----" not in data:
        what = "a private key" if b"PRIVATE KEY-----" in data else "not a PEM certificate"
        raise CertError("cert", "%s: %s (expected -----BEGIN CERTIFICATE-----)" % (spec.cert, what))
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertError("cert", "%s: not a valid PEM certificate (%s)" % (spec.cert, exc)) from None
    cert = chain[0]
    password = None
    if spec.password_file:
        password = _read(spec.password_file, "password_file").rstrip(b"\r\n")
    key_data = _read(spec.key, "key")
    if b"PRIVATE KEY-----" not in key_data:
        what = "a certificate, not a key" if b"BEGIN CERTIFICATE" in key_data else "not a PEM private key"
        raise CertError("key", "%s: %s" % (spec.key, what))
    try:
        key = serialization.load_pem_private_key(key_data, password)
    except TypeError as exc:
        if password is None:
            raise CertError("key", "%s: the key is encrypted: give its passphrase in password_file" % spec.key) from None
        raise CertError("password_file", "%s: a passphrase is given but the key is not encrypted (%s)"
                        % (spec.key, exc)) from None
    except ValueError:
        if password is not None:
            raise CertError("password_file", "%s: cannot decrypt the key: wrong passphrase in %s"
                            % (spec.key, spec.password_file)) from None
        raise CertError("key", "%s: not a valid PEM private key" % spec.key) from None
    if isinstance(key, rsa.RSAPrivateKey):
        key_type = "RSA %d" % key.key_size
        if key.key_size < 2048:
            raise CertError("key", "%s: RSA keys under 2048 bits are refused (got %d)" % (spec.key, key.key_size))
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        key_type = "ECDSA %s" % {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(
            key.curve.name, key.curve.name)
    else:
        raise CertError("key", "%s: only RSA and ECDSA keys are supported, got %s" % (spec.key, type(key).__name__))
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        raise CertError("key", "%s does not match the certificate in %s" % (spec.key, spec.cert))
    if cert.not_valid_after_utc <= now:
        raise CertError("cert", "%s: the certificate expired on %s" % (
            spec.cert, cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")))
    loaded = LoadedCert(spec, cert, key_type, password)
    if not loaded.names:
        raise CertError("cert", "%s: the certificate names no host (no subjectAltName, no CN)" % spec.cert)
    return loaded


def expiry_warnings(loaded, now=None):
    """Messages for certificates that are not valid yet or expire within EXPIRY_WARNING."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    out = []
    left = loaded.expires_in(now)
    if left < EXPIRY_WARNING:
        out.append("%s (%s) expires in %.1f days, on %s" % (
            loaded.spec.cert, loaded.name, left / 86400, loaded.not_after.strftime("%Y-%m-%d %H:%M UTC")))
    if loaded.not_before > now:
        out.append("%s (%s) is not valid before %s" % (
            loaded.spec.cert, loaded.name, loaded.not_before.strftime("%Y-%m-%d %H:%M UTC")))
    return out


def load_ca_bundle(path, which):
    """A PEM CA bundle: the number of certificates in it, or a CertError."""
    data = _read(path, which)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertError(which, "%s: not a PEM certificate bundle" % path)
    try:
        return len(x509.load_pem_x509_certificates(data))
    except ValueError as exc:
        raise CertError(which, "%s: not a valid PEM certificate bundle (%s)" % (path, exc)) from None


def server_context(tls_spec, loaded):
    """The context for one certificate of a listener."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = VERSIONS[tls_spec.min_version]
    ctx.set_ciphers(tls_spec.ciphers)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(ALPN)
    spec = loaded.spec
    ctx.load_cert_chain(spec.cert, spec.key, password=loaded.password)
    if tls_spec.client_ca:
        ctx.load_verify_locations(cafile=tls_spec.client_ca)
    if tls_spec.client_auth == "required":
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif tls_spec.client_auth == "optional":
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


class ServerTls:
    """One generation of a listener's contexts (see the module doc)."""

    __slots__ = ("certs", "contexts", "context", "exact", "wildcard")

    def __init__(self, tls_spec, certs):
        self.certs = certs
        self.contexts = [server_context(tls_spec, c) for c in certs]
        self.exact = {}
        self.wildcard = {}  # "example.com" -> the context of "*.example.com"
        for c, ctx in zip(certs, self.contexts):
            for name in c.names:
                if name.startswith("*."):
                    self.wildcard.setdefault(name[2:], ctx)
                else:
                    self.exact.setdefault(name, ctx)
        self.context = self.contexts[0]  # every handshake starts here: the default certificate
        if len(self.contexts) > 1:
            self.context.sni_callback = self._on_sni

    def select(self, server_name):
        """The context for an SNI name (None or unknown: the default)."""
        if server_name:
            name = server_name.lower().rstrip(".")
            ctx = self.exact.get(name)
            if ctx is not None:
                return ctx
            dot = name.find(".")
            if dot > 0:
                ctx = self.wildcard.get(name[dot + 1:])
                if ctx is not None:
                    return ctx
        return self.context

    def _on_sni(self, sslobj, server_name, ctx):
        chosen = self.select(server_name)
        if chosen is not ctx:
            sslobj.context = chosen
        return None


def handshake_reason(exc):
    """A failed handshake's exception -> one of HANDSHAKE_REASONS."""
    if isinstance(exc, ssl.SSLError):
        return _SSL_REASONS.get(getattr(exc, "reason", None) or "", "other")
    if isinstance(exc, (TimeoutError, ConnectionAbortedError)):
        return "timeout"
    if isinstance(exc, (ConnectionError, EOFError, OSError)):
        return "client_closed"
    return "other"


# "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:992)" -> "wrong version number"
_SSL_NOISE = re.compile(r"^\[[A-Z0-9_]+: [A-Z0-9_]+\] |^\[[A-Z0-9_]+\] | \(_ssl\.c:\d+\)$")
# What a TLS client sees when the server answers in plain text (HTTP/1.x) instead.
_NOT_TLS = frozenset(("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "UNKNOWN_PROTOCOL",
                      "HTTP_REQUEST"))


def describe_tls_error(exc):
    """(reason, detail) for an exception from a TLS connect (handshake included) to a
    backend, or (None, None) when it is not a TLS failure (say, a refused connect).
    reason: ``verify_failed`` (the certificate: unknown CA, expired, name mismatch),
    ``handshake_failed`` (any other TLS error, a close during the handshake) or
    ``timeout`` (the handshake did not finish in time)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "verify_failed", "certificate verify failed: %s" % (
            getattr(exc, "verify_message", None) or _SSL_NOISE.sub("", str(exc.strerror or exc)))
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None)
        detail = _SSL_NOISE.sub("", str(exc.strerror or exc)) or str(reason or exc)
        if reason in _NOT_TLS:
            detail += " (not TLS: does the backend speak plain HTTP?)"
        return "handshake_failed", detail
    if isinstance(exc, ConnectionAbortedError) and "handshake" in str(exc):
        return "timeout", "the TLS handshake did not finish in time"  # uvloop's ssl_handshake_timeout
    if isinstance(exc, ConnectionResetError) and exc.errno is None:
        # uvloop raises the bare class when the peer closes during the handshake
        return "handshake_failed", "the backend closed the connection during the handshake"
    return None, None


def subject_text(der):
    """A certificate's subject as an RFC 4514 string; any byte outside printable
    ASCII is hex-escaped (``\\C3\\A9``, valid RFC 4514), so it is a safe header value."""
    text = x509.load_der_x509_certificate(der).subject.rfc4514_string().encode("utf-8")
    if all(0x20 <= b < 0x7F for b in text):
        return text
    return b"".join(bytes([b]) if 0x20 <= b < 0x7F else b"\\%02X" % b for b in text)


class ListenerTls:
    """One listener's TLS across reloads (see the module doc)."""

    __slots__ = ("spec", "path", "current", "handshakes", "failures", "reloads", "subject_header", "subjects",
                 "stamps", "pending", "failed")

    def __init__(self, spec, path):
        self.spec = spec
        self.path = path  # "listeners[0].tls", for messages
        self.handshakes = 0  # completed
        self.failures = {}  # reason -> handshakes that failed
        self.reloads = {"success": 0, "failure": 0}
        self.subject_header = spec.subject_header.encode("ascii") if spec.subject_header else None
        self.subjects = {}  # sha256 of a client certificate -> its header line (bounded)
        # the files' stamps when the running generation was read, when a change was
        # first seen (reloaded once it holds still), when a reload of them failed
        self.pending = self.failed = None
        self.stamps = self._stamps()
        self.current = self._build()  # a CertError here is the caller's (start: exit 2)

    def _stamps(self):
        return tuple(file_stamp(p) for c in self.spec.certificates for p in (c.cert, c.key, c.password_file) if p)

    def _build(self):
        certs = []
        for i, c in enumerate(self.spec.certificates):
            try:
                loaded = load_certificate(c)
            except CertError as exc:
                exc.path = "%s.certificates[%d].%s" % (self.path, i, exc.which)
                raise
            for msg in expiry_warnings(loaded):
                log.warning("%s.certificates[%d]: %s", self.path, i, msg)
            certs.append(loaded)
        return ServerTls(self.spec, certs)

    def poll(self):
        """True when the certificate, key or passphrase files changed since they were
        read and have not changed since the previous poll (a writer is done), unless
        a reload of exactly these files already failed."""
        now = self._stamps()
        if now == self.stamps or now == self.failed:
            self.pending = None
            return False
        if now != self.pending:
            self.pending = now
            return False
        self.pending = None
        return True

    def reload(self, why):
        """Build a new generation from the files; on any problem keep the running one.
        True when the new one is in use."""
        stamps = self._stamps()
        try:
            new = self._build()
        except (CertError, ssl.SSLError, OSError) as exc:
            self.failed = stamps
            self.reloads["failure"] += 1
            log.error("%s: %s: certificates not reloaded, the running ones stay: %s: %s",
                      self.path, why, getattr(exc, "path", self.path), exc)
            return False
        self.current = new
        self.stamps = stamps
        self.failed = None
        self.reloads["success"] += 1
        self.subjects.clear()
        log.info("%s: %s: certificates loaded (%s)", self.path, why,
                 ", ".join("%s %s until %s" % (c.name, c.key_type, c.not_after.strftime("%Y-%m-%d")) for c in new.certs))
        return True

    def as_dict(self):
        """The admin API's view (GET /api/v1/info): what is served, and how it went."""
        return {
            "certificates": [{"name": c.name, "names": c.names, "key_type": c.key_type, "cert": c.spec.cert,
                              "not_after": c.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                              "expires_in_days": round(c.expires_in() / 86400, 1)} for c in self.current.certs],
            "min_version": self.spec.min_version,
            "client_auth": self.spec.client_auth,
            "handshakes": self.handshakes,
            "handshake_failures": dict(self.failures),
            "reloads": dict(self.reloads),
        }

    def handshake_done(self, fut):
        """The done callback of a connection's handshake future."""
        if fut.cancelled():
            self.failures["other"] = self.failures.get("other", 0) + 1
            return
        exc = fut.exception()
        if exc is None:
            self.handshakes += 1
            return
        reason = handshake_reason(exc)
        self.failures[reason] = self.failures.get(reason, 0) + 1
        log.debug("%s: handshake failed (%s): %s", self.path, reason, exc)

    def subject_line(self, ssl_object):
        """The ``subject_header`` line of a connection's verified client certificate,
        or b"" (no certificate, or no header configured)."""
        if self.subject_header is None or ssl_object is None:
            return b""
        der = ssl_object.getpeercert(binary_form=True)
        if not der:
            return b""
        digest = hashlib.sha256(der).digest()
        line = self.subjects.get(digest)
        if line is None:
            line = self.subject_header + b": " + subject_text(der) + b"\r\n"
            if len(self.subjects) >= 10000:
                self.subjects.clear()
            self.subjects[digest] = line
        return line


def client_context(spec):
    """The context of an https pool (model.PoolTlsSpec)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = VERSIONS[spec.min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(ALPN)
    if spec.verify:
        if spec.ca:
            ctx.load_verify_locations(cafile=spec.ca)
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if spec.cert:
        ctx.load_cert_chain(spec.cert, spec.key)
    return ctx


def is_ip(name):
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False
