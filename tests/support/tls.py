"""A self-signed TLS certificate for 127.0.0.1, for the HTTPS stand-ins of the tests."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from imagetools import keys


def certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """A CA certificate of `key`, valid for 127.0.0.1 for a day."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )


def certificate_valid(before: datetime.datetime, after: datetime.datetime) -> bytes:
    """The PEM of a self-signed certificate (CN "server") valid from BEFORE to AFTER: a server
    certificate given to modify -c, expired or not yet valid as the test needs."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "server")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(before)
        .not_valid_after(after)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def certificate_pem() -> bytes:
    """A certificate's PEM alone (of a key thrown away): what an operator might give for a key."""
    return certificate(ec.generate_private_key(ec.SECP256R1())).public_bytes(serialization.Encoding.PEM)


def self_signed(directory: Path, stem: str = "server") -> tuple[Path, Path]:
    """(certificate, key) files in `directory`: a CA certificate valid for 127.0.0.1 for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert_file, key_file = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_file.write_bytes(certificate(key).public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(keys.private_pem(key, "pkcs8"))
    return cert_file, key_file
