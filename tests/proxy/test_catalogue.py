"""The model catalogue: ModelConfig first, ModelMetadata for servers without it, refresh."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from detect_proxy.catalogue import Catalogue
from detect_proxy.config import ProxyConfig
from detect_proxy.errors import ProxyError
from detect_proxy.telemetry import Telemetry
from detect_proxy.upstream import Upstream


class WithoutModelConfig:
    """The upstream of a KServe-v2 server that lacks ModelConfig (localtriton otherwise)."""

    def __init__(self, real: Upstream) -> None:
        self.real = real
        self.config_calls = 0

    async def model_config(self, name: str):
        self.config_calls += 1
        raise ProxyError(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")

    def __getattr__(self, name):
        return getattr(self.real, name)


def _run(triton_url: str, body):
    async def go():
        real = Upstream(ProxyConfig(triton_url=triton_url, pool_size=1, metrics_port=0),
                        Telemetry(0))
        try:
            return await body(real)
        finally:
            await real.close()
    return asyncio.run(go())


def test_config_gives_input_batching_and_labels(triton_url):
    async def body(real):
        model = await Catalogue(real).get("face_detector")
        assert (model.input_name, model.batching, model.labels) == ("IMAGE", True, ("face",))
        assert model.label(0) == "face" and model.label(5) == ""
    _run(triton_url, body)


def test_falls_back_to_metadata_when_model_config_is_unimplemented(triton_url):
    async def body(real):
        client = WithoutModelConfig(real)
        catalogue = Catalogue(client)
        model = await catalogue.get("face_detector")
        assert client.config_calls == 1
        assert (model.input_name, model.batching, model.labels) == ("IMAGE", True, ())
        await catalogue.get("face_detector")
        assert client.config_calls == 1  # cached
        catalogue.forget("face_detector")
        await catalogue.get("face_detector")
        assert client.config_calls == 2  # refreshed
    _run(triton_url, body)


def test_unknown_and_non_detector_models(triton_url):
    async def body(real):
        catalogue = Catalogue(real, exposed=("face_detector", "null_detector", "postprocess"))
        with pytest.raises(ProxyError) as err:
            await catalogue.get("nope")
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        assert err.value.message.endswith("available models: face_detector, null_detector")
        with pytest.raises(ProxyError) as err:
            await catalogue.get("postprocess")
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "exactly one BYTES input" in err.value.message
    _run(triton_url, body)


def test_by_default_only_the_detectors_are_exposed(triton_url):
    """Pipeline steps and single benchmark models answer like missing ones; ensembles and
    models whose config asks to be are the detectors."""
    async def body(real):
        catalogue = Catalogue(real)
        assert (await catalogue.get("face_detector")).name == "face_detector"
        assert (await catalogue.get("object_detector")).name == "object_detector"
        for hidden in ("null_detector", "centerface", "preprocess", "postprocess", "nanodet"):
            with pytest.raises(ProxyError) as err:
                await catalogue.get(hidden)
            assert err.value.code == grpc.StatusCode.NOT_FOUND
            assert err.value.message == (f"model '{hidden}' is not served; "
                                         "available models: face_detector, object_detector")
        face, objects = await catalogue.listing()
        assert (face.model.name, face.versions) == ("face_detector", ("1",))
        assert (objects.model.name, objects.versions) == ("object_detector", ("1", "2"))
        assert not catalogue.known("null_detector")
    _run(triton_url, body)


def test_an_explicit_list_exposes_exactly_those(triton_url):
    async def body(real):
        catalogue = Catalogue(real, exposed=("null_detector",))
        assert [e.model.name for e in await catalogue.listing()] == ["null_detector"]
        with pytest.raises(ProxyError) as err:
            await catalogue.get("face_detector")
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        assert err.value.message.endswith("available models: null_detector")
    _run(triton_url, body)
