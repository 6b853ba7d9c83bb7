"""Errors carry a gRPC status code, mirroring how Triton maps its error codes onto gRPC."""

from __future__ import annotations

import grpc


class InferenceError(Exception):
    """A request-level failure that is reported to the caller, never a server crash."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def invalid(cls, message: str) -> InferenceError:
        return cls(grpc.StatusCode.INVALID_ARGUMENT, message)

    @classmethod
    def not_found(cls, message: str) -> InferenceError:
        return cls(grpc.StatusCode.NOT_FOUND, message)

    @classmethod
    def internal(cls, message: str) -> InferenceError:
        return cls(grpc.StatusCode.INTERNAL, message)

    @classmethod
    def unavailable(cls, message: str) -> InferenceError:
        return cls(grpc.StatusCode.UNAVAILABLE, message)


class ModelConfigError(Exception):
    """A model repository entry that cannot be loaded; the server refuses to start with it."""
