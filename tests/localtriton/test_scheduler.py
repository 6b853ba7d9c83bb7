"""The dynamic batcher's rules, driven directly with a recording backend."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from detect_localtriton.backends.base import Backend, Execution
from detect_localtriton.model_config import parse
from detect_localtriton.request import InferRequest
from detect_localtriton.scheduler import Scheduler
from detect_localtriton.statistics import ModelStats


class RecordingBackend(Backend):
    """Doubles its input; remembers the batch sizes it executed; can be held busy."""

    def __init__(self, config: mc.ModelConfig, busy_s: float = 0.0) -> None:
        super().__init__(config)
        self.batches: list[list[int]] = []
        self.busy_s = busy_s
        self.gate = threading.Event()
        self.gate.set()

    def execute(self, instance: int, requests: list[InferRequest]) -> Execution:
        self.gate.wait()
        self.batches.append([r.batch_size for r in requests])
        time.sleep(self.busy_s)
        return Execution([{"y": r.inputs["x"] * 2} for r in requests])


def _config(extra: str) -> mc.ModelConfig:
    config = parse(f'''
        name: "m" backend: "python" max_batch_size: 8
        input [{{ name: "x" data_type: TYPE_FP32 dims: [ -1 ] }}]
        output [{{ name: "y" data_type: TYPE_FP32 dims: [ -1 ] }}]
        instance_group [{{ count: 1 }}]
        {extra}''')
    return config


def _request(value: float, rows: int = 1, width: int = 2) -> InferRequest:
    return InferRequest("m", {"x": np.full((rows, width), value, np.float32)}, batch_size=rows)


def _run(config: mc.ModelConfig, backend: RecordingBackend, requests, stagger_s: float = 0.0):
    async def go():
        scheduler = Scheduler(config, backend, ModelStats("m", "1"))
        tasks = []
        for r in requests:
            tasks.append(asyncio.create_task(scheduler.infer(r)))
            await asyncio.sleep(stagger_s)
        results = await asyncio.gather(*tasks)
        await scheduler.close()
        return results
    return asyncio.run(go())


def test_without_dynamic_batching_each_request_runs_alone():
    backend = RecordingBackend(_config(""))
    results = _run(_config(""), backend, [_request(i) for i in range(5)])
    assert backend.batches == [[1]] * 5
    assert [float(r["y"][0, 0]) for r in results] == [0, 2, 4, 6, 8]


def test_queue_delay_gathers_requests_into_one_execution():
    config = _config("dynamic_batching { max_queue_delay_microseconds: 200000 }")
    backend = RecordingBackend(config)
    results = _run(config, backend, [_request(i) for i in range(5)], stagger_s=0.01)
    assert backend.batches == [[1, 1, 1, 1, 1]]
    assert [float(r["y"][0, 0]) for r in results] == [0, 2, 4, 6, 8]


def test_full_batch_runs_without_waiting_for_the_delay():
    config = _config("dynamic_batching { max_queue_delay_microseconds: 5000000 }")
    backend = RecordingBackend(config)
    start = time.monotonic()
    _run(config, backend, [_request(i, rows=4) for i in range(2)])
    assert time.monotonic() - start < 2
    assert backend.batches == [[4, 4]]


def test_preferred_batch_size_is_formed_and_sent_at_once():
    config = _config("dynamic_batching { preferred_batch_size: [ 2 ] "
                     "max_queue_delay_microseconds: 5000000 }")
    backend = RecordingBackend(config)
    start = time.monotonic()
    _run(config, backend, [_request(i) for i in range(4)])
    assert time.monotonic() - start < 2
    assert backend.batches == [[1, 1], [1, 1]]


def test_max_batch_size_and_shapes_split_batches():
    config = _config("dynamic_batching { }")
    backend = RecordingBackend(config)
    backend.gate.clear()  # hold the instance so that everything queues first

    async def go():
        scheduler = Scheduler(config, backend, ModelStats("m", "1"))
        first = asyncio.create_task(scheduler.infer(_request(0)))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(scheduler.infer(r)) for r in
                [_request(1, rows=5), _request(2, rows=2), _request(3, rows=2),
                 _request(4, width=3), _request(5, width=3)]]
        await asyncio.sleep(0.05)
        backend.gate.set()
        results = await asyncio.gather(first, *rest)
        await scheduler.close()
        return results

    results = asyncio.run(go())
    # 5+2 fit in 8, the next 2 would overflow; width-3 rows cannot join width-2 rows.
    assert backend.batches == [[1], [5, 2], [2], [1, 1]]
    assert [r["y"].shape for r in results] == [(1, 2), (5, 2), (2, 2), (2, 2), (1, 3), (1, 3)]
    assert [float(r["y"][0, 0]) for r in results] == [0, 2, 4, 6, 8, 10]


def test_backend_failure_fails_only_that_execution():
    config = _config("")

    class Exploding(RecordingBackend):
        def execute(self, instance, requests):
            if float(requests[0].inputs["x"][0, 0]) == 1:
                raise RuntimeError("boom")
            return super().execute(instance, requests)

    backend = Exploding(config)

    async def go():
        scheduler = Scheduler(config, backend, ModelStats("m", "1"))
        results = await asyncio.gather(*(scheduler.infer(_request(i)) for i in range(3)),
                                       return_exceptions=True)
        await scheduler.close()
        return results

    results = asyncio.run(go())
    assert "boom" in str(results[1])
    assert float(results[2]["y"][0, 0]) == 4
