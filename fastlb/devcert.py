"""Local development certificates for ``fastlb cert``, in the manner of mkcert.

A private certificate authority lives in one directory (``default_directory()``):
``fastlb-ca.pem`` and its key ``fastlb-ca-key.pem`` (mode 0600, in a 0700
directory). It is created on first use and reused afterwards; its key never
leaves that directory. ``issue`` signs server certificates with it for the
given DNS names (wildcards such as ``*.api.test`` included) and IP addresses.

This is for development only: nothing is installed into any trust store. A
client trusts the certificates by being pointed at the CA file explicitly
(``curl --cacert``, ``httpx.Client(verify=...)``, ``ssl`` ``cafile=``).

Everything is built with ``cryptography``'s x509 API; no openssl subprocess.
"""

import datetime
import ipaddress
import os
import re
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa as rsa_keys
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA_CERT", "CA_KEY", "default_directory", "ensure_ca", "issue", "validate_names"]

CA_CERT = "fastlb-ca.pem"
CA_KEY = "fastlb-ca-key.pem"
CA_NAME = "fastlb development CA"
CA_DAYS = 3650
_BACKDATE = datetime.timedelta(hours=1)  # tolerate a client clock slightly behind ours

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DNS_NAME = re.compile(r"(\*\.)?%s(\.%s)*" % (_LABEL, _LABEL))


def default_directory():
    """``$FASTLB_CERT_DIR``, else ``$XDG_DATA_HOME/fastlb/certs``, else ``~/.local/share/fastlb/certs``."""
    if os.environ.get("FASTLB_CERT_DIR"):
        return os.environ["FASTLB_CERT_DIR"]
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "fastlb", "certs")


def validate_names(names):
    """The names as SAN entries (``x509.DNSName`` / ``x509.IPAddress``); ValueError names the bad one."""
    if isinstance(names, str) or not names:
        raise ValueError("give at least one DNS name or IP address, e.g. localhost 127.0.0.1")
    out = []
    for name in names:
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            ip = None
        if ip is not None and not getattr(ip, "scope_id", None):
            entry = x509.IPAddress(ip)
        else:
            dns = name.lower()
            # an all-numeric last label is a mistyped IP address (256.0.0.1), not a host name
            if len(dns) > 253 or not _DNS_NAME.fullmatch(dns) or dns.rsplit(".", 1)[-1].isdigit():
                raise ValueError("%r is neither an IP address nor a DNS name (labels of letters, digits and "
                                 "hyphens, optionally starting with '*.'; international names in xn-- form)" % name)
            entry = x509.DNSName(dns)
        if entry not in out:
            out.append(entry)
    return out


def _new_key(rsa):
    return rsa_keys.generate_private_key(public_exponent=65537, key_size=2048) if rsa else ec.generate_private_key(
        ec.SECP256R1())


def _write_key(path, key):
    """PKCS8 PEM, unencrypted, readable by the owner only (also when replacing an existing file)."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o600)
        f.write(pem)


def _write_cert(path, cert):
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def _load_ca(cert_path, key_path):
    """The (certificate, key) pair if both load, match and the CA is still valid; else None."""
    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    pem = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.PEM, pem) != \
            cert.public_key().public_bytes(serialization.Encoding.PEM, pem):
        return None
    if cert.not_valid_after_utc <= datetime.datetime.now(datetime.timezone.utc):
        return None
    return cert, key


def ensure_ca(directory, rsa=False):
    """``(ca_cert_path, ca_key_path, created)``: the CA in ``directory``, made there if missing or unusable."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    cert_path = os.path.abspath(os.path.join(directory, CA_CERT))
    key_path = os.path.abspath(os.path.join(directory, CA_KEY))
    if _load_ca(cert_path, key_path) is not None:
        return cert_path, key_path, False
    key = _new_key(rsa)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, CA_NAME),
                      x509.NameAttribute(NameOID.COMMON_NAME, "%s %s" % (CA_NAME, secrets.token_hex(4)))])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path, True


def issue(directory, names, rsa=False, days=825, out_cert=None, out_key=None):
    """``(cert_path, key_path)``: a server certificate for ``names``, signed by the CA in ``directory``.

    ``names`` are DNS names (``*.example.test`` wildcards too) and IP addresses; the
    first is the subject CN. The key is ECDSA P-256, or RSA 2048 with ``rsa=True``.
    Files default to ``<first name>.pem`` and ``<first name>-key.pem`` in ``directory``
    (``*`` spelled ``_wildcard``).
    """
    sans = validate_names(names)
    if days < 1:
        raise ValueError("the certificate must be valid for at least 1 day, got %d" % days)
    ca_cert_path, ca_key_path, _ = ensure_ca(directory, rsa=rsa)
    stem = str(sans[0].value).replace("*", "_wildcard")
    cert_path = os.path.abspath(out_cert or os.path.join(directory, stem + ".pem"))
    key_path = os.path.abspath(out_key or os.path.join(directory, stem + "-key.pem"))
    if {cert_path, key_path} & {ca_cert_path, ca_key_path} or cert_path == key_path:
        raise ValueError("the certificate and key would overwrite each other or the CA files; "
                         "choose other paths with --cert-file/--key-file")
    ca_cert, ca_key = _load_ca(ca_cert_path, ca_key_path)

    key = _new_key(rsa)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fastlb development certificate")] +
                        # CN is at most 64 characters; the SAN is what clients check anyway
                        ([x509.NameAttribute(NameOID.COMMON_NAME, str(sans[0].value))]
                         if len(str(sans[0].value)) <= 64 else []))
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=rsa,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path
