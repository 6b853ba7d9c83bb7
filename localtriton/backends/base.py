"""The contract between a scheduler and a backend."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from ..errors import InferenceError
from ..request import InferRequest


@dataclass
class Execution:
    """What one execution produced: one entry per request, in order, plus its timings."""

    results: list[dict[str, np.ndarray] | InferenceError]
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0


class Backend(abc.ABC):
    def __init__(self, config: mc.ModelConfig) -> None:
        self.config = config
        self.instance_count = sum(group.count for group in config.instance_group) or 1

    @abc.abstractmethod
    def execute(self, instance: int, requests: list[InferRequest]) -> Execution:
        """Run ``requests`` together on instance ``instance``. Called from a worker thread,
        never concurrently for the same instance."""

    def close(self) -> None:  # noqa: B027 (optional hook: most backends hold nothing to release)
        """Release the instances; called once at shutdown."""
