"""One channel per process, configured the way the service expects to be called.

TLS by default (Envoy is the only door callers should use), mTLS when a client certificate
is given; every call gets a deadline even when the caller forgets one; UNAVAILABLE and
RESOURCE_EXHAUSTED ("try again later") are retried with exponential backoff by gRPC itself,
through the channel's service config, so every language's client can do the same from the
same JSON. Paths and the target may come from the environment (``DETECT_*``), so a service
is configured without code changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import grpc

from detect.v1 import detect_pb2

SERVICE = detect_pb2.DESCRIPTOR.services_by_name["Detector"].full_name

DEFAULT_TARGET = "localhost:8443"
DEFAULT_TIMEOUT_S = 10.0


def service_config(timeout_s: float = DEFAULT_TIMEOUT_S, max_attempts: int = 3) -> str:
    """gRPC service config: a default deadline and retries of "try again later" codes for
    the unary calls; a DetectStream lasts as long as its caller wants (it sets its own
    deadline, if any)."""
    unary = [m.name for m in detect_pb2.DESCRIPTOR.services_by_name["Detector"].methods
             if not m.client_streaming and not m.server_streaming]
    method: dict[str, Any] = {"name": [{"service": SERVICE, "method": name} for name in unary],
                              "timeout": f"{timeout_s:g}s"}
    if max_attempts > 1:
        method["retryPolicy"] = {
            "maxAttempts": max_attempts, "initialBackoff": "0.2s", "maxBackoff": "2s",
            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]}
    return json.dumps({"methodConfig": [method]})


def _read(path: str | os.PathLike[str] | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def _settings(target: str | None, ca_file: str | os.PathLike[str] | None,
              cert_file: str | os.PathLike[str] | None, key_file: str | os.PathLike[str] | None,
              plaintext: bool, timeout_s: float, max_attempts: int
              ) -> tuple[str, grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
    target = target or os.environ.get("DETECT_TARGET", DEFAULT_TARGET)
    options: list[tuple[str, Any]] = [
        ("grpc.service_config", service_config(timeout_s, max_attempts)),
        ("grpc.enable_retries", 1),
    ]
    if plaintext:
        return target, None, options
    ca = _read(ca_file or os.environ.get("DETECT_CA_FILE"))
    cert = _read(cert_file or os.environ.get("DETECT_CERT_FILE"))
    key = _read(key_file or os.environ.get("DETECT_KEY_FILE"))
    if (cert is None) != (key is None):
        raise ValueError("mTLS needs both a client certificate and its key")
    return target, grpc.ssl_channel_credentials(ca, key, cert), options


def connect(target: str | None = None, *, ca_file: str | os.PathLike[str] | None = None,
            cert_file: str | os.PathLike[str] | None = None,
            key_file: str | os.PathLike[str] | None = None, plaintext: bool = False,
            timeout_s: float = DEFAULT_TIMEOUT_S, max_attempts: int = 3) -> grpc.Channel:
    """A channel to ``target`` (env DETECT_TARGET, default localhost:8443). TLS verifies the
    server with ``ca_file`` (env DETECT_CA_FILE; the system roots without one); a client
    certificate and key (DETECT_CERT_FILE, DETECT_KEY_FILE) turn on mTLS. ``plaintext`` is
    for talking to a proxy directly while debugging."""
    target, credentials, options = _settings(target, ca_file, cert_file, key_file, plaintext,
                                             timeout_s, max_attempts)
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


def connect_aio(target: str | None = None, *, ca_file: str | os.PathLike[str] | None = None,
                cert_file: str | os.PathLike[str] | None = None,
                key_file: str | os.PathLike[str] | None = None, plaintext: bool = False,
                timeout_s: float = DEFAULT_TIMEOUT_S, max_attempts: int = 3
                ) -> grpc.aio.Channel:
    """``connect`` for asyncio programs (``grpc.aio``); call it inside the event loop."""
    target, credentials, options = _settings(target, ca_file, cert_file, key_file, plaintext,
                                             timeout_s, max_attempts)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)
