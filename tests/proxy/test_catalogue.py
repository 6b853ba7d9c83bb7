"""The model catalogue: ModelConfig first, ModelMetadata for servers without it, refresh."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from detect_proxy.catalogue import Catalogue
from detect_proxy.errors import ProxyError


class WithoutModelConfig:
    """A KServe-v2 client view of localtriton whose server lacks ModelConfig."""

    def __init__(self, real: aioclient.InferenceServerClient) -> None:
        self.real = real
        self.config_calls = 0

    async def get_model_config(self, *args, **kwargs):
        self.config_calls += 1
        raise InferenceServerException("Method not implemented!", status="StatusCode.UNIMPLEMENTED")

    def __getattr__(self, name):
        return getattr(self.real, name)


class OnePool:
    def __init__(self, client) -> None:
        self.client = client

    @contextlib.contextmanager
    def lease(self):
        yield self.client


def _run(triton_url: str, body):
    async def go():
        async with aioclient.InferenceServerClient(triton_url) as real:
            return await body(real)
    return asyncio.run(go())


def test_config_gives_input_batching_and_labels(triton_url):
    async def body(real):
        model = await Catalogue(OnePool(real)).get("face_detector")
        assert (model.input_name, model.batching, model.labels) == ("IMAGE", True, ("face",))
        assert model.label(0) == "face" and model.label(5) == ""
    _run(triton_url, body)


def test_falls_back_to_metadata_when_model_config_is_unimplemented(triton_url):
    async def body(real):
        client = WithoutModelConfig(real)
        catalogue = Catalogue(OnePool(client))
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
        catalogue = Catalogue(OnePool(real))
        with pytest.raises(ProxyError) as err:
            await catalogue.get("nope")
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        assert err.value.message.endswith("available models: face_detector, null_detector")
        with pytest.raises(ProxyError) as err:
            await catalogue.get("postprocess")
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "exactly one BYTES input" in err.value.message
    _run(triton_url, body)
