"""The load harness keeps working: a small h2load run whose outcome the proxy confirms."""

from __future__ import annotations

import json
import subprocess
import sys

from servers import ROOT


def test_bench_smoke(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "loadtest" / "bench.py"), "--smoke",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert [r["scenario"] for r in results] == ["proxy", "proxy+aggregation", "floor",
                                                "client-per-request"]
    for r in results:
        assert r["backend_ok_rows"] == 200
        assert r["rps"] > 0 and r["latency_ms"]["p99"] >= r["latency_ms"]["p50"] > 0
        assert r["cpu_ms_per_request"]["front"] > 0
        assert sum(int(size) * n for size, n in r["backend_batch_sizes"].items()) == 200
    assert results[0]["proxy_calls"] == {"total": 200, "ok": 200, "failed": 0}
    assert "| client-per-request |" in (tmp_path / "bench.md").read_text()
