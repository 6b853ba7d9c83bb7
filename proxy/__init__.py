"""The Detect proxy: one narrow gRPC API multiplexed onto a small pool of Triton channels."""

__version__ = "0.1.0"
