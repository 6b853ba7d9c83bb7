"""Command-line flags, named after tritonserver's, each with a LOCALTRITON_* environment twin.

Keepalive defaults are Triton's own server defaults, so localtriton enforces the same ping
policy as production Triton: a client tuned against it will not be sent GOAWAY by Triton.
Model control (``--model-control-mode``, ``--load-model``) and ``--strict-readiness`` are
checked as tritonserver checks them, so a deployment's command line means the same to both.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Options:
    model_repository: Path
    grpc_address: str
    grpc_port: int
    grpc_keepalive_time: int
    grpc_keepalive_timeout: int
    grpc_keepalive_permit_without_calls: bool
    grpc_http2_max_pings_without_data: int
    grpc_http2_min_recv_ping_interval_without_data: int
    grpc_http2_max_ping_strikes: int
    grpc_use_ssl: bool
    grpc_use_ssl_mutual: bool
    grpc_server_cert: Path | None
    grpc_server_key: Path | None
    grpc_root_cert: Path | None
    metrics_port: int
    exit_timeout_secs: float
    log_verbose: int
    model_control_mode: str = "none"
    load_model: tuple[str, ...] = ()
    strict_readiness: bool = True

    @property
    def explicit(self) -> bool:
        """Whether models are loaded and unloaded through the repository RPCs."""
        return self.model_control_mode == "explicit"

    def startup_models(self) -> list[str] | None:
        """The models to load at start: every one (None), or those ``--load-model`` names."""
        if not self.explicit or self.load_model == ("*",):
            return None
        return list(self.load_model)

    def model_control_errors(self) -> list[str]:
        """What tritonserver would refuse in the model-control flags (empty when fine)."""
        errors = []
        if self.model_control_mode == "poll":
            errors.append("--model-control-mode poll is not supported by localtriton (it does "
                          "not watch the repository): use explicit, and load or unload models "
                          "with RepositoryModelLoad / RepositoryModelUnload")
        if self.load_model and not self.explicit:
            # tritonserver's own words for the same mistake.
            errors.append("Use of '--load-model' requires setting "
                          "'--model-control-mode=explicit' as well.")
        if "*" in self.load_model and len(self.load_model) > 1:
            errors.append("Wildcard model name '*' must be the ONLY startup model if "
                          "specified at all.")
        return errors

    @property
    def tls(self) -> bool:
        """Whether the gRPC port serves TLS: ``--grpc-use-ssl-mutual`` implies it, as in
        tritonserver."""
        return self.grpc_use_ssl or self.grpc_use_ssl_mutual

    def tls_errors(self) -> list[str]:
        """What is inconsistent in the TLS flags (empty when they can be served)."""
        errors = []
        if self.tls:
            for flag, value in (("--grpc-server-cert", self.grpc_server_cert),
                                ("--grpc-server-key", self.grpc_server_key)):
                if value is None:
                    errors.append(f"TLS (--grpc-use-ssl) needs {flag}")
            if self.grpc_use_ssl_mutual and self.grpc_root_cert is None:
                errors.append("--grpc-use-ssl-mutual needs --grpc-root-cert (the CA that "
                              "signs client certificates)")
        else:
            for flag, value in (("--grpc-server-cert", self.grpc_server_cert),
                                ("--grpc-server-key", self.grpc_server_key),
                                ("--grpc-root-cert", self.grpc_root_cert)):
                if value is not None:
                    errors.append(f"{flag} is given but TLS is off (add --grpc-use-ssl true)")
        return errors

    def grpc_server_options(self) -> list[tuple[str, int]]:
        """Channel arguments tritonserver sets on its gRPC server for the same flags."""
        return [
            ("grpc.keepalive_time_ms", self.grpc_keepalive_time),
            ("grpc.keepalive_timeout_ms", self.grpc_keepalive_timeout),
            ("grpc.keepalive_permit_without_calls", int(self.grpc_keepalive_permit_without_calls)),
            ("grpc.http2.max_pings_without_data", self.grpc_http2_max_pings_without_data),
            ("grpc.http2.min_ping_interval_without_data_ms",
             self.grpc_http2_min_recv_ping_interval_without_data),
            ("grpc.http2.max_ping_strikes", self.grpc_http2_max_ping_strikes),
            # Triton accepts and sends messages up to 2 GiB.
            ("grpc.max_receive_message_length", 2**31 - 1),
            ("grpc.max_send_message_length", 2**31 - 1),
        ]


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


_CONTROL_MODES = ("none", "explicit", "poll")


def _control_mode(text: str) -> str:
    """tritonserver's modes; ``poll`` is accepted here so that ``parse`` can say why it is
    refused rather than list it as an unknown choice."""
    lowered = text.strip().lower()
    if lowered not in _CONTROL_MODES:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(_CONTROL_MODES)}, got {text!r}")
    return lowered


def _model_names(text: str) -> tuple[str, ...]:
    """The environment twin of a repeatable flag: a comma-separated list."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


class _Repeated(argparse.Action):
    """A repeatable flag (tritonserver's ``--load-model``): each occurrence adds one value,
    and the first one replaces the default (the environment's list) instead of adding to it,
    as argparse's ``append`` would."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest)
        if current is self.default:
            current = ()
        setattr(namespace, self.dest, (*current, values))


# (flag, type, default, help). Defaults for the grpc-* flags are tritonserver's.
_FLAGS: list[tuple[str, Callable[[str], Any], object, str]] = [
    ("--model-repository", Path, Path("model_repository"), "path to the model repository"),
    ("--grpc-address", str, "127.0.0.1",
     "address to listen on (tritonserver defaults to 0.0.0.0; this development server "
     "stays on loopback unless told otherwise)"),
    ("--grpc-port", int, 8001, "port for the gRPC service"),
    ("--grpc-keepalive-time", int, 7_200_000,
     "milliseconds between keepalive pings the server sends on an idle connection"),
    ("--grpc-keepalive-timeout", int, 20_000,
     "milliseconds to wait for a keepalive ping ack before closing the connection"),
    ("--grpc-keepalive-permit-without-calls", _bool, False,
     "allow clients to send keepalive pings when there are no calls in flight"),
    ("--grpc-http2-max-pings-without-data", int, 2,
     "pings the server may send without a data or header frame in between (0: no limit)"),
    ("--grpc-http2-min-recv-ping-interval-without-data", int, 300_000,
     "minimum milliseconds between pings the server accepts when no data is sent; a ping "
     "sooner is a strike"),
    ("--grpc-http2-max-ping-strikes", int, 2,
     "strikes allowed before the server sends GOAWAY too_many_pings (0: unlimited)"),
    ("--grpc-use-ssl", _bool, False,
     "serve gRPC over TLS with --grpc-server-cert and --grpc-server-key"),
    ("--grpc-use-ssl-mutual", _bool, False,
     "serve gRPC over TLS and require client certificates signed by --grpc-root-cert "
     "(implies --grpc-use-ssl)"),
    ("--grpc-server-cert", Path, None, "PEM file of the server certificate (chain) for TLS"),
    ("--grpc-server-key", Path, None, "PEM file of the server certificate's private key"),
    ("--grpc-root-cert", Path, None,
     "PEM file of the CA that client certificates must chain to, with --grpc-use-ssl-mutual"),
    ("--metrics-port", int, 0,
     "port for Triton-compatible Prometheus metrics on the gRPC address (tritonserver "
     "defaults to 8002; 0 here turns them off so that several replicas can share a host)"),
    ("--exit-timeout-secs", float, 30.0,
     "on SIGTERM/SIGINT, seconds to let in-flight requests finish before exiting"),
    ("--log-verbose", int, 0,
     "verbose logging level (0: off; 1: a line per inference request with its id and "
     "trace context)"),
    ("--model-control-mode", _control_mode, "none",
     "none: load every model at start; explicit: load only --load-model models at start, "
     "then load and unload with RepositoryModelLoad / RepositoryModelUnload (poll is not "
     "supported)"),
    # A tuple default marks a repeatable flag; its environment twin is a comma-separated list.
    ("--load-model", str, (),
     "with --model-control-mode explicit, a model to load at start (repeat the flag for "
     "several; '*' alone: every model)"),
    ("--strict-readiness", _bool, True,
     "server (and gRPC health) ready only while every model that was loaded is READY; "
     "false: ready whenever the server is up, even while a model loads or unloads"),
]


def env_name(flag: str) -> str:
    return "LOCALTRITON_" + flag.lstrip("-").replace("-", "_").upper()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="localtriton",
        description="CPU server speaking Triton's gRPC protocol over a Triton model repository. "
                    "Every flag can also be set through the environment variable shown.")
    for flag, kind, default, text in _FLAGS:
        env = env_name(flag)
        repeated = isinstance(default, tuple)
        if env in os.environ:
            try:
                default = (_model_names if repeated else kind)(os.environ[env])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"{env}={os.environ[env]!r}: {exc}")
        if isinstance(default, tuple):
            shown = ",".join(default) or "none"
            parser.add_argument(flag, type=kind, default=default, action=_Repeated,
                                help=f"{text} [env {env}, comma-separated; default: {shown}]")
        else:
            parser.add_argument(flag, type=kind, default=default,
                                help=f"{text} [env {env}; default: %(default)s]")
    return parser


def parse(argv: list[str] | None = None) -> Options:
    parser = build_parser()
    options = Options(**vars(parser.parse_args(argv)))
    errors = options.tls_errors() + options.model_control_errors()
    if errors:
        parser.error("; ".join(errors))
    return options
