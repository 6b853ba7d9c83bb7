"""The result cache in real proxy processes sharing a real Redis, in front of localtriton.

A repeated image costs no inference and gets the same answer; the caller's options apply to a
cached answer exactly as to a fresh one; a deployment epoch and ``skip_cache`` keep old
answers out; identical calls in flight make one inference; proxies share answers through
Redis; and Redis failing (killed under load, or silent) costs calls nothing but hit rate and
at most the lookup timeout. The cache lives in the proxy, so one backend (localtriton)
suffices: the genuine tritonserver would answer the same misses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import socket
import statistics
import struct
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
import redis
from PIL import Image

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_proxy.contract import DECLARED_IMAGES_HEADER
from detect_proxy.redis_tier import RedisTier
from detect_stack.promtext import scrape, value
from detect_stack.servers import (
    TESTDATA,
    free_port,
    localtriton,
    proxy,
    redis_server,
    triton_client,
    wait_for,
)

MODEL = "face_detector"
# Generous for lookups that must succeed on a loaded machine; the tests about failures set
# their own.
TIMEOUT_MS = "1000"


def fresh(png: bytes) -> bytes:
    """The same picture as bytes no one has sent yet: a text chunk with a unique value after
    the header changes the image's hash (its cache key), not its pixels or its answer."""
    assert png[12:16] == b"IHDR"
    text = b"Comment\x00" + uuid.uuid4().hex.encode()
    chunk = (struct.pack(">I", len(text)) + b"tEXt" + text
             + struct.pack(">I", zlib.crc32(b"tEXt" + text)))
    return png[:33] + chunk + png[33:]


@pytest.fixture(scope="module")
def astronaut() -> bytes:
    return (TESTDATA / "astronaut.png").read_bytes()


@pytest.fixture(scope="module")
def two_faces() -> bytes:
    """Two faces of different scores, so that min_score and max_detections have work."""
    canvas = Image.new("RGB", (1024, 512))
    canvas.paste(Image.open(TESTDATA / "astronaut.png").convert("RGB"), (0, 0))
    canvas.paste(Image.open(TESTDATA / "camera.png").convert("RGB"), (512, 0))
    buffer = BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Proxy:
    """A running proxy: its stub and its metrics port."""
    stub: detect_pb2_grpc.DetectorStub
    metrics_port: int

    def detect(self, image: bytes, **options: object) -> detect_pb2.DetectResponse:
        return self.stub.Detect(detect_pb2.DetectRequest(image=image, **options), timeout=30)

    def lookups(self) -> Counter[str]:
        """Cache lookups so far by result ("miss", "hit/local", "hit/redis", ...)."""
        counts: Counter[str] = Counter()
        for name, labels, v in scrape(self.metrics_port):
            if name == "detect_cache_lookups_total":
                tier = labels.get("tier", "")
                counts[labels["result"] + (f"/{tier}" if tier else "")] += int(v)
        return counts

    def metric(self, name: str, **labels: str) -> float:
        return value(scrape(self.metrics_port), name, **labels)


@contextlib.contextmanager
def started(tmp_path: Path, backend_url: str, *flags: str) -> Iterator[Proxy]:
    metrics_port = free_port()
    flags = ("--drain-delay-s", "0", *flags)  # nothing balances over these: stop at once
    with proxy(tmp_path, backend_url, *flags, metrics_port=metrics_port) as (target, _), \
            grpc.insecure_channel(target) as channel:
        yield Proxy(detect_pb2_grpc.DetectorStub(channel), metrics_port)


def inferences(backend_url: str) -> int:
    """Images the backend has run through the detector so far."""
    with triton_client(backend_url) as client:
        return client.get_inference_statistics(MODEL).model_stats[0].inference_count


def stored(redis_url: str, image: bytes) -> bool:
    """Whether Redis holds an answer for ``image`` (keys end with the image's SHA-256)."""
    with redis.Redis.from_url(redis_url) as client:
        pattern = f"detect:*:{hashlib.sha256(image).hexdigest()}"
        return any(True for _ in client.scan_iter(match=pattern))


@pytest.fixture(scope="module")
def backend_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with localtriton(tmp_path_factory.mktemp("cache-backend")) as (url, _):
        yield url


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as (url, _):
        yield url


@pytest.fixture(scope="module")
def proxy_a(tmp_path_factory, backend_url, redis_url) -> Iterator[Proxy]:
    with started(tmp_path_factory.mktemp("proxy-a"), backend_url, "--redis-url", redis_url,
                 "--redis-timeout-ms", TIMEOUT_MS) as p:
        yield p


@pytest.fixture(scope="module")
def proxy_b(tmp_path_factory, backend_url, redis_url) -> Iterator[Proxy]:
    with started(tmp_path_factory.mktemp("proxy-b"), backend_url, "--redis-url", redis_url,
                 "--redis-timeout-ms", TIMEOUT_MS) as p:
        yield p


@pytest.fixture(scope="module")
def uncached(tmp_path_factory, backend_url) -> Iterator[Proxy]:
    with started(tmp_path_factory.mktemp("uncached"), backend_url, "--cache-ttl-s", "0") as p:
        yield p


def test_a_repeated_image_is_a_hit_with_the_same_answer_and_no_inference(
        proxy_a, backend_url, redis_url, astronaut):
    image = fresh(astronaut)
    before, counted = inferences(backend_url), proxy_a.lookups()
    first = proxy_a.detect(image)
    second = proxy_a.detect(image)
    assert len(first.detections) == 1 and second == first
    assert inferences(backend_url) - before == 1
    assert proxy_a.lookups() - counted == Counter({"miss": 1, "hit/local": 1})
    wait_for(lambda: stored(redis_url, image), 5, "the answer stored in Redis")


def test_options_apply_to_a_cached_answer_as_to_a_fresh_one(proxy_a, uncached, two_faces):
    image = fresh(two_faces)
    # The first call asks for a narrow view; the cache keeps the whole answer anyway.
    narrow = proxy_a.detect(image, min_score=0.9, max_detections=1)
    assert narrow == uncached.detect(image, min_score=0.9, max_detections=1)
    counted = proxy_a.lookups()
    options = [{}, {"min_score": 0.5}, {"min_score": 0.9}, {"min_score": 0.99},
               {"max_detections": 1}, {"max_detections": 5}, {"min_score": 0.5,
                                                              "max_detections": 1}]
    for option in options:
        assert proxy_a.detect(image, **option) == uncached.detect(image, **option), option
    assert len(proxy_a.detect(image).detections) == 2
    assert proxy_a.lookups() - counted == Counter({"hit/local": len(options) + 1})


def test_another_epoch_misses_and_skip_cache_bypasses(tmp_path, proxy_a, backend_url, redis_url,
                                                      astronaut):
    image = fresh(astronaut)
    answer = proxy_a.detect(image)
    wait_for(lambda: stored(redis_url, image), 5, "the answer stored in Redis")
    with started(tmp_path, backend_url, "--redis-url", redis_url, "--redis-timeout-ms",
                 TIMEOUT_MS, "--cache-epoch", "models-2") as other:
        before = inferences(backend_url)
        assert other.detect(image) == answer
        assert other.lookups() == Counter({"miss": 1})  # not the other epoch's answer
        assert inferences(backend_url) - before == 1
    before, counted = inferences(backend_url), proxy_a.lookups()
    assert proxy_a.detect(image, skip_cache=True) == answer
    assert inferences(backend_url) - before == 1
    assert proxy_a.detect(image) == answer  # the fresh answer is the cached one now
    assert proxy_a.lookups() - counted == Counter({"bypassed": 1, "hit/local": 1})


def test_identical_concurrent_calls_make_one_inference(proxy_a, backend_url, astronaut):
    image = fresh(astronaut)
    calls = 50
    before, counted = inferences(backend_url), proxy_a.lookups()
    request = detect_pb2.DetectRequest(image=image)
    futures = [proxy_a.stub.Detect.future(request, timeout=30) for _ in range(calls)]
    answers = [f.result() for f in futures]
    assert all(a == answers[0] for a in answers) and len(answers[0].detections) == 1
    assert inferences(backend_url) - before == 1
    counts = proxy_a.lookups() - counted
    assert counts["miss"] == 1 and counts["coalesced"] + counts["hit/local"] == calls - 1, counts
    assert sum(counts.values()) == calls, counts


def test_an_answer_from_one_proxy_is_a_redis_hit_on_another(proxy_a, proxy_b, backend_url,
                                                            redis_url, astronaut):
    image = fresh(astronaut)
    before, counted = inferences(backend_url), proxy_b.lookups()
    answer = proxy_a.detect(image)
    wait_for(lambda: stored(redis_url, image), 5, "the answer stored in Redis")
    assert proxy_b.detect(image) == answer
    assert proxy_b.detect(image) == answer  # now in B's own tier
    assert inferences(backend_url) - before == 1
    assert proxy_b.lookups() - counted == Counter({"hit/redis": 1, "hit/local": 1})


def test_a_batch_shares_answers_through_redis_both_ways(proxy_a, proxy_b, backend_url,
                                                      redis_url, astronaut):
    known, new = fresh(astronaut), fresh(astronaut)
    answer = proxy_a.detect(known)
    wait_for(lambda: stored(redis_url, known), 5, "the answer stored in Redis")
    before, counted = inferences(backend_url), proxy_b.lookups()
    batch = proxy_b.stub.DetectBatch(detect_pb2.DetectBatchRequest(images=[known, new]),
                                     timeout=30, metadata=[(DECLARED_IMAGES_HEADER, "2")])
    assert [r.response for r in batch.results] == [answer, answer]  # the same picture
    assert inferences(backend_url) - before == 1
    assert proxy_b.lookups() - counted == Counter({"hit/redis": 1, "miss": 1})
    # The batch's fresh answer went to Redis too.
    wait_for(lambda: stored(redis_url, new), 5, "the batch's answer stored in Redis")
    counted = proxy_a.lookups()
    assert proxy_a.detect(new) == answer
    assert proxy_a.lookups() - counted == Counter({"hit/redis": 1})
    assert inferences(backend_url) - before == 1


class Load:
    """Threads calling Detect over and over until stopped, counting answers and failures."""

    def __init__(self, stub: detect_pb2_grpc.DetectorStub, images: list[bytes],
                 threads: int = 4) -> None:
        self.answered = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(stub, images[i:] + images[:i]))
                         for i in range(threads)]

    def _run(self, stub: detect_pb2_grpc.DetectorStub, images: list[bytes]) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                stub.Detect(detect_pb2.DetectRequest(image=images[i % len(images)]), timeout=10)
                with self._lock:
                    self.answered += 1
            except grpc.RpcError as err:
                with self._lock:
                    self.failures.append(f"{err.code()}: {err.details()}")
            i += 1

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def test_redis_killed_under_load_fails_no_call_and_hits_resume_after_restart(
        tmp_path, backend_url, astronaut):
    port = free_port()
    with redis_server(tmp_path, port=port) as (url, server), \
            started(tmp_path, backend_url, "--redis-url", url, "--redis-timeout-ms", "200",
                    "--redis-retry-ms", "200", "--cache-max-bytes", "0") as p:
        # No in-process tier: every lookup goes to Redis.
        images = [fresh(astronaut) for _ in range(3)]

        def redis_hits() -> float:
            return p.metric("detect_cache_lookups_total", result="hit", tier="redis")

        with Load(p.stub, images) as load:
            wait_for(lambda: redis_hits() >= 10, 10, "hits from Redis before the kill")
            server.stop(signal.SIGKILL)
            answered = load.answered
            time.sleep(1.5)
            assert load.answered > answered, "no call answered while Redis was down"
            assert p.metric("detect_cache_errors_total", tier="redis") > 0
            with redis_server(tmp_path, port=port):
                hits = redis_hits()
                wait_for(lambda: redis_hits() > hits, 5, "hits from Redis again")
        assert load.failures == [], load.failures[:5]


def test_connections_from_before_a_redis_restart_fail_no_lookup_after_it(tmp_path):
    """A restarted Redis leaves the client's idle connections dead without its noticing; the
    tier drops them at the first failure, so that once Redis is back no lookup fails on one
    (and pauses the tier again)."""
    errors: Counter[str] = Counter()
    telemetry = SimpleNamespace(cache_errors=SimpleNamespace(
        add=lambda amount, labels: errors.update({labels["op"]: amount})))
    port = free_port()

    async def scenario(url: str, server) -> list[bytes | None]:
        tier = RedisTier(url, timeout_s=1.0, retry_s=0.05, telemetry=telemetry)  # type: ignore[arg-type]
        try:
            await asyncio.gather(*(tier.get("k") for _ in range(8)))  # 8 pooled connections
            server.stop(signal.SIGKILL)
            assert await tier.get("k") is None and errors == {"get": 1}
            await asyncio.sleep(0.1)  # the pause after a failure
            with redis_server(tmp_path, port=port):
                return await asyncio.gather(*(tier.get("k") for _ in range(8)))
        finally:
            await tier.close()

    with redis_server(tmp_path, port=port) as (url, server):
        assert asyncio.run(scenario(url, server)) == [None] * 8
    assert errors == {"get": 1}


@contextlib.contextmanager
def silent_redis() -> Iterator[str]:
    """A "Redis" that accepts connections (the kernel completes them) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        port = free_port()
        listener.bind(("127.0.0.1", port))
        listener.listen(128)
        yield f"redis://127.0.0.1:{port}/0"


def test_a_redis_that_never_answers_costs_a_call_its_lookup_timeout_at_most(
        tmp_path, backend_url, uncached, astronaut):
    timeout_s = 0.25
    with silent_redis() as url, started(
            tmp_path, backend_url, "--redis-url", url, "--redis-timeout-ms",
            str(int(timeout_s * 1000)), "--redis-retry-ms", "0") as p:  # every call asks Redis
        p.detect(fresh(astronaut))  # connections and the model's configuration
        extra = []
        for _ in range(3):
            image = fresh(astronaut)
            start = time.perf_counter()
            uncached.detect(image)
            baseline = time.perf_counter() - start
            start = time.perf_counter()
            assert len(p.detect(image).detections) == 1
            extra.append(time.perf_counter() - start - baseline)
        lookups = p.metric("detect_cache_lookup_duration_milliseconds_count", tier="redis")
        spent = p.metric("detect_cache_lookup_duration_milliseconds_sum", tier="redis")
        assert p.metric("detect_cache_errors_total", tier="redis", op="get") >= 4
        assert p.lookups()["miss"] == 4
    # Each lookup waited for its timeout, and not much longer; so did each call.
    assert lookups == 4 and timeout_s * 1000 <= spent / lookups <= timeout_s * 1000 * 1.5
    assert statistics.median(extra) < timeout_s * 1.5, extra
