"""Render Prometheus' scrape configuration for the stack: proxies, Envoy, Triton replicas.

The same jobs work against production Triton (its metrics port, 8002 by default) because
localtriton exports Triton's metric names.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def render(proxies: list[str], envoy_admin: str, tritons: list[str],
           interval: str = "5s", triton_groups: dict[str, list[str]] | None = None) -> dict:
    """``triton_groups``: each Triton group's replicas (metrics host:port), scraped by the
    "triton" job with the group's name in the label ``group`` (the label the proxy's
    ``detect_group_*`` series use), beside the ungrouped ``tritons``."""
    triton_targets: list[dict[str, Any]] = (
        [{"targets": tritons}] if tritons or not triton_groups else [])
    triton_targets += [{"targets": targets, "labels": {"group": name}}
                       for name, targets in (triton_groups or {}).items()]
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {"job_name": "detect-proxy", "static_configs": [{"targets": proxies}]},
            {"job_name": "envoy", "metrics_path": "/stats/prometheus",
             "static_configs": [{"targets": [envoy_admin]}]},
            {"job_name": "triton", "static_configs": triton_targets},
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", action="append", required=True, help="proxy metrics host:port")
    parser.add_argument("--envoy-admin", required=True, help="Envoy admin host:port")
    parser.add_argument("--triton", action="append", required=True,
                        help="Triton metrics host:port (repeatable)")
    parser.add_argument("--interval", default="5s")
    parser.add_argument("--out", type=Path, default=Path("build/prometheus/prometheus.yml"))
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # JSON is valid YAML, and keeps this free of a YAML dependency.
    args.out.write_text(json.dumps(render(args.proxy, args.envoy_admin, args.triton,
                                          args.interval), indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
