"""The one error type of the proxy, and how the model server's statuses become it.

Callers get a gRPC code they can act on and a message that says what to do, never a stack
trace or an internal address; upstream details go to the log instead.
"""

from __future__ import annotations

import logging
import re

import grpc

log = logging.getLogger(__name__)


class ProxyError(Exception):
    """A call's outcome other than OK: the status and the message the caller receives."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> ProxyError:
    return ProxyError(grpc.StatusCode.INVALID_ARGUMENT, message)


def is_unknown_model(code: grpc.StatusCode, details: str) -> bool:
    # Older Triton releases report unknown models as UNAVAILABLE; the message is stable.
    return code == grpc.StatusCode.NOT_FOUND or "Request for unknown model" in details


# Triton's framing of a model's own words: "in ensemble 'face_detector', " before a step's
# error, "[request id: ...] " before a request's. The caller gets the words.
_TRITON_PREFIX = re.compile(r"^(?:in ensemble '[^']*', |\[request id: [^\]]*\] )+")


def from_upstream(code: grpc.StatusCode, details: str, model: str) -> ProxyError:
    """What the caller is told when the model server answered ``code`` for ``model``."""
    detail = _TRITON_PREFIX.sub("", details.strip())
    if is_unknown_model(code, details):
        return ProxyError(grpc.StatusCode.NOT_FOUND, f"model '{model}' is not served")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ProxyError(code, f"model '{model}' rejected the image: {detail[:300]}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ProxyError(code, f"model '{model}' did not answer before the deadline")
    if code == grpc.StatusCode.UNAVAILABLE:
        return ProxyError(code, "the model server is unavailable; retry with backoff")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ProxyError(code, "the model server is overloaded; retry with backoff")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return ProxyError(code, f"the model server does not implement this call: {detail[:300]}")
    if code == grpc.StatusCode.CANCELLED:
        # Not the caller's doing (then this handler would have been cancelled instead): the
        # model server or a hop before it dropped the call, e.g. while shutting down.
        return ProxyError(grpc.StatusCode.UNAVAILABLE,
                          "the model server dropped the call; retry with backoff")
    log.warning("upstream failure for model %s: %s %s", model, code.name, detail)
    return ProxyError(grpc.StatusCode.INTERNAL,
                      f"the model server failed to run model '{model}'")
