"""`make run` brings the whole stack up, shows how to call it, and Ctrl-C leaves nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from servers import ROOT, TRITON, free_port

PORTS = ("FRONT_PORT", "ADMIN_PORT", "EGRESS_PORT", "TRITON1_PORT", "TRITON2_PORT",
         "PROXY1_PORT", "PROXY2_PORT", "PROXY1_METRICS_PORT", "PROXY2_METRICS_PORT",
         "TRITON1_METRICS_PORT", "TRITON2_METRICS_PORT", "PROMETHEUS_PORT")


def _group_alive(pgid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=,args=", "-g", str(pgid)], capture_output=True,
                         text=True)
    return [line for line in out.stdout.splitlines() if line.strip()]


def test_make_run_then_ctrl_c(tmp_path, backend):
    ports = {name: str(free_port()) for name in PORTS}
    log = tmp_path / "make-run.log"
    choice = "BACKEND=triton" if backend == TRITON else "BACKEND=localtriton"
    with open(log, "wb") as out:
        make = subprocess.Popen(["make", "--no-print-directory", "run", choice], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **ports},
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops everything" not in log.read_text(errors="replace"):
            assert make.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        text = log.read_text()
        assert "detect_proxy 2/2, triton 2/2" in text
        assert f"grpcurl -cacert build/certs/ca.crt localhost:{ports['FRONT_PORT']} list" in text
        assert "1 detection(s)" in text and "face 0.9" in text
        import urllib.request
        url = f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}/-/ready"
        assert urllib.request.urlopen(url, timeout=5).status == 200
        import tritonclient.grpc as grpcclient
        for port in ("TRITON1_PORT", "TRITON2_PORT"):
            with grpcclient.InferenceServerClient(f"127.0.0.1:{ports[port]}") as client:
                name = client.get_server_metadata().name
            assert name == ("triton" if backend == TRITON else "localtriton")
    finally:
        os.killpg(make.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        make.wait(60)
    deadline = time.monotonic() + 10
    while _group_alive(make.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _group_alive(make.pid) == [], "processes left behind"
