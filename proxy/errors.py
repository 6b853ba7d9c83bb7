"""Errors the proxy returns, and how Triton/tritonclient failures become them.

Callers get a gRPC code they can act on and a message that says what to do, never a stack
trace or an internal address; upstream details go to the log instead.
"""

from __future__ import annotations

import logging
import re

import grpc
from tritonclient.utils import InferenceServerException

log = logging.getLogger(__name__)


class ProxyError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def upstream_code(exc: InferenceServerException) -> grpc.StatusCode | None:
    """tritonclient reports the gRPC status as text, e.g. "StatusCode.UNAVAILABLE"."""
    status = exc.status() or ""
    name = status.rsplit(".", 1)[-1]
    return grpc.StatusCode.__members__.get(name)


def is_unknown_model(exc: InferenceServerException) -> bool:
    # Older Triton releases report unknown models as UNAVAILABLE; the message is stable.
    return (upstream_code(exc) == grpc.StatusCode.NOT_FOUND
            or "Request for unknown model" in (exc.message() or ""))


# Triton's framing of a model's own words: "in ensemble 'face_detector', " before a step's
# error, "[request id: ...] " before a request's. The caller gets the words.
_TRITON_PREFIX = re.compile(r"^(?:in ensemble '[^']*', |\[request id: [^\]]*\] )+")


def from_upstream(exc: InferenceServerException, model: str) -> ProxyError:
    code = upstream_code(exc)
    detail = _TRITON_PREFIX.sub("", (exc.message() or "").strip())
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ProxyError(code, f"model '{model}' rejected the image: {detail[:300]}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ProxyError(code, f"model '{model}' did not answer before the deadline")
    if code == grpc.StatusCode.UNAVAILABLE:
        return ProxyError(code, "the model server is unavailable; retry with backoff")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ProxyError(code, "the model server is overloaded; retry with backoff")
    if code == grpc.StatusCode.CANCELLED:
        # Not the caller's doing (then this handler would have been cancelled instead): the
        # model server or a hop before it dropped the call, e.g. while shutting down.
        return ProxyError(grpc.StatusCode.UNAVAILABLE,
                          "the model server dropped the call; retry with backoff")
    log.warning("upstream failure for model %s: %s %s", model, exc.status(), detail)
    return ProxyError(grpc.StatusCode.INTERNAL,
                      f"the model server failed to run model '{model}'")
