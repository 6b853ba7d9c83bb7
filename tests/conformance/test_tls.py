"""gRPC over TLS with tritonserver's flags (`--grpc-use-ssl`, `--grpc-use-ssl-mutual`,
`--grpc-server-cert`, `--grpc-server-key`, `--grpc-root-cert`), on localtriton and on the
genuine tritonserver alike: a TLS client trusting the CA is served, a plaintext one is
refused at once, and in mutual mode a client without a certificate is refused too."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from detect_localtriton import options
from detect_stack.detector_client import image_input
from detect_stack.servers import triton_server
from detect_stack.stack import make_certs

# A refused connection fails the call with UNAVAILABLE long before this deadline; a
# server that accepted the bytes and never answered would end in DEADLINE_EXCEEDED.
REFUSAL_TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_url(tmp_path_factory: pytest.TempPathFactory, backend: str, certs: Path):
    with triton_server(backend, tmp_path_factory.mktemp(f"{backend}-tls"), tls=certs) as (url, _):
        yield url


def _credentials(certs: Path, client: str | None = None) -> grpc.ChannelCredentials:
    def read(name: str) -> bytes:
        return (certs / name).read_bytes()

    return grpc.ssl_channel_credentials(
        read("ca.crt"), read(f"client-{client}.key") if client else None,
        read(f"client-{client}.crt") if client else None)


def _server_ready(channel: grpc.Channel) -> bool:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    return stub.ServerReady(pb.ServerReadyRequest(), timeout=REFUSAL_TIMEOUT_S).ready


def _refused(channel: grpc.Channel) -> None:
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as failure:
        _server_ready(channel)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE, failure.value
    assert time.monotonic() - start < REFUSAL_TIMEOUT_S


def test_tls_client_with_the_ca_is_served(tls_url: str, certs: Path):
    client = grpcclient.InferenceServerClient(tls_url, ssl=True,
                                              root_certificates=str(certs / "ca.crt"))
    try:
        result = client.infer("null_detector", [image_input(b"any bytes")],
                              client_timeout=REFUSAL_TIMEOUT_S)
    finally:
        client.close()
    assert int(result.as_numpy("num_detections")[0, 0]) == 1


def test_plaintext_client_is_refused(tls_url: str):
    with grpc.insecure_channel(tls_url) as channel:
        _refused(channel)


def test_mutual_tls_requires_a_client_certificate(tmp_path: Path, backend: str, certs: Path):
    mutual = ("--grpc-use-ssl-mutual", "true", "--grpc-root-cert", str(certs / "ca.crt"))
    with triton_server(backend, tmp_path, *mutual, tls=certs) as (url, _):
        with grpc.secure_channel(url, _credentials(certs)) as channel:
            _refused(channel)
        with grpc.secure_channel(url, _credentials(certs, "beta")) as channel:
            assert _server_ready(channel)


@pytest.mark.parametrize("argv, message", [
    (["--grpc-use-ssl", "true"], "needs --grpc-server-cert"),
    (["--grpc-use-ssl", "true", "--grpc-server-cert", "s.crt"], "needs --grpc-server-key"),
    (["--grpc-use-ssl-mutual", "true", "--grpc-server-cert", "s.crt",
      "--grpc-server-key", "s.key"], "--grpc-use-ssl-mutual needs --grpc-root-cert"),
    (["--grpc-server-cert", "s.crt", "--grpc-server-key", "s.key"], "TLS is off"),
])
def test_localtriton_refuses_inconsistent_tls_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        options.parse(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_localtriton_tls_flags_default_to_plaintext():
    parsed = options.parse([])
    assert not parsed.tls and parsed.grpc_server_cert is None
    assert options.parse(["--grpc-use-ssl-mutual", "1", "--grpc-server-cert", "s.crt",
                          "--grpc-server-key", "s.key", "--grpc-root-cert", "ca.crt"]).tls
