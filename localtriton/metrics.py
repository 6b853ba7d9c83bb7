"""Triton's Prometheus metrics, by Triton's names and labels, on localtriton's metrics port.

Values are read from the same per-model statistics that ModelStatistics reports, at scrape
time, so the request path pays nothing for them; one dashboard works against localtriton
and against production Triton.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .repository import ModelRepository
from .statistics import FAILURE_REASONS

log = logging.getLogger(__name__)

# (Triton metric name, help, value from ModelStats). Durations are cumulative microseconds.
_COUNTERS = [
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     lambda s: s.success.count),
    ("nv_inference_count", "Number of inferences performed (does not include cached requests)",
     lambda s: s.inference_count),
    ("nv_inference_exec_count",
     "Number of model executions performed (does not include cached requests)",
     lambda s: s.execution_count),
    ("nv_inference_request_duration_us",
     "Cumulative inference request duration in microseconds (includes cached requests)",
     lambda s: (s.success.ns + s.fail.ns) // 1000),
    ("nv_inference_queue_duration_us",
     "Cumulative inference queuing duration in microseconds (includes cached requests)",
     lambda s: s.queue.ns // 1000),
    ("nv_inference_compute_input_duration_us",
     "Cumulative compute input duration in microseconds (does not include cached requests)",
     lambda s: s.compute_input.ns // 1000),
    ("nv_inference_compute_infer_duration_us",
     "Cumulative compute inference duration in microseconds (does not include cached requests)",
     lambda s: s.compute_infer.ns // 1000),
    ("nv_inference_compute_output_duration_us",
     "Cumulative inference compute output duration in microseconds "
     "(does not include cached requests)",
     lambda s: s.compute_output.ns // 1000),
]


def exposition(repository: ModelRepository) -> str:
    """Prometheus text format, exactly as Triton writes it (counters without ``_total``)."""
    models = repository.all()
    lines: list[str] = []
    for name, text, value in _COUNTERS:
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} counter")
        for model in models:
            lines.append(f'{name}{{model="{model.name}",version="{model.version}"}} '
                         f"{value(model.stats)}")
        if name == "nv_inference_request_success":  # Triton's order of families
            lines += _failures(models)
    lines.append("# HELP nv_inference_pending_request_count Instantaneous number of pending "
                 "requests awaiting execution per-model.")
    lines.append("# TYPE nv_inference_pending_request_count gauge")
    for model in models:
        lines.append(f'nv_inference_pending_request_count{{model="{model.name}",'
                     f'version="{model.version}"}} {model.pending}')
    return "\n".join(lines) + "\n"


def _failures(models: list) -> list[str]:
    name = "nv_inference_request_failure"
    lines = [f"# HELP {name} Number of failed inference requests, all batch sizes",
             f"# TYPE {name} counter"]
    for model in models:
        for reason in FAILURE_REASONS:
            lines.append(f'{name}{{model="{model.name}",reason="{reason}",'
                         f'version="{model.version}"}} {model.stats.fail_reasons[reason]}')
    return lines


class _Handler(BaseHTTPRequestHandler):
    repository: ModelRepository

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404)
            return
        body = exposition(self.repository).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # scrapes are not worth a log line each
        pass


def serve(repository: ModelRepository, address: str, port: int) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"repository": repository})
    server = ThreadingHTTPServer((address, port), handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("Started Metrics Service at %s:%d", address, server.server_address[1])
    return server
