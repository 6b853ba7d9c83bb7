"""The in-process form of one inference request, shared by schedulers and backends."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)
class InferRequest:
    model_name: str
    inputs: dict[str, np.ndarray]
    # Output names the caller asked for; empty means every output of the model.
    requested_outputs: tuple[str, ...] = ()
    # Rows this request contributes to a batch (1 for models without batching).
    batch_size: int = 1
    request_id: str = ""
    parameters: dict[str, object] = field(default_factory=dict)

    def batch_key(self) -> tuple:
        """Requests can share an execution only when their per-row shapes and types agree."""
        return tuple(sorted((name, a.shape[1:], a.dtype.str) for name, a in self.inputs.items()))
