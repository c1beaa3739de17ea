"""Test PKI for the TLS end-to-end tests: a throw-away CA and server
certificates signed by it, written as PEM files into a directory (the test's
tmp_path). Built with the `cryptography` package; nothing leaves the machine.

    pki = make_pki(tmp_path / "pki")
    pki.ca            CA certificate (give it to mailgate as ca=PATH)
    pki.good          (cert, key) for DNS:localhost and IP:127.0.0.1
    pki.wrong_host    (cert, key) for DNS:wrong.example only
    pki.dns_only      (cert, key) for DNS:localhost only (no IP SAN)
    pki.other_ca      a second CA that signed nothing the relays use

    relay_url(relay, scheme="smtp", host="127.0.0.1", user=None,
              password=None, **params)
                      the MAILGATE_RELAYS entry for a conftest Relay with TLS
                      parameters of our choosing (conftest's Relay.url is
                      always tls=none), values percent-encoded.
"""

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailgate tests")])


def _write_key(path, key):
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _write_cert(path, cert):
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _validity(b):
    now = datetime.datetime.now(datetime.timezone.utc)
    return b.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=2))


def _ca(cn):
    key = _key()
    b = x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
    b = _validity(b).serial_number(x509.random_serial_number()).public_key(key.public_key())
    b = b.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                      content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False,
                                      encipher_only=False, decipher_only=False), critical=True)
    b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    return key, b.sign(key, hashes.SHA256())


def _leaf(ca_key, ca_cert, cn, dns=(), ips=()):
    key = _key()
    b = x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
    b = _validity(b).serial_number(x509.random_serial_number()).public_key(key.public_key())
    sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                        critical=False)
    return key, b.sign(ca_key, hashes.SHA256())


class Pki:
    pass


def make_pki(directory):
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    pki = Pki()
    ca_key, ca_cert = _ca("mailgate test CA")
    pki.ca = d / "ca.pem"
    _write_cert(pki.ca, ca_cert)
    other_key, other_cert = _ca("some other CA")
    pki.other_ca = d / "other-ca.pem"
    _write_cert(pki.other_ca, other_cert)

    def leaf(stem, cn, dns=(), ips=()):
        key, cert = _leaf(ca_key, ca_cert, cn, dns, ips)
        cp, kp = d / (stem + ".pem"), d / (stem + ".key")
        _write_cert(cp, cert)
        _write_key(kp, key)
        return cp, kp

    pki.good = leaf("good", "localhost", dns=["localhost"], ips=["127.0.0.1"])
    pki.wrong_host = leaf("wrong-host", "wrong.example", dns=["wrong.example"])
    pki.dns_only = leaf("dns-only", "localhost", dns=["localhost"])
    return pki


def relay_url(relay, scheme="smtp", host="127.0.0.1", user=None, password=None, **params):
    """A MAILGATE_RELAYS entry for a conftest Relay: scheme://[user:pass@]host:port
    ?name=<relay name>&params..., user, password and parameter values
    percent-encoded (a ca= path may hold any byte). Pass tls=None to leave
    tls= out (the default, opportunistic)."""
    from urllib.parse import quote
    auth = ""
    if user is not None:
        auth = "%s:%s@" % (quote(user, safe=""), quote(password or "", safe=""))
    q = [("name", relay.name)] + [(k, v) for k, v in params.items() if v is not None]
    query = "&".join("%s=%s" % (k, quote(str(v), safe="")) for k, v in q)
    return "%s://%s%s:%d?%s" % (scheme, auth, host, relay.port, query)
