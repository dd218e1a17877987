"""fastlb cert (fastlb/devcert.py): the local CA, the server certificates it signs, the command,
and a real TLS handshake with Python's ssl module trusting only that CA."""

import ipaddress
import os
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fastlb import cli, devcert

NAMES = ["localhost", "127.0.0.1", "api.test", "*.api.test", "::1"]


def load_cert(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def load_key(path):
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def ext(cert, cls):
    return cert.extensions.get_extension_for_class(cls)


def verify_signed_by(leaf, ca):
    """Raises InvalidSignature unless ca's key signed leaf."""
    pub = ca.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        pub.verify(leaf.signature, leaf.tbs_certificate_bytes, padding.PKCS1v15(), leaf.signature_hash_algorithm)
    else:
        pub.verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm))


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# -- the CA -----------------------------------------------------------------------------


def test_ca_is_a_ca_and_is_reused(tmp_path):
    d = tmp_path / "certs"
    cert_path, key_path, created = devcert.ensure_ca(str(d))
    assert created
    assert mode(d) == 0o700
    assert mode(key_path) == 0o600
    assert os.path.basename(cert_path) == "fastlb-ca.pem" and os.path.basename(key_path) == "fastlb-ca-key.pem"
    ca = load_cert(cert_path)
    bc = ext(ca, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ext(ca, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and ku.value.digital_signature
    assert ext(ca, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(ca.public_key())
    assert ca.subject == ca.issuer
    assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "fastlb development CA"
    cn = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn.startswith("fastlb development CA ") and len(cn.rsplit(" ", 1)[1]) == 8
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 3650
    assert isinstance(load_key(key_path), ec.EllipticCurvePrivateKey)
    verify_signed_by(ca, ca)

    again = devcert.ensure_ca(str(d))
    assert again == (cert_path, key_path, False)
    assert load_cert(cert_path).serial_number == ca.serial_number


def test_an_unusable_ca_is_replaced(tmp_path):
    cert_path, key_path, _ = devcert.ensure_ca(str(tmp_path))
    serial = load_cert(cert_path).serial_number
    with open(key_path, "wb") as f:
        f.write(b"not a key")
    assert devcert.ensure_ca(str(tmp_path))[2] is True
    assert load_cert(cert_path).serial_number != serial
    assert mode(key_path) == 0o600


# -- server certificates ---------------------------------------------------------------


def test_leaf_chains_to_the_ca_with_all_names(tmp_path):
    cert_path, key_path = devcert.issue(str(tmp_path), NAMES)
    assert cert_path == str(tmp_path / "localhost.pem") and key_path == str(tmp_path / "localhost-key.pem")
    assert mode(key_path) == 0o600
    ca = load_cert(tmp_path / "fastlb-ca.pem")
    leaf = load_cert(cert_path)
    assert leaf.issuer == ca.subject
    verify_signed_by(leaf, ca)

    san = ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "api.test", "*.api.test"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"

    bc = ext(leaf, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = ext(leaf, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_encipherment
    assert not ku.value.key_cert_sign
    assert list(ext(leaf, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH,
                                                            ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == \
        ext(ca, x509.SubjectKeyIdentifier).value.digest
    assert ext(leaf, x509.SubjectKeyIdentifier).value == \
        x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())
    assert 824 <= (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days <= 826

    key = load_key(key_path)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()


def test_second_certificate_reuses_the_ca(tmp_path):
    devcert.issue(str(tmp_path), ["a.test"])
    serial = load_cert(tmp_path / "fastlb-ca.pem").serial_number
    cert_path, _ = devcert.issue(str(tmp_path), ["*.b.test"], days=30)
    assert os.path.basename(cert_path) == "_wildcard.b.test.pem"
    assert load_cert(tmp_path / "fastlb-ca.pem").serial_number == serial
    leaf = load_cert(cert_path)
    verify_signed_by(leaf, load_cert(tmp_path / "fastlb-ca.pem"))
    assert 29 <= (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days <= 31


def test_rsa(tmp_path):
    cert_path, key_path = devcert.issue(str(tmp_path), ["localhost"], rsa=True)
    key = load_key(key_path)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    leaf = load_cert(cert_path)
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()
    assert ext(leaf, x509.KeyUsage).value.key_encipherment
    ca = load_cert(tmp_path / "fastlb-ca.pem")
    assert isinstance(ca.public_key(), rsa.RSAPublicKey)
    verify_signed_by(leaf, ca)


def test_explicit_output_paths(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    cert_path, key_path = devcert.issue(str(tmp_path / "ca"), ["localhost"], out_cert=str(out / "c.pem"),
                                        out_key=str(out / "k.pem"))
    assert (cert_path, key_path) == (str(out / "c.pem"), str(out / "k.pem"))
    assert mode(key_path) == 0o600
    assert sorted(os.listdir(tmp_path / "ca")) == ["fastlb-ca-key.pem", "fastlb-ca.pem"]


@pytest.mark.parametrize("names", [["bad name!"], [""], [], ["localhost", "-x.test"], ["a..test"], ["*"],
                                   ["a.*.test"], ["256.0.0.1"], ["x" * 64 + ".test"], ["bücher.test"]])
def test_invalid_names(tmp_path, names):
    with pytest.raises(ValueError):
        devcert.issue(str(tmp_path), names)
    assert not os.path.exists(tmp_path / "fastlb-ca.pem")  # nothing written for a bad request


def test_names_that_would_overwrite_the_ca_are_refused(tmp_path):
    with pytest.raises(ValueError, match="CA files"):
        devcert.issue(str(tmp_path), ["fastlb-ca"])
    devcert.ensure_ca(str(tmp_path))
    assert devcert.ensure_ca(str(tmp_path))[2] is False


def test_default_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTLB_CERT_DIR", str(tmp_path / "x"))
    assert devcert.default_directory() == str(tmp_path / "x")
    monkeypatch.delenv("FASTLB_CERT_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert devcert.default_directory() == str(tmp_path / "data" / "fastlb" / "certs")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert devcert.default_directory() == str(tmp_path / "home" / ".local" / "share" / "fastlb" / "certs")


# -- the command ---------------------------------------------------------------------


def test_cli_cert(tmp_path, capsys):
    assert cli.main(["cert", "--dir", str(tmp_path), "localhost", "127.0.0.1"]) == 0
    out = capsys.readouterr().out
    ca, cert, key = tmp_path / "fastlb-ca.pem", tmp_path / "localhost.pem", tmp_path / "localhost-key.pem"
    assert "created a new local CA: %s" % ca in out
    assert "certificate for localhost, 127.0.0.1: %s" % cert in out
    assert "key: %s" % key in out
    assert "--tls-cert %s --tls-key %s" % (cert, key) in out
    assert "curl --cacert %s https://localhost:8443/" % ca in out
    assert cert.exists() and key.exists()

    assert cli.main(["cert", "--dir", str(tmp_path), "--rsa", "--days", "10", "--cert-file", str(tmp_path / "c.pem"),
                     "--key-file", str(tmp_path / "k.pem"), "api.test"]) == 0
    out = capsys.readouterr().out
    assert "using the local CA: %s" % ca in out
    assert "certificate for api.test: %s" % (tmp_path / "c.pem") in out
    assert "--resolve api.test:8443:127.0.0.1" in out
    assert isinstance(load_key(tmp_path / "k.pem"), rsa.RSAPrivateKey)


def test_cli_cert_default_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FASTLB_CERT_DIR", str(tmp_path / "env"))
    assert cli.main(["cert", "localhost"]) == 0
    assert (tmp_path / "env" / "fastlb-ca.pem").exists()


@pytest.mark.parametrize("argv", [["bad name!"], [""], ["--days", "0", "localhost"]])
def test_cli_cert_invalid(tmp_path, capsys, argv):
    assert cli.main(["cert", "--dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastlb cert: ")
    assert not os.path.exists(tmp_path / "fastlb-ca.pem")


# -- end to end: a real handshake trusting only the local CA ---------------------------------


def handshake(server_ctx, client_ctx, server_hostname):
    """Handshake over a socket pair; the client's peer certificate, or the client's exception raised."""
    server_sock, client_sock = socket.socketpair()
    server_sock.settimeout(10)
    client_sock.settimeout(10)

    def serve():
        try:
            with server_ctx.wrap_socket(server_sock, server_side=True) as tls:
                tls.sendall(tls.recv(4))
        except (ssl.SSLError, OSError):
            pass  # the client refused us: what the failing cases expect

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with client_ctx.wrap_socket(client_sock, server_hostname=server_hostname) as tls:
            tls.sendall(b"ping")
            assert tls.recv(4) == b"ping"
            return tls.getpeercert()
    finally:
        client_sock.close()
        t.join(10)
        server_sock.close()


@pytest.mark.parametrize("use_rsa", [False, True], ids=["ecdsa", "rsa"])
def test_tls_handshake_trusting_the_local_ca(tmp_path, use_rsa):
    cert_path, key_path = devcert.issue(str(tmp_path), NAMES, rsa=use_rsa)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(tmp_path / "fastlb-ca.pem"))

    peer = handshake(server, client, "localhost")
    assert ("DNS", "localhost") in peer["subjectAltName"]
    handshake(server, client, "127.0.0.1")  # hostname verification against the IP SAN
    handshake(server, client, "x.api.test")  # the wildcard
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server, client, "other.test")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server, client, "a.b.api.test")  # a wildcard covers one label

    # the CA is in no trust store: the system defaults refuse the certificate
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server, ssl.create_default_context(), "localhost")
