"""A CPU server that speaks NVIDIA Triton's gRPC protocol and serves a Triton model repository.

It exists so that the proxy can be developed, tested and demonstrated against the exact
protocol and model repository that production Triton serves, on machines without a GPU.
"""

__version__ = "0.1.0"
