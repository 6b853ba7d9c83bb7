"""localtriton enforces Triton's keepalive policy on clients, at the HTTP/2 frame level.

With Triton's defaults a client may not ping while no call is in flight: the third ping too
soon is one strike too many and the server answers GOAWAY(ENHANCE_YOUR_CALM,
"too_many_pings"). A raw HTTP/2 client makes the frames visible.
"""

from __future__ import annotations

import socket
import time

import h2.config
import h2.connection
import h2.errors
import h2.events

from detect_stack.servers import triton_server


def _ping_every_second(url: str, pings: int) -> h2.events.ConnectionTerminated | None:
    host, port = url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        for i in range(pings):
            conn.ping(i.to_bytes(8, "big"))
            sock.sendall(conn.data_to_send())
            deadline = time.monotonic() + 1.0
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data = sock.recv(65535)
                except TimeoutError:
                    break
                if not data:
                    return None
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        return event
                sock.sendall(conn.data_to_send())
    return None


def test_pinging_every_second_without_calls_gets_goaway_too_many_pings(triton_url):
    start = time.monotonic()
    event = _ping_every_second(triton_url, pings=8)
    assert event is not None, "server tolerated a ping every second without calls"
    assert event.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert event.additional_data == b"too_many_pings"
    assert time.monotonic() - start < 8


def test_flags_relax_the_policy(tmp_path, backend):
    flags = ("--grpc-keepalive-permit-without-calls", "true",
             "--grpc-http2-min-recv-ping-interval-without-data", "500")
    with triton_server(backend, tmp_path, *flags) as (url, _):
        assert _ping_every_second(url, pings=6) is None
