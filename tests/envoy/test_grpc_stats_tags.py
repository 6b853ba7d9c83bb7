"""Envoy's per-method gRPC stats carry the whole service and method names as labels.

Envoy's default tag extractors split `/detect.v1.Detector/Detect` on dots: service "detect",
method "v1", and the rest of the name left in the metric (`envoy_cluster_grpc_Detector_
Detect_total`). The bootstrap's stats_config (envoy/stats.py) fixes the two gRPC tags and
keeps every other default tag as it was."""

from __future__ import annotations

import grpc
import pytest

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_envoy import render
from detect_proxy.contract import DETECT, SERVICE
from detect_stack.promtext import Sample, scrape, value
from detect_stack.servers import ROOT
from detect_stack.stack import envoy

CALL = {"envoy_cluster_name": "detect_proxy", "envoy_grpc_bridge_service": SERVICE,
        "envoy_grpc_bridge_method": DETECT}


def _calls(e) -> None:
    """One Detect answered OK and one answered INVALID_ARGUMENT, through the front."""
    with e.channel() as channel:
        stub = detect_pb2_grpc.DetectorStub(channel)
        image = (ROOT / "build/testdata/astronaut.png").read_bytes()
        stub.Detect(detect_pb2.DetectRequest(image=image), timeout=30)
        with pytest.raises(grpc.RpcError) as err:
            stub.Detect(detect_pb2.DetectRequest(image=b""), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _envoy_samples(e) -> list[Sample]:
    return scrape(e.admin_port, "/stats/prometheus")


def test_detect_is_counted_under_its_service_and_method(edge):
    before = value(_envoy_samples(edge.envoy), "envoy_cluster_grpc_total", **CALL)
    _calls(edge.envoy)
    samples = _envoy_samples(edge.envoy)
    assert value(samples, "envoy_cluster_grpc_total", **CALL) == before + 2
    assert value(samples, "envoy_cluster_grpc_success", **CALL) >= 1
    assert value(samples, "envoy_cluster_grpc_3", **CALL) >= 1  # INVALID_ARGUMENT
    grpc_series = [(name, labels) for name, labels, _ in samples
                   if name.startswith("envoy_cluster_grpc_")]
    assert grpc_series
    # No family per method, and no label holding a fragment of a dotted name.
    assert not [name for name, _ in grpc_series if "Detector" in name or "Detect_" in name]
    assert {labels.get("envoy_grpc_bridge_service") for _, labels in grpc_series} <= {
        SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


def test_every_other_default_tag_is_kept(tmp_path, edge, monkeypatch):
    """The same calls through an Envoy on Envoy's own default tags give the same metric
    families with the same label names, but for the gRPC ones: naming the defaults one by
    one left none out."""
    proxies = [target for target, _ in edge.proxies]
    tritons = [url for url, _ in edge.tritons]

    def families(samples: list[Sample]) -> set[tuple[str, frozenset[str]]]:
        return {(name, frozenset(labels)) for name, labels, _ in samples
                if not name.startswith("envoy_cluster_grpc_")}

    with envoy(tmp_path, edge.envoy.certs, proxies, tritons) as ours:
        _calls(ours)
        with_ours = families(_envoy_samples(ours))
    bootstrap = render.render

    def on_default_tags(config):
        rendered = bootstrap(config)
        del rendered["stats_config"]
        return rendered

    monkeypatch.setattr(render, "render", on_default_tags)
    with envoy(tmp_path, edge.envoy.certs, proxies, tritons) as defaults:
        _calls(defaults)
        with_defaults = families(_envoy_samples(defaults))
    assert with_ours == with_defaults, (with_ours ^ with_defaults)
