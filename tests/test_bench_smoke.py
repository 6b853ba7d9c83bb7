"""The load harness keeps working: a small run whose outcomes the servers themselves confirm."""

from __future__ import annotations

import json
import subprocess
import sys

from detect_stack.servers import ROOT

SCENARIOS = ["proxy", "proxy+aggregation", "floor", "client-per-request", "proxy tls",
             "client-per-request tls", "proxy open-loop",
             "proxy+aggregation open-loop", "floor open-loop", "direct", "floor c=1",
             "proxy c=1", "proxy+aggregation c=1", "envoy+proxy c=1",
             "proxy cache off", "proxy stream x16", "proxy cache miss", "proxy cache hit",
             "localtriton null_detector", "tritonserver null_detector"]


def test_bench_smoke(tmp_path):
    out = subprocess.run([sys.executable, "-m", "detect_loadtest.bench", "--smoke",
                          "--out", str(tmp_path), "--report", str(tmp_path / "RESULTS.md")],
                         capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads((tmp_path / "bench.json").read_text())
    results = {r["scenario"]: r for r in data["results"]}
    assert list(results) == SCENARIOS
    for r in results.values():
        low, high = r.get("backend_expected_rows", [r["requests"]] * 2)
        assert low <= r["backend_ok_rows"] <= high
        assert r["http_not_200"] == 0
        assert r["rps"] > 0 and r["latency_ms"]["p99"] >= r["latency_ms"]["p50"] > 0
        backend = "tritonserver" if r["scenario"].startswith("tritonserver") else "localtriton"
        if r.get("cache") != "hit":  # hits never reach the backend
            assert r["cpu_ms_per_request"][backend] > 0
        batched_rows = sum(int(size) * n for size, n in r["backend_batch_sizes"].items())
        sampled_rows = r.get("backend_sampled_rows", r["sampled"]["samples"])
        assert batched_rows == r["backend_ok_rows"] + sampled_rows
    for name in ("proxy", "proxy open-loop", "proxy c=1", "envoy+proxy c=1"):
        calls = results[name]["proxy_calls"]
        assert calls["ok"] == calls["total"] == calls["expected_ok"] >= results[name]["requests"]
        # The sampling client compared answers with the backend's own, under load.
        assert results[name]["sampled"]["samples"] > 0
        assert results[name]["sampled"]["mismatches"] == 0
    assert results["envoy+proxy c=1"]["cpu_ms_per_request"]["envoy"] > 0
    # (h): the cache's own counter and the backend agree on what was a hit, what was not.
    for name in ("proxy cache off", "proxy stream x16", "proxy cache miss", "proxy cache hit"):
        r = results[name]
        for counter, (low, high) in r["expected_counters"].items():
            assert low <= r["proxy_counters"][counter] <= high, (name, counter)
        assert r["sampled"]["mismatches"] == 0  # cached answers too
    hit, miss = results["proxy cache hit"], results["proxy cache miss"]
    assert hit["backend_ok_rows"] <= 4 and hit["proxy_counters"]["cache hit"] >= hit["requests"]
    assert miss["backend_ok_rows"] == miss["proxy_counters"]["cache bypassed"] == miss["requests"]
    stream = results["proxy stream x16"]
    assert stream["backend_ok_rows"] == 16 * stream["requests"]
    assert stream["proxy_counters"]["stream images ok"] == 16 * stream["requests"]
    assert stream["stream_check"] == {"frames": 16, "answers": 16, "mismatches": 0}
    assert "open loop at" in results["proxy open-loop"]["load"]
    assert "| client-per-request |" in (tmp_path / "bench.md").read_text()
    assert not (tmp_path / "RESULTS.md").exists()  # only a full run writes the report


def test_report_renders_every_figure_of_a_full_run(tmp_path):
    from detect_loadtest import report

    data = json.loads((ROOT / "tests" / "data" / "bench-sample.json").read_text())
    text = report.render(data)
    for heading in ("(a) Shared pool", "(b) Proxy CPU", "(c) Latency added", "(d) face_detector",
                    "(e) One proxy process", "(h) Result cache and DetectStream",
                    "DetectStream vs unary Detect", "Open loop", "Every scenario"):
        assert heading in text
    assert "Across a TLS hop" in text
    # (h)'s rows are measurements: a hit never reaches the backend, a stream's images do.
    assert "| hit (cache on, the same image every call) |" in text
    assert "| 0 (<= 4) | hit " in text
    assert "| null_detector | DetectStream of 16 |" in text
    assert "| face_detector | DetectStream of 16 |" in text
    assert text.count("**met**") + text.count("**missed**") == 7  # (a) x3, (b) x2, (c), (d)


def test_report_leaves_out_figure_h_without_its_scenarios():
    from detect_loadtest import report

    data = json.loads((ROOT / "tests" / "data" / "bench-sample.json").read_text())
    data["results"] = [r for r in data["results"] if r["group"] not in ("cache", "stream")]
    assert "(h) Result cache" not in report.render(data)
