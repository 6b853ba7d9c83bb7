"""Per-model statistics with Triton's semantics, for the ModelStatistics RPC.

- ``success``/``fail``: one count per request, duration from arrival to response.
- ``queue``/``compute_*``: one count per executed request; each request in a batch is
  charged the whole execution's compute time, as Triton does.
- ``inference_count``: rows inferred (sum of batch sizes); ``execution_count``: executions.
- ``batch_stats``: one entry per execution batch size.

- ``fail_reasons``: failed requests by Triton's metric label ``reason``: BACKEND (the model
  failed), CANCELED (the caller went away), REJECTED (refused by the scheduler), OTHER
  (e.g. an ensemble whose step failed).
- Requests refused by validation (unknown input, bad shape) are not counted, as in Triton.

All updates happen on the server's event loop, so no locking is needed.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from tritonclient.grpc import service_pb2 as pb

FAILURE_BACKEND = "BACKEND"
FAILURE_CANCELED = "CANCELED"
FAILURE_REJECTED = "REJECTED"
FAILURE_OTHER = "OTHER"
FAILURE_REASONS = (FAILURE_OTHER, FAILURE_BACKEND, FAILURE_CANCELED, FAILURE_REJECTED)


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns * count

    def to_proto(self, message: pb.StatisticDuration) -> None:
        message.count = self.count
        message.ns = self.ns


@dataclass
class _BatchStats:
    compute_input: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    compute_output: _Duration = field(default_factory=_Duration)


@dataclass
class ModelStats:
    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_input: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    compute_output: _Duration = field(default_factory=_Duration)
    batches: dict[int, _BatchStats] = field(default_factory=dict)
    fail_reasons: Counter[str] = field(default_factory=Counter)

    def record_request(self, ok: bool, duration_ns: int, reason: str = FAILURE_OTHER) -> None:
        (self.success if ok else self.fail).add(duration_ns)
        if not ok:
            self.fail_reasons[reason] += 1
        self.last_inference_ms = int(time.time() * 1000)

    def record_execution(self, batch_size: int, requests: int, queue_ns: list[int],
                         compute_input_ns: int, compute_infer_ns: int,
                         compute_output_ns: int) -> None:
        self.execution_count += 1
        self.inference_count += batch_size
        for ns in queue_ns:
            self.queue.add(ns)
        self.compute_input.add(compute_input_ns, requests)
        self.compute_infer.add(compute_infer_ns, requests)
        self.compute_output.add(compute_output_ns, requests)
        batch = self.batches.setdefault(batch_size, _BatchStats())
        batch.compute_input.add(compute_input_ns)
        batch.compute_infer.add(compute_infer_ns)
        batch.compute_output.add(compute_output_ns)

    def to_proto(self) -> pb.ModelStatistics:
        out = pb.ModelStatistics(
            name=self.name, version=self.version,
            last_inference=self.last_inference_ms,
            inference_count=self.inference_count,
            execution_count=self.execution_count,
        )
        stats = out.inference_stats
        self.success.to_proto(stats.success)
        self.fail.to_proto(stats.fail)
        self.queue.to_proto(stats.queue)
        self.compute_input.to_proto(stats.compute_input)
        self.compute_infer.to_proto(stats.compute_infer)
        self.compute_output.to_proto(stats.compute_output)
        for size in sorted(self.batches):
            batch = self.batches[size]
            entry = out.batch_stats.add(batch_size=size)
            batch.compute_input.to_proto(entry.compute_input)
            batch.compute_infer.to_proto(entry.compute_infer)
            batch.compute_output.to_proto(entry.compute_output)
        return out
