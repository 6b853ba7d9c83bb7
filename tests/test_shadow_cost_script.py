"""The shadow cost benchmark keeps working: a small run, every figure there."""

from __future__ import annotations

import json
from pathlib import Path

from detect_loadtest import shadow_cost


def test_small_run_measures_both_sides(tmp_path: Path) -> None:
    assert shadow_cost.main(["--calls", "30", "--rounds", "1", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "shadow.json").read_text())
    assert data["command"] == ("python -m detect_loadtest.shadow_cost --calls 30 --rounds 1 "
                               f"--out {tmp_path}")
    off, on = data["results"]
    assert (off["shadow_fraction"], on["shadow_fraction"]) == (0.0, 1.0)
    assert off["shadow_calls"] == 0 and on["shadow_calls"] == 30  # one caller: never skipped
    for row in (off, on):
        assert row["latency_ms"]["p99"] >= row["latency_ms"]["p50"] > 0
        assert row["cpu_ms_per_call"]["proxy"] > 0 and row["cpu_ms_per_call"]["backend"] > 0
    assert set(data["ratios"]) == {"p50_latency", "proxy_cpu_per_call", "backend_cpu_per_call"}
    assert "| 0 | 100% | 30 |" in (tmp_path / "shadow.md").read_text()
