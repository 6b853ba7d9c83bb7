"""TLS from Envoy's Triton egress to the replicas (`--triton-tls-ca`), as between hosts:
calls and gRPC health checks go over TLS to a replica started with `--grpc-use-ssl`."""

from __future__ import annotations

from pathlib import Path

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_envoy import render
from detect_envoy.clusters import PROXY, TRITON
from detect_stack.stack import admin_get, healthy_hosts, stack


def _clusters(**settings) -> dict[str, dict]:
    config = render.StackConfig(proxies=["127.0.0.1:50051"], tritons=["127.0.0.1:8101"],
                                cert_dir=Path("build/certs"), **settings)
    return {c["name"]: c for c in render.render(config)["static_resources"]["clusters"]}


def test_triton_cluster_has_a_tls_transport_socket_only_when_configured():
    plain = _clusters()
    assert "transport_socket" not in plain[TRITON]

    clusters = _clusters(triton_tls_ca="/certs/ca.crt", triton_tls_server_name="triton.internal")
    socket = clusters[TRITON]["transport_socket"]
    assert socket["name"] == "envoy.transport_sockets.tls"
    context = socket["typed_config"]
    assert context["@type"].endswith("transport_sockets.tls.v3.UpstreamTlsContext")
    assert context["sni"] == "triton.internal"
    common = context["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"]
    assert common["validation_context"] == {
        "trusted_ca": {"filename": "/certs/ca.crt"},
        "match_typed_subject_alt_names": [
            {"san_type": "DNS", "matcher": {"exact": "triton.internal"}}]}
    # Nothing else changes: the proxies stay plaintext on loopback.
    assert "transport_socket" not in clusters[PROXY]
    assert {k: v for k, v in clusters[TRITON].items() if k != "transport_socket"} == plain[TRITON]

    # Without a server name: no SNI, any certificate the CA signed.
    context = _clusters(triton_tls_ca="/certs/ca.crt")[TRITON]["transport_socket"]["typed_config"]
    assert "sni" not in context
    assert context["common_tls_context"]["validation_context"] == {
        "trusted_ca": {"filename": "/certs/ca.crt"}}


def test_detect_through_an_egress_that_originates_tls(tmp_path, images):
    with stack(tmp_path, replicas=1, proxies=1, triton_tls=True) as s:
        # The stack is up only once Envoy's gRPC health checks pass, over TLS.
        assert healthy_hosts(s.envoy.admin_port, TRITON) == 1
        with s.envoy.channel() as channel:
            response = detect_pb2_grpc.DetectorStub(channel).Detect(
                detect_pb2.DetectRequest(image=images["astronaut.png"], model="null_detector"),
                timeout=10)
        assert response.model == "null_detector" and len(response.detections) == 1
        stats = dict(line.split(": ", 1) for line in admin_get(
            s.envoy.admin_port, f"/stats?filter=^cluster\\.{TRITON}\\.ssl\\.").splitlines())
        assert int(stats[f"cluster.{TRITON}.ssl.handshake"]) >= 1
        assert int(stats[f"cluster.{TRITON}.ssl.connection_error"]) == 0
