"""`quiver serve` over TLS and mutual TLS, with a CA, server and client certificates made here."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from quiver.client import FeatureClient
from quiver.v1 import quiver_pb2 as pb
from quiver.v1 import quiver_pb2_grpc
from support.processes import SERVING, UsersSnapshots


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey,
          ca: bool = False, server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    if not ca:
        b = b.add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""

    def __init__(self, d: Path) -> None:
        d.mkdir()
        ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
        ca = _cert("quiver test CA", ca_key, "quiver test CA", ca_key, ca=True)
        self.ca = ca.public_bytes(serialization.Encoding.PEM)
        self.server_cert = _cert("quiver server", server_key, "quiver test CA", ca_key, server=True).public_bytes(
            serialization.Encoding.PEM)
        self.server_key = _pem_key(server_key)
        self.client_cert = _cert("quiver client", client_key, "quiver test CA", ca_key).public_bytes(
            serialization.Encoding.PEM)
        self.client_key = _pem_key(client_key)
        # a client certificate from another CA: mutual TLS must refuse it too
        other_key = ec.generate_private_key(ec.SECP256R1())
        self.stranger_cert = _cert("stranger", client_key, "other CA", other_key).public_bytes(
            serialization.Encoding.PEM)
        self.files = {}
        for name in ("ca", "server_cert", "server_key"):
            (d / f"{name}.pem").write_bytes(getattr(self, name))
            self.files[name] = str(d / f"{name}.pem")

    def flags(self, mutual: bool) -> list[str]:
        flags = ["--tls-cert", self.files["server_cert"], "--tls-key", self.files["server_key"]]
        return flags + (["--tls-client-ca", self.files["ca"]] if mutual else [])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("tls") / "pki")


def get_one(target: str, credentials: grpc.ChannelCredentials | None) -> pb.GetFeaturesResponse:
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        resp: pb.GetFeaturesResponse = quiver_pb2_grpc.FeatureStoreStub(channel).GetFeatures(
            pb.GetFeaturesRequest(int64_ids=[1]), timeout=5)
        return resp


def test_tls(start_server: Any, users: UsersSnapshots, tmp_path: Path, pki: Pki) -> None:
    trusted = grpc.ssl_channel_credentials(root_certificates=pki.ca)
    s = start_server(users.root(tmp_path / "root"), *pki.flags(mutual=False), credentials=trusted)
    s.wait_health(SERVING)
    assert get_one(s.target, trusted).version == users.v1
    with FeatureClient(s.target, credentials=trusted) as c:
        assert c.get_features([1, 2], ["profile"]).rows[0]["profile"] is not None
    for credentials in (None, grpc.ssl_channel_credentials()):  # plaintext; a CA that did not sign the server
        with pytest.raises(grpc.RpcError) as e:
            get_one(s.target, credentials)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_rejects_a_client_without_a_valid_certificate(start_server: Any, users: UsersSnapshots,
                                                                  tmp_path: Path, pki: Pki) -> None:
    with_cert = grpc.ssl_channel_credentials(pki.ca, pki.client_key, pki.client_cert)
    s = start_server(users.root(tmp_path / "root"), *pki.flags(mutual=True), credentials=with_cert)
    s.wait_health(SERVING)
    assert get_one(s.target, with_cert).version == users.v1
    no_cert = grpc.ssl_channel_credentials(pki.ca)
    stranger = grpc.ssl_channel_credentials(pki.ca, pki.client_key, pki.stranger_cert)
    for credentials in (no_cert, stranger, None):
        with pytest.raises(grpc.RpcError) as e:
            get_one(s.target, credentials)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert get_one(s.target, with_cert).version == users.v1  # and it still serves the trusted client
