"""Generate a development PKI: a CA, Envoy's server certificate and client certificates.

Never committed; ``make certs`` writes them under build/certs. Client identities are SPIFFE
style URI SANs (spiffe://detect.local/client/<name>), which is what Envoy's RBAC allowlist
and per-client rate limits key on in mTLS mode.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from detect_envoy.typed import typed

TRUST_DOMAIN = "detect.local"
DEFAULT_CLIENTS = ("alpha", "beta", "mallory")


def client_identity(name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/client/{name}"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(directory: Path, stem: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> None:
    (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = directory / f"{stem}.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)


def _builder(subject: str, issuer: x509.Name | None, public_key,
             days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (x509.CertificateBuilder()
            .subject_name(name).issuer_name(issuer or name).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days)))


def make_ca(directory: Path,
            days: int = 365) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    cert = (_builder("detect-proxy development CA", None, key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write(directory, "ca", cert, key)
    return cert, key


def make_leaf(directory: Path, stem: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
              sans: list[x509.GeneralName], usage, days: int = 90) -> None:
    ca_cert, ca_key = ca
    key = _key()
    cert = (_builder(stem, ca_cert.subject, key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write(directory, stem, cert, key)


def make_server(directory: Path, ca, hosts: list[str], stem: str = "server",
                days: int = 90) -> None:
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    make_leaf(directory, stem, ca, sans, ExtendedKeyUsageOID.SERVER_AUTH, days)


SDS_FILE = "server-sds.json"


def server_sds(certificate: Path, key: Path) -> dict[str, Any]:
    """The SDS file's content: the secret ``server_cert`` that the front listener's TLS
    context names, read from these two files."""
    return {"resources": [typed(
        "Secret",
        name="server_cert",
        tls_certificate={
            "certificate_chain": {"filename": str(certificate)},
            "private_key": {"filename": str(key)},
        },
    )]}


def publish_server_sds(directory: Path, stem: str = "server") -> Path:
    """Point Envoy's file-based SDS at a server certificate, atomically (write, then rename):
    Envoy watches the directory and switches certificates without a restart."""
    content = server_sds((directory / f"{stem}.crt").resolve(),
                         (directory / f"{stem}.key").resolve())
    target = directory / SDS_FILE
    tmp = directory / f".{SDS_FILE}.tmp"
    tmp.write_text(json.dumps(content, indent=2))
    os.replace(tmp, target)
    return target


def rotate_server(directory: Path, hosts: list[str]) -> str:
    """Issue a new server certificate from the existing CA and publish it through SDS."""
    stem = f"server-{int(time.time() * 1000)}"
    make_server(directory, load_ca(directory), hosts, stem=stem)
    publish_server_sds(directory, stem)
    return stem


def make_client(directory: Path, ca, name: str) -> None:
    make_leaf(directory, f"client-{name}", ca,
              [x509.UniformResourceIdentifier(client_identity(name))],
              ExtendedKeyUsageOID.CLIENT_AUTH)


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    return cert, key  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/certs"))
    parser.add_argument("--host", action="append", default=None,
                        help="server name or IP for the server certificate (repeatable)")
    parser.add_argument("--client", action="append", default=None,
                        help="client identity to issue a certificate for (repeatable)")
    parser.add_argument("--rotate-server", action="store_true",
                        help="issue a new server certificate and hand it to the running Envoy")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    hosts = args.host or ["localhost", "127.0.0.1", "::1"]
    if args.rotate_server:
        print(f"Envoy now serves {rotate_server(args.out, hosts)}.crt")
        return 0
    ca = load_ca(args.out) if (args.out / "ca.key").exists() else make_ca(args.out)
    make_server(args.out, ca, hosts)
    publish_server_sds(args.out)
    for name in args.client or DEFAULT_CLIENTS:
        make_client(args.out, ca, name)
    print(f"development certificates in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
