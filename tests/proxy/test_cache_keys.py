"""The result cache's parts on their own: the in-process tier's bounds, coalescing and its
failures, and what a cache key's version and epoch follow."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import pytest
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from detect_proxy.cache import ENTRY_OVERHEAD_BYTES, LocalTier, Lookup, ResultCache, cache_key
from detect_proxy.catalogue import Catalogue
from detect_proxy.errors import ProxyError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _size(key: str, value: bytes) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD_BYTES


def test_the_local_tier_evicts_the_least_recently_used_to_stay_within_its_bytes():
    entry = _size("a", b"x" * 100)
    tier = LocalTier(max_bytes=3 * entry)
    for key in "abc":
        tier.put(key, b"x" * 100, ttl_s=60)
    assert tier.get("a") is not None  # a is now the most recently used
    tier.put("d", b"x" * 100, ttl_s=60)
    assert tier.get("b") is None and {k for k in "acd" if tier.get(k)} == set("acd")
    assert tier.bytes == 3 * entry and len(tier) == 3
    tier.put("huge", b"x" * 4 * entry, ttl_s=60)  # larger than the whole tier: not kept
    assert tier.get("huge") is None and len(tier) == 3


def test_local_entries_expire_after_the_ttl():
    clock = Clock()
    tier = LocalTier(max_bytes=10_000, clock=clock)
    tier.put("k", b"v", ttl_s=5)
    clock.now = 4.9
    assert tier.get("k") == b"v"
    clock.now = 5.0
    assert tier.get("k") is None and tier.bytes == 0


class Recorder:
    """The telemetry the cache uses, recording what it counts."""

    def __init__(self) -> None:
        self.lookups: Counter[str] = Counter()
        outer = self

        class Lookups:
            def add(self, amount: int, labels: dict[str, str]) -> None:
                outer.lookups[labels["result"] + (f"/{labels['tier']}" if labels["tier"]
                                                  else "")] += amount

        class Histogram:
            def record(self, *_: object) -> None:
                pass

        self.cache_lookups = Lookups()
        self.cache_lookup = Histogram()


def _cache(recorder: Recorder) -> ResultCache:
    return ResultCache(60.0, LocalTier(1 << 20), None, recorder)  # type: ignore[arg-type]


LOOKUP = Lookup(cache_key(b"image", "m", "1", "e"), "m", "1")


def test_identical_calls_in_flight_make_one_backend_call():
    asyncio.run(_identical_calls_in_flight_make_one_backend_call())


async def _identical_calls_in_flight_make_one_backend_call():
    recorder = Recorder()
    cache = _cache(recorder)
    calls = 0

    async def compute() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return b"answer"

    answers = await asyncio.gather(*(cache.answer(LOOKUP, compute) for _ in range(50)))
    assert answers == [b"answer"] * 50 and calls == 1
    assert recorder.lookups == {"miss": 1, "coalesced": 49}
    assert await cache.answer(LOOKUP, compute) == b"answer" and calls == 1
    assert recorder.lookups["hit/local"] == 1
    bypass = Lookup(LOOKUP.key, "m", "1", bypass=True)
    assert await cache.answer(bypass, compute) == b"answer" and calls == 2
    assert sum(recorder.lookups.values()) == 52


def test_followers_share_a_bad_images_error_but_not_a_leaders_own_failure():
    asyncio.run(_followers_share_a_bad_images_error_but_not_a_leaders_own_failure())


async def _followers_share_a_bad_images_error_but_not_a_leaders_own_failure():
    recorder = Recorder()
    cache = _cache(recorder)
    started = asyncio.Event()

    async def rejected() -> bytes:
        started.set()
        await asyncio.sleep(0.02)
        raise ProxyError(grpc.StatusCode.INVALID_ARGUMENT, "model rejected the image")

    leader = asyncio.ensure_future(cache.answer(LOOKUP, rejected))
    await started.wait()
    with pytest.raises(ProxyError, match="rejected"):
        await cache.answer(LOOKUP, rejected)
    with pytest.raises(ProxyError):
        await leader

    # The leader's deadline passes: a follower computes its own answer.
    started.clear()

    async def too_late() -> bytes:
        started.set()
        await asyncio.sleep(0.02)
        raise ProxyError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline")

    async def fine() -> bytes:
        return b"answer"

    leader = asyncio.ensure_future(cache.answer(LOOKUP, too_late))
    await started.wait()
    assert await cache.answer(LOOKUP, fine) == b"answer"
    with pytest.raises(ProxyError):
        await leader


class Upstream:
    """The model server as the catalogue sees it: a repository index and model configs."""

    def __init__(self) -> None:
        self.versions = {"face_detector": ["1"], "centerface": ["1"]}
        self.threshold = "0.5"

    async def repository_index(self) -> pb.RepositoryIndexResponse:
        return pb.RepositoryIndexResponse(models=[
            pb.RepositoryIndexResponse.ModelIndex(name=name, version=v, state="READY")
            for name, versions in self.versions.items() for v in versions])

    async def model_config(self, name: str) -> mc.ModelConfig:
        config = mc.ModelConfig(name=name, platform="ensemble" if name == "face_detector"
                                else "onnxruntime_onnx")
        if name == "face_detector":
            config.ensemble_scheduling.step.add(model_name="centerface")
        else:
            config.parameters["threshold"].string_value = self.threshold
        return config


def test_a_keys_version_and_epoch_follow_the_server_and_the_deployment():
    asyncio.run(_a_keys_version_and_epoch_follow_the_server_and_the_deployment())


async def _a_keys_version_and_epoch_follow_the_server_and_the_deployment():
    upstream = Upstream()
    catalogue = Catalogue(upstream, deployment_epoch="rev-1")  # type: ignore[arg-type]
    first = await catalogue.resolved("face_detector")
    assert first.version == "1"
    upstream.versions["face_detector"] = ["1", "2", "10"]
    await catalogue.refresh()
    second = await catalogue.resolved("face_detector")
    assert second.version == "10" and second.epoch != first.epoch  # highest ready version
    upstream.threshold = "0.6"  # a step's config changed: the ensemble's answers may too
    await catalogue.refresh()
    third = await catalogue.resolved("face_detector")
    assert third.version == "10" and third.epoch != second.epoch
    redeployed = Catalogue(upstream, deployment_epoch="rev-2")  # type: ignore[arg-type]
    assert (await redeployed.resolved("face_detector")).epoch != third.epoch
    unchanged = Catalogue(upstream, deployment_epoch="rev-1")  # type: ignore[arg-type]
    assert await unchanged.resolved("face_detector") == third
