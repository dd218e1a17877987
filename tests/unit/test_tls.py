"""fastlb.tls: certificate checks, SNI selection, reload bookkeeping; and the TLS keys'
configuration errors, each naming its key path. Certificates are generated here
(trustme, cryptography)."""

import datetime
import os
import ssl
import time

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from fastlb import config, tls
from fastlb.errors import ConfigError
from fastlb.model import CertificateSpec, ListenerTlsSpec

NOW = datetime.datetime.now(datetime.timezone.utc)


def self_signed(tmp_path, stem, key=None, names=("api.test",), cn="api.test", days=30, start=-1,
                password=None):
    """A self-signed certificate written to tmp_path: (cert path, key path)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW + datetime.timedelta(days=start))
               .not_valid_after(NOW + datetime.timedelta(days=days)))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = builder.sign(key, algorithm)
    cert_path = tmp_path / (stem + ".pem")
    key_path = tmp_path / (stem + ".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
    return str(cert_path), str(key_path)


def load(cert, key, password_file=None):
    return tls.load_certificate(CertificateSpec(cert, key, password_file))


# ------------------------------------------------------------------ load_certificate
def test_a_good_pair_loads_with_its_names_and_key_type(tmp_path):
    c = load(*self_signed(tmp_path, "a", names=("api.test", "*.apps.test")))
    assert c.names == ["api.test", "*.apps.test"] and c.name == "api.test"
    assert c.key_type == "ECDSA P-256"
    r = load(*self_signed(tmp_path, "r", key=rsa.generate_private_key(65537, 2048)))
    assert r.key_type == "RSA 2048"


def test_without_san_the_common_name_is_the_name(tmp_path):
    assert load(*self_signed(tmp_path, "a", names=(), cn="Legacy.Test")).names == ["legacy.test"]


@pytest.mark.parametrize("case, which, words", [
    ("mismatch", "key", "does not match the certificate"),
    ("cert_is_key", "cert", "a private key"),
    ("key_is_cert", "key", "a certificate, not a key"),
    ("garbage_cert", "cert", "not a PEM certificate"),
    ("expired", "cert", "expired on"),
    ("rsa_1024", "key", "under 2048 bits"),
    ("ed25519", "key", "only RSA and ECDSA"),
    ("missing", "cert", "cannot read"),
    ("encrypted_no_password", "key", "give its passphrase in password_file"),
    ("wrong_password", "password_file", "wrong passphrase"),
    ("password_for_plain_key", "password_file", "not encrypted"),
])
def test_each_bad_entry_names_the_file_at_fault(tmp_path, case, which, words):
    cert, key = self_signed(tmp_path, "a")
    pw = None
    if case == "mismatch":
        key = self_signed(tmp_path, "b")[1]
    elif case == "cert_is_key":
        cert = key
    elif case == "key_is_cert":
        key = cert
    elif case == "garbage_cert":
        (tmp_path / "g.pem").write_text("hello\n")
        cert = str(tmp_path / "g.pem")
    elif case == "expired":
        cert, key = self_signed(tmp_path, "e", days=-1, start=-10)
    elif case == "rsa_1024":
        cert, key = self_signed(tmp_path, "r", key=rsa.generate_private_key(65537, 1024))
    elif case == "ed25519":
        cert, key = self_signed(tmp_path, "d", key=ed25519.Ed25519PrivateKey.generate())
    elif case == "missing":
        cert = str(tmp_path / "nope.pem")
    elif case in ("encrypted_no_password", "wrong_password"):
        cert, key = self_signed(tmp_path, "p", password=b"right")
        if case == "wrong_password":
            (tmp_path / "pw").write_text("wrong\n")
            pw = str(tmp_path / "pw")
    elif case == "password_for_plain_key":
        (tmp_path / "pw").write_text("x\n")
        pw = str(tmp_path / "pw")
    with pytest.raises(tls.CertError) as info:
        load(cert, key, pw)
    assert info.value.which == which
    assert words in str(info.value)


def test_an_encrypted_key_loads_with_its_passphrase(tmp_path):
    cert, key = self_signed(tmp_path, "p", password=b"s3cret")
    (tmp_path / "pw").write_text("s3cret\n")
    c = load(cert, key, str(tmp_path / "pw"))
    ctx = tls.server_context(ListenerTlsSpec(certificates=(c.spec,)), c)  # ssl loads it with the passphrase
    assert isinstance(ctx, ssl.SSLContext)


def test_expiry_warnings(tmp_path):
    soon = load(*self_signed(tmp_path, "s", days=5))
    later = load(*self_signed(tmp_path, "l", days=60))
    future = load(*self_signed(tmp_path, "f", days=60, start=2))
    assert any("expires in 5.0 days" in m or "expires in 4.9 days" in m for m in tls.expiry_warnings(soon))
    assert tls.expiry_warnings(later) == []
    assert any("not valid before" in m for m in tls.expiry_warnings(future))


# ------------------------------------------------------------------ SNI selection
def test_sni_selection_exact_wildcard_default(tmp_path):
    a = load(*self_signed(tmp_path, "a", names=("api.test",)))
    w = load(*self_signed(tmp_path, "w", names=("www.test", "*.apps.test")))
    spec = ListenerTlsSpec(certificates=(a.spec, w.spec))
    gen = tls.ServerTls(spec, [a, w])
    default, second = gen.contexts
    assert gen.context is default and default.sni_callback is not None
    assert gen.select("api.test") is default
    assert gen.select("WWW.Test.") is second  # case and a trailing dot do not matter
    assert gen.select("x.apps.test") is second
    assert gen.select("y.x.apps.test") is default  # a wildcard covers one label
    assert gen.select("apps.test") is default
    assert gen.select(None) is default and gen.select("other.test") is default
    one = tls.ServerTls(ListenerTlsSpec(certificates=(a.spec,)), [a])
    assert one.context.sni_callback is None  # one certificate: no callback on the handshake path


def test_server_context_defaults(tmp_path):
    a = load(*self_signed(tmp_path, "a"))
    ctx = tls.server_context(ListenerTlsSpec(certificates=(a.spec,)), a)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION and ctx.options & ssl.OP_NO_RENEGOTIATION
    assert ctx.verify_mode == ssl.CERT_NONE
    names = {c["name"] for c in ctx.get_ciphers()}
    assert "ECDHE-ECDSA-AES128-GCM-SHA256" in names and "TLS_AES_128_GCM_SHA256" in names
    assert not any("CBC" in n or n.startswith("AES128-") or "RC4" in n or "3DES" in n for n in names)
    ca = trustme.CA()
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    for mode, want in (("optional", ssl.CERT_OPTIONAL), ("required", ssl.CERT_REQUIRED)):
        spec = ListenerTlsSpec(certificates=(a.spec,), client_ca=str(ca_path), client_auth=mode)
        assert tls.server_context(spec, a).verify_mode == want


# ------------------------------------------------------------------ handshake reasons, subjects
@pytest.mark.parametrize("exc, reason", [
    (ssl.SSLError(1, "x"), "other"),
    (ConnectionAbortedError("SSL handshake is taking longer than 10 seconds"), "timeout"),
    (ConnectionResetError(), "client_closed"),
    (RuntimeError(), "other"),
])
def test_handshake_reason_of_plain_exceptions(exc, reason):
    assert tls.handshake_reason(exc) == reason


def test_handshake_reason_of_openssl_reasons():
    for code, reason in (("UNSUPPORTED_PROTOCOL", "protocol_version"), ("HTTP_REQUEST", "not_tls"),
                         ("NO_SHARED_CIPHER", "no_shared_cipher"),
                         ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "no_client_certificate"),
                         ("CERTIFICATE_VERIFY_FAILED", "bad_client_certificate"),
                         ("TLSV1_ALERT_UNKNOWN_CA", "certificate_rejected")):
        exc = ssl.SSLError(1, code)
        exc.reason = code
        assert tls.handshake_reason(exc) == reason
        assert reason in tls.HANDSHAKE_REASONS


def test_subject_text_is_rfc4514_and_safe_as_a_header(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Zoë\r\nX-Evil: 1"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    text = tls.subject_text(cert.public_bytes(serialization.Encoding.DER))
    assert b"\r" not in text and b"\n" not in text
    assert all(0x20 <= b < 0x7F for b in text)
    assert text.startswith(b"O=Example\\, Inc,CN=Zo\\C3\\AB")


# ------------------------------------------------------------------ ListenerTls
def test_poll_waits_for_the_files_to_hold_still_and_skips_a_failed_set(tmp_path):
    cert, key = self_signed(tmp_path, "a")
    lt = tls.ListenerTls(ListenerTlsSpec(certificates=(CertificateSpec(cert, key),)), "listeners[0].tls")
    assert lt.poll() is False
    first = lt.current
    other_cert, other_key = self_signed(tmp_path, "b")
    os.replace(other_cert, cert)  # the cert is new, its key not yet: a half-written pair
    bump = time.time() + 5
    os.utime(cert, (bump, bump))
    assert lt.poll() is False  # seen changing: wait one more poll
    assert lt.poll() is True
    assert lt.reload("test") is False  # the key does not match: the running set stays
    assert lt.current is first and lt.reloads == {"success": 0, "failure": 1}
    assert lt.poll() is False and lt.poll() is False  # the same bad set is not retried every second
    os.replace(other_key, key)
    assert lt.poll() is False and lt.poll() is True
    assert lt.reload("test") is True
    assert lt.current is not first and lt.reloads == {"success": 1, "failure": 1}
    assert lt.poll() is False


def test_a_bad_entry_at_start_carries_its_key_path(tmp_path):
    cert, key = self_signed(tmp_path, "a")
    _, other = self_signed(tmp_path, "b")
    spec = ListenerTlsSpec(certificates=(CertificateSpec(cert, key), CertificateSpec(cert, other)))
    with pytest.raises(tls.CertError) as info:
        tls.ListenerTls(spec, "listeners[2].tls")
    assert info.value.path == "listeners[2].tls.certificates[1].key"


# ------------------------------------------------------------------ configuration
def doc_with(tmp_path, listener_tls=None, pool_tls=None, **listener):
    cert, key = self_signed(tmp_path, "cfg")
    lst = dict({"bind": "127.0.0.1:0", "pool": "p"}, **listener)
    if listener_tls is not None:
        lst["tls"] = dict({"certificates": [{"cert": cert, "key": key}]}, **listener_tls)
    pool = {"backends": ["127.0.0.1:9"]}
    if pool_tls is not None:
        pool["tls"] = pool_tls
    return {"listeners": [lst], "pools": {"p": pool}}


def test_config_listener_tls_defaults(tmp_path):
    cfg = config.from_dict(doc_with(tmp_path, {}))
    t = cfg.listeners[0].tls
    assert t.min_version == "1.2" and t.client_auth == "none" and t.ticket_rotation == 43200.0 and t.watch
    cfg = config.from_dict(doc_with(tmp_path, {"min_version": 1.3, "hsts": "max-age=60; includeSubDomains; preload"}))
    assert cfg.listeners[0].tls.min_version == "1.3"


@pytest.mark.parametrize("tls_keys, pool_tls, listener, path, words", [
    ({"min_version": "1.1"}, None, {}, "listeners[0].tls.min_version", "not offered"),
    ({"client_auth": "required"}, None, {}, "listeners[0].tls.client_auth", "needs client_ca"),
    ({"client_auth": "sometimes"}, None, {}, "listeners[0].tls.client_auth", "expected one of"),
    ({"subject_header": "X-Subject"}, None, {}, "listeners[0].tls.subject_header", "needs client_auth"),
    ({"subject_header": "bad header"}, None, {}, "listeners[0].tls.subject_header", "header name"),
    ({"hsts": "forever"}, None, {}, "listeners[0].tls.hsts", "max-age="),
    ({"ciphers": "NOT-A-CIPHER"}, None, {}, "listeners[0].tls.ciphers", "cipher list"),
    ({"ticket_rotation": "soon"}, None, {}, "listeners[0].tls.ticket_rotation", "duration"),
    ({"watch": "yes"}, None, {}, "listeners[0].tls.watch", "true or false"),
    ({"client_ca": "/nonexistent/ca.pem"}, None, {}, "listeners[0].tls.client_ca", "cannot read"),
    ({"certificates": []}, None, {}, "listeners[0].tls.certificates", "non-empty list"),
    ({"bogus": 1}, None, {}, "listeners[0].tls.bogus", "unknown key"),
    (None, {"verify": "no"}, {}, "pools.p.tls.verify", "true or false"),
    (None, {"verify": False, "ca": "CA"}, {}, "pools.p.tls.verify", "checks nothing"),
    (None, {"cert": "CERT"}, {}, "pools.p.tls.key", "go together"),
    (None, {"server_name": "not a name"}, {}, "pools.p.tls.server_name", "host name"),
    (None, {"ca": "/nonexistent/ca.pem"}, {}, "pools.p.tls.ca", "cannot read"),
    (None, {"min_version": "1.0"}, {}, "pools.p.tls.min_version", "not offered"),
    (None, {"cert": "CERT", "key": "OTHERKEY"}, {}, "pools.p.tls.key", "does not match"),
])
def test_config_tls_mistakes_name_the_key_path(tmp_path, tls_keys, pool_tls, listener, path, words):
    cert, key = self_signed(tmp_path, "pc")
    _, other = self_signed(tmp_path, "po")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    subst = {"CA": str(tmp_path / "ca.pem"), "CERT": cert, "OTHERKEY": other}
    if pool_tls is not None:
        pool_tls = {k: subst.get(v, v) if isinstance(v, str) else v for k, v in pool_tls.items()}
    with pytest.raises(ConfigError) as info:
        config.from_dict(doc_with(tmp_path, tls_keys, pool_tls, **listener))
    problems = dict(info.value.problems)
    assert path in problems, problems
    assert words in problems[path], problems[path]


def test_config_redirect_listener(tmp_path):
    doc = doc_with(tmp_path)
    doc["listeners"].append({"name": "r", "bind": "127.0.0.1:0", "redirect_https": True})
    cfg = config.from_dict(doc)
    assert cfg.listeners[1].redirect_https == 443 and cfg.listeners[1].routes == ()
    for bad, words in (({"redirect_https": 0}, "HTTPS port"), ({"redirect_https": 8443, "pool": "p"}, "no routes"),
                       ({"redirect_https": 8443, "tls": {"certificates": []}}, "plain HTTP")):
        doc["listeners"][1] = dict({"name": "r", "bind": "127.0.0.1:0"}, **bad)
        with pytest.raises(ConfigError) as info:
            config.from_dict(doc)
        problems = dict(info.value.problems)
        assert words in problems.get("listeners[1].redirect_https", ""), problems


def test_pool_tls_false_is_plain_http(tmp_path):
    assert config.from_dict(doc_with(tmp_path, None, False)).pool("p").tls is None


def test_pool_tls_true_is_system_cas_and_the_host_name(tmp_path):
    cfg = config.from_dict(doc_with(tmp_path, None, True))
    t = cfg.pool("p").tls
    assert t.verify and t.ca is None and t.server_name is None
    ctx = tls.client_context(t)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
